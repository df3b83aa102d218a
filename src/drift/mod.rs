//! Drift: whether the classifier's scores and flag ratios move away from a baseline. The
//! gateway keeps a sliding [`window`] of recent checks and exports its quantiles and flag
//! ratios; [`baseline`] writes the same summary of an audit as Prometheus recording rules, and
//! the drift alerts of `deploy/prometheus/shieldgate-rules.yml` compare the two.

pub mod baseline;
pub mod window;

/// The quantiles exported and written into baselines.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// What a window (or a baseline's data) says of one direction and category.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Checks counted.
    pub checks: usize,
    /// The share of them that violated the category.
    pub flag_ratio: f64,
    /// The score at each of [`QUANTILES`].
    pub quantiles: [f64; QUANTILES.len()],
}

impl Summary {
    /// Summarises `(score, violated)` pairs; `None` when there are none.
    pub fn of(samples: impl Iterator<Item = (f64, bool)>) -> Option<Self> {
        let (mut scores, mut flagged) = (Vec::new(), 0usize);
        for (score, violated) in samples {
            scores.push(score);
            flagged += usize::from(violated);
        }
        if scores.is_empty() {
            return None;
        }
        scores.sort_by(f64::total_cmp);
        // Nearest rank: the smallest score with at least q of the checks at or below it.
        let rank = |q: f64| {
            let k = (q * scores.len() as f64).ceil() as usize;
            scores[k.clamp(1, scores.len()) - 1]
        };
        Some(Self {
            checks: scores.len(),
            flag_ratio: flagged as f64 / scores.len() as f64,
            quantiles: QUANTILES.map(rank),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_the_ratio_counts_violations() {
        let s = Summary::of((1..=100).map(|i| (f64::from(i) / 100.0, i > 95))).expect("some");
        assert_eq!(s.checks, 100);
        assert_eq!(s.flag_ratio, 0.05);
        assert_eq!(s.quantiles, [0.5, 0.9, 0.99]);
        assert_eq!(Summary::of(std::iter::empty()), None);
        let one = Summary::of([(0.3, true)].into_iter()).expect("one");
        assert_eq!((one.quantiles, one.flag_ratio), ([0.3; 3], 1.0));
    }
}
