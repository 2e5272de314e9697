//! The observer's own health: events received and lost, attachment, decoding, labels,
//! and the defects of the observed proxy that it counts instead of trusting.

use observer_common::{counter, kind};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{Scope, counter_vec, gauge_vec, int_counter, int_gauge};
use crate::hooks::Plan;

/// The kernel counters of maps that were full, with their `map` label.
pub const FULL_MAPS: [(u32, &str); 2] =
    [(counter::TRACKED_FULL, "tracked"), (counter::SOCKETS_FULL, "sockets")];

pub struct ObserverMetrics {
    /// `events` of each kind, at index kind - 1: resolved once, counted per event.
    received: Vec<IntCounter>,
    pub events_lost: IntCounterVec,
    pub probes_attached: IntGauge,
    pub binaries_attached: IntGauge,
    pub targets: IntGauge,
    pub orphan_events: IntCounter,
    pub decode_errors: IntCounter,
    pub label_overflow: IntCounterVec,
    pub label_truncated: IntCounterVec,
    pub bad_user_pointers: IntCounter,
    pub in_flight_full: IntCounter,
    pub duplicate_starts: IntCounter,
    pub map_full: IntCounterVec,
    pub hooks_attached: IntGauge,
    pub hook_available: IntGaugeVec,
    pub unmatched_ends: IntCounterVec,
    pub late_request_ends: IntCounter,
}

impl ObserverMetrics {
    /// One event of kind `kind` (a valid kind: decoding checked it) was received.
    pub fn received(&self, kind: u32) {
        self.received[kind as usize - 1].inc();
    }

    /// An end of kind `kind` whose start was not seen.
    pub fn unmatched(&self, kind: u32) {
        self.unmatched_ends.with_label_values(&[kind::NAMES[kind as usize]]).inc();
    }

    /// Which kernel hooks `plan` attached, and how.
    pub fn hooks_available(&self, plan: &Plan) {
        for (hook, via) in &plan.hooks {
            let available = *via == crate::hooks::Via::Tracepoint;
            self.hook_available.with_label_values(&[&hook.tracepoint()]).set(i64::from(available));
        }
        self.hooks_attached.set(plan.attached().count() as i64);
    }

    pub fn new(scope: &Scope) -> Self {
        let int_counter = |name: &str, help: &str| int_counter(scope, name, help);
        let int_gauge = |name: &str, help: &str| int_gauge(scope, name, help);
        let events =
            counter_vec(scope, "mcp_observer_events_total", "Events received from the kernel", &["kind"]);
        let metrics = Self {
            received: kind::NAMES[1..].iter().map(|name| events.with_label_values(&[name])).collect(),
            events_lost: counter_vec(
                scope,
                "mcp_observer_events_lost_total",
                "Events dropped in the kernel because the ring buffer was full",
                &["kind"],
            ),
            probes_attached: int_gauge(
                "mcp_observer_probes_attached",
                "Uprobes attached: probe functions, per executable file of the targets",
            ),
            binaries_attached: int_gauge(
                "mcp_observer_binaries_attached",
                "Executable files with attached uprobes (each shared by every target that runs it)",
            ),
            targets: int_gauge("mcp_observer_targets", "Observed proxy processes still running"),
            orphan_events: int_counter(
                "mcp_observer_orphan_events_total",
                "Events of a process that was no longer a target when they were read (not counted in any series)",
            ),
            decode_errors: int_counter(
                "mcp_observer_decode_errors_total",
                "Ring-buffer records or probe arguments that could not be decoded",
            ),
            label_overflow: counter_vec(
                scope,
                "mcp_observer_label_overflow_total",
                "Label values folded into __other__ by a per-label cap or the tool allowlist",
                &["label"],
            ),
            label_truncated: counter_vec(
                scope,
                "mcp_observer_label_truncated_total",
                "Label values cut at their byte bound in the kernel",
                &["label"],
            ),
            bad_user_pointers: int_counter(
                "mcp_observer_bad_user_pointers_total",
                "Probe arguments pointing to memory the kernel could not read",
            ),
            in_flight_full: int_counter(
                "mcp_observer_in_flight_full_total",
                "Request starts not recorded because the in-flight map was full",
            ),
            duplicate_starts: int_counter(
                "mcp_observer_duplicate_request_starts_total",
                "Request starts reusing the id of a request still in flight (the first start is kept)",
            ),
            map_full: counter_vec(
                scope,
                "mcp_observer_map_full_total",
                "Processes (tracked) or connections (sockets) of the targets the kernel could not track: its map was full",
                &["map"],
            ),
            hooks_attached: int_gauge(
                "mcp_observer_kernel_hooks_attached",
                "Kernel hooks (tracepoints on sockets and processes) attached",
            ),
            hook_available: gauge_vec(
                scope,
                "mcp_observer_kernel_hook_available",
                "1 when the kernel hook is attached, 0 when this kernel lacks its tracepoint or the fields its program reads",
                &["hook"],
            ),
            unmatched_ends: counter_vec(
                scope,
                "mcp_observer_unmatched_ends_total",
                "Ends (request end, connect end, disconnect, session close) whose start was not seen: counted, without a duration",
                &["kind"],
            ),
            late_request_ends: int_counter(
                "mcp_observer_late_request_ends_total",
                "Request ends that arrived after the agent had expired the request as a timeout (not counted twice)",
            ),
        };
        // Present from the start, so that a dashboard sees 0 rather than no data.
        for name in &kind::NAMES[1..] {
            metrics.events_lost.with_label_values(&[name]);
        }
        for (_, map) in FULL_MAPS {
            metrics.map_full.with_label_values(&[map]);
        }
        metrics
    }
}
