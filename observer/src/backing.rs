//! Which file an executable's uprobes land on. The kernel places a uprobe on the inode
//! behind the path it is given (on overlayfs, the upper layer's copy of the file or else the
//! lower layer's file) and fires it in every process that maps that inode, through
//! whichever mount. Containers of one image see one lower file through one overlay mount
//! each, with a `st_dev` of its own: attached by what `stat` says, every hit would run
//! the programs once per container. So the agent keys its uprobes by the backing file:
//! - kernels before 6.9 show the backing inode in /proc/PID/maps;
//! - later ones show the overlay's there, so: a file in the mount's upper directory is
//!   the container's own copy (its host inode), and one that is not is a lower file, known
//!   by its file handle (which overlayfs encodes from the lower file);
//! - and where neither can be told, what `stat` says (a uprobe set per mount: still
//!   exact, only dearer).

use std::{
    fs::File,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
};

use crate::probes::Executable;

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// The file the kernel attaches a uprobe to, as far as user space can name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// A device and inode: the file's own, or on overlayfs the upper or lower file's.
    Inode { dev: u64, ino: u64 },
    /// An overlay's lower file, by the handle overlayfs gives it (the lower file system's
    /// uuid and handle); size and mtime keep apart two lower file systems without uuids.
    LowerHandle { handle: Box<[u8]>, size: u64, mtime_ns: i128 },
}

impl Backing {
    /// The backing file of `executable`, which process `pid` runs.
    pub fn of(pid: u32, executable: &Executable) -> Self {
        let meta = &executable.meta;
        let stat = Self::Inode { dev: meta.dev(), ino: meta.ino() };
        if !on_overlay(executable.file()) {
            return stat;
        }
        let backing = match mapped_inode(pid, &executable.path) {
            Some(shown) if shown != stat => shown,
            Some(_) => overlay_backing(pid, executable).unwrap_or(stat),
            None => stat,
        };
        log::debug!("pid {pid} ({}) runs {backing:?}", executable.path.display());
        backing
    }
}

fn on_overlay(file: &File) -> bool {
    // SAFETY: fstatfs writes into the struct we pass, for a descriptor we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) == 0 && fs.f_type as i64 == OVERLAYFS_SUPER_MAGIC }
}

/// The device and inode /proc/PID/maps shows for the first mapping of `path`.
fn mapped_inode(pid: u32, path: &Path) -> Option<Backing> {
    let maps = std::fs::read_to_string(crate::tree::proc_path(pid).join("maps")).ok()?;
    let path = path.to_str()?;
    maps.lines().find_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (_, _, _, dev, ino) =
            (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        (fields.next()?.trim_start() == path).then_some(())?;
        let (major, minor) = dev.split_once(':')?;
        let (major, minor) = (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
        Some(Backing::Inode { dev: libc::makedev(major, minor), ino: ino.parse().ok()? })
    })
}

/// On a kernel whose maps show the overlay's inode: the upper copy, or the lower file.
fn overlay_backing(pid: u32, executable: &Executable) -> Option<Backing> {
    let mount = mount_id(executable.file())?;
    let mountinfo = std::fs::read_to_string(crate::tree::proc_path(pid).join("mountinfo")).ok()?;
    let overlay = mountinfo.lines().find_map(|line| Overlay::parse(line).filter(|o| o.id == mount))?;
    if let Some(upper_dir) = &overlay.upper_dir {
        match std::fs::metadata(readable(pid, upper_dir)?.join(overlay.in_layer(&executable.path)?)) {
            Ok(copy) if copy.is_file() => return Some(Backing::Inode { dev: copy.dev(), ino: copy.ino() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => return None,
        }
    }
    let meta = &executable.meta;
    Some(Backing::LowerHandle {
        handle: lower_handle(executable.file())?,
        size: meta.size(),
        mtime_ns: mtime_ns(meta),
    })
}

/// A file's modification time in ns: with its size, what tells two versions of it apart.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// The mount an open file lies on, from /proc/self/fdinfo.
fn mount_id(file: &File) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("mnt_id:")).and_then(|id| id.trim().parse().ok())
}

/// overlayfs's handle of an open file: its lower file's, for one not copied up
/// (`AT_HANDLE_FID`, Linux 6.5 on: a handle only to compare, which overlayfs gives
/// without NFS export).
fn lower_handle(file: &File) -> Option<Box<[u8]>> {
    const AT_HANDLE_FID: libc::c_int = 0x200;
    const MAX_HANDLE_SZ: usize = 128;
    // struct file_handle: handle_bytes (u32), handle_type (i32), then the bytes.
    let mut buffer = [0u8; 8 + MAX_HANDLE_SZ];
    buffer[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount = 0 as libc::c_int;
    // SAFETY: the buffer is a file_handle with room for MAX_HANDLE_SZ bytes, as declared
    // in its first field; the path is an empty C string.
    let done = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            file.as_raw_fd(),
            c"".as_ptr(),
            buffer.as_mut_ptr(),
            &mut mount,
            libc::AT_EMPTY_PATH | AT_HANDLE_FID,
        )
    };
    let len = u32::from_ne_bytes(buffer[..4].try_into().ok()?) as usize;
    (done == 0 && len <= MAX_HANDLE_SZ).then(|| buffer[4..8 + len].into())
}

