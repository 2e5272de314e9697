//! The agent's view of the kernel maps: the per-CPU counters and the in-flight request
//! map (whose stale entries it expires) read at scrape time, and the kernel hooks'
//! process-tree, listening-port and socket maps, cleared of a target once it is gone.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError, PerCpuArray},
};
use observer_common::{InFlightKey, Listener, Tracked, TrackedSocket, counter};

use crate::metrics::Metrics;

/// Map entries visited per walk at most: the largest map's size. A key deleted while we iterate
/// makes the kernel restart from the first key, so the walk must be bounded.
const MAX_WALK: usize = 65_536;

/// The kernel maps the agent reads; refreshed into the metrics before every scrape and
/// every second.
pub struct KernelMaps {
    pub counters: PerCpuArray<MapData, u64>,
    pub in_flight: HashMap<MapData, InFlightKey, u64>,
    /// Requests in flight longer than this are counted as timeouts and removed.
    pub request_expiry: Duration,
    pub tracked: HashMap<MapData, u32, Tracked>,
    pub listening: HashMap<MapData, u32, Listener>,
    pub sockets: HashMap<MapData, u64, TrackedSocket>,
}

impl KernelMaps {
    pub fn refresh(&mut self, metrics: &Metrics) {
        // Expire first, so that the in-flight gauge below excludes what was expired.
        self.sweep_in_flight(metrics);
        match self.totals() {
            Ok(totals) => metrics.sync_kernel_counters(totals),
            Err(error) => log::warn!("reading the kernel counters: {error}; serving the previous values"),
        }
    }

    /// Each counter summed over CPUs. Read from the last index down, so that requests
    /// finished are read before requests started: a request that starts and ends between
    /// the two reads must not make the in-flight gauge read low.
    fn totals(&self) -> Result<[u64; counter::COUNT as usize], MapError> {
        const _: () = assert!(counter::REQUESTS_FINISHED > counter::REQUESTS_STARTED);
        let mut totals = [0; counter::COUNT as usize];
        for (index, total) in (0..counter::COUNT).zip(totals.iter_mut()).rev() {
            *total = self.counters.get(&index, 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Process `tgid` exited: its requests in flight will never end, so they are counted
    /// as timeouts now rather than at their expiry. What the kernel hooks kept for it goes:
    /// its orphaned descendants, ports and sockets are no longer a target's, and a port or
    /// pid reused by an unrelated process must not count.
    pub fn forget_process(&mut self, tgid: u32, metrics: &Metrics) {
        for (key, start) in self.in_flight_snapshot() {
            if key.tgid == tgid {
                self.expire(key, start, metrics);
            }
        }
        remove_where(&mut self.tracked, |entry| entry.root == tgid);
        remove_where(&mut self.listening, |listener| listener.target == tgid);
        remove_where(&mut self.sockets, |socket| socket.target == tgid);
    }

    /// Expires requests older than `request_expiry` (their end never came: the proxy
    /// dropped them) and sets the age of the oldest one left.
    fn sweep_in_flight(&mut self, metrics: &Metrics) {
        let now = monotonic_ns();
        let expiry = u64::try_from(self.request_expiry.as_nanos()).unwrap_or(u64::MAX);
        let mut oldest = 0;
        for (key, start) in self.in_flight_snapshot() {
            let age = now.saturating_sub(start);
            if age >= expiry {
                self.expire(key, start, metrics);
            } else {
                oldest = oldest.max(age);
            }
        }
        metrics.set_oldest_in_flight(oldest as f64 / 1e9);
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

    /// Removes `key` if it still holds `start`: its request may have ended and its id
    /// been reused since the snapshot, and that new request is not the stale one.
    fn expire(&mut self, key: InFlightKey, start: u64, metrics: &Metrics) {
        let in_flight = &mut self.in_flight;
        metrics.expire_request(key, || {
            in_flight.get(&key, 0).is_ok_and(|now| now == start) && in_flight.remove(&key).is_ok()
        });
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
