//! A stdio MCP server with deterministic tools: `echo`, `sleep` (for `ms` milliseconds),
//! `error` (a tool error, `isError: true`), `fail` (a JSON-RPC error), `crash` (the process
//! exits without answering), `connect` (opens `count` TCP connections to `addr`, so that
//! tests know how many outbound connections the proxy's process tree made) and optionally
//! `tool0000`… (echoes, to grow the tool cache).
//! One JSON-RPC message per line; requests are served concurrently.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    sync::mpsc,
};

use crate::jsonrpc;

/// The tools every backend lists (besides `--extra-tools`).
pub const TOOLS: [&str; 6] = ["echo", "sleep", "error", "fail", "crash", "connect"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server name reported in `initialize`.
    #[arg(long)]
    name: String,
    /// Also list `tool0000` … `tool{N-1}`, which behave like `echo`.
    #[arg(long, default_value_t = 0)]
    extra_tools: usize,
    /// Sleep this long before reading stdin, so that connecting takes at least as long.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// Exit at once with status 1 without answering: a backend that never connects.
    #[arg(long)]
    fail_start: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.fail_start {
        // Silently: the proxy's stderr is read by tests.
        std::process::exit(1);
    }
    tokio::time::sleep(Duration::from_millis(args.startup_delay_ms)).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(message) = rx.recv().await {
            let mut line = message.to_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            let _ = tx.send(jsonrpc::error(&Value::Null, jsonrpc::PARSE_ERROR, "parse error"));
            continue;
        };
        let Some(id) = message.get("id").cloned() else { continue }; // a notification
        let tx = tx.clone();
        let name = args.name.clone();
        let extra_tools = args.extra_tools;
        tokio::spawn(async move {
            let _ = tx.send(handle(&name, extra_tools, &id, &message).await);
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

async fn handle(name: &str, extra_tools: usize, id: &Value, message: &Value) -> Value {
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    match message.get("method").and_then(Value::as_str).unwrap_or_default() {
        "initialize" => jsonrpc::result(
            id,
            json!({
                "protocolVersion": jsonrpc::PROTOCOL_VERSION,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
            }),
        ),
        "ping" => jsonrpc::result(id, json!({})),
        "tools/list" => jsonrpc::result(id, json!({"tools": tools(extra_tools)})),
        "tools/call" => call(id, &params, extra_tools).await,
        _ => jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, "method not found"),
    }
}

fn tools(extra_tools: usize) -> Vec<Value> {
    let tool = |name: &str, description: &str, properties: Value| {
        json!({
            "name": name,
            "description": description,
            "inputSchema": {"type": "object", "properties": properties},
        })
    };
    let text = || json!({"text": {"type": "string"}});
    let mut tools = vec![
        tool("echo", "Returns its text", text()),
        tool("sleep", "Sleeps for ms milliseconds", json!({"ms": {"type": "integer"}})),
        tool("error", "Always returns a tool error (isError: true)", json!({})),
        tool("fail", "Always fails with a JSON-RPC error", json!({})),
        tool(
            "crash",
            "Ends the backend process without answering, with exit status `status` (default 1)",
            json!({"status": {"type": "integer", "minimum": 0, "maximum": 255}}),
        ),
        tool(
            "connect",
            "Opens count TCP connections to addr one after another, each held open for hold_ms",
            json!({
                "addr": {"type": "string", "description": "HOST:PORT"},
                "count": {"type": "integer", "minimum": 0},
                "hold_ms": {"type": "integer", "minimum": 0},
            }),
        ),
    ];
    tools.extend((0..extra_tools).map(|i| tool(&extra_tool(i), "Returns its text", text())));
    tools
}

fn extra_tool(index: usize) -> String {
    format!("tool{index:04}")
}

fn is_extra_tool(name: &str, extra_tools: usize) -> bool {
    let index = name.strip_prefix("tool").and_then(|n| n.parse::<usize>().ok());
    index.is_some_and(|i| i < extra_tools && extra_tool(i) == name)
}

async fn call(id: &Value, params: &Value, extra_tools: usize) -> Value {
    let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    let echo = || {
        let text = arguments.get("text").and_then(Value::as_str).unwrap_or_default();
        jsonrpc::result(id, jsonrpc::text_result(text, false))
    };
    match params.get("name").and_then(Value::as_str).unwrap_or_default() {
        "echo" => echo(),
        "sleep" => {
            let ms = arguments.get("ms").and_then(Value::as_u64).unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            jsonrpc::result(id, jsonrpc::text_result(&format!("slept {ms} ms"), false))
        }
        "error" => jsonrpc::result(id, jsonrpc::text_result("the tool reported an error", true)),
        "fail" => jsonrpc::error(id, jsonrpc::BACKEND_ERROR, "the tool failed"),
        // The proxy must notice the lost connection by itself (EOF on our stdout).
        "crash" => std::process::exit(arguments.get("status").and_then(Value::as_i64).unwrap_or(1) as i32),
        "connect" => {
            let addr = arguments.get("addr").and_then(Value::as_str).unwrap_or_default();
            let count = arguments.get("count").and_then(Value::as_u64).unwrap_or(1);
            let hold_ms = arguments.get("hold_ms").and_then(Value::as_u64).unwrap_or(0).min(600_000);
            let (text, is_error) = match connect(addr, count, Duration::from_millis(hold_ms)).await {
                Ok(()) => (format!("opened {count} connections to {addr}"), false),
                Err(error) => (format!("connecting to {addr}: {error}"), true),
            };
            jsonrpc::result(id, jsonrpc::text_result(&text, is_error))
        }
        name if is_extra_tool(name, extra_tools) => echo(),
        _ => jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "unknown tool"),
    }
}

/// Opens `count` connections to `addr` one at a time; each is held for `hold`, then dropped.
async fn connect(addr: &str, count: u64, hold: Duration) -> std::io::Result<()> {
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        tokio::time::sleep(hold).await;
        drop(stream);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_tools_are_numbered_from_zero_with_four_digits() {
        assert_eq!(tools(2).len(), TOOLS.len() + 2);
        assert!(is_extra_tool("tool0000", 2) && is_extra_tool("tool0001", 2));
        assert!(!is_extra_tool("tool0002", 2) && !is_extra_tool("tool1", 2) && !is_extra_tool("echo", 2));
    }
}
