//! The Prometheus series, built from decoded probe events (one module per family group),
//! plus the kernel's per-CPU counters folded in at scrape time. Every `mcp_proxy_*` series
//! belongs to a workload and carries its labels; the observer's own series do not.

mod access;
mod caches;
mod children;
mod live;
mod observer;
mod pool;
mod request_series;
mod requests;
mod series_cache;
mod sessions;
mod tcp;
#[cfg(test)]
mod testing;

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use observer_common::{InFlightKey, counter, field, kind};
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

use crate::{
    decode::{DecodeError, Decoded, Event, Label},
    labels::{LabelConfig, LabelPolicy},
    workload::{LABEL_NAMES, WorkloadLabels},
};
pub use observer::ObserverMetrics;

pub struct Metrics {
    registry: Registry,
    labels: Mutex<LabelPolicy>,
    workloads: RwLock<Workloads>,
    /// Held while a batch of events is recorded and while the series are encoded: a scrape
    /// sees every family at the same point between two batches (a request's count, its
    /// histogram and its label folds agree).
    batch: Mutex<()>,
    pub observer: ObserverMetrics,
    /// Kernel counter totals already folded into the series.
    kernel_seen: Mutex<[u64; counter::COUNT as usize]>,
    /// Every event with an earlier kernel timestamp has been read (CLOCK_MONOTONIC, ns).
    drained_until: AtomicU64,
    /// `request_start` is attached: requests have latency and in-flight gauges.
    request_latency: bool,
}

/// Every `mcp_proxy_*` family of one workload (a Kubernetes container, or a process
/// outside Kubernetes): its series carry the workload's labels as constant labels.
pub struct Workload {
    requests: requests::Requests,
    pool: pool::Pool,
    caches: caches::Caches,
    sessions: sessions::Sessions,
    access: access::Access,
    tcp: tcp::Tcp,
    children: children::Children,
}

impl Workload {
    /// What process `tgid` held open (connections, sessions, children) is gone with it.
    fn forget(&self, tgid: u32) {
        self.pool.forget(tgid);
        self.sessions.forget(tgid);
        self.caches.forget(tgid);
        self.tcp.forget(tgid);
        self.children.forget(tgid);
    }
}

/// A request being expired (see [`Metrics::expiring`]).
pub struct Expiring {
    key: InFlightKey,
    /// The workload its process feeds, if any.
    workload: Option<Arc<Workload>>,
    /// Newly remembered (not already, from an earlier expiry of the same key).
    remembered: bool,
}

/// The workloads, by the target processes that feed them and by their labels.
#[derive(Default)]
struct Workloads {
    /// Looked up at every event: a fast hasher (pids are not chosen by clients).
    by_tgid: HashMap<u32, Arc<Workload>, ahash::RandomState>,
    by_labels: HashMap<WorkloadLabels, Registered>,
}

/// A workload and what it registered. It outlives its processes by the retention given
/// to [`Metrics::retire`]: a restarted container's new process continues its series.
struct Registered {
    workload: Arc<Workload>,
    collectors: Vec<Box<dyn Collector>>,
    processes: usize,
    idle_since: Option<Instant>,
}

impl Metrics {
    /// `request_latency`: false when `request_start` is not attached (no latency, no
    /// in-flight gauges).
    pub fn new(labels: LabelConfig, request_latency: bool) -> Self {
        let registry = Registry::new();
        Self {
            request_latency,
            labels: Mutex::new(LabelPolicy::new(labels)),
            workloads: RwLock::default(),
            batch: Mutex::default(),
            observer: ObserverMetrics::new(&Scope::new(&registry, HashMap::new())),
            kernel_seen: Mutex::new([0; counter::COUNT as usize]),
            drained_until: AtomicU64::new(0),
            registry,
        }
    }

