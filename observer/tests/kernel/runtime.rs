//! The DaemonSet as a real OCI runtime runs it: the agent's image (`cargo xtask image`)
//! under podman with the flags k8s/base/daemonset.yaml implies, and testbed proxies in
//! containers of their own. No Kubernetes cluster runs here; this is the closest real thing.

use std::process::Command;

use serde_yaml::Value;

use crate::support::*;

/// The testbed's image (`cargo xtask image`): its binary, and its libraries at their host
/// paths.
const TESTBED_IMAGE: &str = "localhost/mcp-testbed:test";

/// Where the testbed's image holds its binary.
const TESTBED_IN_IMAGE: &str = "/usr/local/bin/mcp-testbed";

/// Global podman options this kind of machine needs (DESIGN.md: crun refuses its hybrid
/// cgroup layout).
const PODMAN: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(PODMAN);
    command
}

/// `podman run` or `podman create` with the limits this machine allows: its hard limits
/// are below podman's defaults (DESIGN.md).
fn podman_container(verb: &str) -> Command {
    let hard = Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let mut command = podman();
    command.args([verb, &format!("--ulimit=nofile={hard}:{hard}"), "--ulimit=nproc=4096:4096"]);
    command
}

/// The agent container of k8s/base/daemonset.yaml, as podman flags.
struct Agent {
    image: String,
    flags: Vec<String>,
    args: Vec<String>,
    capabilities: Vec<String>,
}

/// Reads the DaemonSet and turns its pod and container settings into podman's flags.
fn daemonset() -> Agent {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../k8s/base/daemonset.yaml");
    let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pod = &yaml["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let mut flags = vec![];
    if pod["hostPID"] == Value::Bool(true) {
        flags.push("--pid=host".to_string());
    }
    // The pod's own network namespace (no hostNetwork): loopback only here, which is all
    // the agent needs (it reads a target's sockets through /proc/PID/net); the test scrapes
    // it from inside.
    assert!(pod["hostNetwork"].as_bool() != Some(true));
    flags.push("--network=none".into());
    // RuntimeDefault is the runtime's own default profile: podman applies its default
    // seccomp filter when no profile is named.
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], Value::from("RuntimeDefault"));
    assert_eq!(security["privileged"], Value::Bool(false));
    if security["allowPrivilegeEscalation"] == Value::Bool(false) {
        flags.push("--security-opt=no-new-privileges".into());
    }
    if security["readOnlyRootFilesystem"] == Value::Bool(true) {
        flags.push("--read-only".into());
    }
    let id = |key: &str| security[key].as_u64().unwrap();
    flags.push(format!("--user={}:{}", id("runAsUser"), id("runAsGroup")));
    for dropped in strings(&security["capabilities"]["drop"]) {
        flags.push(format!("--cap-drop={dropped}"));
    }
    let capabilities = strings(&security["capabilities"]["add"]);
    flags.extend(capabilities.iter().map(|cap| format!("--cap-add={cap}")));
    // AppArmor's Unconfined: this host has no AppArmor, so there is nothing to loosen.
    assert!(
        !std::path::Path::new("/sys/module/apparmor").exists(),
        "AppArmor: add --security-opt=apparmor=unconfined"
    );
    let memory = container["resources"]["limits"]["memory"].as_str().unwrap();
    flags.push(format!("--memory={}m", memory.strip_suffix("Mi").expect("a limit in Mi")));
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        let name = &mount["name"];
        let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| &v["name"] == name).unwrap();
        let mut options = vec![if mount["readOnly"] == Value::Bool(true) { "ro" } else { "rw" }];
        if mount["mountPropagation"] == "HostToContainer" {
            options.push("rslave");
        }
        let host = volume["hostPath"]["path"].as_str().unwrap();
        flags.push(format!("--volume={host}:{}:{}", mount["mountPath"].as_str().unwrap(), options.join(",")));
    }
    // The DaemonSet's arguments, listening where this test finds it.
    let mut args = strings(&container["args"]);
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    args[listen + 1] = "127.0.0.1:0".into();
    Agent { image: container["image"].as_str().unwrap().to_string(), flags, args, capabilities }
}

