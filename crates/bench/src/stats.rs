//! Percentile statistics as `trtllm-bench` computes them: percentile `p` of `n` values is
//! `sorted[min(floor(n·p), n − 1)]`, the average is the plain mean, and the JSON keys are
//! `p50`, `p90`, `p95`, `p99`, `minimum`, `maximum`, `average`, in that order.

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

#[cfg(test)]
mod tests {
    use super::*;

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
