//! Client sessions: active, opened, closed (by reason) and how long they lasted, from the
//! kernel timestamps of the open and close probes.

use observer_common::kind;
use prometheus::IntCounterVec;

use super::{LIFETIME_BUCKETS, ObserverMetrics, Scope, counter_vec, gauge_vec, histogram_vec, live::Live};
use crate::decode::{SessionCloseReason, Stamp};

pub struct Sessions {
    /// Active sessions and their durations, by transport.
    live: Live,
    opened: IntCounterVec,
    closed: IntCounterVec,
}

impl Sessions {
    pub fn new(scope: &Scope) -> Self {
        let active =
            gauge_vec(scope, "mcp_proxy_sessions_active", "Client sessions open now", &["transport"]);
        let duration = histogram_vec(
            scope,
            "mcp_proxy_session_duration_seconds",
            "How long a client session lasted, between the kernel timestamps of open and close",
            &["transport"],
            LIFETIME_BUCKETS,
        );
        Self {
            live: Live::new(active, duration, kind::SESSION_CLOSE),
            opened: counter_vec(
                scope,
                "mcp_proxy_sessions_opened_total",
                "Client sessions opened",
                &["transport"],
            ),
            closed: counter_vec(
                scope,
                "mcp_proxy_sessions_closed_total",
                "Client sessions closed: client_closed, expired, shutdown or error",
                &["transport", "reason"],
            ),
        }
    }

    pub fn open(&self, at: Stamp, session: u64, transport: &str) {
        self.opened.with_label_values(&[transport]).inc();
        self.live.open(at, session, transport);
    }

    pub fn close(
        &self,
        at: Stamp,
        session: u64,
        reason: SessionCloseReason,
        transport: &str,
        observer: &ObserverMetrics,
    ) {
        self.live.close(at, session, observer);
        self.closed.with_label_values(&[transport, reason.label()]).inc();
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
    fn sessions_open_close_by_reason_and_last_between_their_kernel_times() {
        let (sessions, observer) = (Sessions::new(&Scope::detached()), observer());
        sessions.open(at(0), 1, "sse");
        sessions.open(at(1_000_000_000), 2, "sse");
        sessions.open(at(2_000_000_000), 3, "stdio");
        assert_eq!(sessions.live.sample("sse"), (2, 0, 0.0));
        sessions.close(at(4_000_000_000), 1, SessionCloseReason::ClientClosed, "sse", &observer);
        sessions.close(at(4_000_000_000), 3, SessionCloseReason::Expired, "stdio", &observer);
        assert_eq!(sessions.opened.with_label_values(&["sse"]).get(), 2);
        assert_eq!(sessions.closed.with_label_values(&["sse", "client_closed"]).get(), 1);
        assert_eq!(sessions.closed.with_label_values(&["stdio", "expired"]).get(), 1);
        assert_eq!(sessions.live.sample("sse"), (1, 1, 4.0));
        assert_eq!(sessions.live.sample("stdio"), (0, 1, 2.0));
        sessions.close(at(5_000_000_000), 9, SessionCloseReason::Error, "sse", &observer);
        assert_eq!(unmatched(&observer, kind::SESSION_CLOSE), 1);
        sessions.forget(10);
        assert_eq!(sessions.live.sample("sse"), (0, 1, 4.0), "gone with its process");
    }
}
