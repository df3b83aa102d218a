//! Curve math over scored, labelled examples of one category: confusion counts at a threshold,
//! the ROC and precision-recall curves, their areas, and threshold selection by best F1 or by a
//! target precision, recall or false-positive rate. A score at or above the threshold counts as
//! flagged, as in the gateway. Pure functions; undefined values (no positives, no negatives,
//! nothing flagged) are `None`, never a made-up number.

use serde::Serialize;

/// One labelled example's P(Yes) for a category.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// P(Yes).
    pub score: f64,
    /// Whether people labelled it a violation.
    pub positive: bool,
}

/// Counts at one threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Violations flagged.
    pub tp: u64,
    /// Non-violations flagged.
    pub fp: u64,
    /// Violations missed.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Non-violations passed.
    pub tn: u64,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Confusion {
    /// The counts when scores `>= threshold` are flagged.
    pub fn at(samples: &[Sample], threshold: f64) -> Self {
        let mut c = Self::default();
        for s in samples {
            match (s.score >= threshold, s.positive) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// Of the flagged, the share that are violations.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Of the violations, the share flagged.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Of the non-violations, the share flagged.
    pub fn fpr(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }

    /// The harmonic mean of precision and recall (`2tp / (2tp + fp + fn)`).
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// The share of all examples flagged.
    pub fn flag_rate(&self) -> Option<f64> {
        ratio(self.tp + self.fp, self.tp + self.fp + self.fn_ + self.tn)
    }
}

/// A threshold and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Scores at or above it are flagged.
    pub threshold: f64,
    /// The counts there.
    pub confusion: Confusion,
}

/// Every distinct operating point of a category, from a threshold above every score (nothing
/// flagged) down to the lowest score (all flagged).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The nothing-flagged point, then one per distinct score, highest first.
    pub points: Vec<Point>,
    /// Violations in the data.
    pub positives: u64,
    /// Non-violations in the data.
    pub negatives: u64,
}

/// What a suggested threshold must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The highest F1.
    BestF1,
    /// Precision at least this, with the most recall.
    Precision(f64),
    /// Recall at least this, with the fewest false positives.
    Recall(f64),
    /// False-positive rate at most this, with the most recall.
    Fpr(f64),
}

impl Target {
    /// Parses `best-f1`, `precision=0.9`, `recall=0.8` or `fpr=0.01`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "best-f1" {
            return Ok(Self::BestF1);
        }
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected best-f1, precision=P, recall=R or fpr=F"))?;
        let value: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| (0.0..=1.0).contains(v))
            .ok_or_else(|| format!("{text:?}: the value must be a number from 0 to 1"))?;
        match name.trim() {
            "precision" => Ok(Self::Precision(value)),
            "recall" => Ok(Self::Recall(value)),
            "fpr" => Ok(Self::Fpr(value)),
            other => Err(format!(
                "{text:?}: unknown target {other:?} (best-f1, precision, recall or fpr)"
            )),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BestF1 => write!(f, "best-f1"),
            Self::Precision(v) => write!(f, "precision={v}"),
            Self::Recall(v) => write!(f, "recall={v}"),
            Self::Fpr(v) => write!(f, "fpr={v}"),
        }
    }
}

impl Curve {
    /// Builds the curve (samples in any order).
    pub fn new(samples: &[Sample]) -> Self {
        let mut sorted: Vec<Sample> = samples.to_vec();
        sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
        let positives = sorted.iter().filter(|s| s.positive).count() as u64;
        let negatives = sorted.len() as u64 - positives;
        let mut c = Confusion {
            fn_: positives,
            tn: negatives,
            ..Confusion::default()
        };
        // The strictest point flags nothing: a threshold just above the highest score.
        let mut points: Vec<Point> = sorted
            .first()
            .map(|top| Point {
                threshold: top.score.next_up(),
                confusion: c,
            })
            .into_iter()
            .collect();
        for (i, s) in sorted.iter().enumerate() {
            if s.positive {
                c.tp += 1;
                c.fn_ -= 1;
            } else {
                c.fp += 1;
                c.tn -= 1;
            }
            let last_of_score = sorted.get(i + 1).is_none_or(|n| n.score != s.score);
            if last_of_score {
                points.push(Point {
                    threshold: s.score,
                    confusion: c,
                });
            }
        }
        Self {
            points,
            positives,
            negatives,
        }
    }