/// A container run in the foreground by `podman run`; removed on drop.
struct Container {
    name: String,
    running: Option<Running>,
}

impl Container {
    /// Runs `image` with `flags` and `args`, and waits for `marker` on its stderr.
    fn run(name: &str, flags: &[String], image: &str, args: &[&str], marker: &str) -> Container {
        remove(name);
        let mut command = podman_container("run");
        command.args(["--name", name]).args(flags).arg(image).args(args);
        let running = Running::spawn(command, marker);
        Container { name: name.to_string(), running: Some(running) }
    }

    /// As [`Container::run`], but the container's own copy of `binary` (overlayfs copies a
    /// file up into the container's layer when its attributes change) runs instead of the
    /// image's.
    fn run_copied_up(name: &str, flags: &[String], image: &str, args: &[&str], marker: &str) -> Container {
        remove(name);
        let mut create = podman_container("create");
        let created = create.args(["--name", name]).args(flags).arg(image).args(args).output().unwrap();
        assert!(created.status.success(), "podman create: {}", String::from_utf8_lossy(&created.stderr));
        let mounted = podman().args(["mount", name]).output().unwrap();
        let merged = String::from_utf8_lossy(&mounted.stdout).trim().to_string();
        assert!(mounted.status.success() && !merged.is_empty(), "podman mount {name}");
        let binary = format!("{merged}{}", args[0]);
        assert!(Command::new("chmod").args(["0755", &binary]).status().unwrap().success());
        let upper = std::path::Path::new(&merged).with_file_name("diff").join(&args[0][1..]);
        assert!(upper.is_file(), "{} copied up", upper.display());
        assert!(podman().args(["umount", name]).status().unwrap().success());
        let mut start = podman();
        start.args(["start", "--attach", name]);
        Container { name: name.to_string(), running: Some(Running::spawn(start, marker)) }
    }

    /// The pid of its first process on the host.
    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    /// Its id as `podman ps` shows it (12 digits): its `container` label outside Kubernetes
    /// when the agent cannot read podman's state, as in its own container.
    fn short_id(&self) -> String {
        self.inspect("{{.Id}}")[..12].to_string()
    }

    fn inspect(&self, format: &str) -> String {
        let out = podman().args(["inspect", "--format", format, &self.name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }
}

/// Removes container `name`, if there is one (left by an earlier run, or done with).
fn remove(name: &str) {
    let _ = podman().args(["rm", "--force", "--time", "0", name]).output();
}

impl Drop for Container {
    fn drop(&mut self) {
        remove(&self.name);
        self.running.take();
    }
}

/// BPF links on this host, as bpftool lists them.
fn bpf_links() -> usize {
    let out = Command::new("bpftool").args(["link", "list"]).output().expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|id| id.parse::<u32>().is_ok()))
        .count()
}

