//! The proxy's side of one stdio backend: a child process spoken to in line-delimited
//! JSON-RPC, with any number of requests in flight (matched by id).

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot},
};

use crate::jsonrpc;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Upstream {
    pub name: String,
    /// Tools as the backend lists them (names without the server prefix).
    pub tools: Vec<Value>,
    outbox: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    _child: Child,
}

impl Upstream {
    /// Starts `mcp-testbed backend --name NAME`, initializes it and lists its tools.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating mcp-testbed")?;
        let mut child = Command::new(exe)
            .args(["backend", "--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting backend {name}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (outbox, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let replies = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
                let Some(id) = message.get("id").and_then(Value::as_u64) else { continue };
                if let Some(waiter) = replies.lock().expect("pending lock").remove(&id) {
                    let _ = waiter.send(message);
                }
            }
            // The backend is gone: fail every caller now rather than at its timeout.
            replies.lock().expect("pending lock").clear();
        });
        let mut upstream = Self {
            name: name.to_string(),
            tools: Vec::new(),
            outbox,
            pending,
            next_id: AtomicU64::new(1),
            _child: child,
        };
        upstream
            .call("initialize", json!({"protocolVersion": jsonrpc::PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "mcp-testbed-proxy", "version": env!("CARGO_PKG_VERSION")}}))
            .await?;
        upstream.send(&jsonrpc::notification("notifications/initialized"))?;
        let listed = upstream.call("tools/list", json!({})).await?;
        upstream.tools = listed
            .pointer("/result/tools")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| anyhow!("backend {name} listed no tools: {listed}"))?;
        Ok(upstream)
    }

    /// Sends a request and waits for the backend's whole response message.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        // Whether answered, timed out or cancelled, the waiter leaves `pending`.
        let _forget = Forget { pending: &self.pending, id };
        self.send(&jsonrpc::request(id, method, params))?;
        rx.await.map_err(|_| anyhow!("backend {} exited", self.name))
    }

    fn send(&self, message: &Value) -> anyhow::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.outbox.send(line).map_err(|_| anyhow!("backend {} is gone", self.name))
    }
}

/// Removes a request's waiter from `pending` when its caller stops waiting.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
    }
}
