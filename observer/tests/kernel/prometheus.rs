//! A real Prometheus (Debian's package) scrapes the agent every second with
//! `monitoring/rules.yml` loaded, and the operators' questions are asked through its HTTP
//! API: the recording rules' own expressions and the dashboard's panel queries, checked
//! against the load client's ground truth and against /proc.
//!
//! Prometheus extrapolates `rate()` and `increase()` to the window's edges, so a count
//! over a window is the truth times a factor a little above 1. Every series of one
//! target is scraped at the same instants, so that factor is the same for all of them:
//! the tests require one factor for every label set, within the bound the scrape interval
//! allows, and exact equality where it cancels (ratios) or does not apply (totals).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value as Json;

use crate::support::*;

/// Calls per load run, and how many at once: with 300 ms sleeps, a run lasts a few scrapes.
const CALLS: usize = 300;
const CONCURRENCY: usize = 2;
const SLEEP_MS: u64 = 300;
/// The sleep calls' bucket: (0.25 s, 0.5 s].
const SLEEP_BUCKET: (f64, f64) = (0.25, 0.5);
/// Long enough that no backend is reaped between the two load runs.
const IDLE_MS: &str = "20000";
/// Scrapes and rule evaluations.
const INTERVAL_S: f64 = 1.0;

#[test]
fn prometheus_answers_the_operators_questions_from_the_agents_series() {
    let _serial = kernel_test();
    let proxy =
        start_proxy_with(&testbed_bin(), &["--reaper-interval-ms", "250", "--idle-timeout-ms", IDLE_MS]);
    // A second proxy, alone in a namespace that will drop every packet: its idle client's
    // connection dies of a keepalive timeout.
    let netns = Netns::new("prometheus");
    let mut command = netns.command(testbed_bin());
    command.args(["proxy", "--listen", "127.0.0.1:0", "--tcp-keepalive-secs", "1"]);
    let silent = Running::spawn(command, " serving ");
    let observer = start_observer(&[proxy.pid(), silent.pid()], &[]);
    let (host, port) = silent.addr.split_once(':').unwrap();
    let mut idle = netns.command("python3");
    idle.args([
        "-c",
        &format!("import socket, time; s = socket.create_connection(('{host}', {port})); print('up', flush=True); time.sleep(120)"),
    ]);
    let (_idle, said) = Client::spawn(idle);
    assert_eq!(said, "up");
    let silent_pid = silent.pid().to_string();
    let inbound = [("direction", "inbound"), ("pid", silent_pid.as_str())];
    scrape_until(&observer, "the idle client's connection", |m| {
        value(m, "mcp_proxy_tcp_connections_active", &inbound) == 1.0
    });

    let prometheus = Prometheus::start(&observer.addr);
    prometheus.until("the agent's first scrape", "up", 1.0);

    // The first run makes every series; the second is the one asked about (the same
    // seed, so the same label sets). A series born with a value shows no increase.
    let first = load_truth(&proxy, CALLS, CONCURRENCY, 7, SLEEP_MS, &[]);
    prometheus.until("the first run", "sum(mcp_proxy_requests_total)", total(&requests_of(&first)));
    // Windows start between two flat samples: the last one with only the first run's
    // counts, and a later one that does not have the second run's yet.
    let flat = || std::thread::sleep(Duration::from_secs_f64(2.0 * INTERVAL_S));
    flat();
    let start = unix_now();
    flat();
    let second = load_truth(&proxy, CALLS, CONCURRENCY, 7, SLEEP_MS, &[]);
    let (first_requests, requests) = (requests_of(&first), requests_of(&second));
    prometheus.until(
        "the second run",
        "sum(mcp_proxy_requests_total)",
        total(&first_requests) + total(&requests),
    );
    let end = unix_now();
    let window = window(start, end);
    let backends = backend_children(&proxy);
    let at_end = |expr: &str| prometheus.query(expr, end);

    // Totals are exact.
    let both = merge(&[first_requests, requests.clone()]);
    assert_matches(
        &at_end("sum by (server, tool, status) (mcp_proxy_requests_total)"),
        &tally(&both, |t| key(&[&t.server, &t.tool, t.status.as_str()])),
        &["server", "tool", "status"],
    );

    // Request rate by backend and tool: one factor for every (server, tool).
    let rate = prometheus.rule("mcp_proxy:requests:rate1m", &window, end);
    let factor = assert_proportional(
        &scaled(&rate, window.seconds),
        &tally(&requests, |t| key(&[&t.server, &t.tool])),
        &["server", "tool"],
    );
    assert_extrapolated(factor, window.seconds, "request rate");

    // Error ratio by kind: the factor cancels, so exact.
    let by_status = tally(&requests, |t| key(&[t.status.as_str()]));
    let all = total(&requests);
    let ratios = prometheus.rule("mcp_proxy:requests_by_status:ratio_rate5m", &window, end);
    assert_matches(&ratios, &by_status.iter().map(|(k, n)| (k.clone(), n / all)).collect(), &["status"]);

    // Error ratio by backend: what it failed among what reached it (not ACL or auth
    // refusals); exact too.
    let reached =
        |t: &&Truth| !t.server.is_empty() && !["acl_denied", "auth_failed"].contains(&t.status.as_str());
    let failed = |t: &&Truth| {
        ["jsonrpc_error", "tool_error", "timeout", "connect_failed"].contains(&t.status.as_str())
    };
    let by_server = |t: &Truth| key(&[&t.server]);
    let sent = tally(requests.iter().filter(reached), by_server);
    let failures = tally(requests.iter().filter(reached).filter(failed), by_server);
    assert!(failures.len() == 2, "both backends have failing tools: {failures:?}");
    assert_matches(
        &prometheus.rule("mcp_proxy:backend_errors:ratio_rate5m", &window, end),
        &failures.iter().map(|(k, n)| (k.clone(), n / sent[k])).collect(),
        &["server"],
    );

    // Latency: every sleep call lands in its bucket, and nothing else does.
    for quantile in ["p50", "p95", "p99"] {
        let rule = format!("mcp_proxy:request_duration_seconds:{quantile}_5m");
        for (labels, seconds) in prometheus.rule(&rule, &window, end) {
            if labels.get("tool").is_some_and(|tool| tool == "sleep") {
                assert!(
                    seconds > SLEEP_BUCKET.0 && seconds <= SLEEP_BUCKET.1,
                    "{quantile} of {SLEEP_MS} ms sleeps is {seconds} s"
                );
            } else if quantile == "p99" && !seconds.is_nan() {
                assert!(seconds <= SLEEP_BUCKET.0, "p99 of {labels:?} is {seconds} s, with the sleeps");
            }
        }
    }
    let backend_p99 = prometheus.rule("mcp_proxy:backend_request_duration_seconds:p99_5m", &window, end);
    let p99 = |server: &str| backend_p99.iter().find(|(l, _)| l["server"] == server).map(|(_, v)| *v);
    assert!(p99("alpha").is_some_and(|s| s > SLEEP_BUCKET.0), "alpha serves the sleeps: {backend_p99:?}");
    assert!(p99("beta").is_some_and(|s| s <= SLEEP_BUCKET.0), "beta has no slow tool: {backend_p99:?}");

    // ACL denials by identity and tool: exact totals, and the requests' factor.
    let denials = |truth: &Json| {
        truth_rows(truth, "acl")
            .iter()
            .filter(|row| row["decision"] == "deny")
            .map(|row| {
                (key(&[str_of(row, "identity"), str_of(row, "server"), str_of(row, "tool")]), count(row))
            })
            .fold(BTreeMap::new(), |mut acc, (k, n)| {
                *acc.entry(k).or_insert(0.0) += n;
                acc
            })
    };
    let (denied_first, denied) = (denials(&first), denials(&second));
    assert!(!denied.is_empty(), "the load's mix has ACL denials");
    let labels = ["identity", "server", "tool"];
    assert_matches(
        &at_end("sum by (identity, server, tool) (mcp_proxy_acl_decisions_total{decision=\"deny\"})"),
        &denied.iter().map(|(k, n)| (k.clone(), n + denied_first[k])).collect(),
        &labels,
    );
    let denial_rate = prometheus.rule("mcp_proxy:acl_denials:rate5m", &window, end);
    let denial_factor = assert_proportional(&scaled(&denial_rate, window.seconds), &denied, &labels);
    assert!((denial_factor - factor).abs() < 1e-9, "ACL denials {denial_factor}, requests {factor}");

    // Active sessions: every identity's session open during the run, none after it.
    let opened = |truth: &Json| {
        truth_rows(truth, "sessions").iter().map(|row| row["opened"].as_f64().unwrap()).sum::<f64>()
    };
    let peak = at_end(&format!("max(max_over_time(mcp_proxy:sessions_active:sum[{}]))", window.range));
    assert_eq!(values(&peak), vec![opened(&second)], "sessions open during the run");
    assert_eq!(
        values(&at_end("sum(mcp_proxy_sessions_opened_total)")),
        vec![opened(&first) + opened(&second)]
    );

    // Child processes per backend, as /proc lists them.
    let children = prometheus.query("sum by (server) (mcp_proxy_child_processes) > 0", end);
    assert_matches(&children, &backends.iter().map(|(s, n)| (key(&[s]), *n)).collect(), &["server"]);
    // Each connected backend has its idle-reaped series, at 0 so far.
    assert_matches(
        &at_end("sum by (server) (mcp_proxy_backend_disconnects_total{reason=\"idle_reaped\"})"),
        &backends.keys().map(|s| (key(&[s]), 0.0)).collect(),
        &["server"],
    );

    // Now the reaper disconnects each idle backend (their processes exit), and the
    // silent proxy's namespace drops every packet.
    flat();
    netns.black_hole();
    wait_for(Duration::from_secs(60), "the reaper to end every backend", || {
        backend_children(&proxy).is_empty()
    });
    prometheus.until(
        "the idle reaps",
        "sum(mcp_proxy_backend_disconnects_total{reason=\"idle_reaped\"})",
        backends.len() as f64,
    );
    prometheus.until("the keepalive timeout", "sum(mcp_proxy_tcp_timeouts_total{kind=\"keepalive\"})", 1.0);
    let later = unix_now();
    let since_end = self::window(end, later);

    // Reaper disconnects per minute: one per backend in the window.
    let reaps = prometheus.rule("mcp_proxy:backend_idle_reaps:per_minute5m", &since_end, later);
    let per_window = scaled(&reaps, since_end.seconds / 60.0);
    let reap_factor =
        assert_proportional(&per_window, &backends.keys().map(|s| (key(&[s]), 1.0)).collect(), &["server"]);
    assert_extrapolated(reap_factor, since_end.seconds, "idle reaps");
    // The gauges' recorded series follow, one evaluation behind the scrape.
    prometheus.until("no child process left", "sum(mcp_proxy_child_processes)", 0.0);
    prometheus.until("no session left", "sum(mcp_proxy:sessions_active:sum)", 0.0);

    // TCP keepalive timeouts: the silent proxy's one, inbound.
    let timeouts = prometheus.rule("mcp_proxy:tcp_keepalive_timeouts:rate5m", &since_end, later);
    let timeouts: Vec<_> =
        scaled(&timeouts, since_end.seconds).into_iter().filter(|(_, v)| *v > 0.0).collect();
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert_eq!(timeouts[0].0["direction"], "inbound");
    assert_eq!(timeouts[0].0["pid"], silent_pid);
    assert_extrapolated(timeouts[0].1, since_end.seconds, "keepalive timeouts");

    // The dashboard: every variable lists its values, every panel's query answers.
    dashboard_answers(&prometheus, later);
    let alerts = prometheus.query("ALERTS{alertstate=\"firing\"}", later);
    assert!(alerts.is_empty(), "a healthy run fires no alert: {alerts:?}");
}

