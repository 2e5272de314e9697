//! Client sessions: active, opened, closed (by reason) and how long they lasted, from the
//! kernel timestamps of the open and close probes.

use std::sync::Mutex;

use observer_common::{ProbeEvent, field, kind};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};

use super::{LIFETIME_BUCKETS, ObserverMetrics, counter_vec, gauge_vec, histogram_vec, pool::unmatched};
use crate::{
    events::{DecodeError, name, names},
    spans::Spans,
};

pub struct Sessions {
    active: IntGaugeVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    duration: HistogramVec,
    open: Mutex<Spans<String>>,
}

impl Sessions {
    pub fn new(registry: &Registry) -> Self {
        Self {
            active: gauge_vec(
                registry,
                "mcp_proxy_sessions_active",
                "Client sessions open now",
                &["transport"],
            ),
            opened: counter_vec(
                registry,
                "mcp_proxy_sessions_opened_total",
                "Client sessions opened",
                &["transport"],
            ),
            closed: counter_vec(
                registry,
                "mcp_proxy_sessions_closed_total",
                "Client sessions closed: client_closed, expired, shutdown or error",
                &["transport", "reason"],
            ),
            duration: histogram_vec(
                registry,
                "mcp_proxy_session_duration_seconds",
                "How long a client session lasted, between the kernel timestamps of open and close",
                &["transport"],
                LIFETIME_BUCKETS,
            ),
            open: Mutex::default(),
        }
    }

    pub fn open(&self, ev: &ProbeEvent, transport: String) {
        self.opened.with_label_values(&[&transport]).inc();
        let tracked = self.open.lock().expect("sessions lock").open(
            ev.header.tgid,
            ev.id,
            transport.clone(),
            ev.header.ts_ns,
        );
        if tracked {
            self.active.with_label_values(&[&transport]).inc();
        }
    }

    pub fn close(
        &self,
        ev: &ProbeEvent,
        label: impl Fn(usize) -> String,
        observer: &ObserverMetrics,
    ) -> Result<(), DecodeError> {
        let reason =
            name(names::SESSION_CLOSE_REASON, "session close reason", ev.value & u64::from(u32::MAX))?;
        let transport = label(field::TRANSPORT);
        match self.open.lock().expect("sessions lock").close(ev.header.tgid, ev.id, ev.header.ts_ns) {
            Some((opened_on, seconds)) => {
                self.active.with_label_values(&[&opened_on]).dec();
                self.duration.with_label_values(&[&opened_on]).observe(seconds);
            }
            None => unmatched(observer, kind::SESSION_CLOSE),
        }
        self.closed.with_label_values(&[transport.as_str(), reason]).inc();
        Ok(())
    }

    pub fn forget(&self, tgid: u32) {
        for transport in self.open.lock().expect("sessions lock").forget(tgid) {
            self.active.with_label_values(&[&transport]).dec();
        }
    }
}