    fn workloads(&self) -> RwLockReadGuard<'_, Workloads> {
        self.workloads.read().expect("workloads lock")
    }

    /// Target process `tgid` feeds the workload `labels` names (created on first use).
    /// `names_children`: its `child_spawn` probe is attached, so its children wait for
    /// their names.
    pub fn add_target(&self, tgid: u32, labels: &WorkloadLabels, names_children: bool) {
        let mut workloads = self.workloads.write().expect("workloads lock");
        let registered = workloads.by_labels.entry(labels.clone()).or_insert_with(|| {
            let scope = Scope::new(
                &self.registry,
                LABEL_NAMES
                    .iter()
                    .zip(labels.values())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            let workload = Workload {
                requests: requests::Requests::new(&scope, self.request_latency),
                pool: pool::Pool::new(&scope),
                caches: caches::Caches::new(&scope),
                sessions: sessions::Sessions::new(&scope),
                access: access::Access::new(&scope),
                tcp: tcp::Tcp::new(&scope),
                children: children::Children::new(&scope),
            };
            Registered {
                workload: Arc::new(workload),
                collectors: scope.registered.into_inner(),
                processes: 0,
                idle_since: None,
            }
        });
        registered.processes += 1;
        registered.idle_since = None;
        if names_children {
            registered.workload.children.expect_names(tgid);
        }
        let workload = registered.workload.clone();
        if workloads.by_tgid.insert(tgid, workload).is_some() {
            log::warn!("pid {tgid} was still mapped to a workload when added again");
        }
    }

    /// Process `tgid` exited: what it held open is gone with it, and its workload idles
    /// from now on if it was the last process feeding it.
    pub fn forget_process(&self, tgid: u32) {
        let mut workloads = self.workloads.write().expect("workloads lock");
        let Some(workload) = workloads.by_tgid.remove(&tgid) else { return };
        workload.forget(tgid);
        if let Some(registered) =
            workloads.by_labels.values_mut().find(|r| Arc::ptr_eq(&r.workload, &workload))
        {
            registered.processes = registered.processes.saturating_sub(1);
            if registered.processes == 0 {
                registered.idle_since = Some(Instant::now());
            }
        }
    }

    /// Removes the series of workloads without a process for `retention`.
    pub fn retire(&self, retention: Duration) {
        let mut workloads = self.workloads.write().expect("workloads lock");
        let retired: Vec<WorkloadLabels> = workloads
            .by_labels
            .iter()
            .filter(|(_, r)| r.idle_since.is_some_and(|since| since.elapsed() >= retention))
            .map(|(labels, _)| labels.clone())
            .collect();
        for labels in retired {
            let registered = workloads.by_labels.remove(&labels).expect("listed above");
            for collector in registered.collectors {
                let _ = self.registry.unregister(collector);
            }
            log::info!("{labels}: no process for {retention:?}, its series are removed");
        }
    }

    /// Records `ev` in the series of the workload its process feeds.
    pub fn record(&self, ev: &Decoded) {
        if matches!(ev.event, Event::ProcessExec | Event::TargetExit) {
            return;
        }
        // Read-locked while the event is recorded: recording never takes this lock again.
        let workloads = self.workloads();
        let Some(workload) = workloads.by_tgid.get(&ev.at.tgid) else {
            self.observer.orphan_events.inc();
            return;
        };
        self.dispatch(workload, *ev);
    }

    /// Every event to the family that records it, its strings resolved to label values
    /// (through the label policy) where the family needs them as such.
    fn dispatch(&self, w: &Workload, Decoded { at, event }: Decoded) {
        let o = &self.observer;
        let label = |label: Label| series_cache::Resolve::resolve(self, label).0;
        let admit = |name: &[u8], cut| self.admit(field::SERVER, name, cut);
        match event {
            Event::RequestEnd { id, status, timing, labels } => {
                let key = InFlightKey { tgid: at.tgid, pad: 0, id };
                w.requests.end(key, status, timing, labels, self, o)
            }
            Event::AclDecision { decision, labels } => w.access.acl_decision(decision, labels, self),
            Event::AuthFailure { reason } => w.access.auth_failure(reason),
            Event::BackendConnectStart { conn } => w.pool.connect_start(at, conn),
            Event::BackendConnectEnd { conn, kind, result, server } => {
                w.pool.connect_end(at, conn, (kind, result), &label(server), o)
            }
            Event::BackendDisconnect { conn, reason, server } => {
                w.pool.disconnect(at, conn, reason, &label(server), o)
            }
            Event::BackendsConfigured { count } => w.pool.configured(at.tgid, count),
            Event::IdleReaperRun => w.pool.reaper_runs.inc(),
            Event::SessionOpen { session, transport } => w.sessions.open(at, session, &label(transport)),
            Event::SessionClose { session, reason, transport } => {
                w.sessions.close(at, session, reason, &label(transport), o)
            }
            Event::ToolCacheSize { entries, server } => {
                w.caches.tool_cache_size(at.tgid, server, label(server), entries)
            }
            Event::ClassifierCache { outcome, labels } => w.caches.classifier_lookup(outcome, labels, self),
            Event::ChildSpawn { pid, server } => w.children.named(at.tgid, pid, label(server)),
            Event::TcpOpen { socket, direction } => w.tcp.open(at, socket, direction),
            Event::TcpClose { socket, direction } => w.tcp.close(at, socket, direction, o),
            Event::TcpReset { direction } => w.tcp.reset(direction),
            Event::TcpTimeout { direction, kind } => w.tcp.timeout(direction, kind),
            Event::TcpRetransmit { direction } => w.tcp.retransmit(direction),
            Event::ChildFork { pid, command } => w.children.fork(at, pid, command),
            Event::ChildExec { pid, path } => w.children.exec(at.tgid, pid, path, &admit),
            Event::ChildExit { pid, outcome } => w.children.exit(at.tgid, pid, outcome, &admit),
            // The targets' lifecycle (see `events`), not a workload's series.
            Event::ProcessExec | Event::TargetExit => {}
        }
    }

    /// The value of label `slot` for `bytes`, through the label policy.
    fn admit(&self, slot: usize, bytes: &[u8], truncated: bool) -> String {
        self.admit_folded(slot, bytes, truncated).0
    }

    /// [`Self::admit`], and whether the value was folded into `__other__`.
    fn admit_folded(&self, slot: usize, bytes: &[u8], truncated: bool) -> (String, bool) {
        let (value, folded) = self.labels.lock().expect("label policy lock").admit(slot, bytes);
        self.count_label(slot, truncated, folded);
        (value, folded)
    }

    fn count_label(&self, slot: usize, truncated: bool, folded: bool) {
        let name = field::LABELS[slot];
        if truncated {
            self.observer.label_truncated.with_label_values(&[name]).inc();
        }
        if folded {
            self.observer.label_overflow.with_label_values(&[name]).inc();
        }
    }

    pub fn decode_error(&self, error: &DecodeError) {
        log::warn!("undecodable ring-buffer record: {error}");
        self.observer.decode_errors.inc();
    }

    /// Request `key` is about to be removed from the kernel's in-flight map as expired:
    /// remembered, so that an end racing the removal is known as late. Then [`Self::expired`].
    pub fn expiring(&self, key: InFlightKey) -> Expiring {
        let workload = self.workloads().by_tgid.get(&key.tgid).cloned();
        let remembered = workload.as_ref().is_some_and(|w| w.requests.remember_expired(key));
        Expiring { key, workload, remembered }
    }

    /// The removal of an [`Expiring`] request is done: `removed`, it is counted as a
    /// timeout; otherwise its end won the race, and it is not expired after all.
    pub fn expired(&self, expiring: Expiring, removed: bool) {
        // Not a target's (any more): nobody's series to count it in.
        let Expiring { key, workload: Some(workload), remembered } = expiring else { return };
        if removed {
            workload.requests.count_expired();
        } else if remembered {
            workload.requests.forget_expired(key);
        }
    }

    /// Sets each workload's requests in flight and the age of its oldest one from the
    /// kernel's in-flight map: (count, oldest age in ns) by process.
    pub fn set_in_flight(&self, by_tgid: &HashMap<u32, (u64, u64)>) {
        let workloads = self.workloads();
        for registered in workloads.by_labels.values() {
            let (count, oldest) = workloads
                .by_tgid
                .iter()
                .filter(|(_, w)| Arc::ptr_eq(w, &registered.workload))
                .filter_map(|(tgid, _)| by_tgid.get(tgid))
                .fold((0, 0), |(count, oldest), &(n, age)| (count + n, oldest.max(age)));
            registered.workload.requests.set_in_flight(count, oldest);
        }
    }

    /// The reader emptied the ring buffer after `ns`.
    pub fn drained(&self, ns: u64) {
        self.drained_until.fetch_max(ns, Ordering::Relaxed);
    }

    /// Counts the children nobody named in time (see `children`). Judged by what was
    /// read, not by the clock: a reader running late must not miss names waiting in the ring.
    pub fn tick(&self) {
        let drained = self.drained_until.load(Ordering::Relaxed);
        for registered in self.workloads().by_labels.values() {
            registered.workload.children.tick(drained, &|name, cut| self.admit(field::SERVER, name, cut));
        }
    }

    /// A child target `tgid` already had when the agent attached, named after its executable.
    pub fn existing_child(&self, tgid: u32, pid: u32, executable: &str) {
        let label = self.admit(field::SERVER, executable.as_bytes(), false);
        if let Some(workload) = self.workloads().by_tgid.get(&tgid) {
            workload.children.existing(tgid, pid, label);
        }
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
        *seen = totals;
    }

    /// Held while the reader records one drain's events (see `batch`).
    pub fn batch(&self) -> MutexGuard<'_, ()> {
        self.batch.lock().expect("batch lock")
    }

    /// The text exposition format of every series: the registry's, then the request
    /// families of every workload (see `request_series`).
    pub fn encode(&self) -> String {
        let _between_batches = self.batch();
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .expect("text encoding cannot fail");
        let series: Vec<_> =
            self.workloads().by_labels.values().flat_map(|r| r.workload.requests.series()).collect();
        request_series::encode(&mut text, series.iter().map(|s| &**s));
        text
    }
}

