//! The agent's shared state: the metrics, the kernel maps they are refreshed from, and
//! readiness. Refreshed before every scrape (`http`) and when a target exits (`targets`).

use std::sync::{Arc, Mutex, atomic::AtomicBool};

use crate::{
    maps::{KernelMaps, Started, monotonic_ns},
    metrics::Metrics,
};

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub kernel: Mutex<KernelMaps>,
    /// `--pid`: every probe of every target is attached and no target has exited.
    /// Node-wide: the first scan of /proc is done.
    pub ready: AtomicBool,
}

impl AppState {
    /// Folds the kernel maps into the metrics, after forgetting the processes in `exited`.
    /// Blocking: walking a full in-flight map takes syscalls per entry.
    pub fn refresh(&self, exited: &[u32]) {
        let mut kernel = self.kernel.lock().expect("kernel maps lock");
        for &pid in exited {
            // Its requests in flight will never end: timeouts now rather than at expiry.
            let in_flight = kernel.forget_process(pid);
            self.expire(&mut kernel, in_flight);
            self.metrics.forget_process(pid);
        }
        // Expired first, so that the in-flight gauges exclude them.
        let in_flight = kernel.in_flight(monotonic_ns());
        self.expire(&mut kernel, in_flight.stale);
        self.metrics.set_in_flight(&in_flight.by_tgid);
        match kernel.counter_totals() {
            Ok(totals) => self.metrics.sync_kernel_counters(totals),
            Err(error) => log::warn!("reading the kernel counters: {error}; serving the previous values"),
        }
        self.metrics.tick();
    }

    /// Counts each request as a timeout if it leaves the kernel's in-flight map here.
    /// Remembered before it is removed, so that its end, racing the removal and then
    /// finding no start, is known as late rather than counted again.
    fn expire(&self, kernel: &mut KernelMaps, stale: Vec<Started>) {
        for started in stale {
            let expiring = self.metrics.expiring(started.0);
            let removed = kernel.remove_in_flight(started);
            self.metrics.expired(expiring, removed);
        }
    }
}
