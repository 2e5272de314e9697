//! The Prometheus series, built from decoded probe events (one module per family group),
//! plus the kernel's per-CPU counters folded in at scrape time.

mod access;
mod caches;
mod children;
mod live;
mod observer;
mod pool;
mod requests;
mod sessions;
mod tcp;

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use observer_common::{FLAG_TRUNCATED_SHIFT, InFlightKey, ProbeEvent, counter, field, kind};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};

use crate::{
    events::{DecodeError, string},
    labels::{LabelConfig, LabelPolicy},
};
pub use observer::ObserverMetrics;

pub struct Metrics {
    registry: Registry,
    labels: Mutex<LabelPolicy>,
    requests: requests::Requests,
    pool: pool::Pool,
    caches: caches::Caches,
    sessions: sessions::Sessions,
    access: access::Access,
    tcp: tcp::Tcp,
    pub children: children::Children,
    pub observer: ObserverMetrics,
    /// Kernel counter totals already folded into the series.
    kernel_seen: Mutex<[u64; counter::COUNT as usize]>,
    /// Every event with an earlier kernel timestamp has been read (CLOCK_MONOTONIC, ns).
    drained_until: AtomicU64,
}

impl Metrics {
    pub fn new(labels: LabelConfig) -> Self {
        let registry = Registry::new();
        Self {
            labels: Mutex::new(LabelPolicy::new(labels)),
            requests: requests::Requests::new(&registry),
            pool: pool::Pool::new(&registry),
            caches: caches::Caches::new(&registry),
            sessions: sessions::Sessions::new(&registry),
            access: access::Access::new(&registry),
            tcp: tcp::Tcp::new(&registry),
            children: children::Children::new(&registry),
            observer: ObserverMetrics::new(&registry),
            kernel_seen: Mutex::new([0; counter::COUNT as usize]),
            drained_until: AtomicU64::new(0),
            registry,
        }
    }

    pub fn record(&self, event: &ProbeEvent) {
        let kind = event.header.kind;
        self.observer.events.with_label_values(&[kind::NAMES[kind as usize]]).inc();
        if let Err(error) = self.dispatch(event) {
            self.decode_error(&error);
        }
    }

