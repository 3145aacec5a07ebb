//! Percentile statistics as `trtllm-bench` computes them: percentile `p` of `n` values is
//! `sorted[min(floor(n·p), n − 1)]`, the average is the plain mean, and the JSON keys are
//! `p50`, `p90`, `p95`, `p99`, `minimum`, `maximum`, `average`, in that order. `vllm bench
//! serve` computes its own as numpy does ([`Spread`]): percentiles interpolated linearly between
//! ranks, and the population standard deviation.

use serde::{Deserialize, Serialize};

/// Summary statistics of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PercentileStats {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub minimum: f64,
    pub maximum: f64,
    pub average: f64,
}

impl PercentileStats {
    /// Statistics of `values`, or `None` when there are none.
    pub fn from_values(values: &[f64]) -> Option<PercentileStats> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&minimum, &maximum) = (sorted.first()?, sorted.last()?);
        let at = |p| sorted[percentile_index(sorted.len(), p)];
        Some(PercentileStats {
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            minimum,
            maximum,
            average: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }

    /// The same statistics with every value multiplied by `factor` (a unit change).
    pub fn scaled(&self, factor: f64) -> PercentileStats {
        PercentileStats {
            p50: self.p50 * factor,
            p90: self.p90 * factor,
            p95: self.p95 * factor,
            p99: self.p99 * factor,
            minimum: self.minimum * factor,
            maximum: self.maximum * factor,
            average: self.average * factor,
        }
    }
}

/// Index of percentile `p` in a sorted list of `n` values: `min(floor(n * p), n - 1)` (0 when
/// `n` is 0).
pub fn percentile_index(n: usize, p: f64) -> usize {
    ((n as f64 * p) as usize).min(n.saturating_sub(1))
}

/// Mean, median, standard deviation and percentiles as numpy computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    sorted: Vec<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread { sorted }
    }

    /// 0 without values, as numpy's figures of an empty list are reported as 0.
    pub fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }

    /// The population standard deviation (numpy's `std`).
    pub fn std(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let mean = self.mean();
        (self.sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / self.sorted.len() as f64).sqrt()
    }

    /// Percentile `p` (0 to 100), interpolated linearly between the ranks around
    /// `p / 100 · (n − 1)`.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let rank = p / 100.0 * (n - 1) as f64;
        let (low, high) = (rank.floor() as usize, (rank.ceil() as usize).min(n - 1));
        self.sorted[low] + (self.sorted[high] - self.sorted[low]) * (rank - low as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_follows_numpy() {
        // numpy: percentile([1, 2, 3, 4], [50, 99, 25]) = [2.5, 3.97, 1.75]; std = 1.118033988749895.
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.mean(), s.percentile(50.0), s.percentile(25.0), s.percentile(100.0)), (2.5, 2.5, 1.75, 4.0));
        assert!((s.percentile(99.0) - 3.97).abs() < 1e-12);
        assert!((s.std() - 1.118033988749895).abs() < 1e-15);
        assert_eq!((Spread::of(&[]).mean(), Spread::of(&[]).percentile(99.0)), (0.0, 0.0));
        assert_eq!(Spread::of(&[7.0]).percentile(99.0), 7.0);
    }

    #[test]
    fn percentile_index_rule() {
        assert_eq!(percentile_index(1, 0.99), 0);
        assert_eq!(percentile_index(3, 0.50), 1);
        assert_eq!(percentile_index(3, 0.90), 2);
        assert_eq!(percentile_index(10, 0.50), 5);
        assert_eq!(percentile_index(10, 0.90), 9);
        assert_eq!(percentile_index(10, 0.95), 9);
        assert_eq!(percentile_index(100, 0.95), 95);
        assert_eq!(percentile_index(100, 0.99), 99);
        assert_eq!(percentile_index(4, 1.0), 3);
        assert_eq!(percentile_index(0, 0.5), 0);
    }

    #[test]
    fn stats_of_shuffled_values() {
        let values = [7.0, 3.0, 10.0, 1.0, 9.0, 2.0, 8.0, 4.0, 6.0, 5.0];
        let s = PercentileStats::from_values(&values).unwrap();
        assert_eq!((s.minimum, s.maximum, s.average), (1.0, 10.0, 5.5));
        // Sorted 1..=10: indices 5, 9, 9, 9.
        assert_eq!((s.p50, s.p90, s.p95, s.p99), (6.0, 10.0, 10.0, 10.0));
        let hundred: Vec<f64> = (0..100).rev().map(f64::from).collect();
        let s = PercentileStats::from_values(&hundred).unwrap();
        assert_eq!((s.p50, s.p90, s.p95, s.p99), (50.0, 90.0, 95.0, 99.0));
        assert_eq!(PercentileStats::from_values(&[]), None);
        assert_eq!(s.scaled(2.0).p90, 180.0);
    }

    #[test]
    fn json_keys_are_trtllm_bench_s_in_its_order() {
        let s = PercentileStats::from_values(&[1.0, 2.0]).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"p50":2.0,"p90":2.0,"p95":2.0,"p99":2.0,"minimum":1.0,"maximum":2.0,"average":1.5}"#);
    }
}
