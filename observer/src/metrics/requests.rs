//! Request counts, latency and what is still in flight, from `request_end` events and the
//! kernel's in-flight map.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use observer_common::{InFlightKey, field, kind};
use prometheus::{Gauge, IntGauge};

use super::{
    ObserverMetrics, Scope, gauge, int_gauge,
    request_series::RequestSeries,
    series_cache::{Resolve, SeriesCache},
};
use crate::decode::{Status, Strings, Timing};

const LABELS: [&str; 6] = ["method", "transport", "status", "identity", "server", "tool"];
/// An expired request: nothing but its status is known (its labels come with its end).
const EXPIRED: [&str; 6] = ["", "", "timeout", "", "", ""];
/// Expired keys remembered, to recognise an end that comes after all.
const REMEMBERED: usize = 65_536;

pub struct Requests {
    /// The workload's labels, first in every series.
    workload: Vec<(String, String)>,
    /// Every label set's count and latency, by label values in `LABELS` order.
    by_labels: Mutex<BTreeMap<[String; 6], Arc<RequestSeries>>>,
    /// Requests in flight and the oldest one's age; None without `request_start`, which
    /// alone tells when a request began.
    in_flight: Option<(IntGauge, Gauge)>,
    expired: Mutex<Expired>,
    /// The series of each label set seen, by the bytes the kernel sent.
    series: SeriesCache<Arc<RequestSeries>>,
}

/// The most recent requests the agent expired.
#[derive(Default)]
struct Expired {
    order: VecDeque<InFlightKey>,
    keys: HashSet<InFlightKey>,
}

impl Expired {
    /// Remembers `key`; false if it already was.
    fn remember(&mut self, key: InFlightKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > REMEMBERED {
            let oldest = self.order.pop_front().expect("non-empty");
            self.keys.remove(&oldest);
        }
        true
    }
}

impl Requests {
    /// `request_latency`: `request_start` is attached.
    pub fn new(scope: &Scope, request_latency: bool) -> Self {
        let in_flight = request_latency.then(|| {
            (
                int_gauge(
                    scope,
                    "mcp_proxy_requests_in_flight",
                    "Requests started and not yet ended or expired",
                ),
                gauge(
                    scope,
                    "mcp_proxy_request_oldest_in_flight_seconds",
                    "Age of the oldest request in flight (0 when none), from the kernel's start times",
                ),
            )
        });
        Self {
            workload: scope.labels(),
            by_labels: Mutex::default(),
            in_flight,
            expired: Mutex::default(),
            series: SeriesCache::new(),
        }
    }

    /// Request `key` ended with `status`; `labels`: its method, transport, identity,
    /// server and tool.
    pub fn end(
        &self,
        key: InFlightKey,
        status: Status,
        timing: Timing,
        labels: Strings,
        resolve: &dyn Resolve,
        observer: &ObserverMetrics,
    ) {
        if timing == Timing::NoStart {
            if self.expired.lock().expect("expired lock").keys.remove(&key) {
                // Already counted as a timeout when it expired.
                observer.late_request_ends.inc();
                return;
            }
            observer.unmatched(kind::REQUEST_END);
        }
        let slots = [field::METHOD, field::TRANSPORT, field::IDENTITY, field::SERVER, field::TOOL];
        self.series.record(
            labels,
            slots,
            status as u64,
            resolve,
            |[method, transport, identity, server, tool]| {
                self.series_of([method, transport, status.label().to_string(), identity, server, tool])
            },
            |series| {
                series.count();
                if let Timing::Measured(ns) = timing {
                    series.observe(ns);
                }
            },
        );
    }

    /// Remembers expired request `key`, whose end may still come; false if it already was.
    pub fn remember_expired(&self, key: InFlightKey) -> bool {
        self.expired.lock().expect("expired lock").remember(key)
    }

    /// Request `key` was not expired after all: its end won the race.
    pub fn forget_expired(&self, key: InFlightKey) {
        self.expired.lock().expect("expired lock").keys.remove(&key);
    }

    /// One more request expired: its labels never came, its status is a timeout.
    pub fn count_expired(&self) {
        self.series_of(EXPIRED.map(str::to_string)).count();
    }

