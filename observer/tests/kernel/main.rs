//! Kernel tests: real eBPF programs on this machine's kernel, attached to real testbed
//! processes, checked against the load client's ground truth. They need root and run
//! one at a time; when not root they fail, they never skip.

mod agent;
mod catalogue;
mod hooks;
mod kernels;
mod leftovers;
mod prometheus;
mod runtime;
mod support;
mod top;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use object::{Object as _, ObjectSymbol as _};
use prometheus_parse::{Scrape, Value};
use support::*;

#[test]
fn request_counts_and_latencies_match_the_ground_truth() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let observer = start_observer(&[proxy.pid()], &[]);
    let truth = run_load(&proxy, 400, 8, 11, 100);
    assert_requests_match(&observer, &truth);
    // 100 ms sleeps: nothing in the 50 ms bucket or below.
    assert_sleeps_are_slow(&observer, &truth, 0.05);
    let metrics = scrape(&observer);
    assert_eq!(value(&metrics, "mcp_observer_probes_attached", &[]), PROBES);
    assert_eq!(value(&metrics, "mcp_observer_targets", &[]), 1.0);
}

/// One hit per request: the request guard sends the latency it measured, so with
/// `request_start` unattached (`--no-request-latency`) the agent still has latency. For
/// one load watched by both agents at once, every label set's histogram counts what the
/// kernel-measured one counts, each request in the same bucket or the next.
#[test]
fn one_hit_latency_counts_as_the_two_hit_one_within_a_bucket() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let two_hits = start_observer(&[proxy.pid()], &[]);
    let one_hit = start_observer(&[proxy.pid()], &["--no-request-latency"]);
    let truth = run_load(&proxy, 300, 8, 17, 30);
    assert_requests_match(&two_hits, &truth);
    assert_requests_match(&one_hit, &truth);
    let (two, one) = (settled(&two_hits), settled(&one_hit));
    let duration = "mcp_proxy_request_duration_seconds";
    for row in &truth {
        let buckets = |scrape: &Scrape| -> Vec<(f64, f64)> {
            let series = scrape.samples.iter().find(|s| {
                s.metric == duration && row.labels().iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            });
            match series.map(|s| &s.value) {
                Some(Value::Histogram(buckets)) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
                other => panic!("no latency for {row:?}: {other:?}"),
            }
        };
        let (two, one) = (buckets(&two), buckets(&one));
        assert_eq!(two.last().unwrap().1, row.count as f64, "{row:?}");
        assert_eq!(one.last().unwrap().1, row.count as f64, "{row:?}");
        // Cumulative counts: shifted by at most one bucket either way.
        for i in 1..two.len() {
            assert!(one[i].1 >= two[i - 1].1 && two[i].1 >= one[i - 1].1, "{row:?}: {two:?} / {one:?}");
        }
    }
    for absent in ["mcp_proxy_requests_in_flight", "mcp_proxy_request_oldest"] {
        assert!(!one.samples.iter().any(|s| s.metric.starts_with(absent)), "{absent} is exported");
    }
}

