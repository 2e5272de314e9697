//! A failing test leaves nothing behind: every process, namespace and scratch folder a
//! test makes is undone on drop, and drops run while a panic unwinds. Shown by running a
//! test that fails on purpose, with one of each running, in a process of its own.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::*;

/// Marks the python process of the failing test, so that it can be looked for after.
const MARKER: &str = "mcp-observe-leftovers-marker";

/// Every process of ours on the machine: one running our binaries, a scratch copy of them,
/// or the failing test's python; as (pid, start time), so that a reused pid is another.
fn ours() -> BTreeSet<(u32, String)> {
    let binaries = [observer_bin(), testbed_bin()];
    let scratch = std::env::temp_dir().join("mcp-observe-");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_ours = binaries.contains(&exe)
            || exe.to_string_lossy().starts_with(&*scratch.to_string_lossy())
            || String::from_utf8_lossy(&cmdline).contains(MARKER);
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 22, counted after the command's closing parenthesis.
        let start = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19));
        if is_ours && pid != std::process::id() {
            found.insert((pid, start.unwrap_or_default().to_string()));
        }
    }
    found
}

fn netns_names() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
}

#[test]
#[ignore = "fails on purpose: run by a_failing_test_leaves_nothing_running"]
fn fails_with_everything_running() {
    let _serial = kernel_test();
    let scratch = Scratch::new("leftovers");
    let proxy = start_proxy(&scratch.copy_testbed("mcp-testbed"));
    run_load(&proxy, 20, 2, 1, 10);
    let _observer = start_observer(&[proxy.pid()], &[]);
    let netns = Netns::new("leftovers");
    let mut python = netns.command("python3");
    python.args(["-c", &format!("# {MARKER}\nprint('up', flush=True)\nimport time\ntime.sleep(600)")]);
    let (_python, said) = Client::spawn(python);
    assert_eq!(said, "up");
    println!("scratch {}", scratch.0.display());
    panic!("failing on purpose with a proxy, its backends, an observer and a namespace running");
}

#[test]
fn a_failing_test_leaves_nothing_running() {
    let _serial = kernel_test();
    let before = ours();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "leftovers::fails_with_everything_running", "--nocapture"])
        .args(["--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it failed: {stdout}{stderr}");
    assert!(stderr.contains("failing on purpose"), "it failed where it means to: {stderr}");
    let scratch = stdout.lines().find_map(|l| l.split_once("scratch ")).map(|(_, path)| PathBuf::from(path));
    assert!(scratch.is_some(), "it got as far as its panic: {stdout}");

    // Its proxy's backends see their stdin close as the proxy goes: a moment, not more.
    let left = || ours().difference(&before).cloned().collect::<Vec<_>>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !left().is_empty() {
        assert!(std::time::Instant::now() < deadline, "left running by the failed test: {:?}", left());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!netns_names().contains("mcp-observe-leftovers"), "its namespace is gone: {}", netns_names());
    assert!(!Path::new(&scratch.unwrap()).exists(), "its scratch folder is gone");
}
