//! Label sets already resolved to their series. Resolving an event's strings costs about
//! half a microsecond (escaping, the label policy, then `with_label_values` hashing six
//! strings under a lock); a busy proxy repeats a few label sets millions of times. So the
//! series are kept by the bytes the kernel sent, and a repeat costs one hash of them.

use std::{collections::HashMap, sync::Mutex};

use observer_common::{FLAG_TRUNCATED_SHIFT, ProbeEvent, field};

use crate::events::string;

/// Label sets kept per family (at most about 0.5 MB with every string at its cap). Label
/// values come from clients: past this many, a new label set is resolved at every event,
/// as without the cache; the first ones seen, usually the busiest, stay cached.
const CAPACITY: usize = 1024;

/// Every slot's truncated flag.
const TRUNCATED: u32 = ((1 << field::COUNT) - 1) << FLAG_TRUNCATED_SHIFT;

/// How the strings of an event become label values (implemented by `Metrics`).
pub trait Resolve {
    /// The label value of string slot `slot` of `ev`, through the label policy, and
    /// whether the policy folded it into `__other__`; counts the truncation and the fold.
    fn resolve(&self, ev: &ProbeEvent, slot: usize) -> (String, bool);
    /// Counts what resolving slot `slot` of `ev` counted, for a label set served from the cache.
    fn recount(&self, ev: &ProbeEvent, slot: usize, folded: bool);
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

impl<V: Clone> SeriesCache<V> {
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner { series: HashMap::default(), key: Vec::with_capacity(512) }) }
    }

    /// The series of `ev`'s strings in `slots` and of `scalar` (an ABI value that becomes a
    /// label); on first sight, `make` builds them from the resolved values, in slot order.
    pub fn get<const N: usize>(
        &self,
        ev: &ProbeEvent,
        slots: [usize; N],
        scalar: u64,
        labels: &dyn Resolve,
        make: impl FnOnce([String; N]) -> V,
    ) -> V {
        let mut inner = self.inner.lock().expect("series cache lock");
        let Inner { series, key } = &mut *inner;
        key.clear();
        key.extend_from_slice(&scalar.to_ne_bytes());
        for slot in slots {
            let bytes = string(ev, slot);
            key.push(u8::from(super::truncated(ev, slot)));
            key.extend_from_slice(&(bytes.len() as u16).to_ne_bytes());
            key.extend_from_slice(bytes);
        }
        if let Some((found, folded)) = series.get(key.as_slice()) {
            if *folded != 0 || ev.flags & TRUNCATED != 0 {
                for slot in slots {
                    labels.recount(ev, slot, folded & (1 << slot) != 0);
                }
            }
            return found.clone();
        }
        let mut folded = 0u8;
        let values = slots.map(|slot| {
            let (value, was_folded) = labels.resolve(ev, slot);
            folded |= u8::from(was_folded) << slot;
            value
        });
        let made = make(values);
        if series.len() < CAPACITY {
            series.insert(key.as_slice().into(), (made.clone(), folded));
        }
        made
    }
}
