//! Things open now (backend connections, client sessions), paired by (process, id): a
//! gauge of how many are open per label, and a histogram of how long each one lasted.
//! Kept from the paired events, so every scrape sees a consistent value, never a zero
//! because a lock was busy, as in-process gauges read with try_lock.

use std::sync::Mutex;

use prometheus::{HistogramVec, IntGaugeVec};

use super::ObserverMetrics;
use crate::{decode::Stamp, spans::Spans};

pub struct Live {
    open: Mutex<Spans<String>>,
    count: IntGaugeVec,
    duration: HistogramVec,
    /// The event kind that closes: a close without its open is counted under it.
    close_kind: u32,
}

impl Live {
    pub fn new(count: IntGaugeVec, duration: HistogramVec, close_kind: u32) -> Self {
        Self { open: Mutex::default(), count, duration, close_kind }
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Spans<String>> {
        self.open.lock().expect("open spans lock")
    }

    /// `id` opened, under `label`; false if it was already open (or closed: its open
    /// came twice).
    pub fn open(&self, at: Stamp, id: u64, label: &str) -> bool {
        let opened = self.spans().open(at.tgid, id, label.to_string(), at.ts_ns);
        if opened {
            self.count.with_label_values(&[label]).inc();
        }
        opened
    }

    /// `id` closed: its duration goes under the label it opened with.
    pub fn close(&self, at: Stamp, id: u64, observer: &ObserverMetrics) {
        match self.spans().close(at.tgid, id, at.ts_ns) {
            Some((label, seconds)) => {
                self.count.with_label_values(&[&label]).dec();
                self.duration.with_label_values(&[&label]).observe(seconds);
            }
            None => observer.unmatched(self.close_kind),
        }
    }

    /// Process `tgid` exited: what it held open is gone with it.
    pub fn forget(&self, tgid: u32) {
        for label in self.spans().forget(tgid) {
            self.count.with_label_values(&[&label]).dec();
        }
    }

    /// (open now, lifetimes observed, their sum in seconds) under `label`.
    #[cfg(test)]
    pub fn sample(&self, label: &str) -> (i64, u64, f64) {
        let duration = self.duration.with_label_values(&[label]);
        (self.count.with_label_values(&[label]).get(), duration.get_sample_count(), duration.get_sample_sum())
    }
}
