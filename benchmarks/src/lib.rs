//! What the benchmark binaries share.

/// Medians and percentiles of measurements.
pub mod stats {
    /// The median of `values`, which it sorts (the mean of the middle two for an even
    /// count); NaN when empty.
    pub fn median(values: &mut [f64]) -> f64 {
        let n = values.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => percentile(values, 0.5),
            _ => {
                values.sort_by(f64::total_cmp);
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            }
        }
    }

    /// The `p` quantile (0–1) of `values`, which it sorts, by nearest rank (the smallest
    /// value with at least `p` of them at or below it); NaN when empty.
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        values.sort_by(f64::total_cmp);
        let rank = (p * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    /// The first quartile, the median and the third quartile of `values`, which it sorts:
    /// a figure with the interquartile range of its rounds.
    pub fn quartiles(values: &mut [f64]) -> (f64, f64, f64) {
        (percentile(values, 0.25), median(values), percentile(values, 0.75))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn medians_and_nearest_rank_percentiles() {
            assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
            assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
            let mut hundred: Vec<f64> = (1..=100).map(f64::from).collect();
            assert_eq!(percentile(&mut hundred, 0.99), 99.0);
            assert_eq!(percentile(&mut hundred, 0.5), 50.0);
            assert_eq!(percentile(&mut hundred, 1.0), 100.0);
            assert!(median(&mut []).is_nan());
            assert_eq!(quartiles(&mut [4.0, 1.0, 3.0, 2.0]), (1.0, 2.5, 3.0));
        }
    }
}
