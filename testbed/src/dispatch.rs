//! The proxy's JSON-RPC methods: `initialize` (opens a session), `ping`, `tools/list` over
//! every configured backend, and `tools/call` routed by `<server>__<tool>` through the ACL.

use mcp_probes::{Decision, Request, Status};
use serde_json::{Value, json};

use crate::{
    jsonrpc,
    pool::LeaseError,
    proxy::{Proxy, TOOL_SEPARATOR},
};

/// The ACL: `guest` may call only these tools; every other identity may call any.
pub const GUEST_TOOLS: [&str; 2] = ["alpha__echo", "alpha__sleep"];

/// Whether the ACL lets `identity` call the proxy tool `name` (`<server>__<tool>`).
pub fn acl_allows(identity: &str, name: &str) -> bool {
    identity != "guest" || GUEST_TOOLS.contains(&name)
}

/// What a request resolved to: the reply and its status (its route is on the request).
pub struct Outcome {
    pub body: Value,
    pub status: Status,
    /// A new `Mcp-Session-Id` to send back.
    pub session: Option<String>,
}

impl Outcome {
    pub fn reply(body: Value, status: Status) -> Self {
        Self { body, status, session: None }
    }
}

impl Proxy {
    pub async fn dispatch(
        &self,
        request: &mut Request,
        id: &Value,
        method: &str,
        identity: &str,
        message: &Value,
    ) -> Outcome {
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        match method {
            "initialize" => {
                let body = jsonrpc::result(
                    id,
                    json!({
                        "protocolVersion": jsonrpc::PROTOCOL_VERSION,
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "mcp-testbed-proxy", "version": env!("CARGO_PKG_VERSION")},
                    }),
                );
                Outcome { session: Some(self.sessions.open()), ..Outcome::reply(body, Status::Ok) }
            }
            "ping" => Outcome::reply(jsonrpc::result(id, json!({})), Status::Ok),
            "tools/list" => self.list_tools(id).await,
            "tools/call" => self.call_tool(request, id, identity, &params).await,
            _ => Outcome::reply(
                jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, "method not found"),
                Status::JsonrpcError,
            ),
        }
    }

    /// The tools of every backend that is or can be connected; the others are left out.
    async fn list_tools(&self, id: &Value) -> Outcome {
        let mut tools = Vec::new();
        for (server, lease) in self.pool.lease_all().await {
            let Ok(lease) = lease else { continue };
            tools.extend(lease.tools.iter().map(|tool| {
                let mut tool = tool.clone();
                let name = format!("{server}{TOOL_SEPARATOR}{}", tool["name"].as_str().unwrap_or_default());
                tool["name"] = Value::String(name);
                tool
            }));
        }
        Outcome::reply(jsonrpc::result(id, json!({"tools": tools})), Status::Ok)
    }

    /// Routes the call; the request carries its server and tool from the moment the route
    /// is known, so that a request dropped while the backend works keeps them.
    async fn call_tool(&self, request: &mut Request, id: &Value, identity: &str, params: &Value) -> Outcome {
        let name = params.get("name").and_then(Value::as_str).unwrap_or_default();
        let unknown = || {
            Outcome::reply(
                jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &format!("unknown tool {name:?}")),
                Status::JsonrpcError,
            )
        };
        let Some((server, tool)) = name.split_once(TOOL_SEPARATOR) else { return unknown() };
        let backend = match self.pool.lease(server).await {
            Ok(backend) => backend,
            Err(LeaseError::NotConfigured) => return unknown(),
            Err(LeaseError::ConnectFailed(why)) => {
                request.route(server.to_string(), tool.to_string());
                return Outcome::reply(
                    jsonrpc::error(id, jsonrpc::CONNECT_FAILED, &why),
                    Status::ConnectFailed,
                );
            }
        };
        if !backend.has_tool(tool) {
            return unknown();
        }
        request.route(server.to_string(), tool.to_string());
        let allowed = acl_allows(identity, name);
        mcp_probes::acl_decision(
            identity,
            server,
            tool,
            if allowed { Decision::Allow } else { Decision::Deny },
        );
        if !allowed {
            return Outcome::reply(
                jsonrpc::error(id, jsonrpc::ACCESS_DENIED, &format!("{identity} may not call {name}")),
                Status::AclDenied,
            );
        }
        let forwarded =
            json!({"name": tool, "arguments": params.get("arguments").cloned().unwrap_or(json!({}))});
        match tokio::time::timeout(self.call_timeout, backend.call("tools/call", forwarded)).await {
            Err(_) => Outcome::reply(
                jsonrpc::error(id, jsonrpc::REQUEST_TIMEOUT, "backend timed out"),
                Status::Timeout,
            ),
            Ok(Err(error)) => Outcome::reply(
                jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &error.to_string()),
                Status::JsonrpcError,
            ),
            Ok(Ok(reply)) => match (reply.get("result"), reply.get("error")) {
                (Some(result), _) => {
                    let status = if result["isError"] == true { Status::ToolError } else { Status::Ok };
                    Outcome::reply(jsonrpc::result(id, result.clone()), status)
                }
                (None, Some(error)) => {
                    let code = error["code"].as_i64().unwrap_or(jsonrpc::INTERNAL_ERROR);
                    let message = error["message"].as_str().unwrap_or("backend error");
                    Outcome::reply(jsonrpc::error(id, code, message), Status::JsonrpcError)
                }
                (None, None) => Outcome::reply(
                    jsonrpc::error(id, jsonrpc::INVALID_REQUEST, "malformed backend reply"),
                    Status::JsonrpcError,
                ),
            },
        }
    }
}
