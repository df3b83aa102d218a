//! One moderation check: the texts go to the scorer with the profile's policies, within the
//! scorer timeout; the outcome becomes a decision, is counted in the metrics and written to
//! the decision log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{FailMode, PiiAction};
use crate::scorer::{RequestScores, ScoreRequest};

use super::decision::{Decision, Direction, Disposition, PiiFound};
use super::decision_log::Entry;
use super::error::Unchecked;
use super::protocols::Conversation;
use super::Gateway;
use crate::pii::Kind;
use crate::policy::profiles::Profile;
use crate::policy::Policy;

/// What to check.
pub struct CheckInput<'a> {
    /// Input or output.
    pub direction: Direction,
    /// The profile in force.
    pub profile: &'a Profile,
    /// What to score: the texts, each with its policies (see [`input_requests`] and
    /// [`output_requests`]).
    pub requests: Vec<ScoreRequest>,
    /// What a failed check does.
    pub fail: FailMode,
    /// Parts that could not be scanned.
    pub unscanned: Vec<String>,
    /// Personal data and secrets found in the checked side.
    pub pii: BTreeMap<Kind, PiiFound>,
}

/// The input check's requests: user turns with the profile's policies for them (injection
/// included), other scanned texts with ShieldGemma's, and the tool results and documents since
/// the model's last turn with `indirect_injection`; texts left without a policy are not scored.
pub fn input_requests(profile: &Profile, conversation: &Conversation) -> Vec<ScoreRequest> {
    let request = |user: &String, policies: &Arc<[Policy]>| ScoreRequest {
        user: user.clone(),
        response: None,
        policies: policies.clone(),
    };
    let parts = conversation.parts.iter().enumerate().map(|(i, text)| {
        if i >= conversation.users_from {
            request(text, &profile.for_user_turns)
        } else {
            request(text, &profile.for_other_texts)
        }
    });
    let indirect = conversation
        .indirect
        .iter()
        .map(|text| request(text, &profile.for_indirect));
    parts
        .chain(indirect)
        .filter(|r| !r.policies.is_empty())
        .collect()
}

/// The output check's requests: each answer text (one per choice) after `prompt`.
pub fn output_requests(profile: &Profile, prompt: &str, answers: Vec<String>) -> Vec<ScoreRequest> {
    answers
        .into_iter()
        .map(|answer| ScoreRequest {
            user: prompt.to_string(),
            response: Some(answer),
            policies: profile.for_other_texts.clone(),
        })
        .collect()
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
    // A part without policies (an answer when the profile has only injection categories) is
    // not scored, but still counts as a part.
    let requests: Vec<ScoreRequest> = input
        .requests
        .iter()
        .filter(|r| !r.policies.is_empty())
        .cloned()
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
            Ok(Ok(scores)) => {
                let mut scores = scores.into_iter();
                let parts: Vec<RequestScores> = input
                    .requests
                    .iter()
                    .map(|r| match r.policies.is_empty() {
                        true => RequestScores::default(),
                        false => scores.next().unwrap_or_default(),
                    })
                    .collect();
                Decision::from_scores(direction, profile, &parts)
            }
            Ok(Err(e)) => Decision::failed(direction, profile, (&e).into(), input.fail),
            Err(_) => Decision::failed(direction, profile, Unchecked::ScorerTimeout, input.fail),
        }
    };
    decision.unscanned = input.unscanned;
    decision.pii = input.pii;
    if decision.pii.values().any(|f| f.action == PiiAction::Block) {
        // A kind that must not pass was found: every part is withheld.
        decision.disposition = decision.disposition.max(Disposition::Block);
        decision.parts_blocked = vec![true; input.requests.len()];
    }
    record(gw, &decision, request_id, protocol, &input.requests);
    decision
}

/// Counts a decision in the metrics and writes it to the decision log; every decision, made
/// by the scorer or not, goes through here.
pub fn record(
    gw: &Gateway,
    decision: &Decision,
    request_id: &str,
    protocol: &str,
    texts: &[ScoreRequest],
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
            .map(|r| match (decision.direction, &r.response) {
                (Direction::Output, Some(answer)) => answer.clone(),
                _ => r.user.clone(),
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
