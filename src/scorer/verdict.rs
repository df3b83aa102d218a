//! Verdicts: scores compared with each policy's threshold.

use serde::Serialize;

use crate::policy::Policy;

use super::{PolicyScore, RequestScores, Truncation};

/// One policy's score and whether it crosses the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVerdict {
    /// The score; its `p_yes` calibrated where the policy has a calibration.
    #[serde(flatten)]
    pub score: PolicyScore,
    /// The model's own P(Yes) before calibration, for calibrated policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_p_yes: Option<f64>,
    /// The threshold in force.
    pub threshold: f64,
    /// `p_yes >= threshold`.
    pub violated: bool,
}

/// The verdicts of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// One entry per policy, in the request's order.
    pub policies: Vec<PolicyVerdict>,
    /// Ids of the violated policies.
    pub violated: Vec<String>,
    /// Present when the content was cut to fit the context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

impl Verdict {
    /// Compares `scores` (in the order of `policies`) with the policies' thresholds, after
    /// their calibrations.
    pub fn new(scores: &RequestScores, policies: &[Policy]) -> Self {
        let policies: Vec<PolicyVerdict> = scores
            .scores
            .iter()
            .zip(policies)
            .map(|(s, p)| {
                let judged = p.judge(s.p_yes);
                PolicyVerdict {
                    score: PolicyScore {
                        p_yes: judged.p_yes,
                        ..s.clone()
                    },
                    raw_p_yes: judged.raw_p_yes,
                    threshold: p.threshold,
                    violated: judged.violated,
                }
            })
            .collect();
        Self {
            violated: policies
                .iter()
                .filter(|p| p.violated)
                .map(|p| p.score.id.clone())
                .collect(),
            policies,
            truncated: scores.truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;

    #[test]
    fn threshold_is_inclusive() {
        let mut policies: Vec<Policy> = PolicySet::builtin().iter().take(2).cloned().collect();
        policies[0].threshold = 0.25;
        policies[1].threshold = 0.9;
        let score = |id: &str, p_yes| PolicyScore {
            id: id.into(),
            p_yes,
            yes_logit: 0.0,
            no_logit: 0.0,
            tokens: 10,
        };
        let scores = RequestScores {
            scores: vec![score("dangerous", 0.25), score("harassment", 0.5)],
            truncated: None,
        };
        let v = Verdict::new(&scores, &policies);
        assert_eq!(v.violated, ["dangerous"]);
        assert!(!v.policies[1].violated);
    }
}
