//! Request counts, latency and what is still in flight, from `request_end` events and the
//! kernel's in-flight map.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

use observer_common::{FLAG_NO_START, InFlightKey, ProbeEvent, field, kind};
use prometheus::{Gauge, HistogramVec, IntCounterVec, IntGauge};

use super::{ObserverMetrics, Scope, counter_vec, gauge, histogram_vec, int_gauge};
use crate::events::{DecodeError, name, names};

/// Request latency buckets, 1 ms to 300 s (a slow tool call can take minutes).
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const LABELS: [&str; 6] = ["method", "transport", "status", "identity", "server", "tool"];
/// An expired request: nothing but its status is known (its labels come with its end).
const EXPIRED: [&str; 6] = ["", "", "timeout", "", "", ""];
/// Expired keys remembered, to recognise an end that comes after all.
const REMEMBERED: usize = 65_536;

pub struct Requests {
    total: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    oldest_in_flight: Gauge,
    expired: Mutex<Expired>,
}

/// The most recent requests the agent expired.
#[derive(Default)]
struct Expired {
    order: VecDeque<InFlightKey>,
    keys: HashSet<InFlightKey>,
}

impl Expired {
    /// Remembers `key`; false if it already was.
    fn remember(&mut self, key: InFlightKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > REMEMBERED {
            let oldest = self.order.pop_front().expect("non-empty");
            self.keys.remove(&oldest);
        }
        true
    }
}

impl Requests {
    pub fn new(scope: &Scope) -> Self {
        Self {
            total: counter_vec(
                scope,
                "mcp_proxy_requests_total",
                "MCP requests handled by the proxy",
                &LABELS,
            ),
            duration: histogram_vec(
                scope,
                "mcp_proxy_request_duration_seconds",
                "Request latency from the proxy's request_start to request_end probe, measured in the kernel",
                &LABELS,
                DURATION_BUCKETS,
            ),
            in_flight: int_gauge(
                scope,
                "mcp_proxy_requests_in_flight",
                "Requests started and not yet ended or expired",
            ),
            oldest_in_flight: gauge(
                scope,
                "mcp_proxy_request_oldest_in_flight_seconds",
                "Age of the oldest request in flight (0 when none), from the kernel's start times",
            ),
            expired: Mutex::default(),
        }
    }

    pub fn end(
        &self,
        ev: &ProbeEvent,
        label: impl Fn(usize) -> String,
        observer: &ObserverMetrics,
    ) -> Result<(), DecodeError> {
        let status = name(names::STATUS, "request status", ev.value)?;
        if ev.flags & FLAG_NO_START != 0 {
            let key = InFlightKey { tgid: ev.header.tgid, pad: 0, id: ev.id };
            if self.expired.lock().expect("expired lock").keys.remove(&key) {
                // Already counted as a timeout when it expired.
                observer.late_request_ends.inc();
                return Ok(());
            }
            observer.unmatched(kind::REQUEST_END);
        }
        let [method, transport, identity, server, tool] =
            [field::METHOD, field::TRANSPORT, field::IDENTITY, field::SERVER, field::TOOL].map(&label);
        let labels = [method.as_str(), &transport, status, &identity, &server, &tool];
        self.total.with_label_values(&labels).inc();
        if ev.flags & FLAG_NO_START == 0 {
            self.duration.with_label_values(&labels).observe(ev.duration_ns as f64 / 1e9);
        }
        Ok(())
    }

    /// Counts `key` as a timeout if `remove` takes it out of the kernel's map. The key is
    /// remembered first, so that an end racing the removal is recognised as late.
    pub fn expire(&self, key: InFlightKey, remove: impl FnOnce() -> bool) {
        let mut expired = self.expired.lock().expect("expired lock");
        let remembered = expired.remember(key);
        if remove() {
            self.total.with_label_values(&EXPIRED).inc();
        } else if remembered {
            // Its end won the race: not expired after all.
            expired.keys.remove(&key);
        }
    }

    /// From the kernel's in-flight map, read after the expired requests left it.
    pub fn set_in_flight(&self, count: u64, oldest_ns: u64) {
        self.in_flight.set(i64::try_from(count).unwrap_or(i64::MAX));
        self.oldest_in_flight.set(oldest_ns as f64 / 1e9);
    }
}