/// Runs each query of monitoring/dashboard.json with every selector at "All".
fn dashboard_answers(prometheus: &Prometheus, at: f64) {
    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(monitoring("dashboard.json")).unwrap()).unwrap();
    let substitute = |expr: &str| {
        expr.replace("$namespace", ".*")
            .replace("$pod", ".*")
            .replace("$server", ".*")
            .replace("$__rate_interval", "5m")
    };
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = variable["query"]["query"].as_str() else { continue };
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(", "))
            .unwrap_or_else(|| panic!("variable {}: not label_values(selector, label)", variable["name"]));
        let values = prometheus.label_values(label, &substitute(selector));
        if label == "server" {
            assert!(
                values.contains(&"alpha".to_string()) && values.contains(&"beta".to_string()),
                "{values:?}"
            );
        }
    }
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().unwrap());
            assert!(!expr.contains('$'), "panel {}: unknown variable in {expr}", panel["title"]);
            let answer = prometheus.query(&expr, at);
            assert!(!answer.is_empty(), "panel {}: no data for {expr}", panel["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} panel queries");
}

fn monitoring(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring").join(file)
}

/// A Prometheus server on a free loopback port, scraping `target` every second with the
/// project's rules; killed and its data removed on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("mcp-observe-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: {INTERVAL_S}s, evaluation_interval: {INTERVAL_S}s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n\
             - job_name: mcp-observe\n\
             \x20 honor_labels: true\n\
             \x20 static_configs: [{{targets: [{target:?}]}}]\n",
            rules = monitoring("rules.yml").canonicalize().unwrap(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian's package; `cargo xtask setup` installs it)");
        let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), dir };
        let ready = format!("{}/-/ready", prometheus.url);
        wait_for(Duration::from_secs(30), "prometheus ready", || ureq::get(&ready).call().is_ok());
        prometheus
    }

    /// `GET path` with `params`: the `data` of a successful answer; panics with
    /// Prometheus's own error otherwise.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Json {
        let mut request =
            ureq::get(format!("{}{path}", self.url)).config().http_status_as_error(false).build();
        for (name, value) in params {
            request = request.query(*name, *value);
        }
        let body = request.call().unwrap().body_mut().read_to_string().unwrap();
        let answer: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{path} {params:?}: {body}");
        answer["data"].clone()
    }

    /// An instant vector query at unix time `at`: each sample's labels and value.
    fn query(&self, expr: &str, at: f64) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api("/api/v1/query", &[("query", expr), ("time", &format!("{at:.3}"))]);
        assert_eq!(data["resultType"], "vector", "{expr}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = serde_json::from_value(sample["metric"].clone()).unwrap();
                (labels, sample["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// Recording rule `name` as Prometheus loaded it, evaluated at `at` over `window`
    /// instead of its own range (other recording rules it uses expanded the same way).
    fn rule(&self, name: &str, window: &Window, at: f64) -> Vec<(BTreeMap<String, String>, f64)> {
        let rules = self.recording_rules();
        let mut expr = format!("({})", rules[name]);
        for (other, query) in &rules {
            expr = expr.replace(other.as_str(), &format!("({query})"));
        }
        for range in ["[1m]", "[5m]"] {
            expr = expr.replace(range, &format!("[{}]", window.range));
        }
        self.query(&expr, at)
    }

    fn recording_rules(&self) -> BTreeMap<String, String> {
        let data = self.api("/api/v1/rules", &[("type", "record")]);
        let rules =
            data["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone());
        rules
            .map(|r| (r["name"].as_str().unwrap().to_string(), r["query"].as_str().unwrap().to_string()))
            .collect()
    }

    fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let data = self.api(&format!("/api/v1/label/{label}/values"), &[("match[]", selector)]);
        serde_json::from_value(data).unwrap()
    }

    /// Waits until `expr` is `value` at the latest scrape.
    fn until(&self, what: &str, expr: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = values(&self.query(expr, unix_now()));
            if got == [value] {
                return;
            }
            assert!(Instant::now() < deadline, "Prometheus never saw {what}: {expr} is {got:?}, not {value}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
            eprintln!(
                "prometheus log (last lines):\n{}",
                log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A range from `start` to `end`, in whole seconds for PromQL.
struct Window {
    seconds: f64,
    range: String,
}

fn window(start: f64, end: f64) -> Window {
    let seconds = (end - start).ceil();
    Window { seconds, range: format!("{seconds}s") }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

type Samples = Vec<(BTreeMap<String, String>, f64)>;

fn values(samples: &Samples) -> Vec<f64> {
    samples.iter().map(|(_, v)| *v).collect()
}

/// Rates (per second) times `seconds`: counts over the window.
fn scaled(samples: &Samples, seconds: f64) -> Samples {
    samples.iter().map(|(l, v)| (l.clone(), v * seconds)).collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

fn total(truth: &[Truth]) -> f64 {
    truth.iter().map(|t| t.count as f64).sum()
}

fn tally<'a>(
    truth: impl IntoIterator<Item = &'a Truth>,
    by: impl Fn(&Truth) -> Vec<String>,
) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for t in truth {
        *out.entry(by(t)).or_insert(0.0) += t.count as f64;
    }
    out
}

fn str_of<'a>(row: &'a Json, field: &str) -> &'a str {
    row[field].as_str().unwrap()
}

fn count(row: &Json) -> f64 {
    row["count"].as_f64().unwrap()
}

/// The backends' child processes of `proxy`, per backend name, from /proc.
fn backend_children(proxy: &Running) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for server in ["alpha", "beta"] {
        let running = children_of(proxy.pid(), &format!("backend --name {server}")).len();
        if running > 0 {
            out.insert(server.to_string(), running as f64);
        }
    }
    out
}

/// The samples, keyed by `labels`: exactly the keys of `expected`, each value equal.
fn assert_matches(samples: &Samples, expected: &BTreeMap<Vec<String>, f64>, labels: &[&str]) {
    let got = keyed(samples, labels);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "label sets of {samples:?}"
    );
    for (k, want) in expected {
        assert!(
            (got[k] - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{labels:?} = {k:?}: {} != {want}",
            got[k]
        );
    }
}

/// The samples, keyed by `labels`, are `expected` times one factor; returns it.
fn assert_proportional(samples: &Samples, expected: &BTreeMap<Vec<String>, f64>, labels: &[&str]) -> f64 {
    let got = keyed(samples, labels);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "label sets of {samples:?}"
    );
    let (first, want) = expected.iter().next().expect("a ground truth");
    let factor = got[first] / want;
    for (k, want) in expected {
        let ratio = got[k] / want;
        assert!(
            (ratio - factor).abs() < 1e-9,
            "{labels:?} = {k:?}: {} is {ratio} × {want}, others {factor} ×",
            got[k]
        );
    }
    factor
}

/// Extrapolation to a window's edges adds at most about one scrape interval at each end.
fn assert_extrapolated(factor: f64, seconds: f64, what: &str) {
    let most = seconds / (seconds - 2.2 * INTERVAL_S);
    assert!(
        (1.0 - 1e-9..=most).contains(&factor),
        "{what}: {factor} × the truth over {seconds} s (at most {most})"
    );
}

fn keyed(samples: &Samples, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for (sample, value) in samples {
        let k = labels.iter().map(|l| sample.get(*l).cloned().unwrap_or_default()).collect();
        assert!(out.insert(k, *value).is_none(), "two samples for {sample:?}");
    }
    out
}
