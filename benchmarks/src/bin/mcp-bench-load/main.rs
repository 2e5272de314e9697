//! `mcp-bench-load`: the process the benchmarks observe. It calls the probes (and, for
//! comparison, in-process metrics libraries) in tight loops and reports what it sent; the
//! orchestrator attaches `mcp-observe` to it and compares.

mod calls;
mod flood;
mod shadow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mcp-bench-load")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per-call costs: reads one suite name per line on stdin (`unattached` or `attached`),
    /// runs it, prints its figures as one JSON line.
    Calls(calls::Args),
    /// Calls probes at a fixed rate from several threads for each line on stdin, and prints
    /// what each window sent as one JSON line.
    Flood(flood::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Calls(args) => calls::run(&args),
        Command::Flood(args) => flood::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-bench-load: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Announces the pid, then yields each line of stdin: the orchestrator attaches first,
/// then asks for one window per line.
fn windows() -> std::io::Lines<std::io::StdinLock<'static>> {
    eprintln!("mcp-bench-load: pid {} waiting for a line on stdin", std::process::id());
    std::io::stdin().lines()
}
