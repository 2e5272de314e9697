//! Drains the ring buffer: each record checked (`decode`), then recorded (`metrics`).
//!
//! The eBPF side submits without waking us (a wakeup per event costs ~6 µs on a VM), so
//! the reader drains on a short timer, and on readiness when the kernel forces a wakeup
//! because the buffer is filling up.

use std::{
    sync::{
        Arc,
        mpsc::{SyncSender, TrySendError},
    },
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use crate::{
    decode::{self, DecodeError, Decoded, Event},
    metrics::{Metrics, ObserverMetrics},
    ring::Ring,
};

/// What the kernel tells the agent about processes (ring-buffer events), with the kernel
/// time it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A process outside every tree, or a target, executed a program.
    Exec { pid: u32, ns: u64 },
    /// A target exited.
    Exit { pid: u32, ns: u64 },
}

/// Drains `ring` (of `ring_bytes`) into `metrics` forever: on a timer paced by [`Pace`],
/// and whenever the kernel wakes us. Process execs and target exits also go to `lifecycle`.
pub async fn drain_forever(
    ring: Ring,
    ring_bytes: u32,
    metrics: Arc<Metrics>,
    lifecycle: SyncSender<Option<Lifecycle>>,
    interval: Duration,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open until it is dropped,
    // which only happens with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut pace = Pace::new(interval, ring_bytes);
    let mut sleep = interval;
    loop {
        let read = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let read = drain(guard.get_inner_mut(), &metrics, &lifecycle);
                guard.clear_ready();
                read
            }
            _ = tokio::time::sleep(sleep) => drain(ring.get_mut(), &metrics, &lifecycle),
        };
        sleep = pace.after(read);
    }
}

/// The time between drains: `fastest` while events flow, up to [`SLOWEST`] times that while each
/// drain finds less than an eighth of the ring. A wakeup costs tens of microseconds of
/// context switches on a VM, and an idle agent needs few; a burst during a long sleep
/// fills the ring to a quarter, where the kernel wakes the reader at once.
/// How many times `fastest` an idle reader sleeps: 80 ms by default.
pub const SLOWEST: u32 = 16;

pub struct Pace {
    fastest: Duration,
    now: Duration,
    ring_bytes: usize,
}

impl Pace {
    pub fn new(fastest: Duration, ring_bytes: u32) -> Self {
        Self { fastest, now: fastest, ring_bytes: ring_bytes as usize }
    }

    /// The next sleep, after a drain that read `read` bytes.
    pub fn after(&mut self, read: usize) -> Duration {
        if read < self.ring_bytes / 8 {
            self.now = (self.now * 2).min(self.fastest * SLOWEST);
        } else if read > self.ring_bytes / 4 {
            self.now = (self.now / 2).max(self.fastest);
        }
        self.now
    }
}

/// Records every event waiting in `ring`; returns the bytes read.
fn drain(ring: &mut Ring, metrics: &Metrics, lifecycle: &SyncSender<Option<Lifecycle>>) -> usize {
    let start = crate::maps::monotonic_ns();
    let _batch = metrics.batch();
    let read = ring.drain(|bytes| match decode(bytes, &metrics.observer) {
        Ok(ev) => {
            metrics.record(&ev);
            let (pid, ns) = (ev.at.tgid, ev.at.ts_ns);
            let told = match ev.event {
                Event::ProcessExec => Some(Lifecycle::Exec { pid, ns }),
                Event::TargetExit => Some(Lifecycle::Exit { pid, ns }),
                _ => None,
            };
            // Full: the targets' periodic checks of /proc catch up.
            if let Some(told) = told
                && let Err(TrySendError::Full(_)) = lifecycle.try_send(Some(told))
            {
                log::warn!("lifecycle queue full: {told:?} left to the next scan of /proc");
            }
        }
        Err(error) => metrics.decode_error(&error),
    });
    metrics.drained(start);
    read
}

/// The event in `bytes`, counted as received by its kind even when one of its values
/// turns out undefined.
fn decode<'a>(bytes: &'a [u8], observer: &ObserverMetrics) -> Result<Decoded<'a>, DecodeError> {
    let record = decode::check(bytes)?;
    observer.received(record.header.kind);
    decode::event(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_slow_down_while_little_arrives_and_speed_up_when_much_does() {
        let mut pace = Pace::new(Duration::from_millis(5), 1 << 20);
        let ms = |d: Duration| d.as_millis();
        assert_eq!([0, 0, 0, 0, 0].map(|read| ms(pace.after(read))), [10, 20, 40, 80, 80]);
        assert_eq!(ms(pace.after(200 << 10)), 80, "between an eighth and a quarter: unchanged");
        assert_eq!([600 << 10; 5].map(|read| ms(pace.after(read))), [40, 20, 10, 5, 5]);
    }
}
