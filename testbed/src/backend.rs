//! A stdio MCP server with deterministic tools: `echo`, `sleep` (for `ms` milliseconds),
//! `error` (a tool error, `isError: true`) and `fail` (a JSON-RPC error).
//! One JSON-RPC message per line; requests are served concurrently.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    sync::mpsc,
};

use crate::jsonrpc;

pub async fn run(name: &str) -> anyhow::Result<()> {
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
        let name = name.to_string();
        tokio::spawn(async move {
            let _ = tx.send(handle(&name, &id, &message).await);
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

async fn handle(name: &str, id: &Value, message: &Value) -> Value {
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
        "tools/list" => jsonrpc::result(id, json!({"tools": tools()})),
        "tools/call" => call(id, &params).await,
        _ => jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, "method not found"),
    }
}

fn tools() -> Value {
    let tool = |name: &str, description: &str, properties: Value| json!({"name": name, "description": description, "inputSchema": {"type": "object", "properties": properties}});
    json!([
        tool("echo", "Returns its text", json!({"text": {"type": "string"}})),
        tool("sleep", "Sleeps for ms milliseconds", json!({"ms": {"type": "integer"}})),
        tool("error", "Always returns a tool error (isError: true)", json!({})),
        tool("fail", "Always fails with a JSON-RPC error", json!({})),
    ])
}

async fn call(id: &Value, params: &Value) -> Value {
    let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    match params.get("name").and_then(Value::as_str).unwrap_or_default() {
        "echo" => {
            let text = arguments.get("text").and_then(Value::as_str).unwrap_or_default();
            jsonrpc::result(id, jsonrpc::text_result(text, false))
        }
        "sleep" => {
            let ms = arguments.get("ms").and_then(Value::as_u64).unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            jsonrpc::result(id, jsonrpc::text_result(&format!("slept {ms} ms"), false))
        }
        "error" => jsonrpc::result(id, jsonrpc::text_result("the tool reported an error", true)),
        "fail" => jsonrpc::error(id, jsonrpc::BACKEND_ERROR, "the tool failed"),
        _ => jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "unknown tool"),
    }
}
