//! `mcp-observe`: Prometheus metrics for an MCP proxy, from eBPF uprobes on the probe
//! functions it calls and from tracepoints on its TCP connections and child processes.
//! The proxy carries no exporter code.

// By stage; which module imports which is drawn in docs/architecture.md.
// Finding and attaching: the kernel, the probes, the programs, the processes.
mod backing;
mod error;
mod hooks;
mod kernel;
mod loader;
mod maps;
mod probes;
mod ring;
mod tracefs;
mod tree;
mod workload;
// Events: ring-buffer records to typed events to families to text.
mod decode;
mod events;
mod http;
mod labels;
mod metrics;
mod spans;
mod state;
mod targets;
// The binary: its command line, start-up, `--check`, `top`.
mod check;
mod cli;
mod start;
mod top;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    error::ObserveError,
    start::{Mode, serve, unique_pids},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The live table owns the terminal: log nothing unless asked to (RUST_LOG).
    let default_log = if matches!(cli.command, Some(Command::Top(_))) { "off" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    let result = match &cli.command {
        Some(Command::Agent(agent)) if !agent.proc.join("1/stat").is_file() => {
            Err(ObserveError::NotProc { path: agent.proc.clone() })
        }
        Some(Command::Agent(agent)) => {
            tree::set_proc_root(agent.proc.clone());
            let sources = workload::Sources {
                proc_root: agent.proc.clone(),
                container_logs: agent.container_logs.clone(),
                ..workload::Sources::default()
            };
            let mode = Mode { pids: None, kernel_only: false, sources };
            if agent.check {
                check::check(&agent.common, &mode)
            } else {
                serve(&agent.common, mode, agent.listen.listen, None)
            }
        }
        Some(Command::Top(top)) => start::top(top),
        None => {
            let mode = Mode {
                pids: Some(unique_pids(&cli.pids)),
                kernel_only: cli.kernel_only,
                sources: Default::default(),
            };
            if cli.check {
                check::check(&cli.common, &mode)
            } else {
                serve(&cli.common, mode, cli.listen.listen, None)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-observe: error: {error}");
            ExitCode::FAILURE
        }
    }
}
