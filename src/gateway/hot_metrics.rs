//! The metric series every moderated request updates, resolved from their label values once
//! instead of on every request: a lookup by label values hashes the values twice and takes a
//! lock, a dozen times per request.

use std::sync::RwLock;

use prometheus::{Histogram, HistogramVec, IntCounter};

use crate::gateway::metrics::Metrics;

use super::decision::{Direction, Disposition};

const DIRECTIONS: [Direction; 2] = [Direction::Input, Direction::Output];
const DISPOSITIONS: [Disposition; 4] = [
    Disposition::Pass,
    Disposition::Flag,
    Disposition::Block,
    Disposition::Unavailable,
];
/// The status classes HTTP defines, by the status's first digit from 1; a status from 600 to
/// 999 (hyper accepts them) is rare enough to be looked up by label.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Resolved series of [`Metrics`]; the same series a lookup by label values returns.
pub struct HotMetrics {
    decisions: [[IntCounter; DISPOSITIONS.len()]; DIRECTIONS.len()],
    scorer_seconds: [Histogram; DIRECTIONS.len()],
    upstream_seconds: [Histogram; STATUS_CLASSES.len()],
    upstream_family: HistogramVec,
    /// Score histograms by category id, then direction; filled from `score_family` as
    /// categories are first seen (policies come and go with reloads). Few enough to search in
    /// order.
    scores: RwLock<Vec<(String, [Histogram; DIRECTIONS.len()])>>,
    score_family: HistogramVec,
}

impl HotMetrics {
    /// Resolves the fixed series of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            decisions: DIRECTIONS.map(|d| {
                DISPOSITIONS.map(|a| {
                    metrics
                        .decisions
                        .with_label_values(&[d.as_str(), a.as_str()])
                })
            }),
            scorer_seconds: DIRECTIONS
                .map(|d| metrics.scorer_seconds.with_label_values(&[d.as_str()])),
            upstream_seconds: STATUS_CLASSES
                .map(|class| metrics.upstream_seconds.with_label_values(&[class])),
            upstream_family: metrics.upstream_seconds.clone(),
            scores: RwLock::new(Vec::new()),
            score_family: metrics.scores.clone(),
        }
    }

    /// Decisions of this direction and disposition.
    pub fn decisions(&self, direction: Direction, disposition: Disposition) -> &IntCounter {
        &self.decisions[direction as usize][disposition as usize]
    }

    /// Scorer latency of checks in this direction.
    pub fn scorer_seconds(&self, direction: Direction) -> &Histogram {
        &self.scorer_seconds[direction as usize]
    }

    /// Observes the upstream latency of a response with this status, under its class.
    pub fn observe_upstream(&self, status: hyper::StatusCode, seconds: f64) {
        let class = usize::from(status.as_u16() / 100);
        match class
            .checked_sub(1)
            .and_then(|i| self.upstream_seconds.get(i))
        {
            Some(series) => series.observe(seconds),
            None => self
                .upstream_family
                .with_label_values(&[&format!("{class}xx")])
                .observe(seconds),
        }
    }

    /// Observes each `(category id, score)` in the score histograms of `direction`.
    pub fn observe_scores<'a>(
        &self,
        direction: Direction,
        scores: impl Iterator<Item = (&'a str, f64)>,
    ) {
        let position = |known: &[(String, [Histogram; 2])], id: &str| {
            known.iter().position(|(known_id, _)| known_id == id)
        };
        let mut unseen = Vec::new();
        {
            let known = self.scores.read().unwrap_or_else(|e| e.into_inner());
            for (id, score) in scores {
                match position(&known, id) {
                    Some(i) => known[i].1[direction as usize].observe(score),
                    None => unseen.push((id, score)),
                }
            }
        }
        if unseen.is_empty() {
            return;
        }
        let mut known = self.scores.write().unwrap_or_else(|e| e.into_inner());
        for (id, score) in unseen {
            let i = position(&known, id).unwrap_or_else(|| {
                let series =
                    DIRECTIONS.map(|d| self.score_family.with_label_values(&[d.as_str(), id]));
                known.push((id.to_string(), series));
                known.len() - 1
            });
            known[i].1[direction as usize].observe(score);
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    #[test]
    fn resolved_series_are_the_labelled_ones() {
        let metrics = Metrics::new();
        let hot = HotMetrics::new(&metrics);
        for (n, (d, a)) in DIRECTIONS
            .iter()
            .flat_map(|d| DISPOSITIONS.iter().map(move |a| (*d, *a)))
            .enumerate()
        {
            for _ in 0..=n {
                hot.decisions(d, a).inc();
            }
            let series = metrics
                .decisions
                .with_label_values(&[d.as_str(), a.as_str()]);
            assert_eq!(series.get(), n as u64 + 1, "{d:?} {a:?}");
        }
        for d in DIRECTIONS {
            hot.scorer_seconds(d).observe(0.5);
            let series = metrics.scorer_seconds.with_label_values(&[d.as_str()]);
            assert_eq!(series.get_sample_count(), 1, "{d:?}");
        }
        for (code, class) in [
            (101, "1xx"),
            (200, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (599, "5xx"),
            (999, "9xx"),
        ] {
            let status = StatusCode::from_u16(code).expect("status");
            hot.observe_upstream(status, 0.1);
            let series = metrics.upstream_seconds.with_label_values(&[class]);
            assert_eq!(series.get_sample_count(), 1, "{code}");
        }
    }

    #[test]
    fn scores_of_new_and_known_categories_are_observed() {
        let metrics = Metrics::new();
        let hot = HotMetrics::new(&metrics);
        let histogram = |direction: &str, id: &str| {
            metrics
                .scores
                .with_label_values(&[direction, id])
                .get_sample_count()
        };
        hot.observe_scores(Direction::Input, [("a", 0.1)].into_iter());
        hot.observe_scores(Direction::Output, [("a", 0.2), ("b", 0.9)].into_iter());
        hot.observe_scores(Direction::Output, [("b", 0.3)].into_iter());
        assert_eq!(histogram("input", "a"), 1);
        assert_eq!(histogram("output", "a"), 1);
        assert_eq!(histogram("output", "b"), 2);
        assert_eq!(histogram("input", "b"), 0);
        let sum = metrics
            .scores
            .with_label_values(&["output", "b"])
            .get_sample_sum();
        assert!((sum - 1.2).abs() < 1e-9, "{sum}");
    }
}
