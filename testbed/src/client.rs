//! A small MCP Streamable HTTP client for the load clients: JSON-RPC requests over POST,
//! sessions opened by `initialize` and ended by `DELETE`.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::jsonrpc;

const SESSION_HEADER: &str = "mcp-session-id";

/// A response as the client saw it: HTTP status and JSON-RPC body.
pub struct Reply {
    pub http: u16,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> Option<i64> {
        self.body.pointer("/error/code").and_then(Value::as_i64)
    }
}

/// `--url`, for every command that talks to the proxy.
#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// The proxy's MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
}

impl Endpoint {
    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    pub fn new(url: &str) -> Self {
        Self { http: reqwest::Client::new(), url: url.to_string() }
    }

    /// Sends one JSON-RPC request; `token: None` sends no `Authorization` header at all.
    /// Returns the reply and the `Mcp-Session-Id` it carried.
    pub async fn request(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        method: &str,
        params: &Value,
    ) -> anyhow::Result<(Reply, Option<String>)> {
        let mut request = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .json(&jsonrpc::request(1, method, params.clone()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header(SESSION_HEADER, session);
        }
        let response = request.send().await.with_context(|| format!("POST {}", self.url))?;
        let http = response.status().as_u16();
        let session =
            response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body =
            response.json::<Value>().await.with_context(|| format!("{method}: response body is not JSON"))?;
        Ok((Reply { http, body }, session))
    }

    /// Sends `notifications/initialized`, which completes a session's handshake.
    pub async fn initialized(&self, token: &str, session: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header(SESSION_HEADER, session)
            .json(&jsonrpc::notification("notifications/initialized"))
            .send()
            .await?;
        if response.status() != 202 {
            bail!("notifications/initialized: expected HTTP 202, got {}", response.status());
        }
        Ok(())
    }

    /// Ends a session; fails unless the proxy answers 200.
    pub async fn delete_session(&self, token: &str, session: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(&self.url)
            .bearer_auth(token)
            .header(SESSION_HEADER, session)
            .send()
            .await
            .with_context(|| format!("DELETE {}", self.url))?;
        if response.status() != 200 {
            bail!("DELETE of session {session}: expected HTTP 200, got {}", response.status());
        }
        Ok(())
    }
}

/// `initialize` parameters of a client named `name`.
pub fn initialize_params(name: &str) -> Value {
    json!({
        "protocolVersion": jsonrpc::PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
    })
}
