//! The load client: a deterministic request mix (from a seed) sent through the proxy
//! over MCP Streamable HTTP. It prints the ground truth, one count per label set, judged
//! from the responses it received — never from the observer.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{jsonrpc, proxy::TOOL_SEPARATOR};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
    /// Requests to send after each identity's `initialize`.
    #[arg(long)]
    calls: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of the mix; the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Milliseconds each `sleep` tool call sleeps.
    #[arg(long, default_value_t = 100)]
    sleep_ms: u64,
}

const IDENTITIES: [(&str, &str); 3] =
    [("alice", "alice-token"), ("bob", "bob-token"), ("guest", "guest-token")];

/// One planned request.
#[derive(Clone, Debug)]
struct Planned {
    identity: usize,
    /// Send a token the proxy does not know.
    bad_token: bool,
    method: &'static str,
    params: Value,
}

/// Labels of a request as judged from its response.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Truth {
    method: String,
    server: String,
    tool: String,
    identity: String,
    status: &'static str,
}

/// SplitMix64: a tiny, well-known deterministic generator; no need for more here.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn plan(calls: usize, seed: u64, sleep_ms: u64) -> Vec<Planned> {
    let mut mix = Mix(seed);
    (0..calls)
        .map(|i| {
            let identity = [0, 0, 0, 1, 1, 2][mix.below(6) as usize];
            let call =
                |name: &str, arguments: Value| ("tools/call", json!({"name": name, "arguments": arguments}));
            let (method, params) = match mix.below(100) {
                0..=24 => call("alpha__echo", json!({"text": format!("hello {i}")})),
                25..=39 => call("beta__echo", json!({"text": "hi"})),
                40..=49 => call("alpha__sleep", json!({"ms": sleep_ms})),
                50..=62 => call("beta__error", json!({})),
                63..=72 => call("alpha__fail", json!({})),
                73..=77 => call("gamma__echo", json!({})),
                78..=87 => ("tools/list", json!({})),
                88..=94 => ("ping", json!({})),
                95..=96 => ("resources/list", json!({})),
                _ => call("alpha__echo", json!({"text": "no token"})),
            };
            let bad_token = params["arguments"]["text"] == "no token";
            Planned { identity, bad_token, method, params }
        })
        .collect()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = reqwest::Client::new();
    let counts: Arc<Mutex<BTreeMap<Truth, u64>>> = Arc::default();
    let mut sessions = Vec::new();
    for (identity, token) in IDENTITIES {
        let params = json!({"protocolVersion": jsonrpc::PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "mcp-testbed-load", "version": env!("CARGO_PKG_VERSION")}});
        let (reply, session) = post(&client, &args.url, token, None, "initialize", &params).await?;
        record(&counts, judge(identity, "initialize", &params, &reply));
        let session = session.context("the proxy sent no Mcp-Session-Id on initialize")?;
        notify(&client, &args.url, token, &session).await?;
        sessions.push(session);
    }
    let plan = Arc::new(plan(args.calls, args.seed, args.sleep_ms));
    let next = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(sessions);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, plan, next, sessions, counts, url) =
            (client.clone(), plan.clone(), next.clone(), sessions.clone(), counts.clone(), args.url.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(item) = plan.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return anyhow::Ok(());
                };
                let (identity, token) = IDENTITIES[item.identity];
                let token = if item.bad_token { "not-a-token" } else { token };
                let session = Some(sessions[item.identity].as_str());
                let (reply, _) = post(&client, &url, token, session, item.method, &item.params).await?;
                let identity = if item.bad_token { "" } else { identity };
                record(&counts, judge(identity, item.method, &item.params, &reply));
            }
        }));
    }
    for worker in workers {
        worker.await.context("load worker panicked")??;
    }
    let counts = counts.lock().expect("counts lock");
    let requests: Vec<Value> = counts
        .iter()
        .map(|(t, count)| {
            json!({"method": t.method, "server": t.server, "tool": t.tool, "identity": t.identity, "status": t.status, "count": count})
        })
        .collect();
    println!("{}", json!({ "requests": requests }));
    Ok(())
}

fn record(counts: &Mutex<BTreeMap<Truth, u64>>, truth: Truth) {
    *counts.lock().expect("counts lock").entry(truth).or_default() += 1;
}

/// The response as the client saw it: HTTP status and JSON-RPC body.
struct Reply {
    http: u16,
    body: Value,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    method: &str,
    params: &Value,
) -> anyhow::Result<(Reply, Option<String>)> {
    let mut request = client
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&jsonrpc::request(1, method, params.clone()));
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.with_context(|| format!("POST {url}"))?;
    let http = response.status().as_u16();
    let session = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body =
        response.json::<Value>().await.with_context(|| format!("{method}: response body is not JSON"))?;
    Ok((Reply { http, body }, session))
}

async fn notify(client: &reqwest::Client, url: &str, token: &str, session: &str) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .json(&jsonrpc::notification("notifications/initialized"))
        .send()
        .await?;
    if response.status() != 202 {
        bail!("notifications/initialized: expected HTTP 202, got {}", response.status());
    }
    Ok(())
}

/// Labels the proxy should report for this request, judged from its response alone.
fn judge(identity: &str, method: &str, params: &Value, reply: &Reply) -> Truth {
    let (mut server, mut tool) = (String::new(), String::new());
    if method == "tools/call"
        && let Some((s, t)) = params["name"].as_str().and_then(|n| n.split_once(TOOL_SEPARATOR))
    {
        (server, tool) = (s.to_string(), t.to_string());
    }
    let error_code = reply.body.pointer("/error/code").and_then(Value::as_i64);
    let status = match (reply.http, error_code) {
        (401, _) => "auth_failed",
        (_, Some(jsonrpc::ACCESS_DENIED)) => "acl_denied",
        (_, Some(jsonrpc::REQUEST_TIMEOUT)) => "timeout",
        (_, Some(_)) => "jsonrpc_error",
        _ if reply.body.pointer("/result/isError") == Some(&Value::Bool(true)) => "tool_error",
        _ => "ok",
    };
    // Requests refused before routing never reached a backend (backends never answer
    // INVALID_PARAMS: the proxy only forwards tools they listed).
    if status == "auth_failed" || error_code == Some(jsonrpc::INVALID_PARAMS) {
        (server, tool) = (String::new(), String::new());
    }
    Truth { method: method.to_string(), server, tool, identity: identity.to_string(), status }
}
