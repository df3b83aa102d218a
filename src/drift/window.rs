//! The gateway's sliding window: each category's recent scores and flag ratio, per direction,
//! over the last `[drift] window_seconds`, exported as gauges at every scrape
//! (`shieldgate_window_*`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use super::{Summary, QUANTILES};
use crate::config::DriftConfig;

/// The most checks a window keeps per direction and category (the oldest go first).
pub const MAX_SAMPLES: usize = 10_000;

/// One check's result for one category.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    score: f64,
    violated: bool,
}

/// The sliding windows and the gauges they are published to.
pub struct Drift {
    settings: Mutex<DriftConfig>,
    /// By direction, then category (looked up without allocating on every check).
    windows: Mutex<BTreeMap<&'static str, BTreeMap<String, VecDeque<Sample>>>>,
    score: GaugeVec,
    flag_ratio: GaugeVec,
    checks: IntGaugeVec,
}

impl Drift {
    /// Creates the gauges on `registry`.
    pub fn new(registry: &Registry) -> Self {
        let labels = ["direction", "category"];
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let checks = IntGaugeVec::new(
            Opts::new(
                "shieldgate_window_checks",
                "Checks in the drift window, per direction and category",
            ),
            &labels,
        )
        .expect("valid metric");
        registry
            .register(Box::new(checks.clone()))
            .expect("unique name");
        Self {
            settings: Mutex::new(DriftConfig::default()),
            windows: Mutex::default(),
            score: gauge(
                "shieldgate_window_score",
                "Score quantiles over the drift window",
                &["direction", "category", "quantile"],
            ),
            flag_ratio: gauge(
                "shieldgate_window_flag_ratio",
                "Share of checks in the drift window at or above the category's threshold",
                &labels,
            ),
            checks,
        }
    }

    /// Applies the window settings (at start and on reload).
    pub fn configure(&self, settings: &DriftConfig) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings.clone();
    }

    /// Adds one check's `(category, score, violated)` results in `direction`.
    pub fn observe<'a>(
        &self,
        direction: &'static str,
        results: impl Iterator<Item = (&'a str, f64, bool)>,
        now: Instant,
    ) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let windows = windows.entry(direction).or_default();
        for (category, score, violated) in results {
            let window = match windows.get_mut(category) {
                Some(w) => w,
                None => windows.entry(category.to_string()).or_default(),
            };
            if window.len() == MAX_SAMPLES {
                window.pop_front();
            }
            window.push_back(Sample {
                at: now,
                score,
                violated,
            });
        }
    }

    /// Drops what fell out of the window and sets the gauges of every direction and category
    /// with at least `min_checks` checks in it (the others have no series).
    pub fn publish(&self, now: Instant) {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        self.score.reset();
        self.flag_ratio.reset();
        self.checks.reset();
        windows.retain(|direction, categories| {
            categories.retain(|category, window| {
                self.publish_one(direction, category, window, now, &settings)
            });
            !categories.is_empty()
        });
    }

    /// Drops what fell out of one window and sets its gauges when it holds `min_checks`;
    /// whether anything is left in it.
    fn publish_one(
        &self,
        direction: &str,
        category: &str,
        window: &mut VecDeque<Sample>,
        now: Instant,
        settings: &DriftConfig,
    ) -> bool {
        let span = Duration::from_secs(settings.window_seconds);
        while window
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > span)
        {
            window.pop_front();
        }
        if window.len() >= settings.min_checks.max(1) {
            let summary = Summary::of(window.iter().map(|s| (s.score, s.violated)));
            if let Some(summary) = summary {
                let labels = [direction, category];
                self.checks
                    .with_label_values(&labels)
                    .set(summary.checks as i64);
                self.flag_ratio
                    .with_label_values(&labels)
                    .set(summary.flag_ratio);
                for (q, value) in QUANTILES.iter().zip(summary.quantiles) {
                    self.score
                        .with_label_values(&[direction, category, &q.to_string()])
                        .set(value);
                }
            }
        }
        !window.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(window_seconds: u64, min_checks: usize) -> (Registry, Drift) {
        let registry = Registry::new();
        let drift = Drift::new(&registry);
        drift.configure(&DriftConfig {
            window_seconds,
            min_checks,
        });
        (registry, drift)
    }

    #[test]
    fn the_window_forgets_old_checks_and_publishes_only_full_series() {
        let (_registry, drift) = drift(60, 3);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        for (t, score) in [(0, 0.9), (10, 0.1), (20, 0.2), (30, 0.3)] {
            drift.observe("input", [("hate", score, score > 0.5)].into_iter(), at(t));
        }
        drift.observe("output", [("hate", 0.9, true)].into_iter(), at(30));
        drift.publish(at(40));
        let labels = ["input", "hate"];
        assert_eq!(drift.checks.with_label_values(&labels).get(), 4);
        assert_eq!(drift.flag_ratio.with_label_values(&labels).get(), 0.25);
        let p50 = drift
            .score
            .with_label_values(&["input", "hate", "0.5"])
            .get();
        assert_eq!(p50, 0.2);
        // The check at 0 s leaves the 60 s window at 61 s: three remain, none flagged.
        drift.publish(at(61));
        assert_eq!(drift.checks.with_label_values(&labels).get(), 3);
        assert_eq!(drift.flag_ratio.with_label_values(&labels).get(), 0.0);
        // One output check is under min_checks: no series.
        let families = _registry.gather();
        let rendered = format!("{families:?}");
        assert!(!rendered.contains("\"output\""), "{rendered}");
        // Everything old: the series go.
        drift.publish(at(200));
        assert!(drift.windows.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_window_keeps_at_most_max_samples() {
        let (_registry, drift) = drift(3600, 1);
        let now = Instant::now();
        for i in 0..MAX_SAMPLES + 5 {
            let flagged = i < 5;
            drift.observe("input", [("hate", 0.5, flagged)].into_iter(), now);
        }
        drift.publish(now);
        let labels = ["input", "hate"];
        assert_eq!(
            drift.checks.with_label_values(&labels).get(),
            MAX_SAMPLES as i64
        );
        assert_eq!(
            drift.flag_ratio.with_label_values(&labels).get(),
            0.0,
            "the first five went"
        );
    }
}
