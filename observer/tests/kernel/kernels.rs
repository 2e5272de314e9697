//! What the running kernel offers, as the agent reports it, against what the kernel itself
//! says (its tracefs); and the agent on a kernel that lacks a hook, played here by a copy of
//! this kernel's tracepoint formats with that hook hidden or a field resized
//! (`MCP_OBSERVE_TRACEFS_FORMATS`). The tests in [`on_every_kernel`] also run inside the
//! QEMU VMs of `cargo xtask vm` on Debian's 6.1 and 6.12 (xtask/src/vm.rs selects them by
//! that module's name): nothing in them waits on wall-clock time beyond bounded polls.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::json;

use crate::{
    hooks::{Sink, call, same_port_in_another_namespace},
    support::*,
};

const TRACEFS: &str = "/sys/kernel/tracing";
const AVAILABLE: &str = "mcp_observer_kernel_hook_available";
const FORMATS_ENV: &str = "MCP_OBSERVE_TRACEFS_FORMATS";
const TCP_ACTIVE: &str = "mcp_proxy_tcp_connections_active";
const TCP_OPENED: &str = "mcp_proxy_tcp_connections_opened_total";
const TCP_CLOSED: &str = "mcp_proxy_tcp_connections_closed_total";
const INBOUND: (&str, &str) = ("direction", "inbound");
const OUTBOUND: (&str, &str) = ("direction", "outbound");

/// Every kernel hook, as docs/kernel-hooks.md lists them.
const HOOKS: [&str; 10] = [
    "task:task_newtask",
    "sched:sched_process_exec",
    "syscalls:sys_enter_exit_group",
    "sched:sched_process_exit",
    "sock:inet_sock_set_state",
    "sock:inet_sk_error_report",
    "tcp:tcp_send_reset",
    "tcp:tcp_receive_reset",
    "tcp:tcp_retransmit_skb",
    "sock:sock_recv_length",
];

fn tracepoint_dir(root: &Path, hook: &str) -> PathBuf {
    let (category, name) = hook.split_once(':').unwrap();
    root.join("events").join(category).join(name)
}

/// What the agent says of one hook: `--check`'s hooks line, its gap lines, its warnings at
/// start, and the series.
fn assert_reported(hook: &str, present: bool, check: &str, observer: &Running) {
    let line = check.lines().find(|l| l.starts_with("kernel hooks: ")).expect("a hooks line");
    assert_eq!(line.contains(hook), present, "{hook} in {line}");
    let metrics = scrape(observer);
    assert_eq!(value(&metrics, AVAILABLE, &[("hook", hook)]), f64::from(present), "{hook}");
    let gap = format!("{hook} not attached (");
    let gaps: Vec<&str> = check.lines().filter(|l| l.trim_start().starts_with(&gap)).collect();
    let warned = observer.stderr.lock().unwrap().iter().filter(|l| l.contains(&gap)).count();
    if present {
        assert!(gaps.is_empty() && warned == 0, "{hook} is attached: {check}");
    } else {
        assert_eq!(gaps.len(), 1, "one --check line for {hook}: {check}");
        assert!(gaps[0].contains(": no "), "it says what is lost: {}", gaps[0]);
        assert_eq!(warned, 1, "one warning at start for {hook}: {:?}", observer.stderr.lock().unwrap());
    }
}

/// K more connections to the proxy (after those of the load, if any, have closed) and M of
/// its backend to a sink, and nothing of the test's own traffic, counted exactly.
fn assert_tcp_exact(observer: &Running, proxy: &Running) {
    let before =
        scrape_until(observer, "earlier connections closed", |m| value(m, TCP_ACTIVE, &[INBOUND]) == 0.0);
    let (opened, closed) = (value(&before, TCP_OPENED, &[INBOUND]), value(&before, TCP_CLOSED, &[INBOUND]));
    assert_eq!(opened, closed);
    let sink = Sink::start();
    hold_connections(&sink.addr, 2, Duration::from_millis(20));
    const K: f64 = 4.0;
    hold_connections(&proxy.addr, K as usize, Duration::from_millis(20));
    let metrics =
        scrape_until(observer, "inbound closes", |m| value(m, TCP_CLOSED, &[INBOUND]) >= closed + K);
    assert_eq!(value(&metrics, TCP_OPENED, &[INBOUND]), opened + K);
    assert_eq!(value(&metrics, TCP_CLOSED, &[INBOUND]), closed + K);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[INBOUND]), 0.0);
    assert_eq!(value(&metrics, TCP_OPENED, &[OUTBOUND]), 0.0, "the test's own connections");

    const M: f64 = 3.0;
    let reply = call(proxy, "alpha__connect", json!({"addr": sink.addr, "count": M as u32, "hold_ms": 20}));
    assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
    let metrics = scrape_until(observer, "outbound closes and the call's own", |m| {
        value(m, TCP_CLOSED, &[OUTBOUND]) >= M && value(m, TCP_ACTIVE, &[INBOUND]) == 0.0
    });
    assert_eq!(value(&metrics, TCP_OPENED, &[OUTBOUND]), M);
    assert_eq!(value(&metrics, TCP_CLOSED, &[OUTBOUND]), M);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[OUTBOUND]), 0.0);
    assert_eq!(sink.accepted(), 2 + M as usize, "the sink saw every connection");
}