    /// Each family checks the event's ABI values before it asks for labels: an undefined
    /// value must not spend a slot of a label's cap.
    fn dispatch(&self, ev: &ProbeEvent) -> Result<(), DecodeError> {
        let label = |slot| self.label(ev, slot);
        match ev.header.kind {
            kind::REQUEST_END => self.requests.end(ev, label, &self.observer)?,
            kind::ACL_DECISION => self.access.acl_decision(ev, label)?,
            kind::AUTH_FAILURE => self.access.auth_failure(ev)?,
            kind::BACKEND_CONNECT_START => self.pool.connect_start(ev),
            kind::BACKEND_CONNECT_END => self.pool.connect_end(ev, label, &self.observer)?,
            kind::BACKEND_DISCONNECT => self.pool.disconnect(ev, label, &self.observer)?,
            kind::BACKENDS_CONFIGURED => self.pool.configured(ev),
            kind::IDLE_REAPER_RUN => self.pool.reaper_runs.inc(),
            kind::CHILD_SPAWN => self.children.named(ev, label(field::SERVER)),
            kind::SESSION_OPEN => self.sessions.open(ev, label(field::TRANSPORT)),
            kind::SESSION_CLOSE => self.sessions.close(ev, label, &self.observer)?,
            kind::TOOL_CACHE_SIZE => self.caches.tool_cache_size(ev, label(field::SERVER)),
            kind::CLASSIFIER_CACHE => self.caches.classifier_lookup(ev, label)?,
            kind::TCP_OPEN..=kind::TCP_RETRANSMIT => self.tcp.record(ev, &self.observer)?,
            kind::CHILD_FORK => self.children.fork(ev),
            kind::CHILD_EXEC => self.children.exec(ev, &|name, cut| self.admit(field::SERVER, name, cut)),
            kind::CHILD_EXIT => self.children.exit(ev, &|name, cut| self.admit(field::SERVER, name, cut)),
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        Ok(())
    }

    /// The label value of string slot `slot`: counted when the kernel truncated it, and
    /// when the label policy folded it into `__other__`.
    fn label(&self, ev: &ProbeEvent, slot: usize) -> String {
        let truncated = ev.flags & (1 << (FLAG_TRUNCATED_SHIFT + slot as u32)) != 0;
        self.admit(slot, string(ev, slot), truncated)
    }

    /// The value of label `slot` for `bytes`, through the label policy.
    fn admit(&self, slot: usize, bytes: &[u8], truncated: bool) -> String {
        let name = field::LABELS[slot];
        if truncated {
            self.observer.label_truncated.with_label_values(&[name]).inc();
        }
        let (value, folded) = self.labels.lock().expect("label policy lock").admit(slot, bytes);
        if folded {
            self.observer.label_overflow.with_label_values(&[name]).inc();
        }
        value
    }

    pub fn decode_error(&self, error: &DecodeError) {
        log::warn!("undecodable ring-buffer record: {error}");
        self.observer.decode_errors.inc();
    }

    /// A request the agent expired from the kernel's in-flight map; `remove` deletes it
    /// there and says whether it was still present (its end may have just won the race).
    pub fn expire_request(&self, key: InFlightKey, remove: impl FnOnce() -> bool) {
        self.requests.expire(key, remove);
    }

    pub fn set_oldest_in_flight(&self, seconds: f64) {
        self.requests.oldest_in_flight.set(seconds);
    }

    /// Process `tgid` exited: what it held open (connections, sessions, children) is gone
    /// with it.
    pub fn forget_process(&self, tgid: u32) {
        self.pool.forget(tgid);
        self.sessions.forget(tgid);
        self.caches.forget(tgid);
        self.tcp.forget(tgid);
        self.children.forget(tgid);
    }

    /// The reader emptied the ring buffer after `ns`.
    pub fn drained(&self, ns: u64) {
        self.drained_until.fetch_max(ns, Ordering::Relaxed);
    }

    /// Counts the children nobody named in time (see `children`). Judged by what was
    /// read, not by the clock: a reader running late must not miss names waiting in the ring.
    pub fn tick(&self) {
        let drained = self.drained_until.load(Ordering::Relaxed);
        self.children.tick(drained, &|name, cut| self.admit(field::SERVER, name, cut));
    }

    /// A child target `tgid` already had when the agent attached, named after its executable.
    pub fn existing_child(&self, tgid: u32, pid: u32, executable: &str) {
        let label = self.admit(field::SERVER, executable.as_bytes(), false);
        self.children.existing(tgid, pid, label);
    }

    /// Folds the kernel's counter totals (summed over CPUs) into the series. Totals only
    /// grow; a stale read from a concurrent scrape adds nothing.
    pub fn sync_kernel_counters(&self, totals: [u64; counter::COUNT as usize]) {
        let mut seen = self.kernel_seen.lock().expect("kernel counters lock");
        let totals: [u64; counter::COUNT as usize] = std::array::from_fn(|i| totals[i].max(seen[i]));
        let delta = |i: u32| totals[i as usize].saturating_sub(seen[i as usize]);
        for kind in 1..kind::END {
            let lost = delta(counter::LOST_BASE + kind);
            self.observer.events_lost.with_label_values(&[kind::NAMES[kind as usize]]).inc_by(lost);
        }
        self.observer.bad_user_pointers.inc_by(delta(counter::BAD_USER_POINTER));
        self.observer.in_flight_full.inc_by(delta(counter::IN_FLIGHT_FULL));
        self.observer.duplicate_starts.inc_by(delta(counter::DUPLICATE_START));
        for (index, map) in observer::FULL_MAPS {
            self.observer.map_full.with_label_values(&[map]).inc_by(delta(index));
        }
        self.requests.set_in_flight(
            totals[counter::REQUESTS_STARTED as usize],
            totals[counter::REQUESTS_FINISHED as usize],
        );
        *seen = totals;
    }

    /// The text exposition format of every series.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("text format is UTF-8")
    }
}

/// A sum of untrusted numbers as a gauge value, saturating instead of wrapping.
fn gauge_value(values: impl Iterator<Item = u64>) -> i64 {
    i64::try_from(values.fold(0u64, u64::saturating_add)).unwrap_or(i64::MAX)
}

/// Registers `collector` and hands it back.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry.register(Box::new(collector.clone())).expect("unique metric names");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid metric"))
}

/// Buckets for things that live long: backend connections and client sessions, 100 ms to a day.
const LIFETIME_BUCKETS: &[f64] =
    &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0];
