//! `mcp-observe-bench`: what observing an MCP proxy with mcp-observe costs, measured side
//! by side with the baseline of each figure in the same run (windows interleaved, medians
//! quoted). Run it through `cargo xtask bench`; `benchmarks/README.md` says how each
//! figure is produced.

mod process;
mod report;
mod suites;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

use crate::report::Figure;

#[derive(Debug, Parser)]
#[command(name = "mcp-observe-bench")]
struct Args {
    /// The agent under test.
    #[arg(long, default_value = "target/release/mcp-observe")]
    observer: PathBuf,
    /// The testbed proxy, built with its probe calls.
    #[arg(long, default_value = "target/release/mcp-testbed")]
    testbed: PathBuf,
    /// The same proxy built with `RUSTFLAGS="--cfg mcp_probes_disabled"`: no probe calls.
    #[arg(long, default_value = "target/bench-without-probes/release/mcp-testbed")]
    testbed_without_probes: PathBuf,
    /// The probe-calling load (`mcp-bench-load`).
    #[arg(long, default_value = "target/release/mcp-bench-load")]
    load: PathBuf,
    /// A smoke run: every suite, with windows too short for figures worth quoting.
    #[arg(long)]
    quick: bool,
    /// Run only these suites (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<suites::Suite>,
    /// Also write the figures as a Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// What every suite needs: where the binaries are, how long to measure, and the figures so far.
pub struct Bench {
    pub observer: PathBuf,
    pub testbed: PathBuf,
    pub testbed_without_probes: PathBuf,
    pub load: PathBuf,
    pub quick: bool,
    pub figures: Vec<Figure>,
}

impl Bench {
    /// Prints `figure` and keeps it for the table.
    pub fn record(&mut self, figure: Figure) {
        figure.print();
        self.figures.push(figure);
    }

    /// `full` in a real run, `quick` in a smoke run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-observe-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // SAFETY: a plain getter.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "the benchmarks load eBPF programs: run them as root");
    for binary in [&args.observer, &args.testbed, &args.testbed_without_probes, &args.load] {
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: run `cargo xtask bench`, which builds it",
            binary.display()
        );
    }
    let mut bench = Bench {
        observer: args.observer,
        testbed: args.testbed,
        testbed_without_probes: args.testbed_without_probes,
        load: args.load,
        quick: args.quick,
        figures: Vec::new(),
    };
    let selected = if args.only.is_empty() { suites::Suite::ALL.to_vec() } else { args.only };
    for suite in selected {
        println!("{suite:?}:");
        suite.run(&mut bench)?;
    }
    if let Some(path) = args.markdown {
        std::fs::write(&path, report::markdown(&bench.figures))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
