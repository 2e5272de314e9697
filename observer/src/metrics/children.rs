//! The targets' child processes (their stdio backends), from the kernel hooks: how many
//! run now, how many were spawned, and how they exited (clean, error or signal), by
//! backend.
//!
//! The kernel sees a child's fork and exec before the proxy's `child_spawn` probe names
//! it, and a counted child cannot be relabelled, so a child is counted once the probe
//! names it. A target without that probe never will: its children are counted under
//! their executable's name as soon as they exec (or exit). A child nobody names within
//! [`NAMING_GRACE_NS`] (one the proxy spawned some other way) gets that name too.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
};

use prometheus::{IntCounterVec, IntGaugeVec};

use super::{Scope, counter_vec, gauge_vec};
use crate::{
    decode::{ChildOutcome, Label, Stamp},
    spans::MAX_OPEN,
};

/// How long a child waits for the probe's name before it is counted under its executable's.
pub const NAMING_GRACE_NS: u64 = 1_000_000_000;

/// Turns a child's name (or a backend's) into its `server` label value.
pub type Admit<'a> = &'a dyn Fn(&[u8], bool) -> String;

/// A child seen by the kernel, not yet counted.
struct Unnamed {
    /// Its executable's file name, or before its exec its command name.
    name: Vec<u8>,
    truncated: bool,
    forked_ns: u64,
    execed: bool,
    /// How it exited, if it already did.
    outcome: Option<ChildOutcome>,
}

#[derive(Default)]
struct State {
    unnamed: HashMap<(u32, u32), Unnamed>,
    /// Counted children still running, with their label.
    running: HashMap<(u32, u32), String>,
    /// Targets whose `child_spawn` probe is attached: their children wait for its name.
    named_by_probe: HashSet<u32>,
}

pub struct Children {
    state: Mutex<State>,
    processes: IntGaugeVec,
    spawns: IntCounterVec,
    exits: IntCounterVec,
}

/// The file name in a path (the kernel sends a long path's tail).
fn file_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

impl Children {
    pub fn new(scope: &Scope) -> Self {
        Self {
            state: Mutex::default(),
            processes: gauge_vec(
                scope,
                "mcp_proxy_child_processes",
                "The proxy's child processes running now, by backend (or executable name)",
                &["server"],
            ),
            spawns: counter_vec(
                scope,
                "mcp_proxy_child_spawns_total",
                "Child processes the proxy spawned, by backend (or executable name)",
                &["server"],
            ),
            exits: counter_vec(
                scope,
                "mcp_proxy_child_exits_total",
                "Child processes exited: clean (status 0), error (another status), signal (killed), or unknown (a kernel without syscall tracepoints)",
                &["server", "outcome"],
            ),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("children lock")
    }

    /// Target `tgid`'s `child_spawn` probe is attached: its children wait for their names.
    pub fn expect_names(&self, tgid: u32) {
        self.state().named_by_probe.insert(tgid);
    }

    /// A child already running when the agent attached: counted as running, not spawned.
    pub fn existing(&self, tgid: u32, pid: u32, label: String) {
        self.processes.with_label_values(&[&label]).inc();
        self.state().running.insert((tgid, pid), label);
    }

    /// Target `at.tgid` forked child `pid`, whose command name is `command`.
    pub fn fork(&self, at: Stamp, pid: u32, command: Label) {
        let mut state = self.state();
        // Already counted from the snapshot taken at attach, or too many to follow.
        if state.running.contains_key(&(at.tgid, pid)) || state.unnamed.len() >= MAX_OPEN {
            return;
        }
        // The command name is NUL-padded.
        let name = command.bytes.split(|&b| b == 0).next().unwrap_or(command.bytes).to_vec();
        let child = Unnamed { name, truncated: false, forked_ns: at.ts_ns, execed: false, outcome: None };
        state.unnamed.insert((at.tgid, pid), child);
    }

    /// Child `pid` of target `tgid` executed `path`.
    pub fn exec(&self, tgid: u32, pid: u32, path: Label, admit: Admit) {
        let mut state = self.state();
        let Some(child) = state.unnamed.get_mut(&(tgid, pid)) else { return };
        child.name = file_name(path.bytes).to_vec();
        child.truncated = path.truncated;
        child.execed = true;
        if !state.named_by_probe.contains(&tgid) {
            self.count_unnamed(&mut state, (tgid, pid), admit);
        }
    }

    /// The `child_spawn` probe named child `pid` of target `tgid` `label`.
    pub fn named(&self, tgid: u32, pid: u32, label: String) {
        let key = (tgid, pid);
        let mut state = self.state();
        if let Some(child) = state.unnamed.remove(&key) {
            self.count(&mut state, key, child.outcome, label);
        }
    }

    pub fn exit(&self, tgid: u32, pid: u32, outcome: ChildOutcome, admit: Admit) {
        let key = (tgid, pid);
        let mut state = self.state();
        if let Some(label) = state.running.remove(&key) {
            self.processes.with_label_values(&[&label]).dec();
            self.exits.with_label_values(&[&label, outcome.label()]).inc();
        } else if let Some(child) = state.unnamed.get_mut(&key) {
            child.outcome = Some(outcome);
            if !state.named_by_probe.contains(&tgid) {
                self.count_unnamed(&mut state, key, admit);
            }
        }
    }

    /// Counts the children nobody named in time under their executable's name.
    /// `drained_ns`: every event before it has been read, a name included.
    pub fn tick(&self, drained_ns: u64, admit: Admit) {
        let mut state = self.state();
        let due: Vec<(u32, u32)> = state
            .unnamed
            .iter()
            .filter(|(_, child)| drained_ns.saturating_sub(child.forked_ns) >= NAMING_GRACE_NS)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.count_unnamed(&mut state, key, admit);
        }
    }

