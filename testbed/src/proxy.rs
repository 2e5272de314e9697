//! The probe-enabled MCP proxy: MCP Streamable HTTP at `/mcp` in front of stdio backends,
//! with tools namespaced `<server>__<tool>`, identities from bearer tokens and a small
//! ACL. It calls the request probes where `mcp serve` would; it has no exporter code.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use mcp_probes::{RequestLabels, Status};
use serde_json::{Value, json};

use crate::{jsonrpc, upstream::Upstream};

/// Separates the server from the tool in the proxy's tool names.
pub const TOOL_SEPARATOR: &str = "__";
pub const TRANSPORT: &str = "streamable_http";
const SESSION_HEADER: &str = "mcp-session-id";

/// Bearer tokens and the identities they authenticate.
pub const TOKENS: [(&str, &str); 3] =
    [("alice-token", "alice"), ("bob-token", "bob"), ("guest-token", "guest")];
/// The ACL: `guest` may call only these tools; every other identity may call any.
pub const GUEST_TOOLS: [&str; 2] = ["alpha__echo", "alpha__sleep"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve MCP Streamable HTTP on (path /mcp).
    #[arg(long, value_parser = crate::parse_addr, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Backends to start, comma-separated; each is `mcp-testbed backend --name NAME`.
    #[arg(long, value_delimiter = ',', default_value = "alpha,beta")]
    backends: Vec<String>,
    /// How long a tools/call may take before the proxy answers with a timeout error.
    #[arg(long, default_value_t = 30_000)]
    call_timeout_ms: u64,
}

struct Proxy {
    backends: HashMap<String, Upstream>,
    next_request: AtomicU64,
    next_session: AtomicU64,
    call_timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut backends = HashMap::new();
    for name in &args.backends {
        backends.insert(name.clone(), Upstream::start(name).await?);
    }
    let proxy = Arc::new(Proxy {
        backends,
        next_request: AtomicU64::new(1),
        next_session: AtomicU64::new(1),
        call_timeout: Duration::from_millis(args.call_timeout_ms),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("mcp-testbed proxy: pid {} serving http://{}/mcp", std::process::id(), listener.local_addr()?);
    let app = Router::new().route("/mcp", post(handle)).with_state(proxy);
    axum::serve(listener, app).await.context("serving")
}

/// What a request resolved to, for its probe labels.
struct Outcome {
    body: Value,
    http: StatusCode,
    server: String,
    tool: String,
    status: Status,
    session: Option<String>,
}

impl Outcome {
    fn reply(body: Value, status: Status) -> Self {
        Self { body, http: StatusCode::OK, server: String::new(), tool: String::new(), status, session: None }
    }
}

async fn handle(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
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
    // that every request_start meets its request_end.
    let handled = tokio::spawn(async move { respond(proxy, headers, message, id).await });
    handled.await.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn respond(proxy: Arc<Proxy>, headers: HeaderMap, message: Value, id: Value) -> Response {
    let request = proxy.next_request.fetch_add(1, Ordering::Relaxed);
    mcp_probes::request_start(request);

    let method = message.get("method").and_then(Value::as_str).unwrap_or_default().to_string();
    let identity = identity(&headers);
    let outcome = match identity {
        None => Outcome {
            http: StatusCode::UNAUTHORIZED,
            ..Outcome::reply(
                jsonrpc::error(&id, jsonrpc::UNAUTHORIZED, "missing or invalid bearer token"),
                Status::AuthFailed,
            )
        },
        Some(identity) => proxy.dispatch(&id, &method, identity, &message).await,
    };

    mcp_probes::request_end(
        request,
        &RequestLabels {
            method: &method,
            transport: TRANSPORT,
            identity: identity.unwrap_or_default(),
            server: &outcome.server,
            tool: &outcome.tool,
            status: outcome.status,
        },
    );
    json_response(outcome.http, outcome.body, outcome.session)
}

fn identity(headers: &HeaderMap) -> Option<&'static str> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
    TOKENS.iter().find(|(t, _)| *t == token).map(|(_, identity)| *identity)
}

fn json_response(status: StatusCode, body: Value, session: Option<String>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    response
}

impl Proxy {
    async fn dispatch(&self, id: &Value, method: &str, identity: &str, message: &Value) -> Outcome {
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        match method {
            "initialize" => {
                let session = format!(
                    "{}-{:08x}",
                    std::process::id(),
                    self.next_session.fetch_add(1, Ordering::Relaxed)
                );
                let body = jsonrpc::result(
                    id,
                    json!({
                        "protocolVersion": jsonrpc::PROTOCOL_VERSION,
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "mcp-testbed-proxy", "version": env!("CARGO_PKG_VERSION")},
                    }),
                );
                Outcome { session: Some(session), ..Outcome::reply(body, Status::Ok) }
            }
            "ping" => Outcome::reply(jsonrpc::result(id, json!({})), Status::Ok),
            "tools/list" => {
                let mut names: Vec<&String> = self.backends.keys().collect();
                names.sort();
                let tools: Vec<Value> = names
                    .into_iter()
                    .flat_map(|server| {
                        self.backends[server].tools.iter().map(move |tool| {
                            let mut tool = tool.clone();
                            let name = format!(
                                "{server}{TOOL_SEPARATOR}{}",
                                tool["name"].as_str().unwrap_or_default()
                            );
                            tool["name"] = Value::String(name);
                            tool
                        })
                    })
                    .collect();
                Outcome::reply(jsonrpc::result(id, json!({"tools": tools})), Status::Ok)
            }
            "tools/call" => self.call_tool(id, identity, &params).await,
            _ => Outcome::reply(
                jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, "method not found"),
                Status::JsonrpcError,
            ),
        }
    }

