//! The idle reaper: a background task that, every interval, disconnects idle backends and
//! expires idle client sessions, and reminds an observer how many backends are configured.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};

use crate::{pool::Pool, sessions::Sessions};

pub struct Reaper {
    pub every: Duration,
    pub backend_idle: Duration,
    /// `None`: sessions never expire.
    pub session_idle: Option<Duration>,
    /// Start only once this is notified.
    pub after: Option<Arc<Notify>>,
}

impl Reaper {
    /// Runs passes until `stop` fires (or is dropped); the task returns how many it ran.
    pub fn spawn(
        self,
        pool: Arc<Pool>,
        sessions: Arc<Sessions>,
        mut stop: oneshot::Receiver<()>,
    ) -> JoinHandle<u64> {
        tokio::spawn(async move {
            if let Some(start) = &self.after {
                tokio::select! {
                    _ = &mut stop => return 0,
                    () = start.notified() => {}
                }
            }
            let mut ticks = tokio::time::interval_at(Instant::now() + self.every, self.every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut runs = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => return runs,
                    _ = ticks.tick() => {}
                }
                runs += 1;
                mcp_probes::idle_reaper_run();
                mcp_probes::backends_configured(pool.configured());
                pool.reap_idle(self.backend_idle);
                if let Some(idle) = self.session_idle {
                    sessions.expire(idle);
                }
            }
        })
    }
}
