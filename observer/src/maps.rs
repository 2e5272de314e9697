//! The agent's view of the kernel maps: the per-CPU counters and the in-flight request
//! map read at scrape time (what they say goes to `metrics` through `state`, as the
//! ring's events do through `events`), and the kernel hooks' process-tree,
//! listening-port and socket maps, cleared of a target once it is gone.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError, PerCpuArray},
};
use observer_common::{InFlightKey, Listener, Tracked, TrackedSocket, counter, listening_key};

use crate::{
    error::ObserveError,
    tree::{self, Listening, Snapshot},
};

/// `BPF_NOEXIST` refused the insert: the key is there already.
fn already_present(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Passes over /proc when a target is tracked, at most (see `KernelMaps::track`).
const SNAPSHOT_PASSES: usize = 4;

/// `bpf_map_update_elem` flag: only add, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// Map entries visited per walk at most: the largest map's size. A key deleted while we iterate
/// makes the kernel restart from the first key, so the walk must be bounded.
const MAX_WALK: usize = 65_536;

/// The kernel maps the agent reads and keeps.
pub struct KernelMaps {
    pub counters: PerCpuArray<MapData, u64>,
    pub in_flight: HashMap<MapData, InFlightKey, u64>,
    /// Requests in flight longer than this are counted as timeouts and removed.
    pub request_expiry: Duration,
    pub tracked: HashMap<MapData, u32, Tracked>,
    pub listening: HashMap<MapData, u32, Listener>,
    pub sockets: HashMap<MapData, u64, TrackedSocket>,
}

/// A request in the in-flight map: its key and start time (ns).
pub type Started = (InFlightKey, u64);

/// What the in-flight map holds now.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Requests older than the expiry: their end never came (the proxy dropped them).
    pub stale: Vec<Started>,
    /// The others: (count, oldest age in ns) by process.
    pub by_tgid: StdHashMap<u32, (u64, u64)>,
}

