//! What `top` reads of one `/metrics` scrape: per proxy, backend and tool the request
//! counts and latency buckets since the agent started, and each proxy's gauges.

use std::{collections::BTreeMap, time::Instant};

use prometheus_parse::{Sample, Scrape as Parsed, Value};

/// A row of the table: requests without a tool (initialize, tools/list, refused ones)
/// are shown under their method, in brackets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    pub proxy: String,
    pub server: String,
    pub tool: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    pub total: f64,
    /// Requests whose status is not `ok`.
    pub errors: f64,
    /// Cumulative counts by upper bound, ascending (the last is +Inf).
    pub buckets: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proxy {
    pub in_flight: f64,
    pub oldest_in_flight: f64,
    pub sessions: f64,
    pub backends_connected: f64,
    pub backends_configured: f64,
}

#[derive(Clone, Debug)]
pub struct Scrape {
    pub at: Instant,
    pub rows: BTreeMap<RowKey, Requests>,
    pub proxies: BTreeMap<String, Proxy>,
    pub events_lost: f64,
}

impl Scrape {
    /// Reads the exposition text of an agent, scraped at `at`.
    pub fn parse(text: &str, at: Instant) -> std::io::Result<Scrape> {
        let parsed = Parsed::parse(text.lines().map(|l| Ok(l.to_string())))?;
        let mut scrape = Scrape { at, rows: BTreeMap::new(), proxies: BTreeMap::new(), events_lost: 0.0 };
        for sample in &parsed.samples {
            scrape.add(sample);
        }
        Ok(scrape)
    }

    fn add(&mut self, sample: &Sample) {
        let labels = &sample.labels;
        let label = |name: &str| labels.get(name).unwrap_or_default().to_string();
        let proxy = || self::proxy(sample);
        let row = || {
            let tool = label("tool");
            let tool = if tool.is_empty() { format!("[{}]", label("method")) } else { tool };
            RowKey { proxy: proxy(), server: label("server"), tool }
        };
        match (sample.metric.as_str(), &sample.value) {
            ("mcp_proxy_requests_total", Value::Counter(n) | Value::Untyped(n)) => {
                let requests = self.rows.entry(row()).or_default();
                requests.total += n;
                if label("status") != "ok" {
                    requests.errors += n;
                }
            }
            ("mcp_proxy_request_duration_seconds", Value::Histogram(counts)) => {
                let buckets = &mut self.rows.entry(row()).or_default().buckets;
                for count in counts {
                    match buckets.iter_mut().find(|(le, _)| *le == count.less_than) {
                        Some((_, n)) => *n += count.count,
                        None => buckets.push((count.less_than, count.count)),
                    }
                }
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            ("mcp_observer_events_lost_total", Value::Counter(n) | Value::Untyped(n)) => {
                self.events_lost += n
            }
            (metric, Value::Gauge(n) | Value::Untyped(n)) if metric.starts_with("mcp_proxy_") => {
                let gauges = self.proxies.entry(proxy()).or_default();
                match metric {
                    "mcp_proxy_requests_in_flight" => gauges.in_flight += n,
                    "mcp_proxy_request_oldest_in_flight_seconds" => {
                        gauges.oldest_in_flight = gauges.oldest_in_flight.max(*n);
                    }
                    "mcp_proxy_sessions_active" => gauges.sessions += n,
                    "mcp_proxy_backends_connected" => gauges.backends_connected += n,
                    "mcp_proxy_backends_configured" => gauges.backends_configured += n,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The proxy a series belongs to: `namespace/pod` in Kubernetes, else `pid N`.
fn proxy(sample: &Sample) -> String {
    let label = |name: &str| sample.labels.get(name).unwrap_or_default();
    match (label("namespace"), label("pid")) {
        ("", "") => "-".to_string(),
        ("", pid) => format!("pid {pid}"),
        (namespace, _) => format!("{namespace}/{}", label("pod")),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub const TEXT: &str = r#"# TYPE mcp_proxy_requests_total counter
mcp_proxy_requests_total{pid="7",method="tools/call",server="alpha",tool="echo",status="ok",identity="a"} 8
mcp_proxy_requests_total{pid="7",method="tools/call",server="alpha",tool="echo",status="tool_error",identity="b"} 2
mcp_proxy_requests_total{pid="7",method="initialize",server="",tool="",status="ok",identity="a"} 1
# TYPE mcp_proxy_request_duration_seconds histogram
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="ok",identity="a",le="0.1"} 8
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="ok",identity="a",le="0.5"} 8
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="ok",identity="a",le="+Inf"} 8
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="tool_error",identity="b",le="0.1"} 0
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="tool_error",identity="b",le="0.5"} 2
mcp_proxy_request_duration_seconds_bucket{pid="7",method="tools/call",server="alpha",tool="echo",status="tool_error",identity="b",le="+Inf"} 2
# TYPE mcp_proxy_requests_in_flight gauge
mcp_proxy_requests_in_flight{pid="7"} 3
# TYPE mcp_proxy_sessions_active gauge
mcp_proxy_sessions_active{pid="7",transport="streamable_http"} 2
# TYPE mcp_observer_events_lost_total counter
mcp_observer_events_lost_total{kind="request_end"} 4
"#;

    #[test]
    fn a_scrape_sums_each_rows_series_and_each_proxys_gauges() {
        let scrape = Scrape::parse(TEXT, Instant::now()).unwrap();
        let echo = RowKey { proxy: "pid 7".into(), server: "alpha".into(), tool: "echo".into() };
        assert_eq!(scrape.rows[&echo].total, 10.0);
        assert_eq!(scrape.rows[&echo].errors, 2.0);
        assert_eq!(scrape.rows[&echo].buckets, [(0.1, 8.0), (0.5, 10.0), (f64::INFINITY, 10.0)]);
        let initialize = RowKey { proxy: "pid 7".into(), server: String::new(), tool: "[initialize]".into() };
        assert_eq!(scrape.rows[&initialize].total, 1.0);
        assert_eq!(scrape.proxies["pid 7"].in_flight, 3.0);
        assert_eq!(scrape.proxies["pid 7"].sessions, 2.0);
        assert_eq!(scrape.events_lost, 4.0);
    }
}
