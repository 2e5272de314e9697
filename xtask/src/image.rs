//! `cargo xtask image`: the agent's image, built here without pulling anything: a static
//! (musl) build of `mcp-observe` in a `FROM scratch` image (the repository's Dockerfile),
//! tagged as k8s/base/daemonset.yaml names it. Also the image the runtime tests run the
//! testbed proxy from: the release `mcp-testbed` at `/usr/local/bin`, its libraries at
//! their host paths.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::{cargo, exec, rootfs, setup::output};

/// The target of the agent's static build.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// The testbed proxy's image, for the runtime tests only.
const TESTBED_IMAGE: &str = "localhost/mcp-testbed:test";

/// The agent's image as the DaemonSet names it (`image:` in k8s/base/daemonset.yaml).
fn agent_image() -> anyhow::Result<String> {
    let daemonset = std::fs::read_to_string("k8s/base/daemonset.yaml")?;
    daemonset
        .lines()
        .find_map(|line| line.trim().strip_prefix("image: "))
        .map(str::to_string)
        .context("k8s/base/daemonset.yaml names no image")
}

/// Builds both images; the testbed's from the release build already there.
pub fn build() -> anyhow::Result<()> {
    let tag = agent_image()?;
    cargo(&[
        "build",
        "--release",
        "--target",
        STATIC_TARGET,
        "--package",
        "observer",
        "--bin",
        "mcp-observe",
    ])?;
    let context = Path::new("target/image/agent");
    std::fs::create_dir_all(context)?;
    std::fs::copy(format!("target/{STATIC_TARGET}/release/mcp-observe"), context.join("mcp-observe"))?;
    podman_build("Dockerfile", &tag, context)?;
    let size: u64 = output("podman", &["image", "inspect", "--format", "{{.Size}}", &tag]).trim().parse()?;
    eprintln!(
        "xtask: image {tag}: {:.1} MiB, FROM scratch with a static mcp-observe",
        size as f64 / 1048576.0
    );

    let context = Path::new("target/image/testbed");
    if context.exists() {
        std::fs::remove_dir_all(context)?;
    }
    let testbed = std::fs::canonicalize("target/release/mcp-testbed").context("build the testbed first")?;
    rootfs::place_with_libraries(context, std::slice::from_ref(&testbed))?;
    // In the image's own layer, where a container runtime mounts nothing over it (podman
    // copies /tmp, where CI's clone lies, into a tmpfs of each container's own).
    let bin = context.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::rename(context.join(testbed.strip_prefix("/")?), bin.join("mcp-testbed"))?;
    let containerfile = context.with_extension("containerfile");
    std::fs::write(&containerfile, "FROM scratch\nCOPY . /\n")?;
    podman_build(&containerfile.display().to_string(), TESTBED_IMAGE, context)
}

fn podman_build(file: &str, tag: &str, context: &Path) -> anyhow::Result<()> {
    // `--pull=never`: FROM scratch needs nothing, and nothing may be fetched.
    let mut command = Command::new("podman");
    command.args(["build", "--quiet", "--pull=never", "--file", file, "--tag", tag]).arg(context);
    exec(&mut command).with_context(|| format!("podman build of {tag}"))
}
