//! Pairs the opening and closing events of things that live a while (backend connects
//! and connections, client sessions) by (process, id), and measures them between the
//! two events' kernel timestamps.

use std::collections::{HashMap, HashSet, VecDeque};

/// Open spans beyond this many per kind are not tracked: their close is then counted as
/// unmatched, and the table cannot grow without bound when closes are lost.
pub const MAX_OPEN: usize = 65_536;

/// Spans remembered after their close, to recognise a replayed open.
const RECENTLY_CLOSED: usize = 4096;

/// What is open, with its label (e.g. the backend's server) and opening time.
#[derive(Debug)]
pub struct Spans<L> {
    open: HashMap<(u32, u64), (L, u64)>,
    /// (tgid, id, opening time) of the last spans closed, oldest first.
    closed: VecDeque<(u32, u64, u64)>,
    closed_set: HashSet<(u32, u64, u64)>,
}

impl<L> Default for Spans<L> {
    fn default() -> Self {
        Self { open: HashMap::new(), closed: VecDeque::new(), closed_set: HashSet::new() }
    }
}

impl<L> Spans<L> {
    /// Records that `id` of process `tgid` opened at `ts_ns`; false when not tracked:
    /// already open (a proxy bug: the first is kept), the open of a span already closed
    /// sent again (two CPUs racing to report one TCP handshake), or the table is full.
    pub fn open(&mut self, tgid: u32, id: u64, label: L, ts_ns: u64) -> bool {
        if self.open.len() >= MAX_OPEN
            || self.open.contains_key(&(tgid, id))
            || self.closed_set.contains(&(tgid, id, ts_ns))
        {
            return false;
        }
        self.open.insert((tgid, id), (label, ts_ns));
        true
    }

    /// Closes `id` of `tgid` at `ts_ns`: its label and how long it was open, in seconds.
    pub fn close(&mut self, tgid: u32, id: u64, ts_ns: u64) -> Option<(L, f64)> {
        let (label, opened) = self.open.remove(&(tgid, id))?;
        if self.closed.len() >= RECENTLY_CLOSED
            && let Some(oldest) = self.closed.pop_front()
        {
            self.closed_set.remove(&oldest);
        }
        self.closed.push_back((tgid, id, opened));
        self.closed_set.insert((tgid, id, opened));
        Some((label, ts_ns.saturating_sub(opened) as f64 / 1e9))
    }

    /// Drops every span of a process that exited; returns their labels.
    pub fn forget(&mut self, tgid: u32) -> Vec<L> {
        let keys: Vec<(u32, u64)> = self.open.keys().filter(|(t, _)| *t == tgid).copied().collect();
        keys.into_iter().filter_map(|key| self.open.remove(&key)).map(|(label, _)| label).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_process_and_id_and_measures_between_timestamps() {
        let mut spans = Spans::default();
        assert!(spans.open(1, 7, "alpha", 1_000_000_000));
        assert!(spans.open(2, 7, "beta", 1_500_000_000), "same id in another process");
        assert!(!spans.open(1, 7, "gamma", 2_000_000_000), "duplicate keeps the first");
        assert_eq!(spans.close(1, 7, 3_500_000_000), Some(("alpha", 2.5)));
        assert_eq!(spans.close(1, 7, 4_000_000_000), None, "closed once");
        assert_eq!(spans.forget(2), vec!["beta"]);
        assert_eq!(spans.close(2, 7, 4_000_000_000), None);
        assert!(!spans.open(1, 7, "alpha", 1_000_000_000), "the closed span's open, replayed");
        assert!(spans.open(1, 7, "delta", 5_000_000_000), "the same id opened anew");
    }
}
