//! A target's process tree and listening ports as they are when the agent attaches: the
//! kernel hooks see only what happens after, so what already exists is read from /proc.
//! Also who a process is: pid and start time, which a reused pid does not share.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Where the host's /proc is (`--proc`), if not at /proc.
static PROC_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Reads processes under `root` instead of /proc (a DaemonSet may mount the host's
/// elsewhere). Set once, before anything is read.
pub fn set_proc_root(root: PathBuf) {
    let _ = PROC_ROOT.set(root);
}

fn proc_root() -> &'static Path {
    PROC_ROOT.get().map_or(Path::new("/proc"), PathBuf::as_path)
}

/// `/proc/PID` under the proc root.
pub fn proc_path(pid: u32) -> PathBuf {
    proc_root().join(pid.to_string())
}

/// Every process's pid.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_root()) else { return Vec::new() };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// When `pid` started (clock ticks since boot): with the pid, it names one process even
/// after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(proc_path(pid).join("stat")).ok()?;
    // Field 22 of stat; the state is field 3.
    stat_fields(&stat).nth(19)?.parse().ok()
}

/// What a target already had when the agent attached.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every descendant, with the target's direct child it descends from.
    pub descendants: Vec<(u32, u32)>,
    /// The target's direct children, with their executable's file name.
    pub children: Vec<(u32, String)>,
    /// The TCP sockets the target's tree listens on.
    pub listeners: Vec<Listening>,
}

/// A listening TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub port: u16,
    /// A process holding it.
    pub owner: u32,
}

pub fn snapshot(root: u32) -> Snapshot {
    snapshot_in(root, &children_by_parent())
}

/// The snapshots of several targets, from one pass over /proc.
pub fn snapshots(roots: &[u32]) -> Vec<(u32, Snapshot)> {
    let by_parent = children_by_parent();
    roots.iter().map(|&root| (root, snapshot_in(root, &by_parent))).collect()
}

/// `pids` ordered parents first: by their depth in the process tree (start times do not
/// tell, as a child started within the same clock tick ties with its parent).
pub fn parents_first(mut pids: Vec<u32>) -> Vec<u32> {
    let parents: HashMap<u32, u32> = processes().into_iter().collect();
    let depth = |mut pid: u32| {
        let mut depth = 0;
        // Bounded: a parent map read while processes come and go may hold a cycle.
        while let Some(&parent) = parents.get(&pid).filter(|_| depth < 4096) {
            (pid, depth) = (parent, depth + 1);
        }
        depth
    };
    pids.sort_by_cached_key(|&pid| depth(pid));
    pids
}

fn children_by_parent() -> HashMap<u32, Vec<u32>> {
    let mut by_parent: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in processes() {
        by_parent.entry(ppid).or_default().push(pid);
    }
    by_parent
}

fn snapshot_in(root: u32, by_parent: &HashMap<u32, Vec<u32>>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for &child in by_parent.get(&root).into_iter().flatten() {
        snapshot.children.push((child, executable_name(child)));
        let mut stack = vec![child];
        while let Some(pid) = stack.pop() {
            snapshot.descendants.push((pid, child));
            stack.extend(by_parent.get(&pid).into_iter().flatten());
        }
    }
    let tree: Vec<u32> =
        std::iter::once(root).chain(snapshot.descendants.iter().map(|&(pid, _)| pid)).collect();
    snapshot.listeners = listeners_of(root, &tree);
    snapshot
}

/// Whether `pid` exists and is not exiting: not a zombie (exited, not yet reaped) and not
/// inside exit (`PF_EXITING`, set before the exit hook runs).
pub fn is_alive(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    fs::read_to_string(proc_path(pid).join("stat")).is_ok_and(|stat| {
        // State, ppid, pgrp, session, tty, tpgid, flags.
        let mut fields = stat_fields(&stat);
        let state = fields.next();
        let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok());
        state.is_some_and(|s| s != "Z" && s != "X") && flags.is_some_and(|f| f & PF_EXITING == 0)
    })
}

/// Every process's (pid, parent pid).
fn processes() -> Vec<(u32, u32)> {
    pids().into_iter().filter_map(|pid| Some((pid, parent(pid)?))).collect()
}

/// The parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    parent_of(&fs::read_to_string(proc_path(pid).join("stat")).ok()?)
}

/// The parent pid in a `/proc/PID/stat` line.
fn parent_of(stat: &str) -> Option<u32> {
    stat_fields(stat).nth(1)?.parse().ok()
}

/// The fields of a `/proc/PID/stat` line from the state on: after the command name,
/// which may hold spaces and parentheses.
fn stat_fields(stat: &str) -> impl Iterator<Item = &str> {
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten()
}

/// The file name of what `pid` runs, or its command name when that is unreadable.
pub fn executable_name(pid: u32) -> String {
    fs::read_link(proc_path(pid).join("exe"))
        .ok()
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .or_else(|| Some(fs::read_to_string(proc_path(pid).join("comm")).ok()?.trim().to_string()))
        .unwrap_or_default()
}

/// The listening TCP sockets that processes in `tree` hold, from the target's network
/// namespace's socket tables.
fn listeners_of(root: u32, tree: &[u32]) -> Vec<Listening> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let owners: Vec<(u64, u32)> =
        tree.iter().flat_map(|&pid| socket_inodes(pid).into_iter().map(move |inode| (inode, pid))).collect();
    let mut found: Vec<Listening> = [("tcp", AF_INET), ("tcp6", AF_INET6)]
        .iter()
        .filter_map(|&(table, family)| {
            Some((fs::read_to_string(proc_path(root).join("net").join(table)).ok()?, family))
        })
        .flat_map(|(text, family)| {
            let owners = &owners;
            listeners(&text).into_iter().filter_map(move |(port, inode)| {
                let owner = owners.iter().find(|(i, _)| *i == inode)?.1;
                Some(Listening { family, port, owner })
            })
        })
        .collect();
    found.sort_unstable_by_key(|l| (l.family, l.port));
    found.dedup_by_key(|l| (l.family, l.port));
    found
}

fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(proc_path(pid).join("fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let link = fs::read_link(fd.ok()?.path()).ok()?;
        link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// (port, inode) of every listening socket in a `/proc/net/tcp{,6}` table.
fn listeners(table: &str) -> Vec<(u16, u64)> {
    const TCP_LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            if columns.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            let port = u16::from_str_radix(columns.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            Some((port, columns.get(9)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listeners_from_a_socket_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 41300 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(listeners(table), vec![(8080, 41234)]);
    }

    #[test]
    fn parent_pid_follows_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (a (b) c) S 7 42 42 0 -1"), Some(7));
    }

    #[test]
    fn sees_its_own_children_and_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let snapshot = snapshot(std::process::id());
        child.kill().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!is_alive(child.id()), "a zombie is not alive");
        child.wait().unwrap();
        assert!(snapshot.children.contains(&(child.id(), "sleep".to_string())), "{snapshot:?}");
        assert!(snapshot.descendants.contains(&(child.id(), child.id())), "{snapshot:?}");
        let me = std::process::id();
        assert!(snapshot.listeners.contains(&Listening { family: 2, port, owner: me }), "{snapshot:?}");
        assert!(is_alive(me) && !is_alive(child.id()));
    }
}
