//! The backend pool: configured and connected backends, connects and their duration,
//! disconnects and connection lifetimes, and idle-reaper passes.

use std::{collections::HashMap, sync::Mutex};

use observer_common::kind;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::{
    LIFETIME_BUCKETS, ObserverMetrics, Scope, counter_vec, gauge_value, gauge_vec, histogram_vec,
    int_counter, int_gauge, live::Live,
};
use crate::{
    decode::{ConnectKind, ConnectResult, DisconnectReason, Stamp},
    spans::Spans,
};

/// Connecting a backend (spawning a child, an MCP handshake): 1 ms to 60 s.
const CONNECT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub struct Pool {
    configured: IntGauge,
    /// Backends configured, per proxy process: the gauge is their sum.
    configured_by_process: Mutex<HashMap<u32, u64>>,
    connecting: Mutex<Spans<()>>,
    /// Connections open and their lifetimes, by server.
    connections: Live,
    connects: IntCounterVec,
    connect_duration: HistogramVec,
    disconnects: IntCounterVec,
    pub reaper_runs: IntCounter,
}

impl Pool {
    pub fn new(scope: &Scope) -> Self {
        let connected =
            gauge_vec(scope, "mcp_proxy_backends_connected", "Backend connections open now", &["server"]);
        let lifetime = histogram_vec(
            scope,
            "mcp_proxy_backend_connection_lifetime_seconds",
            "How long a backend connection lived, between the kernel timestamps of connect and disconnect",
            &["server"],
            LIFETIME_BUCKETS,
        );
        Self {
            configured: int_gauge(
                scope,
                "mcp_proxy_backends_configured",
                "Backends in the proxy's configuration",
            ),
            configured_by_process: Mutex::default(),
            connecting: Mutex::default(),
            connections: Live::new(connected, lifetime, kind::BACKEND_DISCONNECT),
            connects: counter_vec(
                scope,
                "mcp_proxy_backend_connects_total",
                "Backend connection attempts: initial or lazy (on demand, after a disconnect), ok or error",
                &["server", "kind", "result"],
            ),
            connect_duration: histogram_vec(
                scope,
                "mcp_proxy_backend_connect_duration_seconds",
                "Time to connect a backend, between the kernel timestamps of connect start and end",
                &["server"],
                CONNECT_BUCKETS,
            ),
            disconnects: counter_vec(
                scope,
                "mcp_proxy_backend_disconnects_total",
                "Backend connections closed: idle_reaped, error or shutdown",
                &["server", "reason"],
            ),
            reaper_runs: int_counter(
                scope,
                "mcp_proxy_idle_reaper_runs_total",
                "Passes of the proxy's idle-backend reaper",
            ),
        }
    }

    /// Process `tgid` has `count` backends configured.
    pub fn configured(&self, tgid: u32, count: u64) {
        let mut by_process = self.configured_by_process.lock().expect("configured lock");
        by_process.insert(tgid, count);
        self.configured.set(gauge_value(by_process.values().copied()));
    }

    pub fn connect_start(&self, at: Stamp, conn: u64) {
        self.connecting().open(at.tgid, conn, (), at.ts_ns);
    }

