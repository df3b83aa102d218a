//! Fitting a category's [`Calibration`] on labelled examples: the share of texts with a score
//! that people label a violation. Platt scaling fits a logistic curve to the score's
//! log-odds; with enough labels of each kind, isotonic regression fits a non-decreasing step
//! function (pool adjacent violators). A reliability diagram bins the examples by probability
//! and sets each bin's mean probability against its share of violations; the expected
//! calibration error (ECE) is their gap, weighted by the bins' sizes.

use serde::Serialize;

pub use crate::policy::calibration::Calibration;
use crate::policy::calibration::{logit, sigmoid};

use super::curves::Sample;

/// Labels of each kind isotonic regression needs; with fewer, Platt scaling is fitted.
pub const MIN_ISOTONIC: usize = 50;

/// Bins of the reliability diagram.
pub const BINS: usize = 10;

/// Isotonic regression with at least [`MIN_ISOTONIC`] labels of each kind, else Platt
/// scaling; `None` without both kinds.
pub fn fit(samples: &[Sample]) -> Option<Calibration> {
    let positives = samples.iter().filter(|s| s.positive).count();
    let negatives = samples.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    if positives >= MIN_ISOTONIC && negatives >= MIN_ISOTONIC {
        Some(isotonic(samples))
    } else {
        platt(samples)
    }
}

/// Platt scaling: the logistic regression of the labels on the scores' log-odds, by Newton's
/// method, with Platt's smoothed targets (so that separable data keeps finite weights).
pub fn platt(samples: &[Sample]) -> Option<Calibration> {
    let positives = samples.iter().filter(|s| s.positive).count() as f64;
    let negatives = samples.len() as f64 - positives;
    let (high, low) = (
        (positives + 1.0) / (positives + 2.0),
        1.0 / (negatives + 2.0),
    );
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (logit(s.score), if s.positive { high } else { low }))
        .collect();
    let loss = |a: f64, b: f64| -> f64 {
        points
            .iter()
            .map(|&(x, t)| {
                let z = a * x + b;
                // -[t ln σ(z) + (1-t) ln(1-σ(z))], computed stably.
                z.max(0.0) - t * z + (-z.abs()).exp().ln_1p()
            })
            .sum()
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
        for &(x, t) in &points {
            let p = sigmoid(a * x + b);
            let w = p * (1.0 - p);
            ga += (p - t) * x;
            gb += p - t;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-10 {
            let (na, nb) = (a - step * da, b - step * db);
            let next = loss(na, nb);
            if next <= current {
                (a, b, current, improved) = (na, nb, next, true);
                break;
            }
            step /= 2.0;
        }
        if !improved || (step * da).abs().max((step * db).abs()) < 1e-10 {
            break;
        }
    }
    (a.is_finite() && b.is_finite()).then_some(Calibration::Platt { a, b })
}

/// Isotonic regression of the labels on the scores: pool adjacent violators.
pub fn isotonic(samples: &[Sample]) -> Calibration {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by(|x, y| x.score.total_cmp(&y.score));
    // Blocks of (lowest score, violations, count), their means non-decreasing.
    let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
    for s in sorted {
        let mut block = (s.score, f64::from(u8::from(s.positive)), 1.0);
        while let Some(&(low, sum, n)) = blocks.last() {
            // Equal scores pool too: one score, one probability.
            if sum / n >= block.1 / block.2 || low == block.0 {
                blocks.pop();
                block = (low, sum + block.1, n + block.2);
            } else {
                break;
            }
        }
        blocks.push(block);
    }
    Calibration::Isotonic {
        steps: blocks.iter().map(|&(low, sum, n)| (low, sum / n)).collect(),
    }
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    /// Its probabilities: `[low, high)` (the last bin includes 1).
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Examples in it.
    pub count: usize,
    /// Their mean probability.
    pub predicted: f64,
    /// Their share of violations.
    pub observed: f64,
}

/// How well probabilities match the labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reliability {
    /// The non-empty bins.
    pub bins: Vec<Bin>,
    /// Expected calibration error: the bins' |predicted − observed|, weighted by size.
    pub ece: f64,
}

