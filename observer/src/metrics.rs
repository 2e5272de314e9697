//! The Prometheus series: request metrics from ring-buffer events, the observer's own
//! health, and the kernel's per-CPU counters folded in at scrape time.

use std::sync::Mutex;

use observer_common::{
    counter,
    request::{self, RequestEndEvent},
};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::{
    events::{DecodeError, Event, status_label},
    labels::{CappedLabel, escape_utf8},
};

/// Request latency buckets, 1 ms to 300 s (a slow tool call can take minutes).
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const REQUEST_LABELS: [&str; 6] = ["method", "transport", "status", "identity", "server", "tool"];

/// Caps on distinct values per client-controlled label.
#[derive(Clone, Copy, Debug)]
pub struct LabelLimits {
    pub max_values: usize,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    events: IntCounterVec,
    events_lost: IntCounterVec,
    pub probes_attached: IntGauge,
    pub targets: IntGauge,
    decode_errors: IntCounter,
    label_overflow: IntCounterVec,
    label_truncated: IntCounterVec,
    bad_user_pointers: IntCounter,
    in_flight_full: IntCounter,
    duplicate_starts: IntCounter,
    unmatched_ends: IntCounter,
    /// One cap per string label of a request, in `fields` order (see record_request_end).
    caps: Mutex<[CappedLabel; 5]>,
    /// Kernel counter totals already folded into the series above.
    kernel_seen: Mutex<[u64; counter::COUNT as usize]>,
}