impl KernelMaps {
    /// Each counter summed over CPUs.
    pub fn counter_totals(&self) -> Result<[u64; counter::COUNT as usize], MapError> {
        let mut totals = [0; counter::COUNT as usize];
        for (index, total) in (0..counter::COUNT).zip(totals.iter_mut()) {
            *total = self.counters.get(&index, 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// The requests in flight at `now` (CLOCK_MONOTONIC ns), the stale apart.
    pub fn in_flight(&self, now: u64) -> InFlight {
        let expiry = u64::try_from(self.request_expiry.as_nanos()).unwrap_or(u64::MAX);
        let mut in_flight = InFlight::default();
        for (key, start) in self.in_flight_snapshot() {
            let age = now.saturating_sub(start);
            if age >= expiry {
                in_flight.stale.push((key, start));
            } else {
                let (count, oldest) = in_flight.by_tgid.entry(key.tgid).or_default();
                *count += 1;
                *oldest = (*oldest).max(age);
            }
        }
        in_flight
    }

    /// Removes request `key` if it still holds `start`, and says whether it did: its
    /// request may have ended (its end took the entry) or its id been reused since it
    /// was read, and that new request is not the stale one.
    pub fn remove_in_flight(&mut self, (key, start): Started) -> bool {
        let in_flight = &mut self.in_flight;
        in_flight.get(&key, 0).is_ok_and(|now| now == start) && in_flight.remove(&key).is_ok()
    }

    /// Registers target `pid` in the kernel, then what its tree already held as /proc
    /// shows it after the registration, so that nothing falls between: the descendants
    /// the fork hook has not added meanwhile, and the listening sockets. Returns what it
    /// added (the children among them are running now, unknown to the hooks).
    /// `binary`: the id its probes count under (see [`Tracked::binary`]), 0 for none.
    pub fn track(&mut self, pid: u32, binary: u32) -> Result<Snapshot, ObserveError> {
        let failed = |source: MapError| ObserveError::Track { pid, source: Box::new(source) };
        let root = Tracked { root: pid, child: 0, exit_status: 0, flags: 0, binary };
        self.tracked.insert(pid, root, 0).map_err(failed)?;
        let mut added = Snapshot::default();
        // Again until a pass adds nothing: a descendant may fork before it is added.
        for _ in 0..SNAPSHOT_PASSES {
            let snapshot = tree::snapshot(pid);
            let tracked = &mut self.tracked;
            let before = added.descendants.len();
            for &(descendant, child) in &snapshot.descendants {
                if added.descendants.iter().any(|&(d, _)| d == descendant) {
                    continue;
                }
                match tracked.insert(
                    descendant,
                    Tracked { root: pid, child, exit_status: 0, flags: 0, binary: 0 },
                    BPF_NOEXIST,
                ) {
                    Ok(()) if tree::is_alive(descendant) => {
                        added.descendants.push((descendant, child));
                        added
                            .children
                            .extend(snapshot.children.iter().filter(|(c, _)| *c == descendant).cloned());
                    }
                    // Exited before it was added (its exit hook found nothing to remove):
                    // the entry must go, or an unrelated process reusing the pid would count.
                    Ok(()) => {
                        let _ = tracked.remove(&descendant);
                    }
                    // Added by the fork hook since `track`: its events tell the rest.
                    Err(error) if already_present(&error) => {}
                    Err(error) => log::warn!("pid {pid}: descendant {descendant} not tracked: {error}"),
                }
            }
            added.listeners = snapshot.listeners;
            if added.descendants.len() == before {
                break;
            }
        }
        self.add_listeners(pid, &added.listeners).map_err(failed)?;
        Ok(added)
    }

    /// Registers target `pid`'s listening sockets, never over an entry the listen hook
    /// or another target added: one (family, port) has one entry, whoever else listens on
    /// it in another network namespace.
    pub fn add_listeners(&mut self, pid: u32, listeners: &[Listening]) -> Result<(), MapError> {
        for l in listeners {
            let listener = Listener { target: pid, owner: l.owner, skaddr: 0 };
            match self.listening.insert(listening_key(l.family, l.port), listener, BPF_NOEXIST) {
                Ok(()) => {}
                Err(error) if already_present(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The target whose tree `pid` belongs to, if any.
    pub fn root_of(&self, pid: u32) -> Option<u32> {
        self.tracked.get(&pid, 0).ok().map(|tracked| tracked.root)
    }

    /// Process `tgid` exited: what the kernel hooks kept for it goes (its orphaned
    /// descendants, ports and sockets are no longer a target's, and a port or pid reused
    /// by an unrelated process must not count). Returns its requests in flight: they will
    /// never end.
    pub fn forget_process(&mut self, tgid: u32) -> Vec<Started> {
        remove_where(&mut self.tracked, |entry| entry.root == tgid);
        remove_where(&mut self.listening, |listener| listener.target == tgid);
        remove_where(&mut self.sockets, |socket| socket.target == tgid);
        self.in_flight_snapshot().into_iter().filter(|(key, _)| key.tgid == tgid).collect()
    }

    /// Every entry once: a key the kernel deletes under the walk restarts it from the
    /// first key, so keys can come twice.
    fn in_flight_snapshot(&self) -> StdHashMap<InFlightKey, u64> {
        let mut entries = StdHashMap::new();
        for entry in self.in_flight.iter().take(MAX_WALK) {
            match entry {
                Ok((key, start)) => {
                    entries.insert(key, start);
                }
                Err(error) => {
                    log::warn!("reading the in-flight map: {error}; the sweep goes on with what it read");
                    break;
                }
            }
        }
        entries
    }
}

/// Removes the entries whose value matches (at most the largest map's size are visited).
fn remove_where<K: Pod + Eq + std::hash::Hash, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    matches: impl Fn(&V) -> bool,
) {
    let doomed: Vec<K> = map
        .iter()
        .take(MAX_WALK)
        .map_while(Result::ok)
        .filter_map(|(key, value)| matches(&value).then_some(key))
        .collect();
    for key in doomed {
        let _ = map.remove(&key);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
