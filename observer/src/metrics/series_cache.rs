//! Label sets already resolved to their series. Resolving an event's strings costs about
//! half a microsecond (escaping, the label policy, then `with_label_values` hashing six
//! strings under a lock); a busy proxy repeats a few label sets millions of times. So the
//! series are kept by the bytes the kernel sent, and a repeat costs one hash of them.

use std::{collections::HashMap, sync::Mutex};

use crate::decode::{Label, Strings};

/// Label sets kept per family (at most about 0.5 MB with every string at its cap). Label
/// values come from clients: past this many, a new label set is resolved at every event,
/// as without the cache; the first ones seen, usually the busiest, stay cached.
const CAPACITY: usize = 1024;

/// How the strings of an event become label values (implemented by `Metrics`).
pub trait Resolve {
    /// The label value of `label`, through the label policy, and whether the policy
    /// folded it into `__other__`; counts the truncation and the fold.
    fn resolve(&self, label: Label) -> (String, bool);
    /// Counts what resolving `label` counted, for a label set served from the cache.
    fn recount(&self, label: Label, folded: bool);
}

/// The series of one family (counters, histograms: anything cheap to clone), by label set.
pub struct SeriesCache<V> {
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    /// Keyed by client-chosen bytes: a hasher made to resist collisions forced by them.
    series: HashMap<Box<[u8]>, (V, u8), ahash::RandomState>,
    /// The key being looked up, built here so that a hit allocates nothing.
    key: Vec<u8>,
}

impl<V> SeriesCache<V> {
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner { series: HashMap::default(), key: Vec::with_capacity(512) }) }
    }

    /// Calls `record` with the series of `strings`' slots `slots` and of `scalar` (an ABI
    /// value that becomes a label); on first sight, `make` builds them from the resolved
    /// values, in slot order.
    pub fn record<const N: usize, R>(
        &self,
        strings: Strings,
        slots: [usize; N],
        scalar: u64,
        labels: &dyn Resolve,
        make: impl FnOnce([String; N]) -> V,
        record: impl FnOnce(&V) -> R,
    ) -> R {
        let mut inner = self.inner.lock().expect("series cache lock");
        let Inner { series, key } = &mut *inner;
        // The scalar, then the strings: an event of one kind carries no other strings
        // than its own slots'.
        key.clear();
        key.extend_from_slice(&scalar.to_ne_bytes());
        strings.identity(key);
        if let Some((found, folded)) = series.get(key.as_slice()) {
            if *folded != 0 || strings.any_truncated() {
                for slot in slots {
                    labels.recount(strings.get(slot), folded & (1 << slot) != 0);
                }
            }
            return record(found);
        }
        let mut folded = 0u8;
        let values = slots.map(|slot| {
            let (value, was_folded) = labels.resolve(strings.get(slot));
            folded |= u8::from(was_folded) << slot;
            value
        });
        let made = make(values);
        let recorded = record(&made);
        if series.len() < CAPACITY {
            series.insert(key.as_slice().into(), (made, folded));
        }
        recorded
    }
}

#[cfg(test)]
mod tests {
    use observer_common::field;

    use super::*;
    use crate::metrics::testing::{Plain, strings};

    /// Records one event of `strings` and `scalar`: the value its series were made with.
    fn record(cache: &SeriesCache<String>, strings: Strings, scalar: u64, resolve: &Plain) -> String {
        cache.record(
            strings,
            [field::SERVER, field::TOOL],
            scalar,
            resolve,
            |[server, tool]| format!("{server}/{tool}/{scalar}"),
            String::clone,
        )
    }

    #[test]
    fn a_label_set_is_resolved_once_and_told_apart_by_every_byte_and_the_scalar() {
        let (cache, resolve) = (SeriesCache::new(), Plain::default());
        let echo = strings(&[(field::SERVER, b"alpha"), (field::TOOL, b"echo")]);
        assert_eq!(record(&cache, echo, 0, &resolve), "alpha/echo/0");
        assert_eq!(record(&cache, echo, 0, &resolve), "alpha/echo/0");
        assert_eq!(resolve.resolved.get(), 2, "the repeat comes from the cache");
        // The same bytes split otherwise between the slots are another label set.
        let shifted = strings(&[(field::SERVER, b"alphae"), (field::TOOL, b"cho")]);
        assert_eq!(record(&cache, shifted, 0, &resolve), "alphae/cho/0");
        assert_eq!(record(&cache, echo, 1, &resolve), "alpha/echo/1");
        assert_eq!(resolve.resolved.get(), 6);
        assert_eq!(resolve.recounted.get(), 0, "nothing truncated or folded to count again");
    }

    #[test]
    fn a_cached_truncated_set_counts_its_truncation_at_every_event() {
        let (cache, resolve) = (SeriesCache::new(), Plain::default());
        let mut record_ = crate::decode::tests::record(
            observer_common::kind::REQUEST_END,
            0,
            0,
            &[(field::SERVER, b"alpha"), (field::TOOL, b"long")],
        );
        record_.flags = 1 << (observer_common::FLAG_TRUNCATED_SHIFT + field::TOOL as u32);
        let cut = Strings::of(Box::leak(record_));
        for _ in 0..3 {
            record(&cache, cut, 0, &resolve);
        }
        assert_eq!((resolve.resolved.get(), resolve.recounted.get()), (2, 4), "both slots, at each repeat");
    }

    #[test]
    fn past_its_capacity_new_label_sets_are_resolved_at_every_event() {
        let (cache, resolve) = (SeriesCache::new(), Plain::default());
        let names: Vec<String> = (0..=CAPACITY).map(|i| format!("tool{i}")).collect();
        for name in &names {
            let tool: &'static [u8] = Box::leak(name.clone().into_bytes().into_boxed_slice());
            record(&cache, strings(&[(field::TOOL, tool)]), 0, &resolve);
        }
        let last: &'static [u8] = Box::leak(names[CAPACITY].clone().into_bytes().into_boxed_slice());
        record(&cache, strings(&[(field::TOOL, last)]), 0, &resolve);
        let first = strings(&[(field::TOOL, b"tool0")]);
        record(&cache, first, 0, &resolve);
        assert_eq!(resolve.resolved.get(), 2 * (CAPACITY + 2), "the first ones stay cached, the last is not");
    }
}