impl series_cache::Resolve for Metrics {
    fn resolve(&self, label: Label) -> (String, bool) {
        self.admit_folded(label.slot, label.bytes, label.truncated)
    }

    fn recount(&self, label: Label, folded: bool) {
        self.count_label(label.slot, label.truncated, folded);
    }
}

/// Where families are registered, and the constant labels of their series: a workload's
/// for `mcp_proxy_*`, none for the observer's own. Keeps what it registered, so that a
/// retired workload's series can be removed.
pub struct Scope<'a> {
    registry: &'a Registry,
    labels: HashMap<String, String>,
    registered: RefCell<Vec<Box<dyn Collector>>>,
}

impl<'a> Scope<'a> {
    fn new(registry: &'a Registry, labels: HashMap<String, String>) -> Self {
        Self { registry, labels, registered: RefCell::default() }
    }

    /// A scope of its own, for unit tests of one family.
    #[cfg(test)]
    pub fn detached() -> Self {
        Self::new(Box::leak(Box::new(Registry::new())), HashMap::new())
    }

    /// Registers `collector` and hands it back.
    fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        self.registry.register(Box::new(collector.clone())).expect("unique metric names and label sets");
        self.registered.borrow_mut().push(Box::new(collector.clone()));
        collector
    }

    /// The constant labels of its series, by name.
    fn labels(&self) -> Vec<(String, String)> {
        let mut labels: Vec<_> = self.labels.clone().into_iter().collect();
        labels.sort();
        labels
    }

    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_labels(self.labels.clone())
    }
}