/// What runs on this host and in each VM of `cargo xtask vm`.
mod on_every_kernel {
    use super::*;

    #[test]
    fn every_hook_this_kernel_has_is_attached_and_requests_count_exactly() {
        let _serial = kernel_test();
        let proxy = start_proxy(&testbed_bin());
        let (code, check, stderr) = observe_once(&["--pid", &proxy.pid().to_string(), "--check"], &[]);
        assert_eq!(code, 0, "--check on this kernel: {check}{stderr}");
        assert!(check.contains("ok: 14 probes on 1 executable(s)"), "{check}");
        // The VMs run with --show-output: their logs show what each kernel lacks.
        println!("{check}");
        let observer = start_observer(&[proxy.pid()], &[]);
        for hook in HOOKS {
            assert_reported(hook, tracepoint_dir(Path::new(TRACEFS), hook).is_dir(), &check, &observer);
        }
        // Whatever is absent, the requests count exactly.
        let truth = run_load(&proxy, 200, 4, 7, 20);
        assert_requests_match(&observer, &truth);
    }

    #[test]
    fn kernel_only_counts_inbound_and_outbound_connections_exactly() {
        let _serial = kernel_test();
        let proxy = start_proxy(&testbed_bin());
        let (code, check, stderr) =
            observe_once(&["--pid", &proxy.pid().to_string(), "--check", "--kernel-only"], &[]);
        assert_eq!(code, 0, "--kernel-only --check on this kernel: {check}{stderr}");
        let observer = start_observer(&[proxy.pid()], &["--kernel-only"]);
        assert_tcp_exact(&observer, &proxy);
    }

    #[test]
    fn containers_of_one_image_share_its_uprobes_and_a_copied_up_binary_has_its_own() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let _serial = kernel_test();
        let scratch = Scratch::new("image");
        // One image layer, three containers' root filesystems over it: one inode under
        // three devices. In the third, a change of the binary's mode copies it up into that
        // container's own layer: a file of its own, under the same device and inode numbers.
        let image = scratch.copy_testbed("image/mcp-testbed");
        let layer = image.parent().unwrap();
        let roots = ["first", "second", "third"].map(|name| Overlay::new(&scratch, layer, name));
        let binaries = roots.each_ref().map(|root| root.0.join("mcp-testbed"));
        std::fs::set_permissions(&binaries[2], std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(scratch.0.join("third/upper/mcp-testbed").is_file(), "copied up");
        let stats = binaries.each_ref().map(|b| std::fs::metadata(b).unwrap());
        assert!(stats[0].dev() != stats[1].dev() && stats[0].ino() == stats[2].ino(), "stat tells nothing");
        let proxies = binaries.each_ref().map(|b| start_proxy(b));
        let observer = start_observer(&proxies.each_ref().map(Running::pid), &[]);
        // The kernel attaches to the file behind the overlay: the image's for the first two.
        let attached =
            observer.stderr.lock().unwrap().iter().filter(|l| l.contains("] attached 14 probes to ")).count();
        assert_eq!(attached, 2, "{:?}", observer.stderr.lock().unwrap());
        for (seed, proxy) in proxies.iter().enumerate() {
            let truth = run_load(proxy, 60, 4, 9 + seed as u64, 10);
            assert_workload_requests_match(&observer, &[("pid", &proxy.pid().to_string())], &truth);
        }
    }
}

