//! `--check`: what this kernel offers, which hooks and probes attached for which
//! processes, and what is missing, printed once; then the agent detaches.

use crate::{
    cli::Common,
    error::ObserveError,
    events, hooks, kernel,
    probes::{self, ProbeTable},
    start::{Mode, Started, start},
    tree,
};

/// Starts as the agent would, prints what it found and attached, and detaches.
pub fn check(common: &Common, mode: &Mode) -> Result<(), ObserveError> {
    let Started { targets, state, plan, added, .. } = start(common, mode)?;
    let features = kernel::features();
    println!(
        "kernel {}: uprobes {}, attach cookies yes, tracefs {}, kprobes {}, perf_event_paranoid {}",
        features.release,
        yes_no(features.uprobes),
        features.tracefs.as_deref().map_or("absent".to_string(), |p| format!("at {}", p.display())),
        yes_no(features.kprobes),
        features.perf_event_paranoid.map_or("unknown".to_string(), |p| p.to_string()),
    );
    print_hooks(&plan);
    for (pid, found) in &added {
        match &found.table {
            Some(table) => print_probes(*pid, table, &found.attached, common.request_latency()),
            None => print_kernel_only(*pid),
        }
        let snapshot = &found.snapshot;
        let children: Vec<String> =
            snapshot.children.iter().map(|(p, name)| format!("{name} ({p})")).collect();
        let mut ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        ports.dedup();
        println!(
            "  labelled {}; tracking its tree: {} descendant(s), children [{}], listening on TCP ports {ports:?}",
            found.labels,
            snapshot.descendants.len(),
            children.join(", "),
        );
    }
    if mode.pids.is_none() {
        for line in targets.describe() {
            println!("{line}");
        }
    }
    let observer = &state.metrics.observer;
    println!(
        "ok: {} probes on {} executable(s) and {} kernel hooks attached for {} process(es); ring buffer {} bytes, submit without wakeup, drain every {}–{} ms",
        observer.probes_attached.get(),
        observer.binaries_attached.get(),
        plan.attached().count(),
        observer.targets.get(),
        common.ring_buffer_bytes,
        common.drain_interval_ms,
        common.drain_interval_ms * u64::from(events::SLOWEST)
    );
    targets.shutdown();
    Ok(())
}

/// How each kernel hook attached, and what this kernel cannot tell.
fn print_hooks(plan: &hooks::Plan) {
    let attached: Vec<String> = plan.attached().map(|hook| hook.tracepoint()).collect();
    println!("kernel hooks: {} attached ({})", attached.len(), attached.join(", "));
    for line in plan.gap_lines() {
        println!("  {line}");
    }
    if hooks::timeouts_supported(&plan.layout) {
        println!(
            "  TCP timeouts told apart: keepalive (reset reason {}), retransmission (ETIMEDOUT after close)",
            plan.layout.keepalive_timeout_reason
        );
    }
}

fn print_probes(pid: u32, table: &ProbeTable, attached: &[&str], request_latency: bool) {
    println!(
        "pid {pid}: {} (probe ABI v{}, from the {})",
        table.path.display(),
        table.abi_version,
        table.source
    );
    for (probe, _) in probes::CATALOGUE.iter().filter(|(probe, _)| table.site(probe).is_none()) {
        println!("  mcp_probe_{probe:<22} absent from this binary: its metrics stay empty");
    }
    for site in &table.sites {
        let state = if attached.contains(&site.name.as_str()) {
            "attached"
        } else if !probes::attached_when(&site.name, request_latency) {
            "not attached (--no-request-latency)"
        } else {
            "not in this observer's catalogue, ignored"
        };
        println!(
            "  mcp_probe_{:<22} address {:#x}  file offset {:#x}  {state}",
            site.name, site.address, site.file_offset
        );
    }
}

fn print_kernel_only(pid: u32) {
    let found = match probes::for_pid(pid) {
        Ok(table) => format!("it has {} probes, not attached", table.sites.len()),
        Err(ObserveError::NoProbes { .. }) => "it has no MCP probes".to_string(),
        Err(error) => format!("its probes were not read: {error}"),
    };
    println!(
        "pid {pid}: {} in kernel-only mode ({found}): TCP and child-process metrics only, no request metrics",
        tree::executable_name(pid)
    );
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