/// A sum of untrusted numbers as a gauge value, saturating instead of wrapping.
fn gauge_value(values: impl Iterator<Item = u64>) -> i64 {
    i64::try_from(values.fold(0u64, u64::saturating_add)).unwrap_or(i64::MAX)
}

fn counter_vec(scope: &Scope, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    scope.register(IntCounterVec::new(scope.opts(name, help), labels).expect("valid metric"))
}

fn gauge_vec(scope: &Scope, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    scope.register(IntGaugeVec::new(scope.opts(name, help), labels).expect("valid metric"))
}

fn int_counter(scope: &Scope, name: &str, help: &str) -> IntCounter {
    scope.register(IntCounter::with_opts(scope.opts(name, help)).expect("valid metric"))
}

fn int_gauge(scope: &Scope, name: &str, help: &str) -> IntGauge {
    scope.register(IntGauge::with_opts(scope.opts(name, help)).expect("valid metric"))
}

fn gauge(scope: &Scope, name: &str, help: &str) -> Gauge {
    scope.register(Gauge::with_opts(scope.opts(name, help)).expect("valid metric"))
}

fn histogram_vec(scope: &Scope, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::from(scope.opts(name, help)).buckets(buckets.to_vec());
    scope.register(HistogramVec::new(opts, labels).expect("valid metric"))
}