#[test]
fn the_daemonsets_container_observes_proxies_in_other_containers() {
    let _serial = kernel_test();
    let agent = daemonset();
    let ok = |args: &[&str]| podman().args(args).output().unwrap().status.success();
    for image in [agent.image.as_str(), TESTBED_IMAGE] {
        assert!(ok(&["image", "exists", image]), "no image {image}: run `cargo xtask image`");
    }
    assert!(
        agent.flags.contains(&"--pid=host".to_string())
            && agent.flags.contains(&"--cap-drop=ALL".to_string())
    );
    let logs = std::path::Path::new("/var/log/containers");
    let made_logs = !logs.exists();
    if made_logs {
        std::fs::create_dir_all(logs).unwrap();
    }

    // Three proxies, each in its own mount, pid and network namespace, as user 1000, from
    // one image; the third runs its container's own copy of the binary.
    let testbed = TESTBED_IN_IMAGE.to_string();
    let proxy_flags: Vec<String> =
        ["--user=1000:1000", "--network=none", "--read-only"].map(String::from).to_vec();
    let proxy_args = [testbed.as_str(), "proxy", "--listen", "127.0.0.1:8080"];
    let run = |name| Container::run(name, &proxy_flags, TESTBED_IMAGE, &proxy_args, " serving ");
    let copied_up =
        |name| Container::run_copied_up(name, &proxy_flags, TESTBED_IMAGE, &proxy_args, " serving ");
    let proxies = [
        run("mcp-observe-test-proxy-a"),
        run("mcp-observe-test-proxy-b"),
        copied_up("mcp-observe-test-proxy-c"),
    ];

    let links_before = bpf_links();
    let args: Vec<&str> = agent.args.iter().map(String::as_str).collect();
    let mut observer =
        Container::run("mcp-observe-test-agent", &agent.flags, &agent.image, &args, "serving /metrics on ");
    let netns = format!("/proc/{}/ns/net", observer.pid());
    assert_ne!(std::fs::read_link(&netns).unwrap(), std::fs::read_link("/proc/self/ns/net").unwrap());
    observer.running.as_mut().unwrap().netns = Some(netns.into());
    let running = observer.running();
    wait_ready(running);
    let pids = proxies.each_ref().map(Container::pid);
    scrape_until(running, "the three proxies observed", |_| {
        let log = running.stderr.lock().unwrap();
        pids.iter().all(|pid| log.iter().any(|l| l.contains(&format!("] observing pid {pid} "))))
    });
    // One image, three overlay mounts, two files to the kernel: the image's, shared by the
    // first two (one set of uprobes, though `stat` names it twice), and the third's copy.
    let attached = running
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.ends_with(&format!("] attached 14 probes to {testbed}")))
        .count();
    assert_eq!(attached, 2, "{:?}", running.stderr.lock().unwrap());
    assert!(bpf_links() > links_before, "the agent's links are listed");

    let load = |proxy: &Container, seed: u64| {
        let out = podman()
            .args(["exec", "--user", "1000:1000", &proxy.name, &testbed, "load"])
            .args(["--url", "http://127.0.0.1:8080/mcp", "--calls", "120", "--concurrency", "4"])
            .args(["--seed", &seed.to_string(), "--sleep-ms", "5"])
            .output()
            .unwrap();
        assert!(out.status.success(), "load in {}: {}", proxy.name, String::from_utf8_lossy(&out.stderr));
        requests_of(&serde_json::from_slice(&out.stdout).unwrap())
    };
    let mut truths = vec![];
    for (seed, proxy) in proxies.iter().enumerate() {
        let truth = load(proxy, seed as u64 + 1);
        assert_workload_requests_match(running, &[("container", &proxy.short_id())], &truth);
        truths.push(truth);
    }
    // A container restarted: its new process continues the container's series.
    let restarted = &proxies[0];
    assert!(ok(&["restart", "--time", "2", &restarted.name]));
    let pid = restarted.pid();
    assert_ne!(pid, pids[0]);
    scrape_until(running, "the restarted proxy observed", |_| {
        running.stderr.lock().unwrap().iter().any(|l| l.contains(&format!("] observing pid {pid} ")))
    });
    let after = load(restarted, 3);
    let container = restarted.short_id();
    assert_workload_requests_match(
        running,
        &[("container", &container)],
        &merge(&[truths[0].clone(), after]),
    );

    // Stopped as Kubernetes stops a pod (SIGTERM): every link goes with it.
    assert!(ok(&["stop", "--time", "10", &observer.name]));
    assert_eq!(bpf_links(), links_before, "links left after the agent stopped");
    drop(observer);

    // Each capability the DaemonSet adds, removed: the agent says which one it lacks.
    let check: Vec<&str> = args.iter().copied().chain(["--check"]).collect();
    for missing in &agent.capabilities {
        let fewer: Vec<String> =
            agent.flags.iter().filter(|f| **f != format!("--cap-add={missing}")).cloned().collect();
        let mut command = podman_container("run");
        command.arg("--rm").args(&fewer).arg(&agent.image).args(&check);
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {missing}: {stderr}");
        assert!(
            stderr.contains(&format!("missing capability CAP_{missing}")) && stderr.lines().count() == 1,
            "without {missing}: {command:?}: {stderr}"
        );
    }
    drop(proxies);
    if made_logs {
        let _ = std::fs::remove_dir(logs);
    }
}

