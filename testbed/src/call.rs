//! One `tools/call` through the proxy, for tests that need the proxy to do one thing on
//! demand (e.g. `alpha__connect`). No session: the proxy serves calls without one, so the
//! call is the only request the probes see.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::client::Endpoint;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: Endpoint,
    /// The proxy's tool name, `<server>__<tool>`, e.g. alpha__connect.
    #[arg(long)]
    tool: String,
    /// The tool's arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Bearer token to authenticate with.
    #[arg(long, default_value = "alice-token")]
    token: String,
}

/// Prints `{"http": STATUS, "result": …, "error": …}`; fails only without a JSON-RPC reply.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let arguments: Value =
        serde_json::from_str(&args.args).with_context(|| format!("--args {:?} is not JSON", args.args))?;
    if !arguments.is_object() {
        bail!("--args must be a JSON object, not {arguments}");
    }
    let params = json!({"name": args.tool, "arguments": arguments});
    let client = args.proxy.client();
    let (reply, _) = client.request(Some(&args.token), None, "tools/call", &params).await?;
    let (result, error) = (reply.body.get("result"), reply.body.get("error"));
    if result.is_none() && error.is_none() {
        bail!("HTTP {}: not a JSON-RPC reply: {}", reply.http, reply.body);
    }
    let null = Value::Null;
    println!(
        "{}",
        json!({"http": reply.http, "result": result.unwrap_or(&null), "error": error.unwrap_or(&null)})
    );
    Ok(())
}
