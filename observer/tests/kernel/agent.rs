//! The node-wide agent: proxies found as they start, each labelled by the Kubernetes
//! container it runs in (cgroups named as kubelet names them, kubelet's log links naming
//! them) or by pid and executable; restarts, upgrades and the DaemonSet's capabilities.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

/// Probe functions in the testbed proxy.
const PROBES: f64 = 14.0;

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid host).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    PathBuf::from(line.expect("a cgroup2 hierarchy is mounted").split_whitespace().nth(1).unwrap())
}

/// How the kubelet's cgroup driver and the runtime name a container's cgroup.
#[derive(Clone, Copy)]
enum Layout {
    /// systemd driver, containerd: `kubepods.slice/…-pod<uid_>.slice/cri-containerd-<id>.scope`.
    SystemdContainerd,
    /// cgroupfs driver, CRI-O: `kubepods/burstable/pod<uid>/crio-<id>`.
    CgroupfsCrio,
}

/// A Kubernetes container as kubelet and its runtime leave it on a node: its cgroup and
/// kubelet's log link `<pod>_<namespace>_<container>-<id>.log`. Removed on drop.
struct Container {
    cgroup: PathBuf,
    link: PathBuf,
}

impl Container {
    fn new(logs: &Path, names: [&str; 3], uid: &str, layout: Layout) -> Container {
        let [namespace, pod, container] = names;
        let id = container_id();
        let relative = match layout {
            Layout::SystemdContainerd => format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            ),
            Layout::CgroupfsCrio => format!("kubepods/burstable/pod{uid}/crio-{id}"),
        };
        let cgroup = cgroup2_root().join(relative);
        std::fs::create_dir_all(&cgroup).unwrap();
        let link = logs.join(format!("{pod}_{namespace}_{container}-{id}.log"));
        std::os::unix::fs::symlink(format!("/var/log/pods/{namespace}_{pod}_{uid}/{container}/0.log"), &link)
            .unwrap();
        Container { cgroup, link }
    }

    /// Starts `binary proxy` in this container's cgroup, in new pid and mount namespaces,
    /// as a container runtime does. Returns it and the proxy's pid (unshare's child).
    fn start_proxy(&self, binary: &Path) -> (Running, u32) {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            r#"echo $$ > "$0/cgroup.procs" && exec unshare --pid --mount --fork --kill-child "$1" proxy --listen 127.0.0.1:0"#,
        ]);
        command.arg(&self.cgroup).arg(binary);
        let running = Running::spawn(command, " serving ");
        let proxy = children_of(running.pid(), " proxy ");
        assert_eq!(proxy.len(), 1, "unshare runs the proxy");
        (running, proxy[0])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        // The container's cgroup, then the pod's and the QoS class's once empty.
        let root = cgroup2_root();
        let mut dir = Some(self.cgroup.as_path());
        while let Some(d) = dir.filter(|d| *d != root) {
            let _ = std::fs::remove_dir(d);
            dir = d.parent();
        }
    }
}

/// A 64-hex-digit container id, different at each call.
fn container_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}{:08x}", std::process::id(), n).repeat(4)
}

/// Starts `mcp-observe agent` (optionally under `wrapper`) and waits until it is ready.
fn start_agent(logs: &Path, wrapper: &[&str]) -> Running {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(observer_bin());
            c
        }
        None => Command::new(observer_bin()),
    };
    command.args(["agent", "--listen", "127.0.0.1:0", "--container-logs"]).arg(logs).env("RUST_LOG", "info");
    let agent = Running::spawn(command, "serving /metrics on ");
    wait_ready(&agent);
    agent
}

/// What the agent's log says it observes of this test's own proxies, those whose
/// executable lies under `scratch`: the pids observed and not gone, and how many of their
/// executables have their probes attached (each with every probe). A proxy the test did
/// not start (a leftover of an earlier run, anything else on the node) is not judged.
fn observed(agent: &Running, scratch: &Scratch) -> (BTreeSet<u32>, usize) {
    let ours = |path: &str| Path::new(path).starts_with(&scratch.0);
    let (mut pids, mut binaries) = (BTreeSet::new(), 0);
    for line in agent.stderr.lock().unwrap().iter() {
        if let Some((_, rest)) = line.split_once("] observing pid ") {
            let (pid, rest) = rest.split_once(" (").unwrap();
            if ours(rest.rsplit_once(") as ").unwrap().0) {
                pids.insert(pid.parse().unwrap());
            }
        } else if let Some((_, rest)) = line.split_once("] pid ")
            && rest.ends_with(" is gone")
        {
            pids.remove(&rest.split_once(' ').unwrap().0.parse().unwrap());
        } else if let Some((_, rest)) = line.split_once("] attached ")
            && let Some((count, path)) = rest.split_once(" probes to ")
            && ours(path)
        {
            assert_eq!(count.parse::<f64>().unwrap(), PROBES, "{line}");
            binaries += 1;
        } else if let Some((_, rest)) = line.split_once("] detaching the probes of ")
            && ours(rest.split_once(": ").unwrap().0)
        {
            binaries -= 1;
        }
    }
    (pids, binaries)
}

