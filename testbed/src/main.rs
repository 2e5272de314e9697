//! `mcp-testbed`: a probe-enabled MCP proxy (Streamable HTTP in front of stdio backends),
//! the backends themselves, and load clients that print ground truth from the outside.

mod backend;
mod burst;
mod call;
mod client;
mod dispatch;
mod jsonrpc;
mod load;
mod misbehave;
mod pool;
mod pool_scenario;
mod proxy;
mod reaper;
mod saturate;
mod sessions;
mod truth;
mod upstream;

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mcp-testbed", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MCP proxy: Streamable HTTP at /mcp, stdio child-process backends.
    Proxy(proxy::Args),
    /// Run one stdio MCP backend (the proxy starts these itself).
    Backend(backend::Args),
    /// Drive a deterministic request mix through a proxy and print the ground truth.
    Load(load::Args),
    /// Drive the backend pool through connects, crashes, reconnects and idle reaping, and
    /// print the ground truth.
    Pool(pool_scenario::Args),
    /// Send one tools/call through a proxy and print the JSON-RPC reply.
    Call(call::Args),
    /// Saturate a proxy with echo calls in closed loops and print the successful requests per second.
    Saturate(saturate::Args),
    /// Call the request probes N times as fast as possible once a line arrives on stdin.
    Burst {
        /// Number of start/end probe pairs to fire.
        #[arg(long)]
        requests: u64,
    },
    /// Call the probes like a buggy proxy would (bad pointers, duplicate ids, …), once each.
    Misbehave,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Proxy(args) => proxy::run(args).await,
            Command::Backend(args) => backend::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Pool(args) => pool_scenario::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Saturate(args) => saturate::run(args).await,
            Command::Burst { requests } => burst::run(requests),
            Command::Misbehave => misbehave::run(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-testbed: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `HOST:PORT` for clap.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s:?} is not HOST:PORT: {e}"))
}
