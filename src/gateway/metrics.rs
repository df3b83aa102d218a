//! Every Prometheus metric of the gateway, defined once with the `shieldgate_` prefix and the
//! unit in its name; docs/metrics.md is the table of them.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::drift::window::Drift;

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, protocol and status.
    pub requests: IntCounterVec,
    /// Moderation decisions, by direction (input, output) and action.
    pub decisions: IntCounterVec,
    /// Violated categories, by direction, category and configured action.
    pub violations: IntCounterVec,
    /// P(Yes) per category and direction.
    pub scores: HistogramVec,
    /// Checks that could not be made, by direction and error type.
    pub evaluation_errors: IntCounterVec,
    /// Personal data and secrets found, by direction, kind and action (each occurrence).
    pub pii_found: IntCounterVec,
    /// Time from submitting a check to its scores, in seconds.
    pub scorer_seconds: HistogramVec,
    /// Checks waiting for the scorer.
    pub queue_depth: IntGauge,
    /// Texts per engine batch.
    pub batch_size: HistogramVec,
    /// Time to the upstream's response head, in seconds, by status class.
    pub upstream_seconds: HistogramVec,
    /// Errors answered by the gateway itself, by type.
    pub errors: IntCounterVec,
    /// Config reloads, by result (ok, failed).
    pub reloads: IntCounterVec,
    /// Recent scores and flag ratios, published at every scrape.
    pub drift: Drift,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };
        let seconds = prometheus::exponential_buckets(0.005, 2.0, 14).expect("buckets");
        let queue_depth = IntGauge::new(
            "shieldgate_scorer_queue_depth",
            "Checks waiting for the scorer",
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique name");
        Self {
            requests: counter(
                "shieldgate_requests_total",
                "Requests answered",
                &["route", "protocol", "status"],
            ),
            decisions: counter(
                "shieldgate_decisions_total",
                "Moderation decisions",
                &["direction", "action"],
            ),
            violations: counter(
                "shieldgate_category_violations_total",
                "Categories at or above their threshold",
                &["direction", "category", "action"],
            ),
            scores: histogram(
                "shieldgate_score",
                "P(Yes) per category",
                &["direction", "category"],
                (1..=20).map(|i| f64::from(i) * 0.05).collect(),
            ),
            evaluation_errors: counter(
                "shieldgate_evaluation_errors_total",
                "Checks that could not be made",
                &["direction", "type"],
            ),
            pii_found: counter(
                "shieldgate_pii_found_total",
                "Personal data and secrets found",
                &["direction", "kind", "action"],
            ),
            scorer_seconds: histogram(
                "shieldgate_scorer_seconds",
                "Time from submitting a check to its scores",
                &["direction"],
                seconds.clone(),
            ),
            queue_depth,
            batch_size: histogram(
                "shieldgate_scorer_batch_texts",
                "Texts per engine batch",
                &[],
                prometheus::exponential_buckets(1.0, 2.0, 8).expect("buckets"),
            ),
            upstream_seconds: histogram(
                "shieldgate_upstream_seconds",
                "Time to the upstream's response head",
                &["status_class"],
                seconds,
            ),
            errors: counter(
                "shieldgate_errors_total",
                "Errors answered by the gateway",
                &["type"],
            ),
            reloads: counter(
                "shieldgate_config_reloads_total",
                "Config reloads",
                &["result"],
            ),
            drift: Drift::new(&registry),
            registry,
        }
    }

    /// Adds a metric kept elsewhere (the verdict cache's counters); one that is already
    /// registered is left as it is.
    pub fn register(&self, metric: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(metric) {
            tracing::warn!(error = %e, "metric not registered");
        }
    }

    /// The text exposition format, the drift window's gauges brought up to date.
    pub fn render(&self) -> String {
        self.drift.publish(std::time::Instant::now());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# cannot encode metrics: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_the_prefix() {
        let m = Metrics::new();
        m.requests.with_label_values(&["a", "b", "200"]).inc();
        m.batch_size.with_label_values(&[] as &[&str]).observe(3.0);
        let text = m.render();
        assert!(
            text.contains("shieldgate_requests_total{protocol=\"b\",route=\"a\",status=\"200\"} 1")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("shieldgate_"), "{line}");
        }
    }
}
