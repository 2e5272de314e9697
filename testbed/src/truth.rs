//! Ground truth as a load client judges it — from what it sent and the replies it got,
//! never from the proxy's or the observer's view — tallied per label set.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{Map, Value, json};

use crate::{client::Reply, dispatch::acl_allows, jsonrpc, proxy::TOOL_SEPARATOR, proxy::TRANSPORT};

/// What a request authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    Valid,
    /// A bearer token the proxy does not know.
    Invalid,
    /// No `Authorization` header at all.
    Missing,
}

/// One request as it was sent.
pub struct Sent<'a> {
    pub identity: &'a str,
    pub credentials: Credentials,
    pub method: &'a str,
    pub params: &'a Value,
    /// A `tools/call` of a tool that exists on a healthy backend, so one that reaches the
    /// ACL even if the request timeout cuts it afterwards.
    pub routable: bool,
}

/// The labels the proxy should give a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    pub method: String,
    pub transport: &'static str,
    pub server: String,
    pub tool: String,
    pub identity: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AclCheck {
    identity: String,
    server: String,
    tool: String,
    decision: &'static str,
}

#[derive(Default)]
pub struct Tally {
    requests: BTreeMap<Labels, u64>,
    acl: BTreeMap<AclCheck, u64>,
    auth_failures: BTreeMap<&'static str, u64>,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
}

impl Tally {
    /// Judges one request from its reply, counts it and returns its labels.
    pub fn record(&mut self, sent: &Sent<'_>, reply: &Reply) -> anyhow::Result<Labels> {
        let (labels, decision) = judge(sent, reply);
        if labels.status == "auth_failed" {
            let reason = match sent.credentials {
                Credentials::Missing => "missing_credentials",
                Credentials::Invalid => "invalid_credentials",
                Credentials::Valid => {
                    bail!("{}: the proxy refused a valid token: {}", sent.method, reply.body)
                }
            };
            *self.auth_failures.entry(reason).or_default() += 1;
        }
        if let Some(decision) = decision {
            let (server, tool) = tool_name(sent);
            let check = AclCheck {
                identity: sent.identity.to_string(),
                server: server.to_string(),
                tool: tool.to_string(),
                decision,
            };
            *self.acl.entry(check).or_default() += 1;
        }
        *self.requests.entry(labels.clone()).or_default() += 1;
        Ok(labels)
    }

    /// `requests`, `acl`, `auth_failures` and `sessions`, as the clients print them.
    pub fn to_json(&self) -> Map<String, Value> {
        let requests = self.requests.iter().map(|(l, count)| {
            json!({
                "method": l.method, "transport": l.transport, "server": l.server, "tool": l.tool,
                "identity": l.identity, "status": l.status, "count": count,
            })
        });
        let acl = self.acl.iter().map(|(a, count)| {
            json!({
                "identity": a.identity, "server": a.server, "tool": a.tool, "decision": a.decision,
                "count": count,
            })
        });
        let auth_failures =
            self.auth_failures.iter().map(|(reason, count)| json!({"reason": reason, "count": count}));
        let sessions =
            [json!({"transport": TRANSPORT, "opened": self.sessions_opened, "closed": self.sessions_closed})];
        let mut out = Map::new();
        out.insert("requests".into(), requests.collect());
        out.insert("acl".into(), acl.collect());
        out.insert("auth_failures".into(), auth_failures.collect());
        out.insert("sessions".into(), sessions.into_iter().collect());
        out
    }
}

/// `(server, tool)` of a `tools/call`, empty otherwise.
fn tool_name<'a>(sent: &Sent<'a>) -> (&'a str, &'a str) {
    let name = if sent.method == "tools/call" { sent.params["name"].as_str() } else { None };
    name.and_then(|n| n.split_once(TOOL_SEPARATOR)).unwrap_or_default()
}

/// The request's labels and, if it reached the ACL, the ACL's decision.
fn judge(sent: &Sent<'_>, reply: &Reply) -> (Labels, Option<&'static str>) {
    let is_call = sent.method == "tools/call";
    if reply.http == 504 {
        // The proxy never ended this request, so nobody can know its labels; a routable
        // call was checked against the ACL before it was cut.
        let name = sent.params["name"].as_str().unwrap_or_default();
        let decision = (is_call && sent.routable).then_some(if acl_allows(sent.identity, name) {
            "allow"
        } else {
            "deny"
        });
        let labels = Labels {
            method: String::new(),
            transport: "",
            server: String::new(),
            tool: String::new(),
            identity: String::new(),
            status: "timeout",
        };
        return (labels, decision);
    }
    let code = reply.error_code();
    let status = match (reply.http, code) {
        (401, _) => "auth_failed",
        (_, Some(jsonrpc::ACCESS_DENIED)) => "acl_denied",
        (_, Some(jsonrpc::REQUEST_TIMEOUT)) => "timeout",
        (_, Some(jsonrpc::CONNECT_FAILED)) => "connect_failed",
        (_, Some(_)) => "jsonrpc_error",
        _ if reply.body.pointer("/result/isError") == Some(&Value::Bool(true)) => "tool_error",
        _ => "ok",
    };
    // Requests refused before routing never reached a backend (backends never answer
    // INVALID_PARAMS: the proxy only forwards tools they listed).
    let routed = is_call && status != "auth_failed" && code != Some(jsonrpc::INVALID_PARAMS);
    let (server, tool) = if routed { tool_name(sent) } else { ("", "") };
    // A routed call reached the ACL once its backend was connected.
    let decision = match status {
        _ if !routed => None,
        "acl_denied" => Some("deny"),
        "connect_failed" => None,
        _ => Some("allow"),
    };
    let identity = if sent.credentials == Credentials::Valid { sent.identity } else { "" };
    let labels = Labels {
        method: sent.method.to_string(),
        transport: TRANSPORT,
        server: server.to_string(),
        tool: tool.to_string(),
        identity: identity.to_string(),
        status,
    };
    (labels, decision)
}
