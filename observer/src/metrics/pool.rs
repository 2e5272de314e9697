//! The backend pool: configured and connected backends, connects and their duration,
//! disconnects and connection lifetimes, idle-reaper passes and child spawns.
//! Connected counts are kept from the paired events, so every scrape sees a consistent
//! value (never a zero because a lock was busy, as in-process gauges read with try_lock).

use std::{collections::HashMap, sync::Mutex};

use observer_common::{ProbeEvent, field, kind};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{
    LIFETIME_BUCKETS, ObserverMetrics, counter_vec, gauge_value, gauge_vec, histogram_vec, register,
};
use crate::{
    events::{DecodeError, name, names},
    spans::Spans,
};

/// Connecting a backend (spawning a child, an MCP handshake): 1 ms to 60 s.
const CONNECT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub struct Pool {
    configured: IntGauge,
    connected: IntGaugeVec,
    connects: IntCounterVec,
    connect_duration: HistogramVec,
    disconnects: IntCounterVec,
    lifetime: HistogramVec,
    pub reaper_runs: IntCounter,
    pub child_spawns: IntCounterVec,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Backends configured, per proxy process.
    configured: HashMap<u32, u64>,
    connecting: Spans<()>,
    /// Live connections, labelled with their server.
    connections: Spans<String>,
}

impl Pool {
    pub fn new(registry: &Registry) -> Self {
        Self {
            configured: register(
                registry,
                IntGauge::new("mcp_proxy_backends_configured", "Backends in the proxies' configuration")
                    .expect("valid metric"),
            ),
            connected: gauge_vec(
                registry,
                "mcp_proxy_backends_connected",
                "Backend connections open now",
                &["server"],
            ),
            connects: counter_vec(
                registry,
                "mcp_proxy_backend_connects_total",
                "Backend connection attempts: initial or lazy (on demand, after a disconnect), ok or error",
                &["server", "kind", "result"],
            ),
            connect_duration: histogram_vec(
                registry,
                "mcp_proxy_backend_connect_duration_seconds",
                "Time to connect a backend, between the kernel timestamps of connect start and end",
                &["server"],
                CONNECT_BUCKETS,
            ),
            disconnects: counter_vec(
                registry,
                "mcp_proxy_backend_disconnects_total",
                "Backend connections closed: idle_reaped, error or shutdown",
                &["server", "reason"],
            ),
            lifetime: histogram_vec(
                registry,
                "mcp_proxy_backend_connection_lifetime_seconds",
                "How long a backend connection lived, between the kernel timestamps of connect and disconnect",
                &["server"],
                LIFETIME_BUCKETS,
            ),
            reaper_runs: register(
                registry,
                IntCounter::new(
                    "mcp_proxy_idle_reaper_runs_total",
                    "Passes of the proxy's idle-backend reaper",
                )
                .expect("valid metric"),
            ),
            child_spawns: counter_vec(
                registry,
                "mcp_proxy_child_spawns_total",
                "Child processes spawned for stdio backends, as the proxy reports them",
                &["server"],
            ),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("pool state lock")
    }

    pub fn configured(&self, ev: &ProbeEvent) {
        let mut state = self.state();
        state.configured.insert(ev.header.tgid, ev.value);
        self.configured.set(gauge_value(state.configured.values().copied()));
    }

    pub fn connect_start(&self, ev: &ProbeEvent) {
        self.state().connecting.open(ev.header.tgid, ev.id, (), ev.header.ts_ns);
    }

    pub fn connect_end(
        &self,
        ev: &ProbeEvent,
        label: impl Fn(usize) -> String,
        observer: &ObserverMetrics,
    ) -> Result<(), DecodeError> {
        let connect_kind = name(names::CONNECT_KIND, "connect kind", ev.value & u64::from(u32::MAX))?;
        let result = name(names::CONNECT_RESULT, "connect result", ev.value >> 32)?;
        let server = label(field::SERVER);
        let (tgid, ts) = (ev.header.tgid, ev.header.ts_ns);
        let mut state = self.state();
        match state.connecting.close(tgid, ev.id, ts) {
            Some(((), seconds)) => self.connect_duration.with_label_values(&[&server]).observe(seconds),
            None => unmatched(observer, kind::BACKEND_CONNECT_END),
        }
        self.connects.with_label_values(&[server.as_str(), connect_kind, result]).inc();
        if result == "ok" && state.connections.open(tgid, ev.id, server.clone(), ts) {
            self.connected.with_label_values(&[&server]).inc();
        }
        Ok(())
    }

    pub fn disconnect(
        &self,
        ev: &ProbeEvent,
        label: impl Fn(usize) -> String,
        observer: &ObserverMetrics,
    ) -> Result<(), DecodeError> {
        let reason = name(names::DISCONNECT_REASON, "disconnect reason", ev.value & u64::from(u32::MAX))?;
        let server = label(field::SERVER);
        match self.state().connections.close(ev.header.tgid, ev.id, ev.header.ts_ns) {
            Some((connected, seconds)) => {
                self.connected.with_label_values(&[&connected]).dec();
                self.lifetime.with_label_values(&[&connected]).observe(seconds);
            }
            None => unmatched(observer, kind::BACKEND_DISCONNECT),
        }
        self.disconnects.with_label_values(&[server.as_str(), reason]).inc();
        Ok(())
    }

    pub fn forget(&self, tgid: u32) {
        let mut state = self.state();
        state.connecting.forget(tgid);
        for server in state.connections.forget(tgid) {
            self.connected.with_label_values(&[&server]).dec();
        }
        state.configured.remove(&tgid);
        self.configured.set(gauge_value(state.configured.values().copied()));
    }
}

pub fn unmatched(observer: &ObserverMetrics, kind: u32) {
    observer.unmatched_ends.with_label_values(&[kind::NAMES[kind as usize]]).inc();
}
