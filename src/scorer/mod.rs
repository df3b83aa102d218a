//! The scoring engine: renders each request's ShieldGemma prompts, prefills the shared prefix
//! once, runs every policy's suffix in one batch on top of it, and turns the Yes/No logits
//! into P(Yes). The [`Score`] trait lets the proxy and audit run on a scripted scorer in tests.

pub mod cache;
pub mod encode;
mod engine;
pub mod explain;
pub mod groups;
pub mod prefix_store;
pub mod remote;
pub mod verdict;
pub mod worker;

use std::sync::Arc;

use serde::Serialize;

pub use encode::{Cut, Encoded, Truncation};
pub use engine::{Engine, EngineOptions};

use crate::model::ModelError;
use crate::policy::{Classifier, Policy};
use crate::prompt::{Content, ContextTurn};

/// One text to score against a set of policies.
#[derive(Debug, Clone, Default)]
pub struct ScoreRequest {
    /// The user's turn.
    pub user: String,
    /// The chatbot's response; when present the prompt-response template is used.
    pub response: Option<String>,
    /// The policies to score, each as its own prompt.
    pub policies: Arc<[Policy]>,
    /// Earlier turns of the conversation, shown to ShieldGemma before the user's turn (oldest
    /// first; the oldest are dropped first when the prompt would not fit).
    pub context: Vec<ContextTurn>,
}

impl ScoreRequest {
    /// A request without context.
    pub fn new(user: impl Into<String>, response: Option<String>, policies: Arc<[Policy]>) -> Self {
        Self {
            user: user.into(),
            response,
            policies,
            context: Vec::new(),
        }
    }

    /// The earlier turns the model saw when it gave `scores`: the context less the turns
    /// left out to fit.
    pub fn context_seen(&self, scores: &RequestScores) -> usize {
        let dropped = scores.truncated.map_or(0, |t| t.dropped_turns);
        self.context.len().saturating_sub(dropped)
    }

    /// The content as the prompt templates see it.
    pub fn content(&self) -> Content<'_> {
        Content {
            user: &self.user,
            response: self.response.as_deref(),
            context: &self.context,
        }
    }

    /// Each policy's guideline for the content's template, for ShieldGemma's prompts; an error
    /// without policies, or for a policy another classifier scores.
    pub fn guidelines(&self) -> Result<Vec<&str>, ScoreError> {
        if self.policies.is_empty() {
            return Err(ScoreError::NoPolicies);
        }
        let mode = self.content().mode();
        self.policies
            .iter()
            .map(|p| match p.classifier {
                Classifier::ShieldGemma => Ok(p.guideline(mode)),
                Classifier::PromptGuard => Err(ScoreError::NotShieldGemma(p.id.clone())),
            })
            .collect()
    }
}

/// The score of one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyScore {
    /// The policy's id.
    pub id: String,
    /// P(Yes) = softmax over the Yes and No logits.
    pub p_yes: f64,
    /// The final (soft-capped) logit of `Yes` at the last position.
    pub yes_logit: f32,
    /// The final (soft-capped) logit of `No` at the last position.
    pub no_logit: f32,
    /// Tokens in this policy's prompt.
    pub tokens: usize,
}

/// The scores of one request, in the order of its policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestScores {
    /// One entry per policy.
    pub scores: Vec<PolicyScore>,
    /// Set when the content was cut to fit the model's context.
    pub truncated: Option<Truncation>,
}

/// P(Yes) from the two logits, computed stably in f64.
pub fn p_yes(yes: f32, no: f32) -> f64 {
    1.0 / (1.0 + (f64::from(no) - f64::from(yes)).exp())
}

/// Scores batches of requests.
pub trait Score: Send + Sync {
    /// Scores every request; the result has one entry per request, in order.
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError>;

    /// The scores of every request when they are at hand without a model run (a verdict
    /// cache holding all of them), `None` when [`Score::score`] has to run. Callers that would
    /// queue for the scorer ask this first, so that a hit never waits behind model work.
    fn at_hand(&self, _requests: &[ScoreRequest]) -> Option<Vec<RequestScores>> {
        None
    }

    /// The share of one batch that `request` takes (the engine: its padded tokens over its
    /// token budget). The worker gathers waiting checks into a batch while their shares add
    /// up to at most 1; by default 0, so that only the batch's text count limits it.
    fn batch_share(&self, _request: &ScoreRequest) -> f64 {
        0.0
    }
}

