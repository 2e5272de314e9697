//! The proxy's caches: tool-cache entries per backend, classifier-cache hits and misses.

use std::{collections::HashMap, sync::Mutex};

use observer_common::{ProbeEvent, field, low};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec};

use super::{
    Scope, counter_vec, gauge_value, gauge_vec,
    series_cache::{Resolve, SeriesCache},
};
use crate::{
    decode::{DecodeError, name, names, string},
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

    pub fn tool_cache_size(&self, ev: &ProbeEvent, label: String) {
        let mut sizes = self.sizes.lock().expect("cache sizes lock");
        let key = (ev.header.tgid, string(ev, field::SERVER).to_vec());
        if sizes.len() >= MAX_OPEN && !sizes.contains_key(&key) {
            return;
        }
        sizes.insert(key, Size { label: label.clone(), entries: ev.value });
        self.export(&sizes, &label);
    }

    fn export(&self, sizes: &HashMap<SizeKey, Size>, label: &str) {
        let entries = sizes.values().filter(|size| size.label == label).map(|size| size.entries);
        self.tool_cache_entries.with_label_values(&[label]).set(gauge_value(entries));
    }

    pub fn classifier_lookup(&self, ev: &ProbeEvent, labels: &dyn Resolve) -> Result<(), DecodeError> {
        let outcome = name(names::CACHE_OUTCOME, "classifier cache outcome", low(ev.value))?;
        let counter = if outcome == "hit" { &self.classifier_hits } else { &self.classifier_misses };
        self.classifier_series.record(
            ev,
            [field::SERVER],
            u64::from(low(ev.value)),
            labels,
            |[server]| counter.with_label_values(&[&server]),
            IntCounter::inc,
        );
        Ok(())
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