/// `--no-request-latency`: request_start unattached, every ended request counted exactly
/// from its end; and from a proxy whose ends carry no latency of its own (built before
/// ABI v1 named `elapsed_us`), no latency, no in-flight gauges, and the requests the
/// proxy drops without ending them (its 300 ms timeout) are not counted at all.
#[test]
fn without_request_latency_every_ended_request_is_counted_through_one_uprobe() {
    let _serial = kernel_test();
    let proxy = start_proxy_with(&testbed_bin(), &["--request-timeout-ms", "300", "--untimed-request-ends"]);
    let pid = proxy.pid().to_string();
    let (code, stdout, stderr) = observe_once(&["--pid", &pid, "--check", "--no-request-latency"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("mcp_probe_request_start ")
                && l.ends_with("not attached (--no-request-latency)")),
        "{stdout}"
    );
    assert_eq!(stdout.lines().filter(|l| l.ends_with("  attached")).count(), PROBES as usize - 1, "{stdout}");

    let observer = start_observer(&[proxy.pid()], &["--no-request-latency"]);
    // A load that ends every request, then one whose 600 ms sleeps the proxy drops.
    let dropping = run_load(&proxy, 40, 8, 51, 600);
    assert!(dropping.iter().any(Truth::expired), "the load dropped nothing: {dropping:?}");
    let truth = merge(&[run_load(&proxy, 300, 8, 13, 0), dropping]);
    let ended: u64 = truth.iter().filter(|t| !t.expired()).map(|t| t.count).sum();
    scrape_until(&observer, "every ended request counted", |m| {
        value(m, "mcp_proxy_requests_total", &[]) >= ended as f64
    });
    let metrics = settled(&observer);
    for row in &truth {
        let counted = if row.expired() { 0 } else { row.count };
        assert_eq!(value(&metrics, "mcp_proxy_requests_total", &row.labels()), counted as f64, "{row:?}");
    }
    assert_eq!(
        value(&metrics, "mcp_proxy_requests_total", &[]),
        ended as f64,
        "series beyond the ground truth"
    );
    // No latency and no in-flight gauges rather than figures that would be wrong.
    let absent =
        ["mcp_proxy_request_duration_seconds", "mcp_proxy_requests_in_flight", "mcp_proxy_request_oldest"];
    for sample in &metrics.samples {
        assert!(!absent.iter().any(|a| sample.metric.starts_with(a)), "{} is exported", sample.metric);
    }
    assert_eq!(value(&metrics, "mcp_observer_probes_attached", &[]), PROBES - 1.0);
    for clean in [
        "mcp_observer_events_lost_total",
        "mcp_observer_unmatched_ends_total",
        "mcp_observer_decode_errors_total",
    ] {
        assert_eq!(value(&metrics, clean, &[]), 0.0, "{clean}");
    }
    let (code, _, stderr) =
        observe_once(&["--pid", &pid, "--no-request-latency", "--request-expiry-secs", "5"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--request-expiry-secs"), "{stderr}");
}

/// Probe functions in the testbed proxy: the whole catalogue of ABI v1.
const PROBES: f64 = 14.0;
/// Tracepoints the kernel hooks attach to.
pub const HOOKS: usize = 10;

#[test]
fn a_stripped_proxy_is_found_through_its_note() {
    let _serial = kernel_test();
    let dir = std::env::temp_dir().join(format!("mcp-observe-stripped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stripped = dir.join("mcp-testbed");
    std::fs::copy(testbed_bin(), &stripped).unwrap();
    let status = Command::new("strip").arg("--strip-all").arg(&stripped).status().expect("run strip");
    assert!(status.success());
    let data = std::fs::read(&stripped).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    assert!(
        !elf.symbols()
            .chain(elf.dynamic_symbols())
            .any(|s| s.name().is_ok_and(|n| n.starts_with("mcp_probe"))),
        "strip left probe symbols behind"
    );

    let proxy = start_proxy(&stripped);
    let pid = proxy.pid().to_string();
    let (code, stdout, stderr) = observe_once(&["--pid", &pid, "--check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(probe ABI v1, from the .note.mcp_probes)"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with("  attached")).count(), PROBES as usize, "{stdout}");

    let observer = start_observer(&[proxy.pid()], &[]);
    let truth = run_load(&proxy, 200, 4, 5, 100);
    assert_requests_match(&observer, &truth);
    drop(observer);
    drop(proxy);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_overfilled_ring_buffer_counts_every_lost_event() {
    let _serial = kernel_test();
    const SENT: u64 = 20_000;
    let mut burst = Command::new(testbed_bin())
        .args(["burst", "--requests", &SENT.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 16 KiB holds about 34 events of 480 bytes.
    let observer = start_observer(&[burst.id()], &["--ring-buffer-bytes", "16384"]);
    observer.signal(libc::SIGSTOP);
    burst.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let output = burst.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("{{\"sent\":{SENT}}}"));
    observer.signal(libc::SIGCONT);

    let accounted = |metrics: &prometheus_parse::Scrape| {
        value(metrics, "mcp_observer_events_total", &[("kind", "request_end")])
            + value(metrics, "mcp_observer_events_lost_total", &[("kind", "request_end")])
    };
    wait_for(Duration::from_secs(10), "every event received or counted lost", || {
        accounted(&scrape(&observer)) >= SENT as f64
    });
    std::thread::sleep(Duration::from_millis(100));
    let metrics = scrape(&observer);
    let received = value(&metrics, "mcp_observer_events_total", &[("kind", "request_end")]);
    let lost = value(&metrics, "mcp_observer_events_lost_total", &[("kind", "request_end")]);
    assert_eq!(received + lost, SENT as f64, "received {received} + lost {lost} != sent {SENT}");
    assert!(lost > 0.0 && received > 0.0, "received {received}, lost {lost}");
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("transport", "burst")]), received);
}

/// The benchmarks' load calls 5 of the 14 probes: the linker dropped the other 9, whose
/// notes keep a tombstone address (0, inside the headers' segment of a PIE). They are
/// absent, not an error, and the 5 kept count exactly what the load says it sent.
#[test]
fn a_binary_whose_linker_dropped_probes_is_observed_through_those_it_kept() {
    let _serial = kernel_test();
    let load_bin = observer_bin().with_file_name("mcp-bench-load");
    let mut load = Command::new(&load_bin)
        .args(["flood", "--mix", "call", "--rate", "0", "--seconds", "0.2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo build --release` builds it)", load_bin.display()));
    let pid = load.id().to_string();
    let (code, stdout, stderr) = observe_once(&["--pid", &pid, "--check"], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("mcp_probe_backend_connect_start  absent from this binary"), "{stdout}");
    assert_eq!(stdout.matches("  attached").count(), 5, "{stdout}");

    let observer = start_observer(&[load.id()], &[]);
    assert_eq!(value(&scrape(&observer), "mcp_observer_probes_attached", &[]), 5.0);
    load.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let output = load.wait_with_output().unwrap();
    assert!(output.status.success());
    let sent: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let calls = sent["iterations"].as_f64().unwrap();
    assert!(calls > 1000.0, "{sent}");
    let metrics = scrape_until(&observer, "every call counted", |m| {
        value(m, "mcp_proxy_requests_total", &[("tool", "tool0000")]) >= calls
    });
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("tool", "tool0000")]), calls);
    assert_eq!(value(&metrics, "mcp_proxy_acl_decisions_total", &[("decision", "allow")]), calls);
    assert_eq!(value(&metrics, "mcp_proxy_classifier_cache_hits_total", &[("server", "alpha")]), calls);
}

