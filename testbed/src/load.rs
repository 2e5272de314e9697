//! The load client: a deterministic request mix (from a seed) sent through the proxy
//! over MCP Streamable HTTP by three identities, each in a session of its own. It prints
//! the ground truth, one count per label set, judged from the responses it received —
//! never from the observer.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    backend,
    client::{Endpoint, initialize_params},
    proxy::TOOL_SEPARATOR,
    truth::{Credentials, Sent, Tally},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: Endpoint,
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
    /// A backend the proxy was given with `--broken-backends`: about 3% of the mix calls it.
    #[arg(long)]
    broken: Option<String>,
}

const IDENTITIES: [(&str, &str); 3] =
    [("alice", "alice-token"), ("bob", "bob-token"), ("guest", "guest-token")];
/// The backends the mix calls as working ones (the proxy's default `--backends`).
const HEALTHY: [&str; 2] = ["alpha", "beta"];

/// One planned request.
#[derive(Clone, Debug)]
struct Planned {
    identity: usize,
    credentials: Credentials,
    method: &'static str,
    params: Value,
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

fn plan(calls: usize, seed: u64, sleep_ms: u64, broken: Option<&str>) -> Vec<Planned> {
    let mut mix = Mix(seed);
    (0..calls)
        .map(|i| {
            let identity = [0, 0, 0, 1, 1, 2][mix.below(6) as usize];
            // The broken backend's share is drawn apart, so that without one a seed plans
            // what it always did.
            let (credentials, method, params) = match broken {
                Some(broken) if mix.below(100) < 3 => (
                    Credentials::Valid,
                    "tools/call",
                    call(&format!("{broken}__echo"), json!({"text": "hi"})),
                ),
                _ => pick(&mut mix, i, sleep_ms),
            };
            Planned { identity, credentials, method, params }
        })
        .collect()
}

/// One request of the main mix.
fn pick(mix: &mut Mix, i: usize, sleep_ms: u64) -> (Credentials, &'static str, Value) {
    let valid = |params| (Credentials::Valid, "tools/call", params);
    match mix.below(100) {
        0..=24 => valid(call("alpha__echo", json!({"text": format!("hello {i}")}))),
        25..=39 => valid(call("beta__echo", json!({"text": "hi"}))),
        40..=49 => valid(call("alpha__sleep", json!({"ms": sleep_ms}))),
        50..=62 => valid(call("beta__error", json!({}))),
        63..=72 => valid(call("alpha__fail", json!({}))),
        // A server nobody configured.
        73..=77 => valid(call("nosuch__echo", json!({}))),
        78..=87 => (Credentials::Valid, "tools/list", json!({})),
        88..=92 => (Credentials::Valid, "ping", json!({})),
        93..=94 => {
            (Credentials::Missing, "tools/call", call("alpha__echo", json!({"text": "no credentials"})))
        }
        95..=96 => (Credentials::Valid, "resources/list", json!({})),
        _ => (Credentials::Invalid, "tools/call", call("alpha__echo", json!({"text": "bad token"}))),
    }
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"name": name, "arguments": arguments})
}

/// Whether a planned call names a tool that exists on a healthy backend.
fn routable(planned: &Planned, broken: Option<&str>) -> bool {
    let name = planned.params["name"].as_str().unwrap_or_default();
    name.split_once(TOOL_SEPARATOR).is_some_and(|(server, tool)| {
        planned.method == "tools/call"
            && HEALTHY.contains(&server)
            && broken != Some(server)
            && backend::TOOLS.contains(&tool)
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = args.proxy.client();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let mut sessions = Vec::new();
    for (identity, token) in IDENTITIES {
        let params = initialize_params("mcp-testbed-load");
        let (reply, session) = client.request(Some(token), None, "initialize", &params).await?;
        let sent = Sent {
            identity,
            credentials: Credentials::Valid,
            method: "initialize",
            params: &params,
            routable: false,
        };
        tally.lock().expect("tally lock").record(&sent, &reply)?;
        let session = session.context("the proxy sent no Mcp-Session-Id on initialize")?;
        client.initialized(token, &session).await?;
        tally.lock().expect("tally lock").sessions_opened += 1;
        sessions.push(session);
    }

    let broken = args.broken.as_deref();
    let plan = Arc::new(plan(args.calls, args.seed, args.sleep_ms, broken));
    let next = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(sessions);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, plan, next, sessions, tally, broken) = (
            client.clone(),
            plan.clone(),
            next.clone(),
            sessions.clone(),
            tally.clone(),
            args.broken.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(item) = plan.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return anyhow::Ok(());
                };
                let (identity, token) = IDENTITIES[item.identity];
                let token = match item.credentials {
                    Credentials::Valid => Some(token),
                    Credentials::Invalid => Some("not-a-token"),
                    Credentials::Missing => None,
                };
                let session = Some(sessions[item.identity].as_str());
                let (reply, _) = client.request(token, session, item.method, &item.params).await?;
                let sent = Sent {
                    identity,
                    credentials: item.credentials,
                    method: item.method,
                    params: &item.params,
                    routable: routable(item, broken.as_deref()),
                };
                tally.lock().expect("tally lock").record(&sent, &reply)?;
            }
        }));
    }
    for worker in workers {
        worker.await.context("load worker panicked")??;
    }

    for ((_, token), session) in IDENTITIES.iter().zip(sessions.iter()) {
        client.delete_session(token, session).await?;
        tally.lock().expect("tally lock").sessions_closed += 1;
    }
    let truth = tally.lock().expect("tally lock").to_json();
    println!("{}", Value::Object(truth));
    Ok(())
}
