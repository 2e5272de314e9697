//! The proxy's caches: tool-cache entries per backend, classifier-cache hits and misses.

use std::{collections::HashMap, sync::Mutex};

use observer_common::ProbeEvent;
use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::{counter_vec, gauge_vec};
use crate::events::{DecodeError, name, names};

pub struct Caches {
    tool_cache_entries: IntGaugeVec,
    classifier_hits: IntCounterVec,
    classifier_misses: IntCounterVec,
    /// The last size reported per (process, server): the gauge sums over processes.
    sizes: Mutex<HashMap<(u32, String), u64>>,
}

impl Caches {
    pub fn new(registry: &Registry) -> Self {
        Self {
            tool_cache_entries: gauge_vec(
                registry,
                "mcp_proxy_tool_cache_entries",
                "Tools in the proxy's tool cache, per backend",
                &["server"],
            ),
            classifier_hits: counter_vec(
                registry,
                "mcp_proxy_classifier_cache_hits_total",
                "Tool classifications answered from the classifier cache",
                &["server"],
            ),
            classifier_misses: counter_vec(
                registry,
                "mcp_proxy_classifier_cache_misses_total",
                "Tool classifications the classifier cache could not answer",
                &["server"],
            ),
            sizes: Mutex::default(),
        }
    }

    pub fn tool_cache_size(&self, ev: &ProbeEvent, server: String) {
        let mut sizes = self.sizes.lock().expect("cache sizes lock");
        sizes.insert((ev.header.tgid, server.clone()), ev.value);
        self.set_size(&sizes, &server);
    }

    fn set_size(&self, sizes: &HashMap<(u32, String), u64>, server: &str) {
        let total: u64 = sizes.iter().filter(|((_, s), _)| s == server).map(|(_, n)| n).sum();
        self.tool_cache_entries.with_label_values(&[server]).set(total as i64);
    }

    pub fn classifier_lookup(&self, ev: &ProbeEvent, server: String) -> Result<(), DecodeError> {
        match name(names::CACHE_OUTCOME, "classifier cache outcome", ev.value & u64::from(u32::MAX))? {
            "hit" => self.classifier_hits.with_label_values(&[server]).inc(),
            _ => self.classifier_misses.with_label_values(&[server]).inc(),
        }
        Ok(())
    }

    pub fn forget(&self, tgid: u32) {
        let mut sizes = self.sizes.lock().expect("cache sizes lock");
        let servers: Vec<String> = sizes.keys().filter(|(t, _)| *t == tgid).map(|(_, s)| s.clone()).collect();
        for server in servers {
            sizes.remove(&(tgid, server.clone()));
            self.set_size(&sizes, &server);
        }
    }
}