/// containerd for one test: the node's if it runs, else one started here and stopped on drop.
struct Containerd(Option<std::process::Child>);

impl Containerd {
    fn ensure() -> Containerd {
        let answers = || Command::new("ctr").arg("version").output().is_ok_and(|o| o.status.success());
        if answers() {
            return Containerd(None);
        }
        let child = Command::new("containerd")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("containerd (Debian's containerd; `cargo xtask setup` installs it)");
        wait_for(std::time::Duration::from_secs(20), "containerd answering", answers);
        Containerd(Some(child))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// `ctr` in the test's own containerd namespace.
const CTR_NAMESPACE: &str = "mcp-observe-test";

fn ctr(args: &[&str]) -> std::process::Output {
    Command::new("ctr").args(["--namespace", CTR_NAMESPACE]).args(args).output().expect("ctr")
}

/// A `ctr run` container; killed and removed, with the namespace's image, on drop.
struct CtrContainer(&'static str);

impl Drop for CtrContainer {
    fn drop(&mut self) {
        let _ = ctr(&["task", "kill", "--signal", "KILL", self.0]);
        let _ = ctr(&["task", "rm", "--force", self.0]);
        let _ = ctr(&["container", "rm", self.0]);
        let _ = ctr(&["image", "rm", TESTBED_IMAGE]);
    }
}

#[test]
fn a_containerd_container_outside_kubernetes_is_labelled_by_namespace_and_id() {
    let _serial = kernel_test();
    let _containerd = Containerd::ensure();
    let scratch = Scratch::new("ctr");
    let archive = scratch.0.join("testbed.tar").display().to_string();
    let saved = podman()
        .args(["save", "--quiet", "--format", "docker-archive", "-o", &archive, TESTBED_IMAGE])
        .status();
    assert!(saved.unwrap().success(), "no image {TESTBED_IMAGE}: run `cargo xtask image`");
    assert!(ctr(&["image", "import", &archive]).status.success());
    let testbed = TESTBED_IN_IMAGE.to_string();
    let container = CtrContainer("proxy-c");
    let run = ctr(&[
        "run",
        "--detach",
        TESTBED_IMAGE,
        container.0,
        &testbed,
        "proxy",
        "--listen",
        "127.0.0.1:8080",
    ]);
    assert!(run.status.success(), "ctr run: {}", String::from_utf8_lossy(&run.stderr));
    let tasks = String::from_utf8_lossy(&ctr(&["task", "ls"]).stdout).to_string();
    let pid: u32 = tasks
        .lines()
        .find_map(|l| l.strip_prefix("proxy-c"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // The agent on the host, where containerd's bundles are.
    let mut command = Command::new(observer_bin());
    command.args(["agent", "--listen", "127.0.0.1:0"]).env("RUST_LOG", "info");
    let agent = Running::spawn(command, "serving /metrics on ");
    let labelled =
        format!("] observing pid {pid} ({testbed}) as container {CTR_NAMESPACE}/proxy-c ({testbed})");
    scrape_until(&agent, "the containerd proxy observed", |_| {
        agent.stderr.lock().unwrap().iter().any(|l| l.ends_with(&labelled))
    });
    // Its own network namespace: the load runs beside it.
    let load = [&testbed, "load", "--url", "http://127.0.0.1:8080/mcp", "--calls", "120"];
    let load = [
        &["task", "exec", "--exec-id", "load", container.0][..],
        &load,
        &["--concurrency", "4", "--seed", "4"],
    ];
    let out = ctr(&load.concat());
    assert!(out.status.success(), "load: {}", String::from_utf8_lossy(&out.stderr));
    let truth = requests_of(&serde_json::from_slice(&out.stdout).unwrap());
    assert_workload_requests_match(
        &agent,
        &[("namespace", CTR_NAMESPACE), ("container", container.0)],
        &truth,
    );
}