    async fn call_tool(&self, id: &Value, identity: &str, params: &Value) -> Outcome {
        let name = params.get("name").and_then(Value::as_str).unwrap_or_default();
        let resolved = name.split_once(TOOL_SEPARATOR).and_then(|(server, tool)| {
            let backend = self.backends.get(server)?;
            backend.tools.iter().any(|t| t["name"] == tool).then_some((backend, server, tool))
        });
        let Some((backend, server, tool)) = resolved else {
            return Outcome::reply(
                jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &format!("unknown tool {name:?}")),
                Status::JsonrpcError,
            );
        };
        let routed = |body, status| Outcome {
            server: server.to_string(),
            tool: tool.to_string(),
            ..Outcome::reply(body, status)
        };
        if identity == "guest" && !GUEST_TOOLS.contains(&name) {
            return routed(
                jsonrpc::error(id, jsonrpc::ACCESS_DENIED, &format!("{identity} may not call {name}")),
                Status::AclDenied,
            );
        }
        let forwarded =
            json!({"name": tool, "arguments": params.get("arguments").cloned().unwrap_or(json!({}))});
        match tokio::time::timeout(self.call_timeout, backend.call("tools/call", forwarded)).await {
            Err(_) => {
                routed(jsonrpc::error(id, jsonrpc::REQUEST_TIMEOUT, "backend timed out"), Status::Timeout)
            }
            Ok(Err(error)) => {
                routed(jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &error.to_string()), Status::JsonrpcError)
            }
            Ok(Ok(reply)) => match (reply.get("result"), reply.get("error")) {
                (Some(result), _) => {
                    let status = if result["isError"] == true { Status::ToolError } else { Status::Ok };
                    routed(jsonrpc::result(id, result.clone()), status)
                }
                (None, Some(error)) => {
                    let code = error["code"].as_i64().unwrap_or(jsonrpc::INTERNAL_ERROR);
                    let message = error["message"].as_str().unwrap_or("backend error");
                    routed(jsonrpc::error(id, code, message), Status::JsonrpcError)
                }
                (None, None) => routed(
                    jsonrpc::error(id, jsonrpc::INVALID_REQUEST, "malformed backend reply"),
                    Status::JsonrpcError,
                ),
            },
        }
    }
}
