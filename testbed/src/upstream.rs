//! The proxy's side of one connection to a stdio backend: a child process spoken to in
//! line-delimited JSON-RPC, with any number of requests in flight (matched by id).
//!
//! A connection ends once, whoever notices first — the reader at EOF, the idle reaper or
//! shutdown — and only that one fires `backend_disconnect`.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use mcp_probes::{BackendConnection, DisconnectReason};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::jsonrpc;

/// Callers waiting for a reply, by request id; `None` once the backend's stdout closed,
/// so that later callers fail at once instead of waiting for an answer that cannot come.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Value>>>>>;

/// How to start a backend's child process.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub extra_tools: usize,
    pub startup_delay_ms: u64,
    /// Start it with `--fail-start`: it exits before answering anything.
    pub fail_start: bool,
}

pub struct Upstream {
    /// Tools as the backend lists them (names without the server prefix).
    pub tools: Vec<Value>,
    lifecycle: Arc<Lifecycle>,
    outbox: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    activity: Mutex<Activity>,
    /// The task that reaps the child; awaited at shutdown.
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// Calls in flight, and since when there were none.
struct Activity {
    in_flight: usize,
    idle_since: Instant,
}

impl Upstream {
    /// Starts `mcp-testbed backend --name SERVER`, initializes it and lists its tools.
    /// Dropping the result (or this future) kills the child.
    pub async fn start(connection: Arc<BackendConnection>, launch: Launch) -> anyhow::Result<Self> {
        let server = connection.server().to_string();
        let exe = std::env::current_exe().context("locating mcp-testbed")?;
        let mut command = Command::new(exe);
        command.args(["backend", "--name", &server]);
        command.args(["--extra-tools", &launch.extra_tools.to_string()]);
        command.args(["--startup-delay-ms", &launch.startup_delay_ms.to_string()]);
        if launch.fail_start {
            command.arg("--fail-start");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting backend {server}"))?;
        connection.child_spawned(child.id().unwrap_or_default());

        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (kill, supervisor) = supervise(child);
        let lifecycle = Arc::new(Lifecycle { connection, kill: Mutex::new(Some(kill)) });
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let upstream = Self {
            tools: Vec::new(),
            outbox: write_lines(stdin),
            pending: pending.clone(),
            lifecycle: lifecycle.clone(),
            next_id: AtomicU64::new(1),
            activity: Mutex::new(Activity { in_flight: 0, idle_since: Instant::now() }),
            supervisor: Mutex::new(Some(supervisor)),
        };
        tokio::spawn(read_replies(stdout, pending, lifecycle));
        upstream.initialize().await
    }

    async fn initialize(mut self) -> anyhow::Result<Self> {
        let client = json!({"name": "mcp-testbed-proxy", "version": env!("CARGO_PKG_VERSION")});
        let params =
            json!({"protocolVersion": jsonrpc::PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client});
        self.call("initialize", params).await?;
        self.send(&jsonrpc::notification("notifications/initialized"))?;
        let listed = self.call("tools/list", json!({})).await?;
        self.tools = listed.pointer("/result/tools").and_then(Value::as_array).cloned().ok_or_else(|| {
            anyhow!("backend {} listed no tools: {listed}", self.lifecycle.connection.server())
        })?;
        Ok(self)
    }

    /// Sends a request and waits for the backend's whole response message.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(waiters) => waiters.insert(id, tx),
            None => bail!("backend exited"),
        };
        // Whether answered, timed out or cancelled, the waiter leaves `pending`.
        let _forget = Forget { pending: &self.pending, id };
        self.send(&jsonrpc::request(id, method, params))?;
        rx.await.map_err(|_| anyhow!("backend exited"))
    }

    fn send(&self, message: &Value) -> anyhow::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.outbox.send(line).map_err(|_| anyhow!("backend exited"))
    }

    pub fn has_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|tool| tool["name"] == name)
    }

    pub fn is_live(&self) -> bool {
        self.lifecycle.connection.is_live()
    }

    /// Ends the connection and kills the child; false if something else ended it first.
    pub fn close(&self, reason: DisconnectReason) -> bool {
        self.lifecycle.close(reason)
    }

    /// Waits until the child has been reaped.
    pub async fn exited(&self) {
        let supervisor = self.supervisor.lock().expect("supervisor lock").take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    /// A caller starts using the connection.
    pub fn begin_use(&self) {
        self.activity.lock().expect("activity lock").in_flight += 1;
    }

    /// A caller is done with the connection.
    pub fn end_use(&self) {
        let mut activity = self.activity.lock().expect("activity lock");
        activity.in_flight -= 1;
        activity.idle_since = Instant::now();
    }

    /// How long the connection has had no caller; `None` while one is using it.
    pub fn idle_for(&self) -> Option<Duration> {
        let activity = self.activity.lock().expect("activity lock");
        (activity.in_flight == 0).then(|| activity.idle_since.elapsed())
    }
}

impl Drop for Upstream {
    /// A connection nobody holds any more (a failed connect, a replaced dead one) must not
    /// leave its child behind; the reader still reports a live one as an error.
    fn drop(&mut self) {
        self.lifecycle.kill();
    }
}

/// What the reader task and the connection's owner share: the connection guard (the
/// first to end it fires `backend_disconnect`) and the kill switch.
struct Lifecycle {
    connection: Arc<BackendConnection>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
}

impl Lifecycle {
    fn close(&self, reason: DisconnectReason) -> bool {
        // End it before killing: the EOF that the kill causes must find it ended.
        let was_live = self.connection.disconnect(reason);
        self.kill();
        was_live
    }

    fn kill(&self) {
        if let Some(kill) = self.kill.lock().expect("kill lock").take() {
            let _ = kill.send(());
        }
    }
}

/// Reaps the child when it exits by itself; kills it when asked or when the connection is
/// dropped (the kill sender goes away).
fn supervise(mut child: Child) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (kill, killed) = oneshot::channel::<()>();
    let supervisor = tokio::spawn(async move {
        let asked = tokio::select! {
            _ = child.wait() => false,
            _ = killed => true,
        };
        if asked {
            let _ = child.kill().await;
        }
    });
    (kill, supervisor)
}

/// Writes queued lines to the child's stdin; ends (closing stdin) when the sender drops.
fn write_lines(mut stdin: tokio::process::ChildStdin) -> mpsc::UnboundedSender<String> {
    let (outbox, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    outbox
}

/// Hands each reply to its caller; at EOF the backend is gone: ends the connection (the
/// disconnect comes before the callers' failures), then fails every caller at once.
async fn read_replies(stdout: tokio::process::ChildStdout, pending: Pending, lifecycle: Arc<Lifecycle>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
        let Some(id) = message.get("id").and_then(Value::as_u64) else { continue };
        let waiter = pending.lock().expect("pending lock").as_mut().and_then(|waiters| waiters.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(message);
        }
    }
    lifecycle.close(DisconnectReason::Error);
    pending.lock().expect("pending lock").take();
}

/// Removes a request's waiter from `pending` when its caller stops waiting.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(waiters) = self.pending.lock().expect("pending lock").as_mut() {
            waiters.remove(&self.id);
        }
    }
}
