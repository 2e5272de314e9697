//! What the families' unit tests share: typed events' parts, a label resolver without a
//! policy, and readings of the series.

use std::cell::Cell;

use observer_common::{ProbeEvent, kind};
use prometheus::HistogramVec;

use super::{ObserverMetrics, Scope, series_cache::Resolve};
use crate::decode::{Label, Stamp, Strings, tests::record};

/// The observer's own series, for families that count unmatched ends.
pub fn observer() -> ObserverMetrics {
    ObserverMetrics::new(&Scope::detached())
}

/// Ends of `kind` counted as unmatched.
pub fn unmatched(observer: &ObserverMetrics, kind: u32) -> u64 {
    observer.unmatched_ends.with_label_values(&[kind::NAMES[kind as usize]]).get()
}

/// Process 10 at `ts_ns`.
pub fn at(ts_ns: u64) -> Stamp {
    Stamp { tgid: 10, ts_ns }
}

/// Strings in their slots, as a record carries them (leaked: tests only).
pub fn strings(slots: &[(usize, &[u8])]) -> Strings<'static> {
    let record: &'static ProbeEvent = Box::leak(record(kind::REQUEST_END, 0, 0, slots));
    Strings::of(record)
}

/// The string of `slot`, as an event carries it.
pub fn label(slot: usize, bytes: &'static [u8]) -> Label<'static> {
    Label { slot, bytes, truncated: false }
}

/// (observations, sum) of one histogram series.
pub fn observed(histogram: &HistogramVec, labels: &[&str]) -> (u64, f64) {
    let series = histogram.with_label_values(labels);
    (series.get_sample_count(), series.get_sample_sum())
}

/// Label values as they come, without a policy; counts what it resolves and recounts.
#[derive(Default)]
pub struct Plain {
    pub resolved: Cell<usize>,
    pub recounted: Cell<usize>,
}

impl Resolve for Plain {
    fn resolve(&self, label: Label) -> (String, bool) {
        self.resolved.set(self.resolved.get() + 1);
        (String::from_utf8_lossy(label.bytes).into_owned(), false)
    }

    fn recount(&self, _: Label, _: bool) {
        self.recounted.set(self.recounted.get() + 1);
    }
}
