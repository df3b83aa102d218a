//! One moderation check: the texts go to the scorer with the profile's policies, within the
//! scorer timeout; the outcome becomes a decision, is counted in the metrics and written to
//! the decision log.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::{FailMode, PiiAction};
use crate::scorer::ScoreRequest;

use super::decision::{Decision, Direction, Disposition, PiiFound};
use super::decision_log::Entry;
use super::error::Unchecked;
use super::Gateway;
use crate::pii::Kind;
use crate::policy::profiles::Profile;

/// What to check.
pub struct CheckInput<'a> {
    /// Input or output.
    pub direction: Direction,
    /// The profile in force.
    pub profile: &'a Profile,
    /// Texts to score, each with the response it is paired with (output checks).
    pub texts: Vec<(String, Option<String>)>,
    /// What a failed check does.
    pub fail: FailMode,
    /// Parts that could not be scanned.
    pub unscanned: Vec<String>,
    /// Personal data and secrets found in the checked side.
    pub pii: BTreeMap<Kind, PiiFound>,
}

/// Runs a check and records it.
pub async fn run(
    gw: &Gateway,
    input: CheckInput<'_>,
    request_id: &str,
    protocol: &str,
) -> Decision {
    let direction = input.direction;
    let profile = input.profile;
    let requests: Vec<ScoreRequest> = input
        .texts
        .iter()
        .map(|(user, response)| ScoreRequest {
            user: user.clone(),
            response: response.clone(),
            policies: profile.policies.clone(),
        })
        .collect();
    let mut decision = if requests.is_empty() {
        Decision::from_scores(direction, profile, &[])
    } else {
        gw.metrics.queue_depth.set(gw.scorer.queued() as i64);
        let started = Instant::now();
        let result = tokio::time::timeout(gw.scorer_timeout, gw.scorer.score(requests)).await;
        gw.hot_metrics
            .scorer_seconds(direction)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(scores)) => Decision::from_scores(direction, profile, &scores),
            Ok(Err(e)) => Decision::failed(direction, profile, (&e).into(), input.fail),
            Err(_) => Decision::failed(direction, profile, Unchecked::ScorerTimeout, input.fail),
        }
    };
    decision.unscanned = input.unscanned;
    decision.pii = input.pii;
    if decision.pii.values().any(|f| f.action == PiiAction::Block) {
        // A kind that must not pass was found: every part is withheld.
        decision.disposition = decision.disposition.max(Disposition::Block);
        decision.parts_blocked = vec![true; input.texts.len()];
    }
    record(gw, &decision, request_id, protocol, &input.texts);
    decision
}

/// Counts a decision in the metrics and writes it to the decision log; every decision, made
/// by the scorer or not, goes through here.
pub fn record(
    gw: &Gateway,
    decision: &Decision,
    request_id: &str,
    protocol: &str,
    texts: &[(String, Option<String>)],
) {
    let direction = decision.direction.as_str();
    let m = &gw.metrics;
    gw.hot_metrics
        .decisions(decision.direction, decision.disposition)
        .inc();
    if let Some(error) = decision.evaluation_error {
        let (error, fault) = (error.error_type(), <&str>::from(error.fault()));
        m.evaluation_errors
            .with_label_values(&[direction, error])
            .inc();
        tracing::warn!(
            request_id,
            direction,
            error,
            fault,
            "moderation check failed"
        );
    }
    let scores = decision.categories.iter().map(|c| (c.id.as_str(), c.p_yes));
    gw.hot_metrics.observe_scores(decision.direction, scores);
    for c in &decision.categories {
        if c.violated {
            m.violations
                .with_label_values(&[direction, c.id.as_str(), c.action.as_str()])
                .inc();
        }
    }
    if let Some(log) = &gw.decision_log {
        let content: Vec<String> = texts
            .iter()
            .map(|(user, response)| match (decision.direction, response) {
                (super::decision::Direction::Output, Some(r)) => r.clone(),
                _ => user.clone(),
            })
            .collect();
        let version = gw.settings().profiles.version.clone();
        log.record(
            &Entry {
                request_id,
                protocol,
                policy_version: &version,
                content: &content,
            },
            decision,
        );
    }
}
