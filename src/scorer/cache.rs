//! A bounded verdict cache in front of any scorer: a request whose content, template, policy
//! guidelines and model were scored before gets the stored scores back without a model run.
//! The key is a SHA-256 of all of those, so a changed policy text or another model never hits
//! an old entry; thresholds are not part of scores, so changing them keeps the cache useful.
//! Hits and misses are Prometheus counters, which the gateway registers with its metrics.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use super::{RequestScores, Score, ScoreError, ScoreRequest};

/// A scorer with an LRU cache of whole-request results.
pub struct CachedScorer {
    inner: Arc<dyn Score>,
    model: String,
    entries: Mutex<LruCache<[u8; 32], RequestScores>>,
    hits: IntCounter,
    misses: IntCounter,
}

impl CachedScorer {
    /// Caches up to `capacity` results of `inner`, which scores with `model`.
    pub fn new(inner: Arc<dyn Score>, capacity: NonZeroUsize, model: &str) -> Self {
        Self {
            inner,
            model: model.to_string(),
            entries: Mutex::new(LruCache::new(capacity)),
            hits: IntCounter::new(
                "shieldgate_verdict_cache_hits_total",
                "Requests answered from the verdict cache",
            )
            .expect("valid metric"),
            misses: IntCounter::new(
                "shieldgate_verdict_cache_misses_total",
                "Requests the verdict cache did not hold",
            )
            .expect("valid metric"),
        }
    }

    /// Requests answered from the cache, and requests scored, so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// The hit and miss counters, for a metrics registry.
    pub fn counters(&self) -> [IntCounter; 2] {
        [self.hits.clone(), self.misses.clone()]
    }

    fn key(&self, r: &ScoreRequest) -> [u8; 32] {
        let mode = r.content().mode();
        let mut h = Sha256::new();
        for part in [self.model.as_str(), &format!("{mode:?}"), &r.user] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        match &r.response {
            Some(text) => {
                h.update([1]);
                h.update((text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            None => h.update([0]),
        }
        h.update((r.context.len() as u64).to_le_bytes());
        for turn in &r.context {
            h.update([turn.role as u8]);
            h.update((turn.text.len() as u64).to_le_bytes());
            h.update(turn.text.as_bytes());
        }
        for p in r.policies.iter() {
            for part in [p.id.as_str(), p.guideline(mode)] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.finalize().into()
    }

    /// The key of each request and what the cache holds for it.
    fn lookup(&self, requests: &[ScoreRequest]) -> (Vec<[u8; 32]>, Vec<Option<RequestScores>>) {
        let keys: Vec<[u8; 32]> = requests.iter().map(|r| self.key(r)).collect();
        let mut entries = self.lock();
        let found = keys.iter().map(|k| entries.get(k).cloned()).collect();
        (keys, found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], RequestScores>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Score for CachedScorer {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        let (keys, mut found) = self.lookup(requests);
        let missing: Vec<usize> = (0..requests.len())
            .filter(|i| found[*i].is_none())
            .collect();
        self.hits.inc_by((requests.len() - missing.len()) as u64);
        self.misses.inc_by(missing.len() as u64);
        if !missing.is_empty() {
            let todo: Vec<ScoreRequest> = missing.iter().map(|i| requests[*i].clone()).collect();
            let scored = self.inner.score(&todo)?;
            if scored.len() != todo.len() {
                return Err(ScoreError::MissingResult);
            }
            let mut entries = self.lock();
            for (i, result) in missing.into_iter().zip(scored) {
                entries.put(keys[i], result.clone());
                found[i] = Some(result);
            }
        }
        found
            .into_iter()
            .map(|f| f.ok_or(ScoreError::MissingResult))
            .collect()
    }

    /// Every request held: the stored scores, counted as hits. Otherwise nothing is counted
    /// here; [`CachedScorer::score`] counts when it runs.
    fn at_hand(&self, requests: &[ScoreRequest]) -> Option<Vec<RequestScores>> {
        let found: Option<Vec<RequestScores>> = self.lookup(requests).1.into_iter().collect();
        if found.is_some() {
            self.hits.inc_by(requests.len() as u64);
        }
        found
    }

    fn batch_share(&self, request: &ScoreRequest) -> f64 {
        self.inner.batch_share(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::policy::{Policy, PolicySet};
    use crate::scorer::testing::uniform;

    /// Scores P(Yes) = text length / 100 and counts the requests it saw.
    struct Counting(AtomicU64);

    impl Score for Counting {
        fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
            self.0.fetch_add(requests.len() as u64, Ordering::Relaxed);
            Ok(requests
                .iter()
                .map(|r| uniform(r, r.user.len() as f64 / 100.0))
                .collect())
        }
    }

    fn request(user: &str, response: Option<&str>, policies: &Arc<[Policy]>) -> ScoreRequest {
        ScoreRequest::new(user, response.map(str::to_string), policies.clone())
    }

    #[test]
    fn repeats_are_served_from_the_cache_and_changes_are_not() {
        let counting = Arc::new(Counting(AtomicU64::new(0)));
        let cache = CachedScorer::new(
            counting.clone(),
            NonZeroUsize::new(2).expect("nonzero"),
            "m",
        );
        let policies: Arc<[Policy]> = PolicySet::builtin().iter().cloned().collect();
        let mut edited: Vec<Policy> = policies.to_vec();
        edited[0].guideline.prompt.push_str(" Also poems.");
        let edited: Arc<[Policy]> = edited.into();
        let a = request("aaaa", None, &policies);
        let first = cache.score(&[a.clone(), a.clone()]).expect("scores");
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            2,
            "both missed in one batch"
        );
        let again = cache.score(std::slice::from_ref(&a)).expect("scores");
        assert_eq!(again[0], first[0]);
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            2,
            "served from the cache"
        );
        // Another template (a response), another guideline: not the same request.
        cache
            .score(&[
                request("aaaa", Some("r"), &policies),
                request("aaaa", None, &edited),
            ])
            .expect("scores");
        assert_eq!(counting.0.load(Ordering::Relaxed), 4);
        // Capacity 2: the oldest entry (a) is gone.
        cache.score(std::slice::from_ref(&a)).expect("scores");
        assert_eq!(counting.0.load(Ordering::Relaxed), 5);
        assert_eq!(cache.stats(), (1, 5));
    }

    #[test]
    fn the_same_turn_in_another_context_is_another_request() {
        use crate::prompt::{ContextTurn, Role};
        let counting = Arc::new(Counting(AtomicU64::new(0)));
        let cache = CachedScorer::new(
            counting.clone(),
            NonZeroUsize::new(8).expect("nonzero"),
            "m",
        );
        let policies: Arc<[Policy]> = PolicySet::builtin().iter().cloned().collect();
        let alone = request("now the quantities", None, &policies);
        let with = |role, text: &str| ScoreRequest {
            context: vec![ContextTurn::new(role, text)],
            ..alone.clone()
        };
        let variants = [
            alone.clone(),
            with(Role::User, "the chemical"),
            with(Role::Assistant, "the chemical"),
            with(Role::User, "the flour"),
        ];
        cache.score(&variants).expect("scores");
        cache.score(&variants).expect("scores");
        assert_eq!(counting.0.load(Ordering::Relaxed), 4, "each scored once");
        assert_eq!(cache.stats(), (4, 4));
    }
}
