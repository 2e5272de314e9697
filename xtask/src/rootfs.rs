//! Directory trees made of host binaries and the libraries they load, each at its host
//! path: the VMs' initramfs and the testbed's container image.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// Copies `binaries` and the libraries they load below `root`, each at its host path.
pub fn place_with_libraries(root: &Path, binaries: &[PathBuf]) -> anyhow::Result<()> {
    for file in with_libraries(binaries)? {
        place(root, &file)?;
    }
    Ok(())
}

/// `files` and the libraries `ldd` says they load.
fn with_libraries(files: &[PathBuf]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut all = BTreeSet::new();
    for file in files {
        all.insert(file.clone());
        let ldd = Command::new("ldd").arg(file).output()?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
            let path =
                line.split("=>").last().unwrap_or_default().split_whitespace().next().unwrap_or_default();
            if path.starts_with('/') {
                all.insert(PathBuf::from(path));
            }
        }
    }
    Ok(all)
}

/// Copies `from` to the same path below `root`, and to where its links lead (a library
/// is loaded by the name `ldd` printed, a link on the host).
fn place(root: &Path, from: &Path) -> anyhow::Result<()> {
    let real = std::fs::canonicalize(from).with_context(|| format!("{} is missing", from.display()))?;
    for path in [from, &real] {
        let to = root.join(path.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().unwrap())?;
        if std::fs::symlink_metadata(&to).is_err() {
            std::fs::copy(&real, &to)
                .with_context(|| format!("copying {} to {}", real.display(), to.display()))?;
        }
    }
    Ok(())
}