#[test]
fn concurrent_requests_in_two_proxies_are_never_mixed_up() {
    let _serial = kernel_test();
    // Both proxies number their requests from 1: only keys of (tgid, id) keep them apart.
    let first = start_proxy(&testbed_bin());
    let second = start_proxy(&testbed_bin());
    let observer = start_observer(&[first.pid(), second.pid()], &[]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_load(&first, 600, 32, 21, 100));
        let b = s.spawn(|| run_load(&second, 600, 32, 22, 300));
        (a.join().unwrap(), b.join().unwrap())
    });
    let truth = merge(&[a, b]);
    // Mixed-up ids would show as unmatched ends, a full in-flight map or a stuck gauge,
    // which assert_requests_match requires to be zero.
    assert_requests_match(&observer, &truth);
    assert_sleeps_are_slow(&observer, &truth, 0.05);
    assert_eq!(value(&scrape(&observer), "mcp_observer_targets", &[]), 2.0);
}

#[test]
fn errors_name_the_problem_and_the_next_step() {
    let _serial = kernel_test();
    // A pid that existed a moment ago and is now free.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let (code, stdout, stderr) = observe_once(&["--pid", &gone_pid.to_string(), "--check"], &[]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "mcp-observe: error: no process with pid {gone_pid}: check the pid of the proxy (e.g. `pgrep -f 'mcp serve'`) and try again\n"
        )
    );

    let (code, _, stderr) = observe_once(&["--pid", "2", "--check"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "mcp-observe: error: pid 2 has no executable (a kernel thread, or a process exiting): pass the pid of the proxy\n"
    );

    let mut plain = Command::new("sleep").arg("30").spawn().unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", plain.id())).unwrap();
    let (code, _, stderr) = observe_once(&["--pid", &plain.id().to_string(), "--check"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "mcp-observe: error: {} (pid {}) has no MCP probes (no .note.mcp_probes section, no mcp_probe_* symbols): add --kernel-only to watch only its TCP connections and child processes, or link the mcp-probes crate into the proxy (docs/probe-abi.md)\n",
            exe.display(),
            plain.id()
        )
    );
    plain.kill().unwrap();
    plain.wait().unwrap();

    let proxy = start_proxy(&testbed_bin());
    let pid = proxy.pid().to_string();
    let (code, _, stderr) = observe_once(
        &["--pid", &pid, "--check"],
        &["capsh", "--drop=cap_bpf,cap_sys_admin", "--", "-c", "exec \"$0\" \"$@\""],
    );
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "mcp-observe: error: missing capability CAP_SYS_ADMIN: this kernel creates uprobes for CAP_SYS_ADMIN only (CAP_PERFMON was enough before a 2025 security fix); grant it, or add --kernel-only for the TCP and child-process metrics alone\n"
    );
    let (code, _, stderr) = observe_once(
        &["--pid", &pid, "--check", "--kernel-only"],
        &["capsh", "--drop=cap_bpf,cap_sys_admin", "--", "-c", "exec \"$0\" \"$@\""],
    );
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "mcp-observe: error: missing capability CAP_BPF: run mcp-observe as root, or grant it CAP_BPF and CAP_PERFMON (the node-wide agent also CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)\n"
    );

    let (code, _, stderr) = observe_once(&["--pid", &pid, "--check", "--ring-buffer-bytes", "5000"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "mcp-observe: error: --ring-buffer-bytes 5000 is invalid: it must be a power of two and a multiple of the page size (4096), e.g. 4194304\n"
    );

    let (code, _, stderr) = observe_once(&["agent", "--check", "--proc", "/tmp"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "mcp-observe: error: --proc /tmp: no process 1 there, so it is not a procfs; give the host's /proc (mounted with hostPID: true at /proc)\n"
    );

    // A process of a tree given with its root.
    let mut parent = Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
    wait_for(Duration::from_secs(5), "the child sleep", || !children_of(parent.id(), "sleep").is_empty());
    let child = children_of(parent.id(), "sleep")[0].to_string();
    let root = parent.id().to_string();
    // In either order.
    let (code, _, stderr) = observe_once(&["--pid", &child, "--pid", &root, "--kernel-only", "--check"], &[]);
    // SAFETY: ending the test's own processes.
    unsafe { libc::kill(child.parse().unwrap(), libc::SIGKILL) };
    parent.kill().unwrap();
    parent.wait().unwrap();
    assert_eq!(code, 1);
    assert!(
        stderr.ends_with(&format!(
            "\nmcp-observe: error: pid {child} belongs to the process tree of pid {root}, which is observed already: pass only --pid {root}\n"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
}

#[test]
fn sigterm_detaches_every_probe() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let mut observer = start_observer(&[proxy.pid()], &[]);
    let ours = programs_held_by(observer.pid());
    let programs = PROBES as usize + HOOKS;
    assert_eq!(ours.len(), programs, "the observer holds one program per probe and per kernel hook");
    assert_eq!(links_of(&ours), programs, "one link per probe and per kernel hook");
    observer.signal(libc::SIGTERM);
    let status = observer.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert_eq!(links_of(&ours), 0, "links left behind");
    let loaded: Vec<u64> =
        bpftool(&["prog", "list"]).as_array().unwrap().iter().filter_map(|p| p["id"].as_u64()).collect();
    assert!(ours.iter().all(|id| !loaded.contains(id)), "programs left loaded");
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let output = Command::new("bpftool").arg("--json").args(args).output().expect("run bpftool");
    assert!(output.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("bpftool JSON")
}

/// Ids of the BPF programs whose file descriptors process `pid` holds (from fdinfo).
fn programs_held_by(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter(|info| !info.contains("link_id:"))
        .filter_map(|info| {
            info.lines().find_map(|l| l.strip_prefix("prog_id:")).map(|id| id.trim().parse().unwrap())
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn links_of(programs: &[u64]) -> usize {
    bpftool(&["link", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| programs.contains(&id)))
        .count()
}

#[test]
fn a_misbehaving_proxy_is_counted_not_trusted() {
    let _serial = kernel_test();
    let mut proxy = Command::new(testbed_bin())
        .arg("misbehave")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let observer = start_observer(&[proxy.id()], &[]);
    proxy.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(proxy.wait_with_output().unwrap().status.success());
    // Six request ends (the one with a null RequestEnd cannot become an event), four ACL
    // decisions (one null), one disconnect, one session close and the proxy's exit.
    wait_for(Duration::from_secs(5), "eleven events", || {
        value(&scrape(&observer), "mcp_observer_events_total", &[]) == 11.0
    });
    let metrics = scrape(&observer);
    let requests = |method: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("method", method), ("transport", "misbehave")];
        all.extend_from_slice(labels);
        value(&metrics, "mcp_proxy_requests_total", &all)
    };
    let count = |metric: &str| value(&metrics, metric, &[]);
    assert_eq!(requests("duplicate_start", &[("identity", "alice"), ("tool", "echo")]), 1.0);
    assert_eq!(count("mcp_observer_duplicate_request_starts_total"), 1.0);
    assert_eq!(requests("end_without_start", &[]), 1.0);
    let unmatched = |kind: &str| value(&metrics, "mcp_observer_unmatched_ends_total", &[("kind", kind)]);
    assert_eq!(unmatched("request_end"), 1.0);
    assert_eq!(
        value(&metrics, "mcp_proxy_request_duration_seconds_count", &[("method", "end_without_start")]),
        0.0,
        "an end without a start has no latency"
    );
    assert_eq!(requests("unreadable_tool", &[("tool", "")]), 1.0);
    assert_eq!(
        count("mcp_observer_bad_user_pointers_total"),
        3.0,
        "the unreadable tool, the null RequestEnd and the null AclCheck"
    );
    let x128 = "x".repeat(128);
    assert_eq!(requests("long_identity", &[("identity", &x128)]), 1.0);
    assert_eq!(value(&metrics, "mcp_observer_label_truncated_total", &[("label", "identity")]), 2.0);
    // The value is `caf\xff\xfe`; prometheus-parse keeps the exposition's `\\` escapes.
    let not_utf8 = r"caf\\xff\\xfe";
    assert_eq!(requests("not_utf8_identity", &[("identity", not_utf8)]), 1.0);
    assert_eq!(count("mcp_proxy_requests_total"), 5.0);
    assert_eq!(count("mcp_proxy_requests_in_flight"), 0.0);
    let acl = |identity: &str, decision: &str| {
        let labels = [("identity", identity), ("server", "alpha"), ("tool", "echo"), ("decision", decision)];
        value(&metrics, "mcp_proxy_acl_decisions_total", &labels)
    };
    assert_eq!(acl(&x128, "deny"), 1.0);
    assert_eq!(acl(not_utf8, "allow"), 1.0);
    assert_eq!(count("mcp_proxy_acl_decisions_total"), 2.0, "the undefined decision is not counted");
    assert_eq!(count("mcp_observer_decode_errors_total"), 1.0, "the undefined ACL decision");
    assert_eq!(unmatched("backend_disconnect"), 1.0);
    assert_eq!(unmatched("session_close"), 1.0);
    assert_eq!(value(&metrics, "mcp_proxy_backend_disconnects_total", &[("reason", "error")]), 1.0);
    assert_eq!(count("mcp_proxy_backends_connected"), 0.0, "never below zero");
    assert_eq!(count("mcp_proxy_sessions_active"), 0.0, "never below zero");
    assert_eq!(count("mcp_proxy_sessions_closed_total"), 1.0);
}

#[test]
fn attaching_mid_load_and_clients_hanging_up_leave_nothing_in_flight() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let observer = std::thread::scope(|s| {
        let load = s.spawn(|| run_load(&proxy, 400, 16, 31, 100));
        std::thread::sleep(Duration::from_millis(300));
        let observer = start_observer(&[proxy.pid()], &[]);
        load.join().unwrap();
        observer
    });
    // Clients that give up on slow calls: the proxy still finishes (and ends) them.
    let url = format!("http://{}/mcp", proxy.addr);
    for i in 0..5 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"alpha__sleep","arguments":{{"ms":300}}}}}}"#
        );
        let hung_up = ureq::post(&url)
            .header("authorization", "Bearer alice-token")
            .content_type("application/json")
            .config()
            .timeout_global(Some(Duration::from_millis(50)))
            .build()
            .send(body);
        assert!(hung_up.is_err(), "the client should have given up");
    }
    wait_for(Duration::from_secs(5), "no request in flight", || {
        let metrics = scrape(&observer);
        value(&metrics, "mcp_proxy_requests_in_flight", &[]) == 0.0
            && value(&metrics, "mcp_proxy_requests_total", &[("tool", "sleep"), ("status", "ok")]) > 0.0
    });
    let metrics = scrape(&observer);
    for clean in ["mcp_observer_duplicate_request_starts_total", "mcp_observer_in_flight_full_total"] {
        assert_eq!(value(&metrics, clean, &[]), 0.0, "{clean}");
    }
}
