//! The arithmetic the analyses share: distributions with linearly interpolated quantiles, the
//! union of time intervals, and time cut into equal buckets for charts.

use serde::Serialize;

/// Summary of a set of values (their unit is the field's that holds it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Distribution {
    /// `None` for no values; sorts `values`.
    pub fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        Some(Distribution {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            median: quantile(values, 0.5),
            p90: quantile(values, 0.9),
            min: values[0],
            max: values[values.len() - 1],
        })
    }
}

/// The `q` quantile of sorted, non-empty `values`, interpolating between neighbours.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

/// One interval of a union: `[start, end]`, and the index (in the input) of the interval that opened it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub start: u64,
    pub end: u64,
    pub first: usize,
}

/// The union of intervals given sorted by start; touching intervals merge.
pub fn union(sorted: impl IntoIterator<Item = (u64, u64)>) -> Vec<Interval> {
    let mut merged: Vec<Interval> = Vec::new();
    for (i, (start, end)) in sorted.into_iter().enumerate() {
        match merged.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => merged.push(Interval { start, end: end.max(start), first: i }),
        }
    }
    merged
}

pub fn covered_ns(intervals: &[Interval]) -> u64 {
    intervals.iter().map(|i| i.end - i.start).sum()
}

/// `[start, end)` cut into `buckets` slices of (nearly) equal length, at least 1 ns each.
pub struct Buckets {
    start: u64,
    span: u64,
    count: usize,
}

impl Buckets {
    pub fn new(start: u64, end: u64, buckets: usize) -> Self {
        let span = end.saturating_sub(start);
        Buckets { start, span, count: buckets.min(span as usize) }
    }

    fn edge(&self, i: usize) -> u64 {
        self.start + (self.span as u128 * i as u128 / self.count as u128) as u64
    }

    /// The bucket holding `t`; the end of the span belongs to the last bucket.
    fn of(&self, t: u64) -> usize {
        let offset = t.saturating_sub(self.start).min(self.span);
        ((offset as u128 * self.count as u128 / self.span as u128) as usize).min(self.count - 1)
    }

    /// The share of each bucket covered by `intervals` (sorted and disjoint).
    pub fn coverage(&self, intervals: &[Interval]) -> Vec<f64> {
        let mut covered = vec![0u64; self.count];
        if self.count == 0 {
            return Vec::new();
        }
        for interval in intervals {
            let mut b = self.of(interval.start);
            while b < self.count && self.edge(b) < interval.end {
                let (lo, hi) = (interval.start.max(self.edge(b)), interval.end.min(self.edge(b + 1)));
                covered[b] += hi.saturating_sub(lo);
                b += 1;
            }
        }
        covered.iter().enumerate().map(|(b, &ns)| ns as f64 / (self.edge(b + 1) - self.edge(b)) as f64).collect()
    }

    /// The mean of the samples falling in each bucket; `None` for a bucket without samples.
    pub fn means(&self, samples: impl IntoIterator<Item = (u64, f64)>) -> Vec<Option<f64>> {
        let mut sums = vec![(0.0, 0usize); self.count];
        if self.count == 0 {
            return Vec::new();
        }
        for (t, value) in samples {
            let slot = &mut sums[self.of(t)];
            slot.0 += value;
            slot.1 += 1;
        }
        sums.into_iter().map(|(sum, n)| (n > 0).then(|| sum / n as f64)).collect()
    }
}

/// The time in `[start, end)` that sorted, disjoint `intervals` (a [`union`]) cover.
pub fn covered_within(intervals: &[Interval], start: u64, end: u64) -> u64 {
    let first = intervals.partition_point(|i| i.end <= start);
    intervals[first..].iter().take_while(|i| i.start < end).map(|i| i.end.min(end) - i.start.max(start)).sum()
}

/// `part / whole`, or 0 when `whole` is 0.
pub fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_interpolates_quantiles() {
        let d = Distribution::of(&mut [4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((d.count, d.mean, d.median, d.min, d.max), (4, 2.5, 2.5, 1.0, 4.0));
        assert!((d.p90 - 3.7).abs() < 1e-12, "{}", d.p90);
        assert_eq!(Distribution::of(&mut []), None);
    }

    #[test]
    fn union_merges_overlapping_and_touching_intervals() {
        let merged = union([(0, 10), (5, 20), (20, 25), (30, 40), (32, 35)]);
        assert_eq!(merged, [Interval { start: 0, end: 25, first: 0 }, Interval { start: 30, end: 40, first: 3 }]);
        assert_eq!(covered_ns(&merged), 35);
    }

    #[test]
    fn coverage_splits_intervals_across_buckets() {
        let buckets = Buckets::new(0, 100, 4);
        assert_eq!(buckets.coverage(&union([(10, 60), (90, 100)])), [0.6, 1.0, 0.4, 0.4]);
        assert_eq!(Buckets::new(0, 3, 100).coverage(&union([(0, 1)])), [1.0, 0.0, 0.0], "buckets are at least 1 ns long");
        assert!(Buckets::new(5, 5, 100).coverage(&[]).is_empty());
    }

    #[test]
    fn means_leave_empty_buckets_unknown() {
        let buckets = Buckets::new(0, 100, 4);
        assert_eq!(buckets.means([(0, 1.0), (10, 3.0), (99, 5.0), (100, 7.0)]), [Some(2.0), None, None, Some(6.0)]);
    }
}
