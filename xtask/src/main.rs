//! `cargo xtask setup|demo|test|bench`: what cargo cannot do alone — install the eBPF
//! toolchain, run the demo against the live kernel, run every test as root, and run the
//! benchmarks.

mod demo;
mod image;
mod manifests;
mod rootfs;
mod setup;
mod vm;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
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
    /// Set up, then run formatting, lints and every test (the kernel tests need root), and
    /// a smoke run of the benchmarks.
    Test,
    /// Build the agent's image (a static mcp-observe, FROM scratch; nothing is pulled) and
    /// the testbed's image the runtime tests use.
    Image,
    /// Build, then boot Debian's 6.1 and 6.12 kernels under QEMU and run the kernel tests
    /// of `kernels::on_every_kernel` in each (root; part of `test`).
    Vm,
    /// Set up, build, and run every benchmark (about 30 minutes; root): the suites on this
    /// host, then the instructions suite in a VM that counts instructions.
    Bench {
        /// A smoke run: every suite with windows too short for figures worth quoting.
        #[arg(long)]
        quick: bool,
        /// Only these suites (`mcp-observe-bench --help` lists them; `instructions` is the
        /// VM's).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
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
            let (passed, failed) = test()?;
            let host = vm::Outcome { suite: "this host", release: host_release(), passed, failed };
            // After the host tests, never beside them: the VMs take both cores.
            let outcomes: Vec<_> = std::iter::once(host).chain(vm::run(&std::env::current_dir()?)?).collect();
            bench(true, &[])?;
            let (passed, failed) = outcomes.iter().fold((0, 0), |(p, f), o| (p + o.passed, f + o.failed));
            let per_kernel: Vec<String> = outcomes
                .iter()
                .map(|o| format!("{} ({}): {} passed, {} failed", o.release, o.suite, o.passed, o.failed))
                .collect();
            println!("tests: {passed} passed, {failed} failed; {}", per_kernel.join("; "));
            if failed > 0 {
                bail!("{failed} tests failed");
            }
            Ok(())
        }
        Task::Image => {
            setup::run()?;
            build_release()?;
            image::build()
        }
        Task::Vm => {
            setup::run()?;
            build_release()?;
            let outcomes = vm::run(&std::env::current_dir()?)?;
            let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
            if failed > 0 {
                bail!("{failed} tests failed in the VMs");
            }
            Ok(())
        }
        Task::Bench { quick, only } => {
            setup::run()?;
            build_release()?;
            bench(quick, &only)
        }
    }
}

/// Runs the benchmarks (`benchmarks/README.md`) on the release build, `only` these suites
/// if any; the figures also go to `target/bench/results.md`.
fn bench(quick: bool, only: &[String]) -> anyhow::Result<()> {
    // The baseline proxy without probe calls (mcp-probes' benchmark-only cfg), in a target
    // directory of its own.
    exec(
        Command::new("cargo")
            .args(["build", "--release", "--package", "mcp-testbed"])
            .args(["--target-dir", "target/bench-without-probes"])
            .env("RUSTFLAGS", "--cfg mcp_probes_disabled"),
    )?;
    std::fs::create_dir_all("target/bench")?;
    let results = Path::new("target/bench/results.md");
    let counted = only.is_empty() || only.iter().any(|suite| suite == INSTRUCTIONS);
    let on_host: Vec<&str> = only.iter().map(String::as_str).filter(|&suite| suite != INSTRUCTIONS).collect();
    let mut table = String::new();
    if only.is_empty() || !on_host.is_empty() {
        let mut command = Command::new("target/release/mcp-observe-bench");
        command.arg("--markdown").arg(results);
        if quick {
            command.arg("--quick");
        }
        if !on_host.is_empty() {
            command.arg("--only").arg(on_host.join(","));
        }
        exec(&mut command)?;
        table = std::fs::read_to_string(results)?;
    }
    // Then the figures that do not move with this machine's noise: instructions, counted in
    // a VM (about 8 minutes, 2 in a smoke run).
    if counted {
        let rows = vm::bench(&std::env::current_dir()?, quick)?;
        if table.is_empty() {
            table = rows.header;
        }
        table.push_str(&rows.rows);
        std::fs::write(results, table)?;
        println!("figures written to {}", results.display());
    }
    Ok(())
}

/// The suite `mcp-observe-bench` runs only in the VM of `vm::bench`.
const INSTRUCTIONS: &str = "instructions";

/// Formatting, lints, the rules, the manifests, then every test on this kernel: the
/// passed and failed counts over every test binary.
fn test() -> anyhow::Result<(u64, u64)> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--release", "--all-targets", "--features", KERNEL_TESTS, "--", "-D", "warnings"])?;
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
    eprintln!("xtask: checking and unit-testing the Prometheus rules in monitoring/");
    exec(Command::new("promtool").args(["check", "rules", "monitoring/rules.yml"]))?;
    exec(Command::new("promtool").args(["test", "rules", "monitoring/rules.test.yml"]))?;
    eprintln!("xtask: validating the Kubernetes manifests in k8s/");
    manifests::validate()?;
    cargo(&["check", "--package", "mcp-probes", "--target", "aarch64-unknown-linux-gnu"])?;
    // The crate proxies depend on, as crates.io would get it: packaged, then built from the
    // package alone (--allow-dirty: a work tree with changes is what a developer tests);
    // and without its default `std` feature.
    cargo(&["package", "--package", "mcp-probes", "--allow-dirty"])?;
    cargo(&["check", "--package", "mcp-probes", "--no-default-features"])?;
    build_release()?;
    image::build()?;
    cargo_test(&["test", "--release", "--features", KERNEL_TESTS, "--", "--test-threads=1"])
}

/// The feature that builds the kernel suite (root only). Every release build here enables
/// it, so that the binaries the tests run are not built twice.
pub const KERNEL_TESTS: &str = "observer/kernel-tests";

/// `target/release`: the agent, the testbed and the benchmarks.
pub fn build_release() -> anyhow::Result<()> {
    cargo(&["build", "--release", "--features", KERNEL_TESTS])
}

/// Runs `cargo test`, echoing its output, and returns the totals over every test binary:
/// cargo's own last line is that of the last (often empty) doc-test target.
fn cargo_test(args: &[&str]) -> anyhow::Result<(u64, u64)> {
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
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    eprintln!("xtask: {passed} passed, {failed} failed on this kernel");
    Ok((passed, failed))
}

/// This host's kernel release, as `uname -r` prints it.
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |r| r.trim().into())
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