    /// ROC points (false-positive rate, true-positive rate) from (0, 0) to (1, 1); empty
    /// when either class is missing.
    pub fn roc(&self) -> Vec<(f64, f64)> {
        if self.positives == 0 || self.negatives == 0 {
            return Vec::new();
        }
        self.points
            .iter()
            .map(|p| {
                (
                    p.confusion.fp as f64 / self.negatives as f64,
                    p.confusion.tp as f64 / self.positives as f64,
                )
            })
            .collect()
    }

    /// Area under the ROC curve (ties count half, as in the Mann-Whitney statistic).
    pub fn roc_auc(&self) -> Option<f64> {
        let roc = self.roc();
        (!roc.is_empty()).then(|| {
            roc.windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
                .sum()
        })
    }

    /// Precision-recall points (recall, precision), highest threshold first; empty without
    /// violations.
    pub fn pr(&self) -> Vec<(f64, f64)> {
        if self.positives == 0 {
            return Vec::new();
        }
        self.points
            .iter()
            .filter_map(|p| Some((p.confusion.recall()?, p.confusion.precision()?)))
            .collect()
    }

    /// Area under the precision-recall curve as average precision: the precision at each
    /// threshold weighted by the recall it adds.
    pub fn average_precision(&self) -> Option<f64> {
        let pr = self.pr();
        (!pr.is_empty()).then(|| {
            let mut last_recall = 0.0;
            pr.iter()
                .map(|&(r, p)| {
                    let area = (r - last_recall) * p;
                    last_recall = r;
                    area
                })
                .sum()
        })
    }