    /// The series of label values `values` (in `LABELS` order), created on first use.
    fn series_of(&self, values: [String; 6]) -> Arc<RequestSeries> {
        let mut by_labels = self.by_labels.lock().expect("request series lock");
        if let Some(series) = by_labels.get(&values) {
            return series.clone();
        }
        let labels = self.workload.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let series = Arc::new(RequestSeries::new(
            labels.chain(LABELS.into_iter().zip(values.iter().map(String::as_str))),
        ));
        by_labels.insert(values, series.clone());
        series
    }

    /// Every label set's series, for the exposition.
    pub fn series(&self) -> Vec<Arc<RequestSeries>> {
        self.by_labels.lock().expect("request series lock").values().cloned().collect()
    }

    /// From the kernel's in-flight map, read after the expired requests left it.
    pub fn set_in_flight(&self, count: u64, oldest_ns: u64) {
        if let Some((in_flight, oldest)) = &self.in_flight {
            in_flight.set(i64::try_from(count).unwrap_or(i64::MAX));
            oldest.set(oldest_ns as f64 / 1e9);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{Plain, observer, strings, unmatched};

    fn key(id: u64) -> InFlightKey {
        InFlightKey { tgid: 10, pad: 0, id }
    }

    /// (count, observations) of each label set, by its label values.
    fn counts(requests: &Requests) -> Vec<(String, u64, u64)> {
        let by_labels = requests.by_labels.lock().unwrap();
        by_labels
            .iter()
            .map(|(values, series)| (values.join(","), series.total(), series.observations()))
            .collect()
    }

    #[test]
    fn ends_are_counted_by_label_set_and_timed_ones_observed() {
        let (requests, observer, resolve) =
            (Requests::new(&Scope::detached(), true), observer(), Plain::default());
        let call = strings(&[
            (field::METHOD, b"tools/call"),
            (field::TRANSPORT, b"http"),
            (field::IDENTITY, b"alice"),
            (field::SERVER, b"alpha"),
            (field::TOOL, b"echo"),
        ]);
        let end = |id, status, timing| requests.end(key(id), status, timing, call, &resolve, &observer);
        end(1, Status::Ok, Timing::Measured(2_000_000));
        end(2, Status::Ok, Timing::Measured(3_000_000));
        end(3, Status::ToolError, Timing::Untimed);
        end(4, Status::Ok, Timing::NoStart);
        assert_eq!(
            counts(&requests),
            [
                ("tools/call,http,ok,alice,alpha,echo".to_string(), 3, 2),
                ("tools/call,http,tool_error,alice,alpha,echo".to_string(), 1, 0),
            ]
        );
        assert_eq!(unmatched(&observer, kind::REQUEST_END), 1, "the end without a start");
        assert_eq!(observer.late_request_ends.get(), 0);
    }

    #[test]
    fn an_expired_request_is_a_timeout_and_its_late_end_is_not_counted_again() {
        let (requests, observer, resolve) =
            (Requests::new(&Scope::detached(), true), observer(), Plain::default());
        let call = strings(&[(field::TOOL, b"sleep")]);
        assert!(requests.remember_expired(key(7)));
        assert!(!requests.remember_expired(key(7)), "remembered once");
        requests.count_expired();
        // Its end comes after all: the kernel no longer had its start.
        requests.end(key(7), Status::Ok, Timing::NoStart, call, &resolve, &observer);
        assert_eq!(counts(&requests), [(",,timeout,,,".to_string(), 1, 0)]);
        assert_eq!(observer.late_request_ends.get(), 1);
        assert_eq!(unmatched(&observer, kind::REQUEST_END), 0);
        // Another whose end won the race: not expired, and its end counts.
        assert!(requests.remember_expired(key(8)));
        requests.forget_expired(key(8));
        requests.end(key(8), Status::Ok, Timing::NoStart, call, &resolve, &observer);
        assert_eq!(counts(&requests).len(), 2);
        assert_eq!(unmatched(&observer, kind::REQUEST_END), 1);
    }

    #[test]
    fn in_flight_gauges_exist_only_with_request_latency() {
        let requests = Requests::new(&Scope::detached(), true);
        requests.set_in_flight(3, 1_500_000_000);
        let (in_flight, oldest) = requests.in_flight.as_ref().unwrap();
        assert_eq!((in_flight.get(), oldest.get()), (3, 1.5));
        assert!(Requests::new(&Scope::detached(), false).in_flight.is_none());
    }
}