/// Scores a batch and returns one result per request: when the batch fails as a whole (one
/// request cannot be scored), each request is scored alone so that only the bad ones fail.
pub fn score_each(
    scorer: &dyn Score,
    requests: &[ScoreRequest],
) -> Vec<Result<RequestScores, ScoreError>> {
    let one = |r: &ScoreRequest| {
        scorer
            .score(std::slice::from_ref(r))?
            .pop()
            .ok_or(ScoreError::MissingResult)
    };
    match scorer.score(requests) {
        Ok(scores) if scores.len() == requests.len() => scores.into_iter().map(Ok).collect(),
        Ok(_) => requests
            .iter()
            .map(|_| Err(ScoreError::MissingResult))
            .collect(),
        Err(e) if requests.len() == 1 => vec![Err(e)],
        Err(_) => requests.iter().map(one).collect(),
    }
}

/// Why scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The model failed (load or computation).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request had no policies.
    #[error("no policies to score: choose at least one")]
    NoPolicies,
    /// A category another classifier scores reached ShieldGemma (a bug).
    #[error("internal error: {0:?} is not a ShieldGemma policy and reached the model")]
    NotShieldGemma(String),
    /// The template and guideline alone exceed the context.
    #[error(
        "the prompt template and guideline need {needed} tokens, more than the limit of \
         {max_tokens}; shorten the custom guideline or raise --max-tokens"
    )]
    TooLong {
        /// Tokens needed with empty content.
        needed: usize,
        /// The limit.
        max_tokens: usize,
    },
    /// Truncation did not converge.
    #[error("could not cut the content to fit {max_tokens} tokens")]
    Truncation {
        /// The limit.
        max_tokens: usize,
    },
    /// The scorer panicked on this batch (a bug); the worker goes on with the next one.
    #[error("internal error: the scorer panicked: {0}")]
    Panicked(String),
    /// A scorer broke its contract of one result per request.
    #[error("internal error: the scorer returned fewer results than requests")]
    MissingResult,
    /// The template uses a marker the tokenizer does not know.
    #[error("prompt template: {0}")]
    Template(String),
    /// A remote scorer endpoint failed or cannot give a score.
    #[error("remote scorer: {0}")]
    Remote(String),
    /// A classifier run beside the model (the injection classifier) failed.
    #[error("{0}")]
    Classifier(String),
}

impl From<candle_core::Error> for ScoreError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}

/// Requests and results for the scorer's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{RequestScores, ScoreRequest};
    use crate::policy::PolicySet;

    /// A prompt-only request for the built-in policies.
    pub fn request(user: &str) -> ScoreRequest {
        ScoreRequest::new(user, None, PolicySet::builtin().iter().cloned().collect())
    }

    /// Every policy of `request` at P(Yes) `p`.
    pub fn uniform(request: &ScoreRequest, p: f64) -> RequestScores {
        RequestScores {
            scores: request
                .policies
                .iter()
                .map(|policy| super::PolicyScore {
                    id: policy.id.clone(),
                    p_yes: p,
                    yes_logit: 0.0,
                    no_logit: 0.0,
                    tokens: 1,
                })
                .collect(),
            truncated: None,
        }
    }

    /// One empty result per request.
    pub fn empty_results(requests: &[ScoreRequest]) -> Vec<RequestScores> {
        requests
            .iter()
            .map(|_| RequestScores {
                scores: Vec::new(),
                truncated: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{empty_results, request};
    use super::*;

    /// Fails any batch that holds a request whose user text is "bad".
    struct FailsOnBad;

    impl Score for FailsOnBad {
        fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
            if requests.iter().any(|r| r.user == "bad") {
                return Err(ScoreError::NoPolicies);
            }
            Ok(empty_results(requests))
        }
    }

    #[test]
    fn one_bad_request_fails_alone() {
        let results = score_each(&FailsOnBad, &[request("a"), request("bad"), request("c")]);
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true]);
        let single = score_each(&FailsOnBad, &[request("bad")]);
        assert!(matches!(single[..], [Err(ScoreError::NoPolicies)]));
    }

    #[test]
    fn only_shieldgemma_policies_give_guidelines() {
        let r = request("hi");
        assert_eq!(r.guidelines().expect("built-in").len(), 4);
        let injection = ScoreRequest {
            policies: vec![crate::policy::Policy::injection("injection")].into(),
            ..request("hi")
        };
        let e = injection.guidelines().expect_err("not ShieldGemma's");
        assert!(matches!(e, ScoreError::NotShieldGemma(ref id) if id == "injection"));
        let none = ScoreRequest {
            policies: Vec::new().into(),
            ..request("hi")
        };
        assert!(matches!(none.guidelines(), Err(ScoreError::NoPolicies)));
    }

    #[test]
    fn p_yes_is_the_two_way_softmax() {
        assert_eq!(p_yes(1.0, 1.0), 0.5);
        assert!((p_yes(2.0, 0.0) - 0.880_797_077_977_882_3).abs() < 1e-12);
        assert!(p_yes(-30.0, 30.0) > 0.0);
        assert!(p_yes(30.0, -30.0) < 1.0 + 1e-12);
    }
}
