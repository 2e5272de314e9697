//! The probe-enabled MCP proxy: MCP Streamable HTTP at `/mcp` in front of stdio backends,
//! with tools namespaced `<server>__<tool>`, identities from bearer tokens and a small
//! ACL. It calls the probes where `mcp serve` would; it has no exporter code.
//!
//! This module is the HTTP layer: authentication, the request probes, the whole-request
//! timeout, `DELETE` of sessions, and start-up and graceful shutdown. For benchmarks it can
//! also record in-process metrics (`--in-process-metrics`), the alternative to the probes.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt as _,
};
use mcp_probes::{AuthFailure, Request, SessionCloseReason, Status};
use mcp_testbed::in_process::{InProcess, InProcessKind};
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{dispatch::Outcome, jsonrpc, pool::Pool, reaper::Reaper, sessions::Sessions};

/// Separates the server from the tool in the proxy's tool names.
pub const TOOL_SEPARATOR: &str = "__";
pub const TRANSPORT: &str = "streamable_http";
const SESSION_HEADER: &str = "mcp-session-id";

/// Bearer tokens and the identities they authenticate.
pub const TOKENS: [(&str, &str); 3] =
    [("alice-token", "alice"), ("bob-token", "bob"), ("guest-token", "guest")];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve MCP Streamable HTTP on (path /mcp).
    #[arg(long, value_parser = crate::parse_addr, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Backends, comma-separated; each is `mcp-testbed backend --name NAME`, started on first use.
    #[arg(long, value_delimiter = ',', default_value = "alpha,beta")]
    backends: Vec<String>,
    /// Further backends whose child exits at once (`--fail-start`): every connect fails.
    #[arg(long, value_delimiter = ',')]
    broken_backends: Vec<String>,
    /// How long a tools/call may wait for its backend before the proxy answers with a timeout error.
    #[arg(long, default_value_t = 30_000)]
    call_timeout_ms: u64,
    /// Whole-request limit (0 = none): past it the client gets HTTP 504 and the request never
    /// ends for the probes, as with `mcp serve`'s MCP_PROXY_REQUEST_TIMEOUT.
    #[arg(long, default_value_t = 0)]
    request_timeout_ms: u64,
    /// Past `--request-timeout-ms`, let the dropped request guard end the request at once
    /// (status `timeout`, its labels as known) instead of leaving it unended as `mcp serve`
    /// without guards does.
    #[arg(long)]
    end_timed_out_requests: bool,
    /// End requests through the raw `request_end`, without the latency the guard measured
    /// (`elapsed_us` 0), as a proxy built before ABI v1 named that field.
    #[arg(long)]
    untimed_request_ends: bool,
    /// How often the idle reaper runs.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    reaper_interval_ms: u64,
    /// A backend unused for this long is disconnected by the reaper.
    #[arg(long, default_value_t = 300_000)]
    idle_timeout_ms: u64,
    /// A client session not seen for this long is expired by the reaper (0 = never).
    #[arg(long, default_value_t = 0)]
    session_idle_ms: u64,
    /// Every backend also lists this many echo tools `tool0000`….
    #[arg(long, default_value_t = 0)]
    extra_tools: usize,
    /// Every backend sleeps this long before answering anything, so connects take as long.
    #[arg(long, default_value_t = 0)]
    connect_delay_ms: u64,
    /// TCP keepalive on every accepted client connection (0 = off): idle time, probe
    /// interval N s and a single probe, so that a client that silently drops packets gets
    /// its connection aborted by a keepalive timeout about 2N s after it went idle. Lets
    /// tests provoke a real keepalive timeout.
    #[arg(long, default_value_t = 0)]
    tcp_keepalive_secs: u64,
    /// Start the idle reaper at the first request instead of at start-up, so that an
    /// observer attached before that request sees every pass the proxy reports.
    #[arg(long)]
    reaper_after_first_request: bool,
    /// Also record request metrics inside the proxy, where the request_end probe is called:
    /// with the `prometheus` crate (served at GET /metrics) or with OpenTelemetry as
    /// upstream `mcp serve` does. For benchmarks.
    #[arg(long, value_enum, default_value_t = InProcessKind::None)]
    in_process_metrics: InProcessKind,
}

pub struct Proxy {
    pub pool: Arc<Pool>,
    pub sessions: Arc<Sessions>,
    pub call_timeout: Duration,
    request_timeout: Option<Duration>,
    end_timed_out_requests: bool,
    untimed_request_ends: bool,
    /// Told of every request (see `--reaper-after-first-request`).
    first_request: Arc<Notify>,
    /// Request metrics recorded in the proxy itself (`--in-process-metrics`).
    in_process: InProcess,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let healthy: Vec<String> = args.backends.into_iter().filter(|n| !n.is_empty()).collect();
    let broken: Vec<String> = args.broken_backends.into_iter().filter(|n| !n.is_empty()).collect();
    let pool = Arc::new(Pool::new(&healthy, &broken, args.extra_tools, args.connect_delay_ms)?);
    let sessions = Arc::new(Sessions::new());
    let proxy = Arc::new(Proxy {
        pool: pool.clone(),
        sessions: sessions.clone(),
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        request_timeout: (args.request_timeout_ms > 0)
            .then(|| Duration::from_millis(args.request_timeout_ms)),
        end_timed_out_requests: args.end_timed_out_requests,
        untimed_request_ends: args.untimed_request_ends,
        first_request: Arc::new(Notify::new()),
        in_process: InProcess::new(args.in_process_metrics),
    });
    // Before the banner: a test may signal as soon as it reads it.
    let stop = stop_signal()?;
    mcp_probes::backends_configured(pool.configured());
    let (stop_reaper, reaper_stopped) = tokio::sync::oneshot::channel();
    let reaper = Reaper {
        every: Duration::from_millis(args.reaper_interval_ms),
        backend_idle: Duration::from_millis(args.idle_timeout_ms),
        session_idle: (args.session_idle_ms > 0).then(|| Duration::from_millis(args.session_idle_ms)),
        after: args.reaper_after_first_request.then(|| proxy.first_request.clone()),
    }
    .spawn(pool.clone(), sessions.clone(), reaper_stopped);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("mcp-testbed proxy: pid {} serving http://{}/mcp", std::process::id(), listener.local_addr()?);
    let keepalive = (args.tcp_keepalive_secs > 0).then(|| keepalive(args.tcp_keepalive_secs));
    let listener = listener.tap_io(move |stream| {
        if let Some(keepalive) = &keepalive
            && let Err(error) = SockRef::from(&*stream).set_tcp_keepalive(keepalive)
        {
            eprintln!("mcp-testbed proxy: setting TCP keepalive: {error}");
        }
    });
    let app = Router::new()
        .route("/mcp", post(handle).delete(close_session))
        .route("/metrics", get(metrics))
        .with_state(proxy);
    axum::serve(listener, app).with_graceful_shutdown(stop).await.context("serving")?;