/// An overlayfs mount, from a line of /proc/PID/mountinfo.
#[derive(Debug, PartialEq, Eq)]
struct Overlay {
    id: u64,
    /// The directory of the file system the mount shows (`/` but for a bind mount).
    root: PathBuf,
    /// Where it is mounted, as the process sees it.
    mount_point: PathBuf,
    upper_dir: Option<PathBuf>,
}

impl Overlay {
    fn parse(line: &str) -> Option<Self> {
        let (mount, source) = line.split_once(" - ")?;
        let mut fields = mount.split(' ');
        let id = fields.next()?.parse().ok()?;
        let (root, mount_point) = (fields.nth(2)?, fields.next()?);
        let mut source = source.split(' ');
        (source.next()? == "overlay").then_some(())?;
        let options = source.nth(1)?;
        let upper_dir = options.split(',').find_map(|o| o.strip_prefix("upperdir=")).map(unescape);
        Some(Self { id, root: unescape(root), mount_point: unescape(mount_point), upper_dir })
    }

    /// Where `path` (below the mount point, as the agent reads it from /proc/PID/exe) lies
    /// in a layer of the file system, relative to the layer's directory.
    fn in_layer(&self, path: &Path) -> Option<PathBuf> {
        Some(self.root.strip_prefix("/").ok()?.join(path.strip_prefix(&self.mount_point).ok()?))
    }
}

/// Where the agent reads `dir`, a path in the mount namespace of whoever mounted the
/// overlay that process `pid` runs from: through the root of the container runtime's shim
/// (conmon, containerd-shim: [`mounter`]), else PID 1's (the host's, with hostPID), else
/// the agent's own. A directory that is not there is not taken for an empty one.
fn readable(pid: u32, dir: &Path) -> Option<PathBuf> {
    let relative = dir.strip_prefix("/").ok()?;
    let roots = [mounter(pid), Some(1)].into_iter().flatten().map(|p| crate::tree::proc_path(p).join("root"));
    roots.chain([PathBuf::from("/")]).map(|root| root.join(relative)).find(|at| at.is_dir())
}

/// The nearest ancestor of `pid` in another mount namespace: a container's is its runtime's
/// shim, which lives where the runtime mounted the container's root. A process in its
/// ancestors' namespace mounted in it: itself.
fn mounter(pid: u32) -> Option<u32> {
    let namespace = |pid| std::fs::read_link(crate::tree::proc_path(pid).join("ns/mnt")).ok();
    let own = namespace(pid)?;
    let mut ancestor = pid;
    for _ in 0..64 {
        match crate::tree::parent(ancestor) {
            Some(parent) if parent > 0 => ancestor = parent,
            _ => return Some(pid),
        }
        if namespace(ancestor)? != own {
            return Some(ancestor);
        }
    }
    None
}

/// mountinfo's escapes (`\040` for a space, `\054` for a comma, …) undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN: &str = "1021 998 0:35 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/AB:/var/lib/containers/storage/overlay/l/CD,upperdir=/var/lib/containers/storage/overlay/9f2e/diff,workdir=/var/lib/containers/storage/overlay/9f2e/work,uuid=on";

    #[test]
    fn a_containers_root_overlay_names_its_upper_directory() {
        let overlay = Overlay::parse(PODMAN).expect("an overlay");
        assert_eq!(overlay.id, 1021);
        assert_eq!(overlay.mount_point, Path::new("/"));
        assert_eq!(overlay.upper_dir, Some(PathBuf::from("/var/lib/containers/storage/overlay/9f2e/diff")));
        assert_eq!(
            overlay.in_layer(Path::new("/usr/local/bin/mcp-testbed")),
            Some(PathBuf::from("usr/local/bin/mcp-testbed"))
        );
    }

    #[test]
    fn a_bind_mounted_overlay_directory_and_escaped_paths() {
        let line =
            r"77 27 0:40 /opt /srv/my\040app rw - overlay overlay rw,lowerdir=/l,upperdir=/u\054v,workdir=/w";
        let overlay = Overlay::parse(line).expect("an overlay");
        assert_eq!(overlay.mount_point, Path::new("/srv/my app"));
        assert_eq!(overlay.upper_dir, Some(PathBuf::from("/u,v")));
        assert_eq!(overlay.in_layer(Path::new("/srv/my app/bin/x")), Some(PathBuf::from("opt/bin/x")));
        // Not below the mount point: not this mount's file.
        assert_eq!(overlay.in_layer(Path::new("/usr/bin/x")), None);
    }

    #[test]
    fn other_file_systems_and_read_only_overlays() {
        assert_eq!(Overlay::parse("22 1 253:0 / / rw,relatime - ext4 /dev/vda1 rw"), None);
        let lower_only =
            Overlay::parse("90 1 0:50 / /ro rw - overlay overlay ro,lowerdir=/a:/b").expect("overlay");
        assert_eq!(lower_only.upper_dir, None);
    }
}
