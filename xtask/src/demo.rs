//! The demo: the testbed proxy under load, found and observed from outside by the
//! node-wide `mcp-observe agent`, with the load client's ground truth printed beside what
//! the agent counted for that proxy.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

const BIN: &str = "target/release";

pub fn run() -> anyhow::Result<()> {
    if !std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    {
        bail!("the demo loads eBPF programs: run it as root");
    }
    crate::build_release()?;
    let (proxy, proxy_addr) = spawn(
        Command::new(format!("{BIN}/mcp-testbed")).args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--broken-backends",
            "delta",
            "--idle-timeout-ms",
            "1000",
            "--reaper-interval-ms",
            "250",
        ]),
        " serving http://",
    )?;
    let proxy = Killed(proxy);
    let pid = proxy.0.id().to_string();
    let (observer, metrics_addr) = spawn(
        Command::new(format!("{BIN}/mcp-observe")).args(["agent", "--listen", "127.0.0.1:0"]),
        "serving /metrics on http://",
    )?;
    let _observer = Killed(observer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&metrics_addr, "/readyz").ok().map(|(code, _)| code) != Some(200) {
        if Instant::now() > deadline {
            bail!("mcp-observe did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "proxy pid {pid} on http://{proxy_addr}/mcp, found and observed by `mcp-observe agent` on http://{metrics_addr}/metrics\n"
    );

    let load = Command::new(format!("{BIN}/mcp-testbed"))
        .args([
            "load",
            "--url",
            &format!("http://{proxy_addr}/mcp"),
            "--calls",
            "500",
            "--concurrency",
            "8",
            "--seed",
            "1",
            "--broken",
            "delta",
        ])
        .output()?;
    if !load.status.success() {
        bail!("load client failed: {}", String::from_utf8_lossy(&load.stderr));
    }
    let truth: Value = serde_json::from_slice(&load.stdout).context("ground truth JSON")?;
    // Long enough for the idle reaper to disconnect the backends the load left idle.
    std::thread::sleep(Duration::from_millis(2000));
    let (_, metrics) = get(&metrics_addr, "/metrics")?;

    println!(
        "{:<14} {:<6} {:<6} {:<6} {:<14} {:>6} {:>9}",
        "method", "server", "tool", "ident", "status", "truth", "observed"
    );
    for row in truth["requests"].as_array().context("requests")? {
        let field = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        let labels: Vec<(&str, String)> = ["identity", "method", "server", "status", "tool", "transport"]
            .into_iter()
            .map(|k| (k, field(k)))
            .chain([("pid", pid.clone())])
            .collect();
        let observed = sample(&metrics, "mcp_proxy_requests_total", &labels).unwrap_or("missing");
        println!(
            "{:<14} {:<6} {:<6} {:<6} {:<14} {:>6} {:>9}",
            field("method"),
            field("server"),
            field("tool"),
            field("identity"),
            field("status"),
            row["count"],
            observed
        );
    }
    println!("\nGround truth of ACL decisions, auth failures and sessions (the load client's own count):");
    for key in ["acl", "auth_failures", "sessions"] {
        for row in truth[key].as_array().context(key)? {
            println!("  {key}: {row}");
        }
    }
    println!(
        "\nWhat the observer saw of them, of the backend pool, of the proxy's TCP connections and child processes (kernel hooks), and of alice's alpha__sleep latency:"
    );
    let shown = [
        "mcp_proxy_acl_decisions_total",
        "mcp_proxy_auth_failures_total",
        "mcp_proxy_sessions_",
        "mcp_proxy_session_duration_seconds_count",
        "mcp_proxy_backend",
        "mcp_proxy_idle_reaper_runs_total",
        "mcp_proxy_tool_cache_entries",
        "mcp_proxy_classifier_cache",
        "mcp_proxy_child_",
        "mcp_proxy_tcp_connections_",
        "mcp_proxy_tcp_connection_duration_seconds_count",
        "mcp_proxy_tcp_timeouts_total",
        "mcp_proxy_tcp_resets_total",
        "mcp_proxy_requests_in_flight",
        "mcp_proxy_request_oldest_in_flight_seconds",
    ];
    let proxy = format!("pid=\"{pid}\"");
    for line in metrics.lines().filter(|l| {
        let of_proxy = l.contains(&proxy) && !l.contains("_bucket{");
        (of_proxy && shown.iter().any(|prefix| l.starts_with(prefix)))
            || (of_proxy
                && l.contains("identity=\"alice\"")
                && l.contains("tool=\"sleep\"")
                && l.starts_with("mcp_proxy_request_duration"))
            || (l.starts_with("mcp_observer_") && !l.ends_with(" 0"))
    }) {
        println!("  {line}");
    }
    Ok(())
}

/// The value of the `name` series whose labels include `labels`, from the text format.
fn sample<'a>(metrics: &'a str, name: &str, labels: &[(&str, String)]) -> Option<&'a str> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.strip_prefix(name)?.strip_prefix('{')?.rsplit_once("} ")?;
        // Label values here never hold `",`: splitting on it is enough for the demo. Only the
        // last quote goes: the last value may be empty (`tool=""`).
        let pairs: Vec<(&str, &str)> =
            series.strip_suffix('"')?.split("\",").filter_map(|pair| pair.split_once("=\"")).collect();
        labels.iter().all(|(k, v)| pairs.contains(&(*k, v.as_str()))).then_some(value)
    })
}

/// Kills the child when the demo ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets mcp-observe detach cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Spawns `command` and returns it with the address it announced after `marker` on stderr.
fn spawn(command: &mut Command, marker: &str) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.split(&marker).nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
            }
        }
    });
    let addr =
        rx.recv_timeout(Duration::from_secs(30)).with_context(|| format!("{command:?} did not start"))?;
    Ok((child, addr))
}

/// A plain HTTP/1.0 GET: (status code, body).
fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("HTTP response without a body")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("HTTP status line")?;
    Ok((code, body.to_string()))
}
