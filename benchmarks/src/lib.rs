//! What the benchmark binaries share.

/// Medians and percentiles of measurements (nearest rank).
pub mod stats {
    pub fn median(values: &mut [f64]) -> f64 {
        percentile(values, 0.5)
    }

    /// The `p` quantile (0–1) of `values`, which it sorts; NaN when empty.
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * p).round() as usize]
    }
}