    /// The point a target picks, `None` when no threshold meets it (or the data cannot tell:
    /// no violations for a precision or recall target, none flagged for best F1).
    pub fn select(&self, target: Target) -> Option<Point> {
        let metric = |p: &Point| -> Option<f64> {
            match target {
                Target::BestF1 => p.confusion.f1().filter(|f| *f > 0.0),
                Target::Precision(min) => p
                    .confusion
                    .precision()
                    .filter(|v| *v >= min)
                    .and(p.confusion.recall()),
                Target::Recall(min) => p
                    .confusion
                    .recall()
                    .filter(|v| *v >= min)
                    .and(p.confusion.fpr().map(|f| -f).or(Some(0.0))),
                Target::Fpr(max) => p
                    .confusion
                    .fpr()
                    .filter(|v| *v <= max)
                    .map(|_| p.confusion.recall().unwrap_or(0.0)),
            }
        };
        // Highest value wins; among equals the first seen, i.e. the highest threshold.
        let mut best: Option<(f64, Point)> = None;
        for p in &self.points {
            if let Some(v) = metric(p) {
                if best.is_none_or(|(b, _)| v > b) {
                    best = Some((v, *p));
                }
            }
        }
        best.map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(data: &[(f64, bool)]) -> Vec<Sample> {
        data.iter()
            .map(|&(score, positive)| Sample { score, positive })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_hand_computed_case() {
        // Scores 0.9+ 0.8- 0.7+ 0.6+ 0.5- 0.4- : 3 violations, 3 not.
        let s = samples(&[
            (0.5, false),
            (0.9, true),
            (0.6, true),
            (0.8, false),
            (0.4, false),
            (0.7, true),
        ]);
        let curve = Curve::new(&s);
        assert_eq!((curve.positives, curve.negatives), (3, 3));
        assert_eq!(curve.points.len(), 7);
        assert_eq!(
            curve.points[0].confusion.tp + curve.points[0].confusion.fp,
            0
        );
        assert_eq!(
            curve.points[3].confusion,
            Confusion {
                tp: 2,
                fp: 1,
                fn_: 1,
                tn: 2
            }
        );
        assert_eq!(Confusion::at(&s, 0.7), curve.points[3].confusion);
        // ROC steps: up, right, up, up, right, right: area = 1/3*2/3... counted by hand: 7/9.
        assert!(close(curve.roc_auc().expect("auc"), 7.0 / 9.0));
        // AP = 1/3*1 + 1/3*(2/3) + 1/3*(3/4) = (12 + 8 + 9) / 36.
        assert!(close(curve.average_precision().expect("ap"), 29.0 / 36.0));
        // F1 by threshold: .9 → 2/4, .8 → 2/5, .7 → 4/6, .6 → 6/7, .5 → 6/8, .4 → 6/9.
        let best = curve.select(Target::BestF1).expect("best");
        assert_eq!(best.threshold, 0.6);
        assert_eq!(
            curve.select(Target::Precision(0.7)).expect("p").threshold,
            0.6
        );
        assert_eq!(
            curve.select(Target::Precision(1.0)).expect("p").threshold,
            0.9
        );
        assert_eq!(curve.select(Target::Recall(0.6)).expect("r").threshold, 0.7);
        assert_eq!(curve.select(Target::Recall(1.0)).expect("r").threshold, 0.6);
        assert_eq!(curve.select(Target::Fpr(0.0)).expect("f").threshold, 0.9);
        assert_eq!(curve.select(Target::Fpr(0.34)).expect("f").threshold, 0.6);
        assert_eq!(curve.points[4].confusion.precision(), Some(0.75));
    }

    #[test]
    fn ties_share_one_point_and_count_half_in_the_auc() {
        let s = samples(&[(0.5, true), (0.5, false), (0.2, false), (0.9, true)]);
        let curve = Curve::new(&s);
        let thresholds: Vec<f64> = curve.points.iter().map(|p| p.threshold).collect();
        assert_eq!(thresholds, [0.9f64.next_up(), 0.9, 0.5, 0.2]);
        // Pairs (pos, neg): (.9,.5) 1, (.9,.2) 1, (.5,.5) ½, (.5,.2) 1 → 3.5 / 4.
        assert!(close(curve.roc_auc().expect("auc"), 3.5 / 4.0));
        // AP: recall ½ at precision 1, then recall 1 at precision 2/3.
        assert!(close(
            curve.average_precision().expect("ap"),
            0.5 + 0.5 * 2.0 / 3.0
        ));
    }

    #[test]
    fn one_class_only_and_empty_data_are_undefined_not_invented() {
        let all_pos = Curve::new(&samples(&[(0.9, true), (0.1, true)]));
        assert_eq!(all_pos.roc_auc(), None);
        assert_eq!(all_pos.average_precision(), Some(1.0));
        assert_eq!(all_pos.select(Target::Fpr(0.1)), None, "no negatives");
        assert_eq!(
            all_pos.select(Target::Recall(1.0)).expect("r").threshold,
            0.1
        );
        let all_neg = Curve::new(&samples(&[(0.9, false), (0.1, false)]));
        assert_eq!(all_neg.roc_auc(), None);
        assert_eq!(all_neg.average_precision(), None);
        assert_eq!(all_neg.select(Target::BestF1), None);
        assert_eq!(all_neg.select(Target::Precision(0.5)), None);
        let none_flagged = all_neg.select(Target::Fpr(0.0)).expect("f");
        assert!(none_flagged.threshold > 0.9);
        assert_eq!(none_flagged.confusion.fp, 0);
        let empty = Curve::new(&[]);
        assert!(empty.points.is_empty());
        assert_eq!(empty.roc_auc(), None);
        assert_eq!(empty.average_precision(), None);
        assert_eq!(empty.select(Target::BestF1), None);
        let c = Confusion::default();
        assert_eq!(
            (c.precision(), c.recall(), c.f1(), c.flag_rate()),
            (None, None, None, None)
        );
    }

    #[test]
    fn unreachable_targets_give_nothing() {
        let curve = Curve::new(&samples(&[(0.9, false), (0.8, true)]));
        assert_eq!(
            curve.select(Target::Precision(0.5)).expect("p").threshold,
            0.8
        );
        assert_eq!(curve.select(Target::Precision(0.9)), None);
        let curve = Curve::new(&samples(&[(0.9, false), (0.9, true)]));
        assert_eq!(curve.select(Target::Precision(0.9)), None);
    }

    #[test]
    fn targets_parse_and_print() {
        for text in ["best-f1", "precision=0.9", "recall=0.8", "fpr=0.01"] {
            assert_eq!(Target::parse(text).expect("parses").to_string(), text);
        }
        assert!(Target::parse("precision=2").is_err());
        assert!(Target::parse("accuracy=0.5").is_err());
        assert!(Target::parse("0.5").is_err());
    }
}