/// A copy of this kernel's formats of every hook's tracepoint, under `root`, without
/// `hidden` and with `resized`'s field (hook, field) narrowed to 4 bytes.
fn formats_copy(root: &Path, hidden: Option<&str>, resized: Option<(&str, &str)>) {
    for hook in HOOKS.into_iter().filter(|h| Some(*h) != hidden) {
        let from = tracepoint_dir(Path::new(TRACEFS), hook).join("format");
        let Ok(mut text) = std::fs::read_to_string(&from) else { continue };
        if let Some((_, field)) = resized.filter(|(h, _)| *h == hook) {
            let line =
                text.lines().find(|l| l.contains(&format!(" {field};"))).expect("the field").to_string();
            assert!(line.contains("size:8;"), "{line}");
            text = text.replace(&line, &line.replace("size:8;", "size:4;"));
        }
        let to = tracepoint_dir(root, hook);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("format"), text).unwrap();
    }
}

/// The kernel this test runs on has every hook; each case plays one that lacks one: the
/// agent starts, names the gap in `--check`, in a warning and in the series, and the
/// requests and TCP connections still equal the load's truth.
#[test]
fn a_hidden_hook_is_a_gap_in_all_three_places_and_the_counts_stay_exact() {
    let _serial = kernel_test();
    for hook in HOOKS {
        assert!(tracepoint_dir(Path::new(TRACEFS), hook).is_dir(), "this test needs a kernel with {hook}");
    }
    let cases = [
        ("sock:sock_recv_length", Some("sock:sock_recv_length"), None),
        ("tcp:tcp_receive_reset", None, Some(("tcp:tcp_receive_reset", "skaddr"))),
    ];
    for (gap, hidden, resized) in cases {
        let scratch = Scratch::new("formats");
        formats_copy(&scratch.0, hidden, resized);
        let env = [(FORMATS_ENV, scratch.0.to_str().unwrap())];
        let proxy = start_proxy(&testbed_bin());
        let pid = proxy.pid().to_string();
        let (code, check, stderr) = observe_once_env(&["--pid", &pid, "--check"], &env);
        assert_eq!(code, 0, "--check without {gap}: {check}{stderr}");
        if resized.is_some() {
            let line = check.lines().find(|l| l.contains(&format!("{gap} not attached ("))).unwrap();
            assert!(line.contains("`skaddr` (it has 4 bytes)"), "names the field and its size: {line}");
        }
        let observer = start_observer_env(&[proxy.pid()], &[], &env);
        for hook in HOOKS {
            assert_reported(hook, hook != gap, &check, &observer);
        }
        let truth = run_load(&proxy, 100, 4, 11, 10);
        assert_requests_match(&observer, &truth);
        assert_tcp_exact(&observer, &proxy);
    }
}

/// Without `sock_recv_length` (Linux before 6.3) an accepted connection is the proxy's by
/// its listening port alone: a server on the same port in another network namespace has
/// its connections counted as the proxy's too, as README and docs/kernel-hooks.md say
/// (with the hook they are not: `hooks::a_listener_on_the_proxys_port_in_another_namespace_is_not_the_proxys`).
#[test]
fn without_sock_recv_length_a_listener_on_the_proxys_port_in_another_namespace_counts_as_the_proxys() {
    let _serial = kernel_test();
    let scratch = Scratch::new("formats");
    formats_copy(&scratch.0, Some("sock:sock_recv_length"), None);
    let proxy = start_proxy(&testbed_bin());
    let observer = start_observer_env(&[proxy.pid()], &[], &[(FORMATS_ENV, scratch.0.to_str().unwrap())]);
    let port = proxy.addr.rsplit_once(':').unwrap().1;
    let _unrelated = same_port_in_another_namespace(port, "portonly");
    let held = TcpStream::connect(&proxy.addr).unwrap();
    scrape_until(&observer, "the held connection", |m| value(m, TCP_ACTIVE, &[INBOUND]) == 1.0);
    hold_connections(&proxy.addr, 2, Duration::from_millis(20));
    drop(held);
    let metrics = scrape_until(&observer, "every close", |m| value(m, TCP_CLOSED, &[INBOUND]) >= 6.0);
    assert_eq!(value(&metrics, TCP_OPENED, &[INBOUND]), 6.0, "the proxy's 3 and the other namespace's 3");
    assert_eq!(value(&metrics, TCP_CLOSED, &[INBOUND]), 6.0);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[INBOUND]), 0.0);
}
