//! Per-category analysis: the curves, their areas with bootstrap intervals, the best-F1 and
//! target thresholds, confusion at the current and the suggested threshold, and, on unlabelled
//! traffic, the flag rate each threshold would give (a what-if replay without the model).

use std::collections::BTreeMap;

use serde::Serialize;

use super::bootstrap::{interval, Interval};
use super::calibration::{self, reliability, Calibration, Reliability};
use super::curves::{Confusion, Curve, Sample, Target};
use super::data::{Example, Scores};

/// How the analysis runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The target per category (categories absent here use `default_target`).
    pub targets: BTreeMap<String, Target>,
    /// The target of the other categories.
    pub default_target: Target,
    /// Bootstrap resamples (0: no intervals).
    pub bootstrap_rounds: usize,
    /// The bootstrap's seed.
    pub seed: u64,
}

/// A category's threshold now.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// The policy id.
    pub id: String,
    /// The threshold in the config.
    pub threshold: f64,
}

/// Metrics at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AtThreshold {
    /// The threshold.
    pub threshold: f64,
    /// The counts.
    pub confusion: Confusion,
    /// Precision there.
    pub precision: Option<f64>,
    /// Recall there.
    pub recall: Option<f64>,
    /// F1 there.
    pub f1: Option<f64>,
    /// False-positive rate there.
    pub fpr: Option<f64>,
    /// Share of the unlabelled traffic that would be flagged (`None` without traffic).
    pub traffic_flag_rate: Option<f64>,
}

/// The what-if replay of one category over unlabelled traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// Traffic items with a score for the category.
    pub items: usize,
    /// (threshold, share flagged) at 0.00, 0.01, ..., 1.00.
    pub curve: Vec<(f64, f64)>,
}

/// One category's findings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryReport {
    /// The policy id.
    pub id: String,
    /// Examples labelled for it (with a score).
    pub labelled: usize,
    /// Of those, violations.
    pub positives: u64,
    /// Of those, non-violations.
    pub negatives: u64,
    /// Area under the ROC curve.
    pub roc_auc: Option<f64>,
    /// Its bootstrap interval.
    pub roc_auc_interval: Option<Interval>,
    /// Area under the precision-recall curve (average precision).
    pub average_precision: Option<f64>,
    /// Its bootstrap interval.
    pub average_precision_interval: Option<Interval>,
    /// The target the suggestion meets.
    pub target: String,
    /// At the config's threshold.
    pub current: AtThreshold,
    /// At the best-F1 threshold.
    pub best_f1: Option<AtThreshold>,
    /// At the threshold the target picks (`None`: no threshold meets it).
    pub suggested: Option<AtThreshold>,
    /// The bootstrap interval of F1 at the suggested threshold.
    pub suggested_f1_interval: Option<Interval>,
    /// ROC points (FPR, TPR).
    pub roc: Vec<(f64, f64)>,
    /// Precision-recall points (recall, precision).
    pub pr: Vec<(f64, f64)>,
    /// The what-if replay on traffic.
    pub replay: Option<Replay>,
    /// The calibration fitted on the labelled examples, with the reliability of the raw and
    /// the calibrated probabilities on them (`None` without both kinds of label).
    pub calibration: Option<CalibrationReport>,
}

/// A category's fitted calibration and how reliable its probabilities are before and after,
/// measured on the examples it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationReport {
    /// The fitted map.
    pub fitted: Calibration,
    /// Raw P(Yes).
    pub raw: Reliability,
    /// Calibrated.
    pub calibrated: Reliability,
}

impl CalibrationReport {
    /// Fits a calibration to the samples; `None` without both kinds of label.
    fn of(samples: &[Sample]) -> Option<Self> {
        let fitted = calibration::fit(samples)?;
        Some(Self {
            raw: reliability(samples, |p| p),
            calibrated: reliability(samples, |p| fitted.apply(p)),
            fitted,
        })
    }
}

/// A category's labelled samples.
pub fn samples(examples: &[Example], id: &str) -> Vec<Sample> {
    examples
        .iter()
        .filter_map(|e| {
            Some(Sample {
                score: *e.scores.get(id)?,
                positive: *e.labels.get(id)?,
            })
        })
        .collect()
}

/// A threshold with at most four decimals that flags exactly what `threshold` flags on these
/// samples, when there is one (the exact value otherwise); never above 1.
fn readable(samples: &[Sample], threshold: f64) -> f64 {
    let same = Confusion::at(samples, threshold);
    [
        (threshold * 1e4).floor() / 1e4,
        (threshold * 1e4).ceil() / 1e4,
    ]
    .into_iter()
    .find(|t| *t <= 1.0 && Confusion::at(samples, *t) == same)
    .unwrap_or(threshold.min(1.0))
}

fn flag_rate(traffic: &[f64], threshold: f64) -> Option<f64> {
    (!traffic.is_empty())
        .then(|| traffic.iter().filter(|s| **s >= threshold).count() as f64 / traffic.len() as f64)
}

fn at(samples: &[Sample], traffic: &[f64], threshold: f64) -> AtThreshold {
    let confusion = Confusion::at(samples, threshold);
    AtThreshold {
        threshold,
        confusion,
        precision: confusion.precision(),
        recall: confusion.recall(),
        f1: confusion.f1(),
        fpr: confusion.fpr(),
        traffic_flag_rate: flag_rate(traffic, threshold),
    }
}

