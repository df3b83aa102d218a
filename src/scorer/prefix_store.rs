//! Key-value caches of recently prefilled prefixes, for checks that extend an earlier one:
//! the gateway's `incremental` output mode scores a growing answer again and again, and with
//! conversation context each turn's check repeats the turns the last one read. A lookup finds
//! the stored prefix with the longest run of ids in common, cut to that run, so only the new
//! tokens are prefilled. Bounded by the tokens it holds (each token holds every layer's keys
//! and values), least recently used first out. Hits, misses, tokens saved and tokens held are
//! Prometheus metrics, which the gateway registers.

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge};

use crate::model::KvCache;

/// A bounded store of one-row prefix caches, keyed by their token ids.
pub struct PrefixStore {
    capacity: usize,
    /// Most recently used first.
    entries: Mutex<VecDeque<(Vec<u32>, KvCache)>>,
    hits: IntCounter,
    misses: IntCounter,
    saved: IntCounter,
    held: IntGauge,
}

impl PrefixStore {
    /// Holds up to `capacity` tokens of prefixes.
    pub fn new(capacity: usize) -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            capacity,
            entries: Mutex::new(VecDeque::new()),
            hits: counter(
                "shieldgate_prefix_cache_hits_total",
                "Checks that reused a stored prefix beyond the template's opening",
            ),
            misses: counter(
                "shieldgate_prefix_cache_misses_total",
                "Checks that found no stored prefix beyond the template's opening",
            ),
            saved: counter(
                "shieldgate_prefix_cache_saved_tokens_total",
                "Prompt tokens whose prefill a stored prefix saved",
            ),
            held: IntGauge::new(
                "shieldgate_prefix_cache_tokens",
                "Tokens of prefixes the prefix cache holds",
            )
            .expect("valid metric"),
        }
    }

    /// Tokens whose prefill was skipped so far.
    pub fn reused_tokens(&self) -> u64 {
        self.saved.get()
    }

    /// The metrics, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.hits.clone()),
            Box::new(self.misses.clone()),
            Box::new(self.saved.clone()),
            Box::new(self.held.clone()),
        ]
    }

    /// The cache of the longest run of `ids`' first tokens that a stored prefix shares, with
    /// its length; `None` when no stored prefix shares a token. A lookup is a hit when the run
    /// is longer than `opening` (the template's start, which every check of a template shares).
    pub fn take(&self, ids: &[u32], opening: usize) -> Option<(usize, KvCache)> {
        let mut entries = self.lock();
        let best = entries
            .iter()
            .enumerate()
            .map(|(i, (stored, _))| (i, common_prefix(stored, ids)))
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)));
        let (at, common) = best.unwrap_or((0, 0));
        if common > opening {
            self.hits.inc();
        } else {
            self.misses.inc();
        }
        if common == 0 {
            return None;
        }
        let entry = entries.remove(at)?;
        let cut = match entry.1.prefix(common) {
            Ok(cut) => cut,
            Err(e) => {
                tracing::warn!(error = %e, "a stored prefix cache cannot be cut; dropping it");
                return None;
            }
        };
        entries.push_front(entry);
        self.saved.inc_by(common as u64);
        Some((common, cut))
    }

    /// Stores the cache of `ids`; stored prefixes of `ids` are dropped (this one covers them),
    /// then the least recently used ones until the store fits its capacity.
    pub fn put(&self, ids: Vec<u32>, cache: KvCache) {
        if ids.is_empty() || ids.len() > self.capacity {
            return;
        }
        let mut entries = self.lock();
        entries.retain(|(stored, _)| !ids.starts_with(stored));
        entries.push_front((ids, cache));
        let mut held: usize = entries.iter().map(|(stored, _)| stored.len()).sum();
        while held > self.capacity {
            match entries.pop_back() {
                Some((stored, _)) => held -= stored.len(),
                None => break,
            }
        }
        self.held.set(held as i64);
    }

    /// Hits and misses so far.
    pub fn lookups(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Vec<u32>, KvCache)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// A one-layer cache of one sequence whose keys are its ids.
    fn sequence(ids: &[u32]) -> KvCache {
        let keys: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
        let t = Tensor::from_vec(keys, (1, 1, ids.len(), 1), &Device::Cpu).expect("tensor");
        KvCache {
            layers: vec![(t.clone(), t)],
            selected: None,
            positions: vec![(0..ids.len() as u32).map(Some).collect()],
        }
    }

    fn keys(cache: &KvCache) -> Vec<f32> {
        cache
            .layer(0)
            .expect("layer")
            .0
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("keys")
    }

    #[test]
    fn the_longest_shared_run_is_found_and_cut() {
        let store = PrefixStore::new(100);
        store.put(vec![1, 2, 3, 4], sequence(&[1, 2, 3, 4]));
        store.put(vec![1, 2, 9], sequence(&[1, 2, 9]));
        // The answer grew and its last token changed: 1 2 3 is shared.
        let (n, cut) = store.take(&[1, 2, 3, 5, 6], 2).expect("hit");
        assert_eq!(n, 3);
        assert_eq!(keys(&cut), vec![1.0, 2.0, 3.0]);
        assert_eq!(cut.next_position(0), 3);
        // A whole stored prefix is used whole.
        assert_eq!(store.take(&[1, 2, 9], 2).expect("hit").0, 3);
        assert!(store.take(&[7, 1, 2], 2).is_none(), "nothing in common");
        assert_eq!(store.reused_tokens(), 6);
        assert_eq!(store.lookups(), (2, 1));
        store.put(vec![4, 4], sequence(&[4, 4]));
        assert_eq!(store.take(&[1, 2, 7], 2).expect("opening only").0, 2);
        assert_eq!(
            store.lookups(),
            (2, 2),
            "a run within the opening is a miss"
        );
    }

    #[test]
    fn a_longer_prefix_replaces_the_ones_it_covers_and_capacity_evicts_the_oldest() {
        let store = PrefixStore::new(10);
        store.put(vec![1, 2], sequence(&[1, 2]));
        store.put(vec![1, 2, 3, 4], sequence(&[1, 2, 3, 4]));
        assert_eq!(store.lock().len(), 1, "1 2 is covered by 1 2 3 4");
        assert_eq!(store.held.get(), 4);
        store.put(vec![5, 6, 7, 8], sequence(&[5, 6, 7, 8]));
        store.put(vec![9, 9, 9], sequence(&[9, 9, 9]));
        // 4 + 4 + 3 > 10: the least recently used (1 2 3 4) goes.
        assert!(store.take(&[1, 2, 3], 0).is_none());
        assert_eq!(store.take(&[5, 6], 0).expect("hit").0, 2);
        store.put((0..11).collect(), sequence(&(0..11).collect::<Vec<_>>()));
        assert!(
            store.take(&[0, 1], 0).is_none(),
            "larger than the store: not kept"
        );
    }
}
