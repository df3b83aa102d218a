//! One moderation check: the texts go to the scorer with the profile's policies, within the
//! scorer timeout; the outcome becomes a decision, is counted in the metrics and written to
//! the decision log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::SpanKind;

use crate::config::{FailMode, PiiAction};
use crate::scorer::{RequestScores, ScoreRequest};

use super::decision::{Decision, Direction, Disposition, PiiFound};
use super::decision_log::Entry;
use super::error::Unchecked;
use super::protocols::Conversation;
use super::trace::ExchangeTrace;
use super::Gateway;
use crate::pii::Kind;
use crate::policy::profiles::Profile;
use crate::policy::Policy;
use crate::prompt::ContextTurn;

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
    /// The exchange's trace, which gets a span for the check.
    pub trace: &'a ExchangeTrace,
}

/// The input check's requests: user turns with the profile's policies for them (injection
/// included), each after up to `context_turns` earlier turns, other scanned texts with
/// ShieldGemma's, and the tool results and documents since the model's last turn with
/// `indirect_injection`; texts left without a policy are not scored.
pub fn input_requests(
    profile: &Profile,
    conversation: &Conversation,
    context_turns: usize,
) -> Vec<ScoreRequest> {
    let request = |user: &String, policies: &Arc<[Policy]>| {
        ScoreRequest::new(user.clone(), None, policies.clone())
    };
    let parts = conversation.parts.iter().enumerate().map(|(i, text)| {
        let user_turn = i
            .checked_sub(conversation.users_from)
            .and_then(|k| conversation.user_turns.get(k));
        match user_turn {
            Some(&at) => ScoreRequest {
                context: conversation.context_before(at, context_turns),
                ..request(text, &profile.for_user_turns)
            },
            None if i >= conversation.users_from => request(text, &profile.for_user_turns),
            None => request(text, &profile.for_other_texts),
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

/// What an answer is judged after: the user turn it answers and the turns before that.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asked {
    /// The user turn.
    pub prompt: String,
    /// Up to `context_turns` earlier turns.
    pub context: Vec<ContextTurn>,
}

impl Asked {
    /// The last user turn of `conversation` and its context of up to `context_turns` turns.
    pub fn of(conversation: &Conversation, context_turns: usize) -> Self {
        Self {
            prompt: conversation.prompt.clone(),
            context: conversation.prompt_context(context_turns),
        }
    }
}

/// The output check's requests: each answer text (one per choice) after what was `asked`.
pub fn output_requests(
    profile: &Profile,
    asked: &Asked,
    answers: Vec<String>,
) -> Vec<ScoreRequest> {
    answers
        .into_iter()
        .map(|answer| ScoreRequest {
            context: asked.context.clone(),
            ..ScoreRequest::new(
                asked.prompt.clone(),
                Some(answer),
                profile.for_other_texts.clone(),
            )
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
    let span = input.trace.child(
        match direction {
            Direction::Input => "shieldgate.input_check",
            Direction::Output => "shieldgate.output_check",
        },
        SpanKind::Internal,
    );
    // A part without policies (an answer when the profile has only injection categories) is
    // not scored, but still counts as a part.
    let requests: Vec<ScoreRequest> = input
        .requests
        .iter()
        .filter(|r| !r.policies.is_empty())
        .cloned()
        .collect();
    // Each request's scores, in the order of `input.requests` (empty when not scored).
    let mut scored: Vec<RequestScores> = Vec::new();
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
                scored = input
                    .requests
                    .iter()
                    .map(|r| match r.policies.is_empty() {
                        true => RequestScores::default(),
                        false => scores.next().unwrap_or_default(),
                    })
                    .collect();
                Decision::from_scores(direction, profile, &scored)
            }
            Ok(Err(e)) => Decision::failed(direction, profile, (&e).into(), input.fail),
            Err(_) => Decision::failed(direction, profile, Unchecked::ScorerTimeout, input.fail),
        }
    };
    decision.unscanned = input.unscanned;
    decision.pii = input.pii;
    decision.context_turns = context_seen(gw, &input.requests, &scored);
    if decision.pii.values().any(|f| f.action == PiiAction::Block) {
        // A kind that must not pass was found: every part is withheld.
        decision.disposition = decision.disposition.max(Disposition::Block);
        decision.parts_blocked = vec![true; input.requests.len()];
    }
    record(gw, &decision, request_id, protocol, &input.requests);
    input.trace.record_check(&span, &decision);
    decision
}

/// With context on, the earlier turns the latest request with context was judged with: those
/// offered less those left out to fit the model (as offered when the check was not made).
fn context_seen(
    gw: &Gateway,
    requests: &[ScoreRequest],
    scored: &[RequestScores],
) -> Option<usize> {
    if gw.settings().proxy.context_turns == 0 {
        return None;
    }
    let Some((i, request)) = requests
        .iter()
        .enumerate()
        .rfind(|(_, r)| !r.context.is_empty())
    else {
        return Some(0);
    };
    let scores = scored.get(i).cloned().unwrap_or_default();
    Some(request.context_seen(&scores))
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
    let results = decision
        .categories
        .iter()
        .map(|c| (c.id.as_str(), c.p_yes, c.violated));
    m.drift
        .observe(direction, results, std::time::Instant::now());
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
        let latest = texts.iter().rfind(|r| !r.context.is_empty());
        log.record(
            &Entry {
                request_id,
                protocol,
                policy_version: &version,
                content: &content,
                prompt: match decision.direction {
                    Direction::Output => texts.first().map(|r| r.user.as_str()),
                    Direction::Input => None,
                },
                context: latest.map_or(&[], |r| &r.context),
            },
            decision,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Scan};
    use crate::gateway::protocols::for_path;
    use crate::policy::profiles::Profiles;
    use crate::prompt::Role;

    #[test]
    fn user_turns_and_the_prompt_get_their_context_and_other_texts_none() {
        let config = Config::parse("", "t").expect("config");
        let profiles = Profiles::build(&config).expect("profiles");
        let profile = profiles.default_profile();
        let body = br#"{"messages":[{"role":"system","content":"sys"},
            {"role":"user","content":"one"},{"role":"assistant","content":"two"},
            {"role":"user","content":"three"},{"role":"assistant","content":"four"},
            {"role":"user","content":"five"}]}"#;
        let adapter = for_path("/v1/chat/completions").expect("chat");
        let conv = adapter
            .request_conversation(body, &[Scan::AllUser, Scan::System])
            .expect("ok");
        let context = |r: &ScoreRequest| -> Vec<String> {
            r.context.iter().map(|t| t.text.clone()).collect()
        };
        let requests = input_requests(profile, &conv, 2);
        let users: Vec<&str> = requests.iter().map(|r| r.user.as_str()).collect();
        assert_eq!(users, ["sys", "one", "three", "five"]);
        assert!(
            requests[0].context.is_empty(),
            "the system prompt is no turn"
        );
        assert!(requests[1].context.is_empty());
        assert_eq!(context(&requests[2]), ["one", "two"]);
        assert_eq!(context(&requests[3]), ["three", "four"]);
        assert_eq!(requests[3].context[1].role, Role::Assistant);
        assert!(input_requests(profile, &conv, 0)
            .iter()
            .all(|r| r.context.is_empty()));
        let asked = Asked::of(&conv, 3);
        let output = output_requests(profile, &asked, vec!["six".into()]);
        assert_eq!(output[0].user, "five");
        assert_eq!(output[0].response.as_deref(), Some("six"));
        assert_eq!(context(&output[0]), ["two", "three", "four"]);
    }
}