    let _ = stop_reaper.send(());
    let runs = reaper.await.context("idle reaper panicked")?;
    pool.shutdown().await;
    sessions.close_all(SessionCloseReason::Shutdown);
    eprintln!("mcp-testbed proxy: idle reaper ran {runs} times");
    Ok(())
}

/// Keepalive probes after `secs` idle, every `secs`, and only one: an unanswered probe
/// aborts the connection.
fn keepalive(secs: u64) -> TcpKeepalive {
    let every = Duration::from_secs(secs);
    TcpKeepalive::new().with_time(every).with_interval(every).with_retries(1)
}

/// Resolves at the first SIGTERM or SIGINT; the handlers are installed right away.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn handle(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    proxy.first_request.notify_one();
    if let Some(session) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
        proxy.sessions.touch(session);
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(&Value::Null, jsonrpc::PARSE_ERROR, "parse error"),
                None,
            );
        }
    };
    // Notifications (no id) and responses (no method) are not requests: no probes.
    let (Some(id), Some(_)) = (message.get("id").cloned(), message.get("method")) else {
        return StatusCode::ACCEPTED.into_response();
    };
    // Run to the end even if the client goes away (hyper then drops this future), so
    // that every request_start meets its request_end — unless the request timeout fires.
    let handled = tokio::spawn(async move { proxy.respond(headers, message, id).await });
    handled.await.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl Proxy {
    async fn respond(&self, headers: HeaderMap, message: Value, id: Value) -> Response {
        let mut request = Request::start(TRANSPORT);
        let started = Instant::now();
        let finish = self.finish(&mut request, started, &headers, &message, &id);
        let finished = match self.request_timeout {
            Some(limit) => tokio::time::timeout(limit, finish).await.ok(),
            None => Some(finish.await),
        };
        match finished {
            Some((status, response)) => {
                self.end(request, status);
                response
            }
            None => {
                if !self.end_timed_out_requests {
                    // Like `mcp serve`: nothing ends it, the observer must expire it.
                    let _unended = request.into_raw();
                }
                // Otherwise dropped here, the guard ends it as a timeout.
                json_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    jsonrpc::error(&id, jsonrpc::REQUEST_TIMEOUT, "request timed out"),
                    None,
                )
            }
        }
    }

    fn end(&self, request: Request, status: Status) {
        if self.untimed_request_ends {
            mcp_probes::request_end(request.id(), &request.labels(status));
            let _ended = request.into_raw();
        } else {
            request.end(status);
        }
    }

    /// Authenticates and dispatches, setting the request's labels as they become known;
    /// records the in-process metrics and returns the status to end the request with.
    async fn finish(
        &self,
        request: &mut Request,
        started: Instant,
        headers: &HeaderMap,
        message: &Value,
        id: &Value,
    ) -> (Status, Response) {
        let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
        request.method(method.to_string());
        let identity = authenticate(headers);
        let outcome = match identity {
            Ok(identity) => {
                request.identity(identity);
                self.dispatch(request, id, method, identity, message).await
            }
            Err(reason) => {
                mcp_probes::auth_failure(reason);
                Outcome::reply(
                    jsonrpc::error(id, jsonrpc::UNAUTHORIZED, "missing or invalid bearer token"),
                    Status::AuthFailed,
                )
            }
        };
        self.in_process.record(&request.labels(outcome.status), started);
        let http =
            if outcome.status == Status::AuthFailed { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
        (outcome.status, json_response(http, outcome.body, outcome.session))
    }
}

/// `GET /metrics`: the in-process Prometheus metrics (`--in-process-metrics prometheus`).
async fn metrics(State(proxy): State<Arc<Proxy>>) -> Response {
    match proxy.in_process.encode() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `DELETE /mcp`: the client ends its session. Not a JSON-RPC request: no request probes.
async fn close_session(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> StatusCode {
    if let Err(reason) = authenticate(&headers) {
        mcp_probes::auth_failure(reason);
        return StatusCode::UNAUTHORIZED;
    }
    let Some(session) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    if proxy.sessions.close(session, SessionCloseReason::ClientClosed) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The identity a bearer token names, or why there is none.
fn authenticate(headers: &HeaderMap) -> Result<&'static str, AuthFailure> {
    let header = headers.get("authorization").ok_or(AuthFailure::MissingCredentials)?;
    let token = header.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    let known = token.and_then(|token| TOKENS.iter().find(|(t, _)| *t == token));
    known.map(|(_, identity)| *identity).ok_or(AuthFailure::InvalidCredentials)
}

fn json_response(status: StatusCode, body: Value, session: Option<String>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    response
}
