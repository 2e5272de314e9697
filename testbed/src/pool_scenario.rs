//! The pool scenario: one client session (identity alice) walks a fresh proxy's backend pool
//! through initial connects, a backend that never connects, a crash and reconnect, idle
//! reaping and lazy reconnects, one request at a time. It prints the ground truth computed
//! from its own steps and the replies it got — never read from the proxy — and stops with
//! an error at the first reply that is not what the script expects.
//!
//! It assumes the proxy was started with `--backends HEALTHY [--broken-backends BROKEN]
//! --idle-timeout-ms IDLE --reaper-interval-ms (≤ IDLE/4)` and has served nobody yet.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use crate::{
    client::{Client, Endpoint, Reply, initialize_params},
    jsonrpc,
    proxy::TOOL_SEPARATOR,
    truth::{Credentials, Sent, Tally},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: Endpoint,
    /// The proxy's `--idle-timeout-ms`; each cycle ends idle for three times as long.
    #[arg(long)]
    idle_ms: u64,
    /// Connect, crash, reconnect and reap cycles.
    #[arg(long)]
    cycles: usize,
    /// The proxy's `--broken-backends` backend, if any: called once a cycle.
    #[arg(long)]
    broken: Option<String>,
    /// The proxy's `--backends`: the last one crashes every cycle, the first one is used
    /// once more at the end and left connected.
    #[arg(long, value_delimiter = ',', default_value = "alpha,beta")]
    healthy: Vec<String>,
}

const IDENTITY: &str = "alice";
const TOKEN: &str = "alice-token";

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.healthy.len() >= 2, "--healthy needs at least two backends");
    // Cycle 0's tools/list is what tells the tool counts.
    ensure!(args.cycles >= 1, "--cycles must be at least 1");
    let (first, crashing) = (args.healthy[0].clone(), args.healthy[args.healthy.len() - 1].clone());
    let mut script = Script::open(args.proxy.client()).await?;

    for cycle in 0..args.cycles {
        if cycle == 0 {
            // Needs every configured backend: the initial connects.
            for server in &args.healthy {
                script.pool.use_backend(server, true);
            }
            if let Some(broken) = &args.broken {
                script.pool.use_backend(broken, false);
            }
            let reply = script.step("tools/list", json!({}), false, "ok").await?;
            script.count_tools(&reply, &args.healthy, args.broken.as_deref())?;
        }
        for server in &args.healthy {
            script.echo(server).await?;
        }
        if let Some(broken) = &args.broken {
            script.pool.use_backend(broken, false);
            script.step("tools/call", call(broken, "echo"), false, "connect_failed").await?;
        }
        let reply = script.step("tools/call", call(&crashing, "crash"), true, "jsonrpc_error").await?;
        ensure!(
            reply.error_code() == Some(jsonrpc::INTERNAL_ERROR),
            "{crashing}__crash: expected the backend's exit (code {}), got {}",
            jsonrpc::INTERNAL_ERROR,
            reply.body
        );
        script.pool.disconnect(&crashing, "error");
        script.echo(&crashing).await?;
        // Idle for three times the idle timeout: the reaper takes every healthy backend.
        tokio::time::sleep(Duration::from_millis(3 * args.idle_ms)).await;
        for server in &args.healthy {
            script.pool.disconnect(server, "idle_reaped");
        }
    }
    script.echo(&first).await?;

    script.client.delete_session(TOKEN, &script.session).await?;
    script.tally.sessions_closed += 1;
    println!("{}", Value::Object(script.truth()));
    Ok(())
}

fn call(server: &str, tool: &str) -> Value {
    json!({"name": format!("{server}{TOOL_SEPARATOR}{tool}"), "arguments": {"text": "pool"}})
}

/// The client, its session and what it has seen so far.
struct Script {
    client: Client,
    session: String,
    tally: Tally,
    pool: PoolModel,
    /// Tools each healthy backend listed.
    tools: BTreeMap<String, u64>,
}

impl Script {
    async fn open(client: Client) -> anyhow::Result<Self> {
        let params = initialize_params("mcp-testbed-pool");
        let (reply, session) = client.request(Some(TOKEN), None, "initialize", &params).await?;
        let mut tally = Tally::default();
        let sent = Sent {
            identity: IDENTITY,
            credentials: Credentials::Valid,
            method: "initialize",
            params: &params,
            routable: false,
        };
        let status = tally.record(&sent, &reply)?.status;
        ensure!(status == "ok", "initialize: expected ok, got {status}: {}", reply.body);
        let session = session.context("the proxy sent no Mcp-Session-Id on initialize")?;
        client.initialized(TOKEN, &session).await?;
        tally.sessions_opened += 1;
        Ok(Self { client, session, tally, pool: PoolModel::default(), tools: BTreeMap::new() })
    }