/// Waits until the agent observes exactly `targets` of this test's proxies, on `binaries`
/// executable files.
fn wait_for_targets(agent: &Running, scratch: &Scratch, targets: usize, binaries: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (pids, attached) = observed(agent, scratch);
        if (pids.len(), attached) == (targets, binaries) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {targets} targets on {binaries} executables, still {pids:?} on {attached}; agent: {:?}",
            agent.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod(names: [&'static str; 3]) -> [(&'static str, &'static str); 3] {
    [("namespace", names[0]), ("pod", names[1]), ("container", names[2])]
}

#[test]
fn the_agent_finds_labels_and_follows_every_proxy_on_the_node() {
    let _serial = kernel_test();
    let scratch = Scratch::new("agent");
    let logs = scratch.0.join("containers");
    std::fs::create_dir(&logs).unwrap();
    let (shop, ops) = (["shop", "mcp-proxy-7d9f8b-x2k4q", "proxy"], ["ops", "gateway-0", "mcp"]);
    let (shop_uid, ops_uid) =
        ("1f6b2c3d-4e5f-4789-abcd-ef0123456789", "8a7b6c5d-1234-4abc-9def-0123456789ab");

    // Two proxies in their containers before the agent starts, from two files.
    let shop_bin = scratch.copy_testbed("shop/usr/local/bin/mcp-testbed");
    let ops_bin = scratch.copy_testbed("ops/opt/gateway/bin/proxy");
    let shop_container = Container::new(&logs, shop, shop_uid, Layout::SystemdContainerd);
    let ops_container = Container::new(&logs, ops, ops_uid, Layout::CgroupfsCrio);
    let (shop_proxy, shop_pid) = shop_container.start_proxy(&shop_bin);
    let (ops_proxy, _) = ops_container.start_proxy(&ops_bin);
    let agent = start_agent(&logs, &[]);
    wait_for_targets(&agent, &scratch, 2, 2);
    let shop_first = run_load(&shop_proxy, 150, 8, 1, 10);
    let ops_first = run_load(&ops_proxy, 120, 8, 2, 10);
    assert_workload_requests_match(&agent, &pod(shop), &shop_first);
    assert_workload_requests_match(&agent, &pod(ops), &ops_first);

    // A third proxy, outside Kubernetes, started after the agent: found at its exec.
    // Through `sh -c exec`: two execs of one process, the agent may see the second first.
    let started = Instant::now();
    let plain_bin = scratch.copy_testbed("plain/mcp-testbed");
    let mut command = Command::new("sh");
    command.args(["-c", r#"exec "$0" proxy --listen 127.0.0.1:0"#]).arg(&plain_bin);
    let plain = Running::spawn(command, " serving ");
    let plain_pid = plain.pid().to_string();
    let exe = plain_bin.display().to_string();
    let plain_labels = [("pid", plain_pid.as_str()), ("exe", exe.as_str())];
    scrape_until(&agent, "the third proxy observed", |m| {
        m.samples
            .iter()
            .any(|s| s.metric == "mcp_proxy_requests_in_flight" && s.labels.get("pid") == Some(&plain_pid))
    });
    let found_after = started.elapsed();
    eprintln!("the third proxy was observed {found_after:?} after it announced its address");
    assert!(found_after < Duration::from_secs(2), "found after {found_after:?}");
    wait_for_targets(&agent, &scratch, 3, 3);
    let plain_truth = run_load(&plain, 100, 4, 3, 10);
    assert_workload_requests_match(&agent, &plain_labels, &plain_truth);
    let churned = format!("pid {} (", plain.pid());
    let log = agent.stderr.lock().unwrap().clone();
    assert!(!log.iter().any(|l| l.contains(&churned) && l.contains("is gone")), "observed once: {log:?}");

    // kill -9 and a restart in a new container of the same pod: the counters go on under
    // the same labels, and nothing of the dead process stays.
    let held = std::net::TcpStream::connect(&shop_proxy.addr).unwrap();
    let inbound_active = |m: &prometheus_parse::Scrape| {
        let labels: Vec<(&str, &str)> = pod(shop).into_iter().chain([("direction", "inbound")]).collect();
        value(m, "mcp_proxy_tcp_connections_active", &labels)
    };
    scrape_until(&agent, "a connection held open", |m| inbound_active(m) == 1.0);
    // SAFETY: killing the proxy this test started.
    assert_eq!(unsafe { libc::kill(shop_pid as i32, libc::SIGKILL) }, 0);
    wait_for_targets(&agent, &scratch, 2, 2);
    drop(shop_proxy);
    let restarted = Container::new(&logs, shop, shop_uid, Layout::SystemdContainerd);
    let (shop_proxy, _) = restarted.start_proxy(&shop_bin);
    wait_for_targets(&agent, &scratch, 3, 3);
    let shop_second = run_load(&shop_proxy, 80, 8, 4, 10);
    assert_workload_requests_match(&agent, &pod(shop), &merge(&[shop_first, shop_second]));
    let metrics = scrape(&agent);
    for gauge in
        ["mcp_proxy_sessions_active", "mcp_proxy_tcp_connections_active", "mcp_proxy_requests_in_flight"]
    {
        assert_eq!(value(&metrics, gauge, &pod(shop)), 0.0, "{gauge} after the restart");
    }
    drop(held);

    // The executable replaced on disk while its process runs (a new inode at the same
    // path), and a second container started from the new file: both are observed.
    let replacement = scratch.copy_testbed("ops/opt/gateway/bin/proxy.new");
    std::fs::rename(&replacement, &ops_bin).unwrap();
    let canary = ["ops", "gateway-0", "mcp-canary"];
    let canary_container = Container::new(&logs, canary, ops_uid, Layout::CgroupfsCrio);
    let (canary_proxy, _) = canary_container.start_proxy(&ops_bin);
    wait_for_targets(&agent, &scratch, 4, 4);
    let ops_second = run_load(&ops_proxy, 60, 4, 5, 10);
    let canary_truth = run_load(&canary_proxy, 70, 4, 6, 10);
    assert_workload_requests_match(&agent, &pod(ops), &merge(&[ops_first, ops_second]));
    assert_workload_requests_match(&agent, &pod(canary), &canary_truth);
    // The old file loses its probes with its last process; the new one keeps them.
    drop(ops_proxy);
    wait_for_targets(&agent, &scratch, 3, 3);
    let canary_more = run_load(&canary_proxy, 30, 4, 7, 10);
    assert_workload_requests_match(&agent, &pod(canary), &merge(&[canary_truth, canary_more]));
    let metrics = scrape(&agent);
    assert_eq!(value(&metrics, "mcp_observer_events_lost_total", &[]), 0.0, "execs and exits included");
    assert_eq!(value(&metrics, "mcp_observer_decode_errors_total", &[]), 0.0);
    drop((canary_proxy, shop_proxy, plain));
    wait_for_targets(&agent, &scratch, 0, 0);
}

/// The capabilities the DaemonSet grants (k8s/base/daemonset.yaml, `capabilities.add`).
fn daemonset_capabilities() -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/daemonset.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let caps: Vec<String> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "add:")
        .skip(1)
        .filter(|l| !l.starts_with('#'))
        .map_while(|l| l.strip_prefix("- "))
        .map(|c| c.trim().to_string())
        .collect();
    assert!(!caps.is_empty(), "no capabilities read from {}", manifest.display());
    caps
}

#[test]
fn the_agent_works_with_the_daemonsets_capabilities_and_names_each_one_missing() {
    let _serial = kernel_test();
    let caps = daemonset_capabilities();
    let scratch = Scratch::new("caps");
    let logs = scratch.0.join("containers");
    std::fs::create_dir(&logs).unwrap();
    // A proxy of another user, as in a container: its /proc entries are not root's.
    let binary = scratch.copy_testbed("bin/mcp-testbed");
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&binary);
    command.args(["proxy", "--listen", "127.0.0.1:0"]);
    let proxy = Running::spawn(command, " serving ");
    let pid = proxy.pid().to_string();

    let wrapper = with_only(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = start_agent(&logs, &wrapper);
    let labels = [("pid", pid.as_str())];
    wait_for_targets(&agent, &scratch, 1, 1);
    // Its listening port was read from its /proc/PID/fd at attach: inbound connections count.
    hold_connections(&proxy.addr, 3, Duration::from_millis(50));
    let inbound = [("pid", pid.as_str()), ("direction", "inbound")];
    scrape_until(&agent, "3 inbound connections", |m| {
        value(m, "mcp_proxy_tcp_connections_closed_total", &inbound) == 3.0
    });
    let truth = run_load(&proxy, 100, 4, 8, 10);
    assert_workload_requests_match(&agent, &labels, &truth);
    drop(agent);

    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let wrapper = with_only(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let logs = logs.display().to_string();
        let (code, _, stderr) = observe_once(&["agent", "--check", "--container-logs", &logs], &wrapper);
        assert_ne!(code, 0, "without {missing}: {stderr}");
        assert!(
            stderr.contains(&format!("missing capability CAP_{missing}")) && stderr.lines().count() == 1,
            "without {missing}: {stderr}"
        );
    }
}
