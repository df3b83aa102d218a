//! Bootstrap confidence intervals: resample the examples with replacement, recompute a
//! statistic, and take the percentiles. Seeded, so a report is reproducible.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::curves::Sample;

/// A two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// The central `level` (e.g. 0.95) percentile interval of `statistic` over `rounds`
/// resamples; resamples where the statistic is undefined are left out, and `None` comes back
/// when fewer than half of them define it.
pub fn interval(
    samples: &[Sample],
    rounds: usize,
    level: f64,
    seed: u64,
    statistic: impl Fn(&[Sample]) -> Option<f64>,
) -> Option<Interval> {
    if samples.is_empty() || rounds == 0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut resample = Vec::with_capacity(samples.len());
    let mut values: Vec<f64> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        resample.clear();
        resample.extend((0..samples.len()).map(|_| samples[rng.random_range(0..samples.len())]));
        if let Some(v) = statistic(&resample) {
            values.push(v);
        }
    }
    if values.len() * 2 < rounds {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Interval {
        low: at(tail),
        high: at(1.0 - tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(s: &[Sample]) -> Option<f64> {
        Some(s.iter().map(|x| x.score).sum::<f64>() / s.len() as f64)
    }

    #[test]
    fn the_interval_holds_the_statistic_and_narrows_with_more_data() {
        let make = |n: usize| -> Vec<Sample> {
            (0..n)
                .map(|i| Sample {
                    score: (i % 10) as f64 / 10.0,
                    positive: i % 2 == 0,
                })
                .collect()
        };
        let small = interval(&make(40), 500, 0.95, 7, mean).expect("interval");
        let large = interval(&make(4000), 500, 0.95, 7, mean).expect("interval");
        assert!(small.low < 0.45 && 0.45 < small.high, "{small:?}");
        assert!(large.low < 0.45 && 0.45 < large.high, "{large:?}");
        assert!(large.high - large.low < (small.high - small.low) / 4.0);
        assert_eq!(
            interval(&make(40), 500, 0.95, 7, mean),
            Some(small),
            "seeded: the same every time"
        );
    }

    #[test]
    fn undefined_statistics_and_empty_data_give_none() {
        let one = [Sample {
            score: 0.5,
            positive: true,
        }];
        assert_eq!(interval(&one, 100, 0.95, 1, |_| None), None);
        assert_eq!(interval(&[], 100, 0.95, 1, mean), None);
        let fixed = interval(&one, 100, 0.95, 1, mean).expect("defined");
        assert_eq!((fixed.low, fixed.high), (0.5, 0.5));
    }
}
