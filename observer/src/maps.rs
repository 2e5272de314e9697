//! The agent's view of the kernel maps read at scrape time: the per-CPU counters, and the
//! in-flight request map whose stale entries it expires.

use std::time::Duration;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use observer_common::{InFlightKey, counter};

use crate::metrics::Metrics;

/// Map entries visited per sweep at most: the map's size. A key deleted while we iterate
/// makes the kernel restart from the first key, so the walk must be bounded.
const MAX_IN_FLIGHT: usize = 65_536;

/// The kernel maps the agent reads; refreshed into the metrics before every scrape and
/// every second.
pub struct KernelMaps {
    pub counters: PerCpuArray<MapData, u64>,
    pub in_flight: HashMap<MapData, InFlightKey, u64>,
    /// Requests in flight longer than this are counted as timeouts and removed.
    pub request_expiry: Duration,
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

    /// Each counter summed over CPUs.
    fn totals(&self) -> Result<[u64; counter::COUNT as usize], MapError> {
        let mut totals = [0; counter::COUNT as usize];
        for (index, total) in (0..).zip(totals.iter_mut()) {
            *total = self.counters.get(&index, 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Expires requests older than `request_expiry` (their end never came: the proxy
    /// dropped them) and sets the age of the oldest one left.
    fn sweep_in_flight(&mut self, metrics: &Metrics) {
        let now = monotonic_ns();
        let expiry = self.request_expiry.as_nanos() as u64;
        let entries: Vec<(InFlightKey, u64)> =
            self.in_flight.iter().take(MAX_IN_FLIGHT).filter_map(Result::ok).collect();
        let mut oldest = 0;
        for (key, start) in entries {
            let age = now.saturating_sub(start);
            if age >= expiry {
                metrics.expire_request(key, || self.in_flight.remove(&key).is_ok());
            } else {
                oldest = oldest.max(age);
            }
        }
        metrics.set_oldest_in_flight(oldest as f64 / 1e9);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