impl Metrics {
    pub fn new(limits: LabelLimits) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("mcp_proxy_requests_total", "MCP requests handled by the proxy"),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mcp_proxy_request_duration_seconds",
                "Request latency from the proxy's request_start to request_end probe, measured in the kernel",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("mcp_proxy_requests_in_flight", "Requests started and not yet ended")
            .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new("mcp_observer_events_total", "Events received from the kernel"),
            &["kind"],
        )
        .expect("valid metric");
        let events_lost = IntCounterVec::new(
            Opts::new(
                "mcp_observer_events_lost_total",
                "Events dropped in the kernel because the ring buffer was full",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let probes_attached =
            IntGauge::new("mcp_observer_probes_attached", "Probe functions with an attached uprobe")
                .expect("valid metric");
        let targets = IntGauge::new("mcp_observer_targets", "Observed proxy processes still running")
            .expect("valid metric");
        let decode_errors = IntCounter::new(
            "mcp_observer_decode_errors_total",
            "Ring-buffer records that could not be decoded",
        )
        .expect("valid metric");
        let label_overflow = IntCounterVec::new(
            Opts::new(
                "mcp_observer_label_overflow_total",
                "Label values folded into __other__ by the per-label cap",
            ),
            &["label"],
        )
        .expect("valid metric");
        let label_truncated = IntCounterVec::new(
            Opts::new(
                "mcp_observer_label_truncated_total",
                "Label values cut at their byte bound in the kernel",
            ),
            &["label"],
        )
        .expect("valid metric");
        let bad_user_pointers = IntCounter::new(
            "mcp_observer_bad_user_pointers_total",
            "Probe arguments pointing to memory the kernel could not read",
        )
        .expect("valid metric");
        let in_flight_full = IntCounter::new(
            "mcp_observer_in_flight_full_total",
            "Request starts not recorded because the in-flight map was full",
        )
        .expect("valid metric");
        let duplicate_starts = IntCounter::new(
            "mcp_observer_duplicate_request_starts_total",
            "Request starts reusing the id of a request still in flight (the first start is kept)",
        )
        .expect("valid metric");
        let unmatched_ends = IntCounter::new(
            "mcp_observer_unmatched_request_ends_total",
            "Request ends without a recorded start (counted, but no latency observed)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(events.clone()),
            Box::new(events_lost.clone()),
            Box::new(probes_attached.clone()),
            Box::new(targets.clone()),
            Box::new(decode_errors.clone()),
            Box::new(label_overflow.clone()),
            Box::new(label_truncated.clone()),
            Box::new(bad_user_pointers.clone()),
            Box::new(in_flight_full.clone()),
            Box::new(duplicate_starts.clone()),
            Box::new(unmatched_ends.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        // Present from the start, so that a dashboard sees 0 rather than no data.
        events.with_label_values(&["request_end"]);
        events_lost.with_label_values(&["request_end"]);
        Self {
            registry,
            requests,
            duration,
            in_flight,
            events,
            events_lost,
            probes_attached,
            targets,
            decode_errors,
            label_overflow,
            label_truncated,
            bad_user_pointers,
            in_flight_full,
            duplicate_starts,
            unmatched_ends,
            caps: Mutex::new(std::array::from_fn(|_| CappedLabel::new(limits.max_values))),
            kernel_seen: Mutex::new([0; counter::COUNT as usize]),
        }
    }

    pub fn record(&self, event: &Event) {
        match event {
            Event::RequestEnd(end) => self.record_request_end(end),
        }
    }

    pub fn decode_error(&self, error: &DecodeError) {
        log::warn!("undecodable ring-buffer record: {error}");
        self.decode_errors.inc();
    }

    fn record_request_end(&self, end: &RequestEndEvent) {
        self.events.with_label_values(&["request_end"]).inc();
        let Some(status) = status_label(end.status) else {
            self.decode_error(&DecodeError::Status { code: end.status });
            return;
        };
        // In struct (and FIELD_*) order.
        let fields: [(&str, &[u8], u16); 5] = [
            ("method", &end.method, end.method_len),
            ("transport", &end.transport, end.transport_len),
            ("identity", &end.identity, end.identity_len),
            ("server", &end.server, end.server_len),
            ("tool", &end.tool, end.tool_len),
        ];
        let mut caps = self.caps.lock().expect("label caps lock");
        let values: [String; 5] = std::array::from_fn(|field| {
            let (label, bytes, len) = fields[field];
            if end.flags & (1 << (request::FLAG_TRUNCATED_SHIFT + field as u32)) != 0 {
                self.label_truncated.with_label_values(&[label]).inc();
            }
            let (value, folded) = caps[field].admit(escape_utf8(&bytes[..usize::from(len)]));
            if folded {
                self.label_overflow.with_label_values(&[label]).inc();
            }
            value
        });
        drop(caps);
        let [method, transport, identity, server, tool] = &values;
        let labels = [method.as_str(), transport, status, identity, server, tool];
        self.requests.with_label_values(&labels).inc();
        if end.flags & request::FLAG_NO_START != 0 {
            self.unmatched_ends.inc();
        } else {
            self.duration.with_label_values(&labels).observe(end.duration_ns as f64 / 1e9);
        }
    }

    /// Folds the kernel's counter totals (summed over CPUs) into the series. Totals only
    /// grow; a stale read from a concurrent scrape adds nothing.
    pub fn sync_kernel_counters(&self, totals: [u64; counter::COUNT as usize]) {
        let mut seen = self.kernel_seen.lock().expect("kernel counters lock");
        let totals: [u64; counter::COUNT as usize] = std::array::from_fn(|i| totals[i].max(seen[i]));
        let delta = |i: u32| totals[i as usize].saturating_sub(seen[i as usize]);
        self.events_lost.with_label_values(&["request_end"]).inc_by(delta(counter::REQUEST_END_LOST));
        self.bad_user_pointers.inc_by(delta(counter::BAD_USER_POINTER));
        self.in_flight_full.inc_by(delta(counter::IN_FLIGHT_FULL));
        self.duplicate_starts.inc_by(delta(counter::DUPLICATE_START));
        let started = totals[counter::REQUESTS_STARTED as usize];
        let finished = totals[counter::REQUESTS_FINISHED as usize];
        self.in_flight.set(started.saturating_sub(finished) as i64);
        *seen = totals;
    }

    /// The text exposition format of every series.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("text format is UTF-8")
    }
}