    fn connecting(&self) -> std::sync::MutexGuard<'_, Spans<()>> {
        self.connecting.lock().expect("connecting lock")
    }

    pub fn connect_end(
        &self,
        at: Stamp,
        conn: u64,
        (connect_kind, result): (ConnectKind, ConnectResult),
        server: &str,
        observer: &ObserverMetrics,
    ) {
        match self.connecting().close(at.tgid, conn, at.ts_ns) {
            Some(((), seconds)) => self.connect_duration.with_label_values(&[server]).observe(seconds),
            None => observer.unmatched(kind::BACKEND_CONNECT_END),
        }
        self.zero_series(server);
        self.connects.with_label_values(&[server, connect_kind.label(), result.label()]).inc();
        if result == ConnectResult::Ok {
            self.connections.open(at, conn, server);
        }
    }

    /// Creates a backend's connect and disconnect series at 0 at its first connect: a
    /// series born at 1 shows no increase to Prometheus, so `rate()` and `increase()` would
    /// miss the backend's first reap or failure after it (and the alerts built on them).
    /// A first connect that fails is still born at 1.
    fn zero_series(&self, server: &str) {
        for connect_kind in ConnectKind::ALL {
            for result in ConnectResult::ALL {
                self.connects.with_label_values(&[server, connect_kind.label(), result.label()]);
            }
        }
        for reason in DisconnectReason::ALL {
            self.disconnects.with_label_values(&[server, reason.label()]);
        }
    }

    pub fn disconnect(
        &self,
        at: Stamp,
        conn: u64,
        reason: DisconnectReason,
        server: &str,
        observer: &ObserverMetrics,
    ) {
        self.connections.close(at, conn, observer);
        self.disconnects.with_label_values(&[server, reason.label()]).inc();
    }

    pub fn forget(&self, tgid: u32) {
        self.connecting().forget(tgid);
        self.connections.forget(tgid);
        let mut by_process = self.configured_by_process.lock().expect("configured lock");
        by_process.remove(&tgid);
        self.configured.set(gauge_value(by_process.values().copied()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{at, observed, observer, unmatched};

    const MS: u64 = 1_000_000;

    #[test]
    fn a_connect_is_timed_and_its_connection_lives_until_its_disconnect() {
        let (pool, observer) = (Pool::new(&Scope::detached()), observer());
        pool.connect_start(at(0), 1);
        pool.connect_end(at(20 * MS), 1, (ConnectKind::Initial, ConnectResult::Ok), "alpha", &observer);
        assert_eq!(observed(&pool.connect_duration, &["alpha"]), (1, 0.02));
        assert_eq!(pool.connects.with_label_values(&["alpha", "initial", "ok"]).get(), 1);
        assert_eq!(pool.connects.with_label_values(&["alpha", "lazy", "error"]).get(), 0, "created at 0");
        assert_eq!(pool.connections.sample("alpha"), (1, 0, 0.0));
        pool.disconnect(at(3000 * MS), 1, DisconnectReason::IdleReaped, "alpha", &observer);
        assert_eq!(pool.connections.sample("alpha"), (0, 1, 2.98));
        assert_eq!(pool.disconnects.with_label_values(&["alpha", "idle_reaped"]).get(), 1);
        assert_eq!(unmatched(&observer, kind::BACKEND_CONNECT_END), 0);
        assert_eq!(unmatched(&observer, kind::BACKEND_DISCONNECT), 0);
    }

    #[test]
    fn a_failed_connect_opens_nothing_and_ends_without_a_start_are_unmatched() {
        let (pool, observer) = (Pool::new(&Scope::detached()), observer());
        pool.connect_end(at(5), 2, (ConnectKind::Lazy, ConnectResult::Error), "beta", &observer);
        assert_eq!(pool.connects.with_label_values(&["beta", "lazy", "error"]).get(), 1);
        assert_eq!(pool.connections.sample("beta"), (0, 0, 0.0));
        assert_eq!(unmatched(&observer, kind::BACKEND_CONNECT_END), 1, "no connect start");
        pool.disconnect(at(6), 3, DisconnectReason::Error, "beta", &observer);
        assert_eq!(unmatched(&observer, kind::BACKEND_DISCONNECT), 1);
        assert_eq!(pool.connections.sample("beta"), (0, 0, 0.0), "never below zero");
    }

    #[test]
    fn configured_backends_add_up_over_processes_and_leave_with_theirs() {
        let pool = Pool::new(&Scope::detached());
        pool.configured(10, 3);
        pool.configured(20, 2);
        pool.configured(10, 4);
        assert_eq!(pool.configured.get(), 6);
        let observer = observer();
        pool.connect_start(at(0), 1);
        pool.connect_end(at(1), 1, (ConnectKind::Initial, ConnectResult::Ok), "alpha", &observer);
        pool.forget(10);
        assert_eq!(pool.configured.get(), 2);
        assert_eq!(pool.connections.sample("alpha"), (0, 0, 0.0), "gone with its process");
    }
}