    /// Target `tgid` is gone: so are its children, for these metrics.
    pub fn forget(&self, tgid: u32) {
        let mut state = self.state();
        state.unnamed.retain(|(t, _), _| *t != tgid);
        state.named_by_probe.remove(&tgid);
        let processes = &self.processes;
        state.running.retain(|(t, _), label| {
            let keep = *t != tgid;
            if !keep {
                processes.with_label_values(&[label]).dec();
            }
            keep
        });
    }

    fn count_unnamed(&self, state: &mut State, key: (u32, u32), admit: Admit) {
        if let Some(child) = state.unnamed.remove(&key) {
            let label = admit(&child.name, child.truncated);
            self.count(state, key, child.outcome, label);
        }
    }

    fn count(&self, state: &mut State, key: (u32, u32), outcome: Option<ChildOutcome>, label: String) {
        self.spawns.with_label_values(&[&label]).inc();
        match outcome {
            Some(outcome) => self.exits.with_label_values(&[&label, outcome.label()]).inc(),
            None => {
                self.processes.with_label_values(&[&label]).inc();
                state.running.insert(key, label);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts_ns: u64) -> Stamp {
        Stamp { tgid: 10, ts_ns }
    }

    fn name(bytes: &[u8]) -> Label<'_> {
        Label { slot: observer_common::field::SERVER, bytes, truncated: false }
    }

    fn admit(name: &[u8], _: bool) -> String {
        String::from_utf8_lossy(name).into_owned()
    }

    fn sample(children: &Children, label: &str) -> (i64, u64, u64, u64, u64) {
        (
            children.processes.with_label_values(&[label]).get(),
            children.spawns.with_label_values(&[label]).get(),
            children.exits.with_label_values(&[label, "clean"]).get(),
            children.exits.with_label_values(&[label, "error"]).get(),
            children.exits.with_label_values(&[label, "signal"]).get(),
        )
    }

    #[test]
    fn a_named_child_is_counted_under_its_backend_and_its_exit_outcome() {
        let children = Children::new(&Scope::detached());
        children.expect_names(10);
        children.fork(at(0), 11, name(b"proxy\0\0\0"));
        children.exec(10, 11, name(b"/usr/bin/mcp-testbed"), &admit);
        assert_eq!(sample(&children, "mcp-testbed"), (0, 0, 0, 0, 0), "waits for the probe");
        children.named(10, 11, "alpha".into());
        assert_eq!(sample(&children, "alpha"), (1, 1, 0, 0, 0));
        children.exit(10, 11, ChildOutcome::Signal, &admit);
        assert_eq!(sample(&children, "alpha"), (0, 1, 0, 0, 1));
    }

    #[test]
    fn without_the_probe_a_child_is_counted_under_its_executable_at_once() {
        let children = Children::new(&Scope::detached());
        children.fork(at(0), 12, name(b"python3"));
        children.exec(10, 12, name(b"/usr/bin/sleep"), &admit);
        assert_eq!(sample(&children, "sleep"), (1, 1, 0, 0, 0));
        children.exit(10, 12, ChildOutcome::Clean, &admit);
        children.fork(at(3), 13, name(b"python3"));
        children.exit(10, 13, ChildOutcome::Error, &admit);
        assert_eq!(sample(&children, "sleep"), (0, 1, 1, 0, 0));
        assert_eq!(sample(&children, "python3"), (0, 1, 0, 1, 0), "exited without exec: its command name");
    }

    #[test]
    fn a_child_the_probe_never_names_is_counted_after_the_grace() {
        let children = Children::new(&Scope::detached());
        children.expect_names(10);
        children.fork(at(5), 14, name(b"proxy"));
        children.exec(10, 14, name(b"/bin/sh"), &admit);
        children.exit(10, 14, ChildOutcome::Clean, &admit);
        children.tick(5 + NAMING_GRACE_NS - 1, &admit);
        assert_eq!(sample(&children, "sh"), (0, 0, 0, 0, 0));
        children.tick(5 + NAMING_GRACE_NS, &admit);
        assert_eq!(sample(&children, "sh"), (0, 1, 1, 0, 0));
        children.named(10, 14, "late".into());
        assert_eq!(sample(&children, "late"), (0, 0, 0, 0, 0), "counted once");
    }

    #[test]
    fn a_target_gone_takes_its_children_with_it() {
        let children = Children::new(&Scope::detached());
        children.existing(10, 15, "node".into());
        children.existing(20, 16, "node".into());
        children.forget(10);
        assert_eq!(sample(&children, "node"), (1, 0, 0, 0, 0));
    }
}