/// Analyses every category.
pub fn analyse(
    examples: &[Example],
    traffic: &[Scores],
    current: &[Current],
    settings: &Settings,
) -> Vec<CategoryReport> {
    current
        .iter()
        .enumerate()
        .map(|(k, cur)| {
            let samples = samples(examples, &cur.id);
            let scores: Vec<f64> = traffic
                .iter()
                .filter_map(|t| t.get(&cur.id).copied())
                .collect();
            let curve = Curve::new(&samples);
            let target = settings
                .targets
                .get(&cur.id)
                .copied()
                .unwrap_or(settings.default_target);
            let suggested = curve
                .select(target)
                .map(|p| readable(&samples, p.threshold));
            let seed = settings.seed.wrapping_add(k as u64);
            let ci = |stat: &dyn Fn(&[Sample]) -> Option<f64>| {
                interval(&samples, settings.bootstrap_rounds, 0.95, seed, stat)
            };
            CategoryReport {
                id: cur.id.clone(),
                labelled: samples.len(),
                positives: curve.positives,
                negatives: curve.negatives,
                roc_auc: curve.roc_auc(),
                roc_auc_interval: ci(&|s| Curve::new(s).roc_auc()),
                average_precision: curve.average_precision(),
                average_precision_interval: ci(&|s| Curve::new(s).average_precision()),
                target: target.to_string(),
                current: at(&samples, &scores, cur.threshold),
                best_f1: curve
                    .select(Target::BestF1)
                    .map(|p| at(&samples, &scores, readable(&samples, p.threshold))),
                suggested: suggested.map(|t| at(&samples, &scores, t)),
                suggested_f1_interval: suggested.and_then(|t| ci(&|s| Confusion::at(s, t).f1())),
                roc: curve.roc(),
                pr: curve.pr(),
                replay: (!scores.is_empty()).then(|| Replay {
                    items: scores.len(),
                    curve: (0..=100)
                        .map(|i| {
                            let t = i as f64 / 100.0;
                            (t, flag_rate(&scores, t).unwrap_or(0.0))
                        })
                        .collect(),
                }),
                calibration: CalibrationReport::of(&samples),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(score: f64, positive: Option<bool>) -> Example {
        Example {
            id: String::new(),
            prompt: None,
            response: None,
            labels: positive
                .map(|p| BTreeMap::from([("hate".to_string(), p)]))
                .unwrap_or_default(),
            scores: BTreeMap::from([("hate".to_string(), score)]),
            context: Vec::new(),
            origin: (String::new(), 0),
        }
    }

    #[test]
    fn a_category_report_combines_curves_targets_and_replay() {
        let examples = vec![
            example(0.9, Some(true)),
            example(0.8, Some(false)),
            example(0.7, Some(true)),
            example(0.6, Some(true)),
            example(0.5, Some(false)),
            example(0.4, Some(false)),
            example(0.99, None),
        ];
        let traffic: Vec<BTreeMap<String, f64>> = [0.1, 0.65, 0.95, 0.3]
            .iter()
            .map(|&s| BTreeMap::from([("hate".to_string(), s)]))
            .collect();
        let current = [Current {
            id: "hate".into(),
            threshold: 0.75,
        }];
        let settings = Settings {
            targets: BTreeMap::new(),
            default_target: Target::BestF1,
            bootstrap_rounds: 200,
            seed: 1,
        };
        let reports = analyse(&examples, &traffic, &current, &settings);
        let r = &reports[0];
        assert_eq!((r.labelled, r.positives, r.negatives), (6, 3, 3));
        assert_eq!(r.current.confusion.tp, 1);
        assert_eq!(r.current.traffic_flag_rate, Some(0.25));
        let s = r.suggested.expect("suggested");
        assert_eq!(s.threshold, 0.6);
        assert_eq!(s.traffic_flag_rate, Some(0.5));
        assert_eq!(r.best_f1, r.suggested);
        let ci = r.roc_auc_interval.expect("interval");
        assert!(ci.low <= 7.0 / 9.0 && 7.0 / 9.0 <= ci.high, "{ci:?}");
        let replay = r.replay.as_ref().expect("replay");
        assert_eq!(replay.curve.len(), 101);
        assert_eq!(replay.curve[0], (0.0, 1.0));
        assert_eq!(replay.curve[100], (1.0, 0.0));
    }

    #[test]
    fn suggested_thresholds_are_short_when_that_changes_nothing() {
        let s = |score, positive| Sample { score, positive };
        let samples = [s(0.612_345_6, true), s(0.6122, false), s(0.2, false)];
        assert_eq!(readable(&samples, 0.612_345_6), 0.6123);
        assert_eq!(readable(&samples, 0.6122), 0.6122);
        let close = [s(0.612_345_6, true), s(0.612_34, false)];
        assert_eq!(readable(&close, 0.612_345_6), 0.612_345_6);
        assert_eq!(readable(&samples, 0.612_345_6f64.next_up()), 0.6124);
        assert_eq!(readable(&[s(1.0, true)], 1.0f64.next_up()), 1.0);
    }
}