    /// Sends one request, counts it and checks that it ended with status `expect`.
    async fn step(
        &mut self,
        method: &str,
        params: Value,
        routable: bool,
        expect: &str,
    ) -> anyhow::Result<Reply> {
        let (reply, _) = self.client.request(Some(TOKEN), Some(&self.session), method, &params).await?;
        let sent =
            Sent { identity: IDENTITY, credentials: Credentials::Valid, method, params: &params, routable };
        let status = self.tally.record(&sent, &reply)?.status;
        let what = params["name"].as_str().unwrap_or(method);
        ensure!(status == expect, "{what}: expected {expect}, got {status}: {}", reply.body);
        Ok(reply)
    }

    /// `SERVER__echo`, which connects the backend first if need be.
    async fn echo(&mut self, server: &str) -> anyhow::Result<()> {
        self.pool.use_backend(server, true);
        self.step("tools/call", call(server, "echo"), true, "ok").await?;
        Ok(())
    }

    /// Counts the tools/list reply's tools per server; only the broken backend lists none.
    fn count_tools(&mut self, reply: &Reply, healthy: &[String], broken: Option<&str>) -> anyhow::Result<()> {
        let tools =
            reply.body.pointer("/result/tools").and_then(Value::as_array).context("tools/list: no tools")?;
        for tool in tools {
            let name = tool["name"].as_str().unwrap_or_default();
            let (server, _) = name.split_once(TOOL_SEPARATOR).with_context(|| format!("tool {name:?}"))?;
            *self.tools.entry(server.to_string()).or_default() += 1;
        }
        for server in healthy {
            ensure!(self.tools.contains_key(server), "tools/list: backend {server} listed no tools");
        }
        if let Some(broken) = broken
            && self.tools.contains_key(broken)
        {
            bail!("tools/list: the broken backend {broken} listed tools");
        }
        Ok(())
    }

    fn truth(&self) -> serde_json::Map<String, Value> {
        let pool = &self.pool;
        let connects = pool.connects.iter().map(|((server, kind, result), count)| {
            json!({"server": server, "kind": kind, "result": result, "count": count})
        });
        let disconnects = pool
            .disconnects
            .iter()
            .map(|((server, reason), count)| json!({"server": server, "reason": reason, "count": count}));
        let child_spawns =
            pool.attempts.iter().map(|(server, count)| json!({"server": server, "count": count}));
        let tools = |server: &str| self.tools.get(server).copied().unwrap_or_default();
        let tool_cache =
            pool.successes.keys().map(|server| json!({"server": server, "entries": tools(server)}));
        // The first successful connect classifies every tool for the first time (misses);
        // every later one finds them all classified (hits).
        let classifier = pool.successes.iter().map(|(server, successes)| {
            json!({"server": server, "hits": tools(server) * (successes - 1), "misses": tools(server)})
        });
        let mut truth = self.tally.to_json();
        truth.insert("connects".into(), connects.collect());
        truth.insert("disconnects".into(), disconnects.collect());
        truth.insert("connected_at_end".into(), json!(pool.connected));
        truth.insert("child_spawns".into(), child_spawns.collect());
        truth.insert("tool_cache_entries".into(), tool_cache.collect());
        truth.insert("classifier".into(), classifier.collect());
        truth
    }
}

/// What the proxy's pool must have done, following the script's steps.
#[derive(Default)]
struct PoolModel {
    connected: BTreeSet<String>,
    /// Connect attempts (each spawns a child) per server.
    attempts: BTreeMap<String, u64>,
    /// Successful connects per server.
    successes: BTreeMap<String, u64>,
    connects: BTreeMap<(String, &'static str, &'static str), u64>,
    disconnects: BTreeMap<(String, &'static str), u64>,
}

impl PoolModel {
    /// The script is about to use `server`: unless connected, the proxy tries to connect it,
    /// which works for healthy backends only.
    fn use_backend(&mut self, server: &str, healthy: bool) {
        if self.connected.contains(server) {
            return;
        }
        let attempts = self.attempts.entry(server.to_string()).or_default();
        let kind = if *attempts == 0 { "initial" } else { "lazy" };
        *attempts += 1;
        let result = if healthy { "ok" } else { "error" };
        *self.connects.entry((server.to_string(), kind, result)).or_default() += 1;
        if healthy {
            self.connected.insert(server.to_string());
            *self.successes.entry(server.to_string()).or_default() += 1;
        }
    }

    fn disconnect(&mut self, server: &str, reason: &'static str) {
        if self.connected.remove(server) {
            *self.disconnects.entry((server.to_string(), reason)).or_default() += 1;
        }
    }
}
