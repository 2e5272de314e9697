//! The agent's shared state: the metrics, the kernel maps they are refreshed from, and
//! readiness. Refreshed before every scrape (`http`) and when a target exits (`targets`).

use std::sync::{Arc, Mutex, atomic::AtomicBool};

use crate::{maps::KernelMaps, metrics::Metrics};

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
            kernel.forget_process(pid, &self.metrics);
            self.metrics.forget_process(pid);
        }
        kernel.refresh(&self.metrics);
        self.metrics.tick();
    }
}