/// Buckets for things that live long: backend connections and client sessions, 100 ms to a day.
const LIFETIME_BUCKETS: &[f64] =
    &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0];

#[cfg(test)]
mod tests {
    use observer_common::{FLAG_UNTIMED, ProbeEvent, field, pack};

    use super::*;
    use crate::{
        decode::{event, tests::record},
        labels::IdentityMode,
    };

    /// Records `record` as the reader would, as process `tgid`'s.
    fn send(metrics: &Metrics, tgid: u32, mut record: Box<ProbeEvent>) {
        record.header.tgid = tgid;
        metrics.record(&event(&record).expect("a valid record"));
    }

    fn metrics() -> Metrics {
        metrics_with_latency(true)
    }

    fn metrics_with_latency(request_latency: bool) -> Metrics {
        Metrics::new(
            LabelConfig {
                max_values: [10; field::COUNT],
                tool_allowlist: None,
                identity: IdentityMode::Keep,
                identity_salt: String::new(),
            },
            request_latency,
        )
    }

    fn pod(name: &str) -> WorkloadLabels {
        WorkloadLabels {
            namespace: "ns".into(),
            pod: name.into(),
            container: "proxy".into(),
            ..Default::default()
        }
    }

    fn reaper_run(metrics: &Metrics, tgid: u32) {
        send(metrics, tgid, record(kind::IDLE_REAPER_RUN, 0, 0, &[]));
    }

