//! The proxy's caches: tool-cache entries per backend, classifier-cache hits and misses.

use std::{collections::HashMap, sync::Mutex};

use observer_common::field;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec};

use super::{
    Scope, counter_vec, gauge_value, gauge_vec,
    series_cache::{Resolve, SeriesCache},
};
use crate::{
    decode::{CacheOutcome, Label, Strings},
    spans::MAX_OPEN,
};

pub struct Caches {
    tool_cache_entries: IntGaugeVec,
    classifier_hits: IntCounterVec,
    classifier_misses: IntCounterVec,
    classifier_series: SeriesCache<IntCounter>,
    sizes: Mutex<HashMap<SizeKey, Size>>,
}

/// A cache is one server's in one process, by the server's own name: servers folded into
/// the same label value must add up, not overwrite each other.
type SizeKey = (u32, Vec<u8>);

/// The last size a cache reported, and the label it is exported under.
struct Size {
    label: String,
    entries: u64,
}

impl Caches {
    pub fn new(scope: &Scope) -> Self {
        Self {
            tool_cache_entries: gauge_vec(
                scope,
                "mcp_proxy_tool_cache_entries",
                "Tools in the proxy's tool cache, per backend",
                &["server"],
            ),
            classifier_hits: counter_vec(
                scope,
                "mcp_proxy_classifier_cache_hits_total",
                "Tool classifications answered from the classifier cache",
                &["server"],
            ),
            classifier_misses: counter_vec(
                scope,
                "mcp_proxy_classifier_cache_misses_total",
                "Tool classifications the classifier cache could not answer",
                &["server"],
            ),
            classifier_series: SeriesCache::new(),
            sizes: Mutex::default(),
        }
    }

    /// Process `tgid`'s tool cache of `server` (exported as `label`) holds `entries`.
    pub fn tool_cache_size(&self, tgid: u32, server: Label, label: String, entries: u64) {
        let mut sizes = self.sizes.lock().expect("cache sizes lock");
        let key = (tgid, server.bytes.to_vec());
        if sizes.len() >= MAX_OPEN && !sizes.contains_key(&key) {
            return;
        }
        sizes.insert(key, Size { label: label.clone(), entries });
        self.export(&sizes, &label);
    }

    fn export(&self, sizes: &HashMap<SizeKey, Size>, label: &str) {
        let entries = sizes.values().filter(|size| size.label == label).map(|size| size.entries);
        self.tool_cache_entries.with_label_values(&[label]).set(gauge_value(entries));
    }

    /// `labels`: the server.
    pub fn classifier_lookup(&self, outcome: CacheOutcome, labels: Strings, resolve: &dyn Resolve) {
        let counter = match outcome {
            CacheOutcome::Hit => &self.classifier_hits,
            CacheOutcome::Miss => &self.classifier_misses,
        };
        self.classifier_series.record(
            labels,
            [field::SERVER],
            outcome as u64,
            resolve,
            |[server]| counter.with_label_values(&[&server]),
            IntCounter::inc,
        );
    }

    pub fn forget(&self, tgid: u32) {
        let mut sizes = self.sizes.lock().expect("cache sizes lock");
        let mut labels: Vec<String> = Vec::new();
        sizes.retain(|(t, _), size| {
            let keep = *t != tgid;
            if !keep {
                labels.push(size.label.clone());
            }
            keep
        });
        for label in labels {
            self.export(&sizes, &label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{Plain, label, strings};

    #[test]
    fn tool_cache_sizes_are_the_last_reported_summed_under_a_shared_label() {
        let caches = Caches::new(&Scope::detached());
        let entries = |label| caches.tool_cache_entries.with_label_values(&[label]).get();
        caches.tool_cache_size(10, label(field::SERVER, b"alpha"), "alpha".into(), 5);
        caches.tool_cache_size(10, label(field::SERVER, b"alpha"), "alpha".into(), 7);
        assert_eq!(entries("alpha"), 7, "a size, not a sum of reports");
        // Two servers the label policy folded into one value add up.
        caches.tool_cache_size(10, label(field::SERVER, b"beta"), "__other__".into(), 2);
        caches.tool_cache_size(10, label(field::SERVER, b"gamma"), "__other__".into(), 3);
        caches.tool_cache_size(20, label(field::SERVER, b"alpha"), "alpha".into(), 1);
        assert_eq!((entries("alpha"), entries("__other__")), (8, 5));
        caches.forget(10);
        assert_eq!((entries("alpha"), entries("__other__")), (1, 0), "gone with its process");
    }

    #[test]
    fn classifier_lookups_are_hits_or_misses_by_server() {
        let (caches, resolve) = (Caches::new(&Scope::detached()), Plain::default());
        let alpha = strings(&[(field::SERVER, b"alpha")]);
        caches.classifier_lookup(CacheOutcome::Hit, alpha, &resolve);
        caches.classifier_lookup(CacheOutcome::Hit, alpha, &resolve);
        caches.classifier_lookup(CacheOutcome::Miss, alpha, &resolve);
        assert_eq!(caches.classifier_hits.with_label_values(&["alpha"]).get(), 2);
        assert_eq!(caches.classifier_misses.with_label_values(&["alpha"]).get(), 1);
        assert_eq!(resolve.resolved.get(), 2, "once per outcome: the outcome is part of the key");
    }
}
