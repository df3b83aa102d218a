//! Calibrated probabilities: a category's raw P(Yes) mapped to the share of texts with that
//! score that people label a violation. `tune --calibrate` fits the map on labelled examples and
//! writes it as `[calibration.<id>]` into the config; where a category has one, the gateway,
//! audit, `score` and `/v1/moderations` compare and report the calibrated probability, and keep
//! the raw one beside it.

use serde::{Deserialize, Serialize};

/// Scores are kept this far from 0 and 1 before taking their log-odds.
const EDGE: f64 = 1e-9;

/// A raw threshold above every probability: no score reaches it.
pub const ABOVE_ALL: f64 = 1.0 + f64::EPSILON;

/// A map from raw P(Yes) to calibrated probability, non-decreasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Calibration {
    /// Platt scaling: `1 / (1 + exp(-(a · logit(p) + b)))`.
    Platt {
        /// Slope on the log-odds (positive).
        a: f64,
        /// Offset.
        b: f64,
    },
    /// Isotonic regression: from each step's score upwards (scores ascending), its probability.
    Isotonic {
        /// `[lowest score, probability]` pairs, both non-decreasing.
        steps: Vec<(f64, f64)>,
    },
}

impl Calibration {
    /// The calibrated probability of a raw P(Yes).
    pub fn apply(&self, p: f64) -> f64 {
        match self {
            Calibration::Platt { a, b } => sigmoid(a * logit(p) + b),
            Calibration::Isotonic { steps } => steps
                .iter()
                .rev()
                .find(|(low, _)| p >= *low)
                .or(steps.first())
                .map_or(p, |s| s.1),
        }
    }

    /// The lowest raw P(Yes) whose calibrated probability reaches `t`: the raw threshold that
    /// makes the same decisions as calibrated threshold `t` ([`ABOVE_ALL`] when none reaches it).
    pub fn raw_threshold(&self, t: f64) -> f64 {
        match self {
            Calibration::Platt { a, b } => {
                if t <= 0.0 {
                    0.0
                } else if t > self.apply(1.0) {
                    ABOVE_ALL
                } else {
                    sigmoid((logit(t) - b) / a)
                }
            }
            Calibration::Isotonic { steps } => match steps.iter().position(|s| s.1 >= t) {
                Some(0) => 0.0,
                Some(i) => steps[i].0,
                None => ABOVE_ALL,
            },
        }
    }

    /// Why the map is not a non-decreasing map into probabilities, if it is not.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Calibration::Platt { a, b } => {
                if !(a.is_finite() && *a > 0.0 && b.is_finite()) {
                    return Err(format!(
                        "platt: a must be a positive number and b a number (got a = {a}, b = {b})"
                    ));
                }
            }
            Calibration::Isotonic { steps } => {
                if steps.is_empty() {
                    return Err("isotonic: steps is empty".into());
                }
                let probability = |x: f64| (0.0..=1.0).contains(&x);
                if let Some((s, p)) = steps
                    .iter()
                    .find(|(s, p)| !probability(*s) || !probability(*p))
                {
                    return Err(format!(
                        "isotonic: step [{s}, {p}] is not a pair of probabilities between 0 and 1"
                    ));
                }
                if let Some(w) = steps
                    .windows(2)
                    .find(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
                {
                    return Err(format!(
                        "isotonic: steps must ascend in score and not descend in probability \
                         ([{}, {}] then [{}, {}])",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The log-odds of a probability, kept finite.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(EDGE, 1.0 - EDGE);
    (p / (1.0 - p)).ln()
}

/// The logistic function.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_threshold_makes_the_same_decisions() {
        let platt = Calibration::Platt { a: 1.7, b: -0.4 };
        let isotonic = Calibration::Isotonic {
            steps: vec![(0.0, 0.01), (0.2, 0.1), (0.5, 0.4), (0.8, 0.9)],
        };
        for c in [&platt, &isotonic] {
            for t in [0.05, 0.1, 0.3, 0.5, 0.9, 0.95] {
                let raw = c.raw_threshold(t);
                for i in 0..=1000 {
                    let p = f64::from(i) / 1000.0;
                    assert_eq!(
                        c.apply(p) >= t - 1e-12,
                        raw <= 1.0 && p >= raw - 1e-12,
                        "{c:?} t {t} raw {raw} p {p}"
                    );
                }
            }
        }
        assert_eq!(isotonic.raw_threshold(0.95), ABOVE_ALL);
        assert_eq!(platt.raw_threshold(1.0), ABOVE_ALL);
        assert_eq!(isotonic.raw_threshold(0.01), 0.0);
    }

    #[test]
    fn only_non_decreasing_maps_into_probabilities_pass() {
        let parse = |text: &str| toml::from_str::<Calibration>(text).map_err(|e| e.to_string());
        let ok =
            parse("method = \"isotonic\"\nsteps = [[0.0, 0.0], [0.5, 0.7]]\n").expect("parses");
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.apply(0.6), 0.7);
        assert!(
            parse("method = \"platt\"\na = 1.0\n").is_err(),
            "b is needed"
        );
        assert!(parse("method = \"sigmoid\"\na = 1.0\nb = 0.0\n").is_err());
        for bad in [
            Calibration::Platt { a: -1.0, b: 0.0 },
            Calibration::Platt {
                a: f64::NAN,
                b: 0.0,
            },
            Calibration::Isotonic { steps: vec![] },
            Calibration::Isotonic {
                steps: vec![(0.0, 0.5), (0.5, 0.2)],
            },
            Calibration::Isotonic {
                steps: vec![(0.5, 0.1), (0.2, 0.2)],
            },
            Calibration::Isotonic {
                steps: vec![(0.0, 1.5)],
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