    /// The idle-reaper series of each pod: (pod, value).
    fn reaper_runs(metrics: &Metrics) -> Vec<(String, String)> {
        let text = metrics.encode();
        let mut found: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("mcp_proxy_idle_reaper_runs_total{"))
            .map(|l| {
                let pod = l.split("pod=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
                (pod, l.rsplit(' ').next().unwrap().to_string())
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_restarted_process_continues_its_workloads_series_until_retired() {
        let metrics = metrics();
        metrics.add_target(10, &pod("a"), false);
        metrics.add_target(20, &pod("b"), false);
        reaper_run(&metrics, 10);
        reaper_run(&metrics, 20);
        metrics.forget_process(10);
        reaper_run(&metrics, 10);
        assert_eq!(metrics.observer.orphan_events.get(), 1, "a forgotten process counts nowhere");
        // The container's new process, under the same labels.
        metrics.add_target(11, &pod("a"), false);
        reaper_run(&metrics, 11);
        assert_eq!(reaper_runs(&metrics), [("a".into(), "2".into()), ("b".into(), "1".into())]);
        // A second process of the same container: the first one's end does not idle it.
        metrics.add_target(13, &pod("a"), false);
        metrics.forget_process(13);
        metrics.retire(Duration::ZERO);
        assert_eq!(reaper_runs(&metrics).len(), 2, "both workloads still have a process");
        metrics.forget_process(11);
        metrics.retire(Duration::from_secs(3600));
        assert_eq!(reaper_runs(&metrics).len(), 2, "kept for the retention");
        metrics.retire(Duration::ZERO);
        assert_eq!(reaper_runs(&metrics), [("b".into(), "1".into())]);
        // Its labels can come back: registered anew, from zero.
        metrics.add_target(12, &pod("a"), false);
        assert_eq!(reaper_runs(&metrics), [("a".into(), "0".into()), ("b".into(), "1".into())]);
    }

    #[test]
    fn a_backends_first_connect_creates_its_connect_and_disconnect_series_at_zero() {
        let metrics = metrics();
        metrics.add_target(10, &pod("a"), false);
        // A lazy connect, result ok.
        send(&metrics, 10, record(kind::BACKEND_CONNECT_END, 1, pack(1, 0), &[(field::SERVER, b"alpha")]));
        let text = metrics.encode();
        let series = |name: &str| -> Vec<String> {
            let mut found: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(name) && l.contains("server=\"alpha\""))
                .map(|l| {
                    let labels = l.split('{').nth(1).unwrap();
                    let wanted =
                        |pair: &&str| ["kind", "result", "reason"].iter().any(|k| pair.starts_with(k));
                    let picked: Vec<&str> = labels.split(',').filter(wanted).collect();
                    format!("{} {}", picked.join(",").trim_end_matches('}'), l.rsplit(' ').next().unwrap())
                })
                .collect();
            found.sort();
            found
        };
        assert_eq!(
            series("mcp_proxy_backend_connects_total{"),
            [
                "kind=\"initial\",result=\"error\" 0",
                "kind=\"initial\",result=\"ok\" 0",
                "kind=\"lazy\",result=\"error\" 0",
                "kind=\"lazy\",result=\"ok\" 1",
            ]
        );
        assert_eq!(
            series("mcp_proxy_backend_disconnects_total{"),
            ["reason=\"error\" 0", "reason=\"idle_reaped\" 0", "reason=\"shutdown\" 0"]
        );
    }

    fn request_end(metrics: &Metrics, flags: u32, duration_ns: u64) {
        let mut end = record(kind::REQUEST_END, 1, 0, &[(field::TOOL, b"echo")]);
        (end.flags, end.duration_ns) = (flags, duration_ns);
        send(metrics, 10, end);
    }

    #[test]
    fn without_request_latency_requests_are_counted_with_no_histogram_and_no_in_flight_gauges() {
        let metrics = metrics_with_latency(false);
        metrics.add_target(10, &pod("a"), false);
        for _ in 0..3 {
            request_end(&metrics, FLAG_UNTIMED, 0);
        }
        metrics.set_in_flight(&HashMap::new());
        let text = metrics.encode();
        let counted: Vec<&str> =
            text.lines().filter(|l| l.starts_with("mcp_proxy_requests_total{")).collect();
        assert_eq!(counted.len(), 1, "{text}");
        assert!(counted[0].contains("tool=\"echo\"") && counted[0].ends_with(" 3"), "{text}");
        for absent in
            ["mcp_proxy_request_duration_seconds_", "mcp_proxy_requests_in_flight", "oldest_in_flight"]
        {
            assert!(!text.lines().any(|l| l.starts_with(absent)), "{absent} in\n{text}");
        }
        assert!(
            !text.contains("mcp_observer_unmatched_ends_total{"),
            "untimed ends are not unmatched:\n{text}"
        );

        // The same ends with latency on: in-flight gauges, and a histogram per timed set.
        let metrics = metrics_with_latency(true);
        metrics.add_target(10, &pod("a"), false);
        request_end(&metrics, 0, 2_000_000);
        metrics.set_in_flight(&HashMap::new());
        let text = metrics.encode();
        assert!(text.contains("mcp_proxy_request_duration_seconds_count{"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("mcp_proxy_requests_in_flight{")), "{text}");
    }
}
