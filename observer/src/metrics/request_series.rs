//! The request count and latency of each label set, kept and encoded without the
//! `prometheus` crate. These two families hold nearly every series of a busy agent (a
//! histogram is 20 samples per label set), and the crate's `gather` copies every sample
//! and label pair of them into new structures at each scrape: about 12 ms for 10k series
//! here. A series renders its labels once, when it is created; a scrape only writes the
//! numbers (goal: 10k series in well under 10 ms).

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

pub const TOTAL: &str = "mcp_proxy_requests_total";
pub const DURATION: &str = "mcp_proxy_request_duration_seconds";
const TOTAL_HELP: &str = "MCP requests handled by the proxy";
const DURATION_HELP: &str = "Request latency from the proxy's request_start to request_end probe, measured in the kernel \
     (with --no-request-latency: as the proxy measured it, when its request_end says)";

/// Request latency buckets, 1 ms to 300 s (a slow tool call can take minutes).
pub const BUCKETS: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// The bucket bounds in nanoseconds, as the kernel measures.
const BOUNDS_NS: [u64; 17] = {
    let mut ns = [0; 17];
    let mut i = 0;
    while i < 17 {
        ns[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// One label set: a counter and a latency histogram.
pub struct RequestSeries {
    /// `name="value",…` for the workload and request labels, escaped for the text format.
    labels: String,
    total: AtomicU64,
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; 18],
    /// The sum of the observations in seconds, as `f64` bits: a sum of nanoseconds in a
    /// `u64` would wrap within a year on a busy proxy with long calls.
    sum: AtomicU64,
}

impl RequestSeries {
    /// A series with these label names and values.
    pub fn new<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut rendered = String::new();
        for (name, value) in labels {
            if !rendered.is_empty() {
                rendered.push(',');
            }
            let _ = write!(rendered, "{name}=\"{}\"", escape(value));
        }
        Self {
            labels: rendered,
            total: AtomicU64::new(0),
            buckets: Default::default(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn count(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, duration_ns: u64) {
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < duration_ns);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let seconds = duration_ns as f64 / 1e9;
        let _ = self.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
            Some((f64::from_bits(sum) + seconds).to_bits())
        });
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Latencies observed, in every bucket.
    #[cfg(test)]
    pub fn observations(&self) -> u64 {
        self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum()
    }
}

/// Writes both families, with every series of `series`, in the text exposition format.
pub fn encode<'a>(out: &mut String, series: impl Iterator<Item = &'a RequestSeries> + Clone) {
    let _ = writeln!(out, "# HELP {TOTAL} {TOTAL_HELP}\n# TYPE {TOTAL} counter");
    for s in series.clone() {
        let _ = writeln!(out, "{TOTAL}{{{}}} {}", s.labels, s.total.load(Ordering::Relaxed));
    }
    // A label set never timed (only expired, or ended without a start seen or with
    // request latency off) has a count but no latency: no histogram, and no family
    // without series.
    let mut timed = series.filter(|s| s.buckets.iter().any(|b| b.load(Ordering::Relaxed) > 0)).peekable();
    if timed.peek().is_some() {
        let _ = writeln!(out, "# HELP {DURATION} {DURATION_HELP}\n# TYPE {DURATION} histogram");
    }
    for s in timed {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&s.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{DURATION}_bucket{{{},le=\"{bound}\"}} {cumulative}", s.labels);
        }
        cumulative += s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let sum = f64::from_bits(s.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{DURATION}_bucket{{{},le=\"+Inf\"}} {cumulative}", s.labels);
        let _ = writeln!(out, "{DURATION}_sum{{{}}} {sum}", s.labels);
        let _ = writeln!(out, "{DURATION}_count{{{}}} {cumulative}", s.labels);
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counts_and_cumulative_buckets_that_prometheus_parses() {
        let series = RequestSeries::new([("pod", "p\"1\\\n"), ("tool", "echo")]);
        series.count();
        series.count();
        series.observe(500_000); // 0.5 ms: the first bucket
        series.observe(2_000_000_000); // 2 s: le=2.5
        series.observe(400_000_000_000); // above 300 s: only +Inf
        let untimed = RequestSeries::new([("status", "timeout")]);
        untimed.count();
        let mut text = String::new();
        encode(&mut text, [&series, &untimed].into_iter());
        assert!(text.contains("mcp_proxy_requests_total{status=\"timeout\"} 1\n"), "{text}");
        assert!(
            !text.contains("_bucket{status=\"timeout\""),
            "an untimed label set has no histogram: {text}"
        );
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let total = scrape.samples.iter().find(|s| s.metric == TOTAL).unwrap();
        assert!(matches!(total.value, prometheus_parse::Value::Counter(v) if v == 2.0), "{total:?}");
        assert_eq!(total.labels.get("tool"), Some("echo"));
        let histogram = scrape.samples.iter().find(|s| s.metric == DURATION).unwrap();
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else { panic!("{histogram:?}") };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
        assert_eq!((at(0.001), at(1.0), at(2.5), at(300.0), at(f64::INFINITY)), (1.0, 1.0, 2.0, 2.0, 3.0));
        assert!(text.contains("_sum{pod=\"p\\\"1\\\\\\n\",tool=\"echo\"} 402.0005\n"), "{text}");
        assert!(text.contains("_count{pod=\"p\\\"1\\\\\\n\",tool=\"echo\"} 3\n"), "{text}");
    }
}
