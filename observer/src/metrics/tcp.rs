//! The targets' TCP connections, from the kernel hooks: active, opened and closed by
//! direction, how long each lasted, the timeouts that ended them (keepalive or
//! retransmission), resets and retransmissions.

use observer_common::kind;
use prometheus::IntCounterVec;

use super::{ObserverMetrics, Scope, counter_vec, gauge_vec, histogram_vec, live::Live};
use crate::decode::{Direction, Stamp, TimeoutKind};

/// Connections live from a health check's milliseconds to a streaming client's day.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
    86400.0,
];

pub struct Tcp {
    /// Active connections and their durations, by direction.
    live: Live,
    opened: IntCounterVec,
    closed: IntCounterVec,
    timeouts: IntCounterVec,
    resets: IntCounterVec,
    retransmits: IntCounterVec,
}

impl Tcp {
    pub fn new(scope: &Scope) -> Self {
        let active = gauge_vec(
            scope,
            "mcp_proxy_tcp_connections_active",
            "TCP connections of the proxy's process tree open now: inbound (accepted on a port it listens on) or outbound",
            &["direction"],
        );
        let duration = histogram_vec(
            scope,
            "mcp_proxy_tcp_connection_duration_seconds",
            "How long a TCP connection lasted, from the end of its handshake to its close",
            &["direction"],
            DURATION_BUCKETS,
        );
        let tcp = Self {
            live: Live::new(active.clone(), duration, kind::TCP_CLOSE),
            opened: counter_vec(
                scope,
                "mcp_proxy_tcp_connections_opened_total",
                "TCP connections established",
                &["direction"],
            ),
            closed: counter_vec(
                scope,
                "mcp_proxy_tcp_connections_closed_total",
                "TCP connections closed",
                &["direction"],
            ),
            timeouts: counter_vec(
                scope,
                "mcp_proxy_tcp_timeouts_total",
                "TCP connections aborted by a timer: keepalive (the peer stopped answering probes) or retransmission (data or a SYN never acknowledged)",
                &["direction", "kind"],
            ),
            resets: counter_vec(
                scope,
                "mcp_proxy_tcp_resets_total",
                "TCP resets sent or received on the proxy's connections",
                &["direction"],
            ),
            retransmits: counter_vec(
                scope,
                "mcp_proxy_tcp_retransmits_total",
                "TCP segments retransmitted on the proxy's connections",
                &["direction"],
            ),
        };
        // Present from the start, so that a dashboard sees 0 rather than no data.
        for direction in Direction::ALL.iter().map(|direction| direction.label()) {
            active.with_label_values(&[direction]);
            for family in [&tcp.opened, &tcp.closed, &tcp.resets, &tcp.retransmits] {
                family.with_label_values(&[direction]);
            }
            for timer in TimeoutKind::ALL {
                tcp.timeouts.with_label_values(&[direction, timer.label()]);
            }
        }
        tcp
    }

    /// Socket `socket` opened; counted once however many times its open is reported.
    pub fn open(&self, at: Stamp, socket: u64, direction: Direction) {
        if self.live.open(at, socket, direction.label()) {
            self.opened.with_label_values(&[direction.label()]).inc();
        }
    }

    pub fn close(&self, at: Stamp, socket: u64, direction: Direction, observer: &ObserverMetrics) {
        self.closed.with_label_values(&[direction.label()]).inc();
        self.live.close(at, socket, observer);
    }

    pub fn timeout(&self, direction: Direction, timer: TimeoutKind) {
        self.timeouts.with_label_values(&[direction.label(), timer.label()]).inc();
    }

    pub fn reset(&self, direction: Direction) {
        self.resets.with_label_values(&[direction.label()]).inc();
    }

    pub fn retransmit(&self, direction: Direction) {
        self.retransmits.with_label_values(&[direction.label()]).inc();
    }

    pub fn forget(&self, tgid: u32) {
        self.live.forget(tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{at, observer, unmatched};

    #[test]
    fn connections_are_counted_once_by_direction_with_their_timeouts_resets_and_retransmits() {
        let (tcp, observer) = (Tcp::new(&Scope::detached()), observer());
        assert_eq!(tcp.timeouts.with_label_values(&["outbound", "keepalive"]).get(), 0, "present at 0");
        tcp.open(at(0), 0xa, Direction::Inbound);
        // Two CPUs reporting one handshake: one connection.
        tcp.open(at(0), 0xa, Direction::Inbound);
        tcp.open(at(0), 0xb, Direction::Outbound);
        assert_eq!(tcp.opened.with_label_values(&["inbound"]).get(), 1);
        assert_eq!(tcp.live.sample("inbound"), (1, 0, 0.0));
        tcp.timeout(Direction::Outbound, TimeoutKind::Keepalive);
        tcp.reset(Direction::Outbound);
        tcp.retransmit(Direction::Inbound);
        tcp.close(at(500_000_000), 0xb, Direction::Outbound, &observer);
        assert_eq!(tcp.timeouts.with_label_values(&["outbound", "keepalive"]).get(), 1);
        assert_eq!(tcp.timeouts.with_label_values(&["outbound", "retransmission"]).get(), 0);
        assert_eq!(tcp.resets.with_label_values(&["outbound"]).get(), 1);
        assert_eq!(tcp.retransmits.with_label_values(&["inbound"]).get(), 1);
        assert_eq!(tcp.closed.with_label_values(&["outbound"]).get(), 1);
        assert_eq!(tcp.live.sample("outbound"), (0, 1, 0.5));
        assert_eq!(unmatched(&observer, kind::TCP_CLOSE), 0);
        tcp.forget(10);
        assert_eq!(tcp.live.sample("inbound"), (0, 0, 0.0), "gone with its process");
    }
}
