//! Builds `observer-ebpf` for the BPF target with the nightly toolchain (aya-build) and
//! leaves the object in OUT_DIR, where `src/loader.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found in the workspace"))?;
    let root_dir = ebpf.manifest_path.parent().context("observer-ebpf manifest path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "observer-ebpf", root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}
