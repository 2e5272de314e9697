//! `cargo xtask setup|demo|test`: what cargo cannot do alone — install the eBPF
//! toolchain, run the demo against the live kernel, and run every test as root.

mod demo;
mod manifests;
mod setup;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent: present tools are kept).
    Setup,
    /// Build, start the testbed proxy, attach mcp-observe, drive load, show the metrics.
    Demo,
    /// Set up, then run formatting, lints and every test (the kernel tests need root).
    Test,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            demo::run()
        }
        Task::Test => {
            setup::run()?;
            test()
        }
    }
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--release", "--all-targets", "--", "-D", "warnings"])?;
    // The eBPF crate under its own target and toolchain, as observer/build.rs builds it.
    exec(Command::new("cargo").current_dir("observer-ebpf").args([
        "+nightly",
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: validating the Kubernetes manifests in k8s/");
    manifests::validate()?;
    cargo(&["check", "--package", "mcp-probes", "--target", "aarch64-unknown-linux-gnu"])?;
    cargo(&["build", "--release"])?;
    cargo_test(&["test", "--release", "--", "--test-threads=1"])
}

/// Runs `cargo test`, echoing its output, and closes with the totals over every test
/// binary: cargo's own last line is that of the last (often empty) doc-test target.
fn cargo_test(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: running cargo {}", args.join(" "));
    let mut child =
        Command::new("cargo").args(args).stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result
                    .split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
            };
            passed += count(" passed").unwrap_or(0);
            failed += count(" failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    exec(Command::new("cargo").args(args))
}

fn exec(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
