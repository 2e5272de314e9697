//! In-process request metrics: what a proxy does when it exports metrics itself, the
//! alternatives that benchmarks compare external observation against. Recorded where the
//! proxy calls `mcp_probes::request_end`, with the same labels.
//!
//! - `prometheus`: an exporter built on the `prometheus` crate, as `mcp-observe` itself
//!   exports: a request counter and a latency histogram with six labels, served as text.
//! - `opentelemetry`: what upstream `mcp serve` does (its `src/telemetry.rs` and
//!   `src/serve/dispatch.rs`, OpenTelemetry 0.31): the counter `mcp.proxy.requests` and the
//!   histogram `mcp.proxy.request.duration` (ms), attributes built as owned `String`s on
//!   every request, a periodic reader on the tokio runtime every 60 s. Its exporter drops
//!   the data instead of sending OTLP, so that no collector is needed.

use std::time::{Duration, Instant};

use mcp_probes::{RequestLabels, Status};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, MeterProvider as _},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        SdkMeterProvider, Temporality, data::ResourceMetrics, exporter::PushMetricExporter,
        periodic_reader_with_async_runtime::PeriodicReader,
    },
    runtime,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Which in-process metrics the proxy records (`--in-process-metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InProcessKind {
    /// None: the proxy only calls the probes.
    #[default]
    None,
    /// A `prometheus` crate registry, served at `GET /metrics`.
    Prometheus,
    /// OpenTelemetry metrics as upstream `mcp serve` records them.
    Opentelemetry,
}

/// The recorder of one kind.
pub enum InProcess {
    None,
    Prometheus(PrometheusMetrics),
    OpenTelemetry(OtelMetrics),
}

impl InProcess {
    /// Builds the recorder. The OpenTelemetry one spawns its periodic reader, so it must be
    /// built inside a tokio runtime.
    pub fn new(kind: InProcessKind) -> Self {
        match kind {
            InProcessKind::None => Self::None,
            InProcessKind::Prometheus => Self::Prometheus(PrometheusMetrics::new()),
            InProcessKind::Opentelemetry => {
                Self::OpenTelemetry(OtelMetrics::new(Exporter(|_: &ResourceMetrics| {})))
            }
        }
    }

    /// Records one finished request that started at `started`.
    #[inline]
    pub fn record(&self, labels: &RequestLabels<'_>, started: Instant) {
        match self {
            Self::None => {}
            Self::Prometheus(metrics) => metrics.record(labels, started),
            Self::OpenTelemetry(metrics) => metrics.record(labels, started),
        }
    }

    /// The Prometheus text exposition of the `prometheus` variant; `None` for the others.
    pub fn encode(&self) -> Option<String> {
        match self {
            Self::Prometheus(metrics) => Some(metrics.encode()),
            Self::None | Self::OpenTelemetry(_) => None,
        }
    }
}

/// The `status` label of a [`Status`].
pub fn status_label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::JsonrpcError => "jsonrpc_error",
        Status::ToolError => "tool_error",
        Status::Timeout => "timeout",
        Status::AclDenied => "acl_denied",
        Status::AuthFailed => "auth_failed",
        Status::ConnectFailed => "connect_failed",
    }
}

const LABELS: [&str; 6] = ["method", "transport", "status", "identity", "server", "tool"];
const BUCKETS: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// An in-process Prometheus exporter on its own registry.
pub struct PrometheusMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl PrometheusMetrics {
    fn new() -> Self {
        let requests =
            IntCounterVec::new(Opts::new("mcp_proxy_requests_total", "Requests the proxy handled"), &LABELS)
                .expect("valid counter");
        let duration = HistogramVec::new(
            HistogramOpts::new("mcp_proxy_request_duration_seconds", "Request latency in seconds")
                .buckets(BUCKETS.to_vec()),
            &LABELS,
        )
        .expect("valid histogram");
        let registry = Registry::new();
        registry.register(Box::new(requests.clone())).expect("register the counter");
        registry.register(Box::new(duration.clone())).expect("register the histogram");
        Self { registry, requests, duration }
    }

    fn record(&self, labels: &RequestLabels<'_>, started: Instant) {
        let values = [
            labels.method,
            labels.transport,
            status_label(labels.status),
            labels.identity,
            labels.server,
            labels.tool,
        ];
        self.requests.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(started.elapsed().as_secs_f64());
    }

    fn encode(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).expect("text encoding")
    }
}

/// OpenTelemetry instruments as upstream `mcp serve` builds them, on their own provider.
pub struct OtelMetrics {
    provider: SdkMeterProvider,
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
}

impl OtelMetrics {
    fn new(exporter: impl PushMetricExporter) -> Self {
        // Upstream: `periodic_reader_with_async_runtime::PeriodicReader` on `runtime::Tokio`,
        // default interval (60 s).
        let reader = PeriodicReader::builder(exporter, runtime::Tokio).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let meter = provider.meter("mcp");
        let requests = meter
            .u64_counter("mcp.proxy.requests")
            .with_description("Total MCP proxy requests handled")
            .build();
        let request_duration = meter
            .f64_histogram("mcp.proxy.request.duration")
            .with_description("MCP proxy request duration")
            .with_unit("ms")
            .build();
        Self { provider, requests, request_duration }
    }

    /// Upstream's `finish_audit`: owned `String` attributes, server and tool only when known,
    /// the status `ok` or `error`, and the tool name stripped of its `server__` prefix (upstream
    /// keeps it namespaced until then: the same allocations here).
    fn record(&self, labels: &RequestLabels<'_>, started: Instant) {
        let duration_ms = started.elapsed().as_millis() as u64;
        let status = if labels.status == Status::Ok { "ok" } else { "error" };
        let mut attributes = vec![
            KeyValue::new("mcp.method", labels.method.to_string()),
            KeyValue::new("mcp.transport", labels.transport.to_string()),
            KeyValue::new("mcp.status", status.to_string()),
            KeyValue::new("mcp.identity", labels.identity.to_string()),
        ];
        if !labels.server.is_empty() {
            attributes.push(KeyValue::new("mcp.server", labels.server.to_string()));
        }
        if !labels.tool.is_empty() {
            let namespaced = format!("{}__{}", labels.server, labels.tool);
            let prefix = format!("{}__", labels.server);
            let bare = namespaced.strip_prefix(&prefix).unwrap_or(&namespaced).to_string();
            attributes.push(KeyValue::new("mcp.tool", bare));
        }
        self.requests.add(1, &attributes);
        self.request_duration.record(duration_ms as f64, &attributes);
    }
}

impl Drop for OtelMetrics {
    fn drop(&mut self) {
        // As upstream's telemetry guard: shut the provider down (a last collection and
        // export, then the reader task ends).
        let _ = self.provider.shutdown();
    }
}

/// A push exporter that hands what the periodic reader collected to a function: in
/// production one that drops it (the collection work is upstream's, the network export is
/// left out), in the tests one that keeps it.
pub struct Exporter<F>(pub F);

impl<F: Fn(&ResourceMetrics) + Send + Sync + 'static> PushMetricExporter for Exporter<F> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        (self.0)(metrics);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    use super::*;

    const ECHO: RequestLabels<'static> = RequestLabels {
        method: "tools/call",
        transport: "streamable_http",
        identity: "alice",
        server: "alpha",
        tool: "echo",
        status: Status::ToolError,
    };

    #[test]
    fn status_labels_follow_the_status_values() {
        let statuses = [
            Status::Ok,
            Status::JsonrpcError,
            Status::ToolError,
            Status::Timeout,
            Status::AclDenied,
            Status::AuthFailed,
            Status::ConnectFailed,
        ];
        let labels: Vec<_> = statuses.iter().map(|s| (*s as u32, status_label(*s))).collect();
        assert_eq!(
            labels,
            [
                (0, "ok"),
                (1, "jsonrpc_error"),
                (2, "tool_error"),
                (3, "timeout"),
                (4, "acl_denied"),
                (5, "auth_failed"),
                (6, "connect_failed")
            ]
        );
    }

    #[test]
    fn none_records_nothing() {
        let none = InProcess::new(InProcessKind::None);
        none.record(&ECHO, Instant::now());
        assert_eq!(none.encode(), None);
    }

    #[test]
    fn prometheus_counts_requests_with_their_six_labels() {
        let metrics = InProcess::new(InProcessKind::Prometheus);
        metrics.record(&ECHO, Instant::now());
        metrics.record(&ECHO, Instant::now());
        let text = metrics.encode().expect("prometheus text");
        let labels = r#"identity="alice",method="tools/call",server="alpha",status="tool_error",tool="echo",transport="streamable_http""#;
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.contains(&format!("mcp_proxy_requests_total{{{labels}}} 2").as_str()), "{text}");
        assert!(
            lines.contains(&format!("mcp_proxy_request_duration_seconds_count{{{labels}}} 2").as_str()),
            "{text}"
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("mcp_proxy_requests_total")).count(), 1);
        assert!(text.contains(r#"le="300""#), "{text}");
    }

    /// One exported data point: instrument, sum or count, sorted attributes.
    type Point = (String, u64, Vec<(String, String)>);

    /// The data points of one export: instrument, sum or count, sorted attributes.
    fn points(metrics: &ResourceMetrics) -> Vec<Point> {
        let attributes = |kvs: &mut dyn Iterator<Item = &KeyValue>| {
            let mut kvs: Vec<_> = kvs.map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
            kvs.sort();
            kvs
        };
        let mut seen = Vec::new();
        for metric in metrics.scope_metrics().flat_map(|scope| scope.metrics()) {
            let name = metric.name().to_string();
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => seen.extend(
                    sum.data_points().map(|p| (name.clone(), p.value(), attributes(&mut p.attributes()))),
                ),
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => seen.extend(
                    histogram
                        .data_points()
                        .map(|p| (name.clone(), p.count(), attributes(&mut p.attributes()))),
                ),
                _ => {}
            }
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opentelemetry_counts_requests_with_upstreams_attributes() {
        // The production variant records without panicking …
        let discard = InProcess::new(InProcessKind::Opentelemetry);
        discard.record(&ECHO, Instant::now());
        assert_eq!(discard.encode(), None);
        drop(discard);

        // … and the same instruments, exported, hold what upstream would send.
        let last_export = Arc::new(Mutex::new(Vec::new()));
        let keep = last_export.clone();
        let metrics =
            OtelMetrics::new(Exporter(move |m: &ResourceMetrics| *keep.lock().unwrap() = points(m)));
        metrics.record(&ECHO, Instant::now());
        metrics.record(&ECHO, Instant::now());
        let ping = RequestLabels { method: "ping", server: "", tool: "", status: Status::Ok, ..ECHO };
        metrics.record(&ping, Instant::now());
        metrics.provider.force_flush().expect("force flush");

        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let echo = vec![
            pair("mcp.identity", "alice"),
            pair("mcp.method", "tools/call"),
            pair("mcp.server", "alpha"),
            pair("mcp.status", "error"),
            pair("mcp.tool", "echo"),
            pair("mcp.transport", "streamable_http"),
        ];
        let ping = vec![
            pair("mcp.identity", "alice"),
            pair("mcp.method", "ping"),
            pair("mcp.status", "ok"),
            pair("mcp.transport", "streamable_http"),
        ];
        let mut seen = last_export.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("mcp.proxy.request.duration".to_string(), 1, ping.clone()),
                ("mcp.proxy.request.duration".to_string(), 2, echo.clone()),
                ("mcp.proxy.requests".to_string(), 1, ping),
                ("mcp.proxy.requests".to_string(), 2, echo),
            ]
        );
    }
}
