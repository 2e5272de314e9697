//! Installs the toolchain of DESIGN.md idempotently: each step first checks whether its
//! tool is already there, so a machine that has everything pays only for the checks.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{exec, manifests::PYTHON_PACKAGES};

/// The LLVM that bpf-linker links against, bpftool, capsh and strip for the tests, and
/// for the kernel-hook tests: network namespaces, nftables, sysctl and pkill, setpriv and
/// unshare, the system Python that plays a proxy without probes, Prometheus (with
/// promtool) for the rules' unit tests and the PromQL test, tmux to drive `top`, and for
/// the VM stage QEMU and cpio (its initramfs; busybox comes from the VM stage's own cache),
/// podman with runc for the images and the runtime tests (DESIGN.md: crun refuses this kind
/// of machine's hybrid cgroup layout), and containerd for its containers outside Kubernetes.
const APT_PACKAGES: [&str; 17] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "libcap2-bin",
    "binutils",
    "iproute2",
    "nftables",
    "procps",
    "util-linux",
    "python3",
    "prometheus",
    "tmux",
    "qemu-system-x86",
    "cpio",
    "podman",
    "runc",
    "containerd",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    rust_target("aarch64-unknown-linux-gnu")?;
    // The agent's image holds a static build.
    rust_target("x86_64-unknown-linux-musl")?;
    apt_packages()?;
    bpf_linker()?;
    python_mcp_sdk()?;
    manifest_validators()?;
    tracefs()
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

pub fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    if !output("rustup", &["toolchain", "list"]).lines().any(|l| l.starts_with("nightly")) {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))?;
    }
    let installed = output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]);
    for component in ["rust-src", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            exec(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }
    Ok(())
}

fn rust_target(target: &str) -> anyhow::Result<()> {
    if !output("rustup", &["target", "list", "--installed"]).lines().any(|l| l == target) {
        exec(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .into_iter()
        .filter(|p| output("dpkg-query", &["-W", "-f=${Status}", p]) != "install ok installed")
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    exec(Command::new("apt-get").arg("update"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker (is ~/.cargo/bin on PATH?)")
}

/// The reference MCP client SDK, which the testbed's compatibility test drives.
fn python_mcp_sdk() -> anyhow::Result<()> {
    const PINNED: &str = "mcp==1.27.2";
    let check = format!("import importlib.metadata as m; assert m.version('mcp') == '{}'", &PINNED[5..]);
    if succeeds("python3", &["-c", &check]) {
        return Ok(());
    }
    exec(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--root-user-action=ignore",
        PINNED,
    ]))
}

/// The validators of k8s/ (manifests.rs), pinned: kubernetes-validate, with the Kubernetes
/// API schemas it bundles, and jsonschema for the PodMonitor CRD's schema.
fn manifest_validators() -> anyhow::Result<()> {
    let versions: Vec<String> =
        PYTHON_PACKAGES.iter().map(|(name, version)| format!("m.version('{name}') == '{version}'")).collect();
    let check = format!("import importlib.metadata as m; assert {}", versions.join(" and "));
    if succeeds("python3", &["-c", &check]) {
        return Ok(());
    }
    exec(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--root-user-action=ignore"])
            .args(PYTHON_PACKAGES.iter().map(|(name, version)| format!("{name}=={version}"))),
    )
}

/// kubectl renders k8s/ with the kustomize it embeds (v5 for components and `labels`). No
/// package source here has a recent one, so it is checked, not installed, and only by the
/// manifest validation: the demo does not need it.
pub fn kubectl_with_kustomize() -> anyhow::Result<()> {
    let version = output("kubectl", &["version", "--client"]);
    let kustomize = version.lines().find_map(|l| l.strip_prefix("Kustomize Version: v"));
    if kustomize.and_then(|v| v.split('.').next()?.parse::<u32>().ok()).is_none_or(|major| major < 5) {
        bail!(
            "kubectl 1.27 or later on PATH (its built-in kustomize v5 renders k8s/) is required to validate k8s/: \
             install it as https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ shows (Debian 12's \
             kubernetes-client is 1.20, too old)"
        );
    }
    Ok(())
}

/// Tracepoints need tracefs; mount it where the kernel expects it if it is not there.
fn tracefs() -> anyhow::Result<()> {
    let mount = Path::new("/sys/kernel/tracing");
    if mount.join("events").is_dir() {
        return Ok(());
    }
    if !succeeds("mount", &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]) {
        bail!("tracefs is not mounted at {} and mounting it failed: run as root", mount.display());
    }
    Ok(())
}