/// The reliability of `probability(score)` on the samples, in [`BINS`] equal-width bins.
pub fn reliability(samples: &[Sample], probability: impl Fn(f64) -> f64) -> Reliability {
    let mut sums = [(0usize, 0.0f64, 0.0f64); BINS];
    for s in samples {
        let p = probability(s.score).clamp(0.0, 1.0);
        let bin = ((p * BINS as f64) as usize).min(BINS - 1);
        sums[bin].0 += 1;
        sums[bin].1 += p;
        sums[bin].2 += f64::from(u8::from(s.positive));
    }
    let total = samples.len().max(1) as f64;
    let bins: Vec<Bin> = sums
        .iter()
        .enumerate()
        .filter(|(_, (n, _, _))| *n > 0)
        .map(|(i, &(n, p, y))| Bin {
            low: i as f64 / BINS as f64,
            high: (i + 1) as f64 / BINS as f64,
            count: n,
            predicted: p / n as f64,
            observed: y / n as f64,
        })
        .collect();
    let ece = bins
        .iter()
        .map(|b| b.count as f64 / total * (b.predicted - b.observed).abs())
        .sum();
    Reliability { bins, ece }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` scores spread over (0, 1), each labelled a violation with probability `truth(score)`
    /// (a fixed pseudo-random sequence).
    fn drawn(n: usize, truth: impl Fn(f64) -> f64) -> Vec<Sample> {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let score = next().clamp(0.001, 0.999);
                Sample {
                    score,
                    positive: next() < truth(score),
                }
            })
            .collect()
    }

    #[test]
    fn platt_scaling_recovers_a_known_logistic_calibration() {
        let samples = drawn(20_000, |p| sigmoid(2.0 * logit(p) - 1.0));
        let Some(Calibration::Platt { a, b }) = platt(&samples) else {
            panic!("fitted")
        };
        assert!(
            (a - 2.0).abs() < 0.1 && (b + 1.0).abs() < 0.1,
            "a {a}, b {b}"
        );
        let raw = reliability(&samples, |p| p);
        let fitted = Calibration::Platt { a, b };
        let calibrated = reliability(&samples, |p| fitted.apply(p));
        assert!(raw.ece > 0.05, "the raw scores are off: {}", raw.ece);
        assert!(calibrated.ece < 0.02, "{}", calibrated.ece);
    }

    #[test]
    fn isotonic_regression_is_monotone_and_fits_a_step() {
        // Violations above 0.6 only: the fitted steps jump there.
        let samples = drawn(2_000, |p| if p > 0.6 { 1.0 } else { 0.0 });
        let fitted = isotonic(&samples);
        let Calibration::Isotonic { steps } = &fitted else {
            panic!("isotonic")
        };
        assert!(steps.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(fitted.apply(0.3), 0.0);
        assert_eq!(fitted.apply(0.9), 1.0);
        assert_eq!(
            fitted.apply(0.0),
            0.0,
            "below the lowest score: the first step"
        );
        assert!(reliability(&samples, |p| fitted.apply(p)).ece < 1e-12);
        // Enough labels of each kind choose isotonic regression; few choose Platt; one kind none.
        assert!(matches!(fit(&samples), Some(Calibration::Isotonic { .. })));
        assert!(matches!(
            fit(&samples[..40]),
            Some(Calibration::Platt { .. })
        ));
        let negatives: Vec<Sample> = samples.iter().filter(|s| !s.positive).copied().collect();
        assert_eq!(fit(&negatives), None);
    }

    #[test]
    fn reliability_bins_count_every_sample() {
        let samples = drawn(1_000, |p| p);
        let r = reliability(&samples, |p| p);
        assert_eq!(r.bins.iter().map(|b| b.count).sum::<usize>(), 1_000);
        assert!(r.ece < 0.05, "calibrated by construction: {}", r.ece);
        assert!(r
            .bins
            .iter()
            .all(|b| b.low <= b.predicted && b.predicted <= b.high));
    }
}
