//! What `top` reads of one `/metrics` scrape: per proxy, backend and tool the request
//! counts and latency buckets since the agent started, and each proxy's gauges.

use std::{collections::BTreeMap, time::Instant};

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
    /// Reads the exposition text of an agent, scraped at `at`. A line that is not a
    /// sample is an error: the text is our agent's, so it means the URL is something else.
    pub fn parse(text: &str, at: Instant) -> Result<Scrape, String> {
        let mut scrape = Scrape { at, rows: BTreeMap::new(), proxies: BTreeMap::new(), events_lost: 0.0 };
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let sample = Sample::parse(line).ok_or_else(|| format!("not a Prometheus sample: {line:.80}"))?;
            scrape.add(&sample);
        }
        Ok(scrape)
    }

    fn add(&mut self, sample: &Sample) {
        let label = |name: &str| sample.label(name).to_string();
        let row = || {
            let tool = label("tool");
            let tool = if tool.is_empty() { format!("[{}]", label("method")) } else { tool };
            RowKey { proxy: sample.proxy(), server: label("server"), tool }
        };
        let n = sample.value;
        match sample.name {
            "mcp_proxy_requests_total" => {
                let requests = self.rows.entry(row()).or_default();
                requests.total += n;
                if sample.label("status") != "ok" {
                    requests.errors += n;
                }
            }
            "mcp_proxy_request_duration_seconds_bucket" => {
                let Ok(le) = sample.label("le").parse::<f64>() else { return };
                let buckets = &mut self.rows.entry(row()).or_default().buckets;
                match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some((_, count)) => *count += n,
                    None => {
                        buckets.push((le, n));
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
            "mcp_observer_events_lost_total" => self.events_lost += n,
            name if name.starts_with("mcp_proxy_") => {
                let proxy = self.proxies.entry(sample.proxy()).or_default();
                match name {
                    "mcp_proxy_requests_in_flight" => proxy.in_flight += n,
                    "mcp_proxy_request_oldest_in_flight_seconds" => {
                        proxy.oldest_in_flight = proxy.oldest_in_flight.max(n);
                    }
                    "mcp_proxy_sessions_active" => proxy.sessions += n,
                    "mcp_proxy_backends_connected" => proxy.backends_connected += n,
                    "mcp_proxy_backends_configured" => proxy.backends_configured += n,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// One sample line of the text format: `name{label="value",…} value [timestamp]`.
struct Sample<'a> {
    name: &'a str,
    /// Label values unescaped (`\\`, `\"`, `\n`): tool names and methods come from clients.
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, mut rest) = line.split_at(name_end);
        let mut labels = Vec::new();
        if let Some(inside) = rest.strip_prefix('{') {
            rest = inside;
            loop {
                rest = rest.trim_start_matches([',', ' ']);
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (label, after) = rest.split_once("=\"")?;
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            escaped => value.push(escaped),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label, value));
                rest = &after[end + 1..];
            }
        }
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Sample { name, labels, value })
    }

    fn label(&self, name: &str) -> &str {
        self.labels.iter().find(|(label, _)| *label == name).map_or("", |(_, value)| value)
    }

    /// The proxy a series belongs to: `namespace/pod` in Kubernetes, else `pid N`.
    fn proxy(&self) -> String {
        match (self.label("namespace"), self.label("pid")) {
            ("", "") => "-".to_string(),
            ("", pid) => format!("pid {pid}"),
            (namespace, _) => format!("{namespace}/{}", self.label("pod")),
        }
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
    fn label_values_are_unescaped_whatever_a_client_put_in_them() {
        let line = r#"mcp_proxy_requests_total{pid="7",method="a}b,c=d \"q\" \\ \n",tool="",status="ok"} 3 1700000000000"#;
        let sample = Sample::parse(line).unwrap();
        assert_eq!(sample.name, "mcp_proxy_requests_total");
        assert_eq!(sample.label("method"), "a}b,c=d \"q\" \\ \n");
        assert_eq!(sample.label("status"), "ok");
        assert_eq!(sample.value, 3.0);
        let scrape = Scrape::parse(line, Instant::now()).unwrap();
        let key =
            RowKey { proxy: "pid 7".into(), server: String::new(), tool: "[a}b,c=d \"q\" \\ \n]".into() };
        assert_eq!(scrape.rows[&key].total, 3.0);
        assert!(Scrape::parse("<html>", Instant::now()).is_err());
        assert!(Sample::parse(r#"x{a="unterminated} 1"#).is_none());
    }

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
