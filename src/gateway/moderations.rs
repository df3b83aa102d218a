//! `POST /v1/moderations`, OpenAI-compatible, served by the engine without an upstream.
//!
//! Category mapping (all 13 OpenAI keys are always present; unmapped ones are `false` / `0.0`):
//! `hate` ← hate, `harassment` ← harassment, `sexual` ← sexual, `illicit` and `violence` ←
//! dangerous. `flagged` is true when any scored policy (custom ones and `injection` included)
//! crosses its threshold, or when the profile's `pii.input` rules block or flag a kind found in
//! the text; the kinds found are counted in `pii`. Beyond OpenAI's shape, `policy_scores` gives
//! every scored policy's P(Yes) by id and `violated` the ids that crossed their thresholds.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::PiiAction;
use crate::pii::{count, Kind};
use crate::scorer::verdict::Verdict;
use crate::scorer::ScoreRequest;

use super::error::{RequestError, Unchecked};
use super::Gateway;
use crate::policy::profiles::Profile;

/// The 13 category keys of OpenAI's moderation API.
pub const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// Which of our policies feeds each OpenAI category.
pub const MAPPING: [(&str, &str); 5] = [
    ("harassment", "harassment"),
    ("hate", "hate"),
    ("illicit", "dangerous"),
    ("sexual", "sexual"),
    ("violence", "dangerous"),
];

/// Most inputs accepted in one request.
pub const MAX_INPUTS: usize = 32;

/// The request; `model` and other fields are accepted and ignored.
#[derive(Deserialize)]
struct ModerationRequest {
    input: Input,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<Part>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Part {
    Text(String),
    Typed {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: Option<String>,
    },
}

/// The texts to score: one per string; typed parts (a multimodal input) form one text.
fn texts(input: Input) -> Result<Vec<String>, RequestError> {
    let texts = match input {
        Input::One(s) => vec![s],
        Input::Many(parts) if parts.iter().all(|p| matches!(p, Part::Text(_))) => parts
            .into_iter()
            .filter_map(|p| match p {
                Part::Text(s) => Some(s),
                Part::Typed { .. } => None,
            })
            .collect(),
        Input::Many(parts) => {
            let mut text = Vec::new();
            for part in parts {
                match part {
                    Part::Typed { kind, text: Some(t) } if kind == "text" => text.push(t),
                    Part::Typed { kind, .. } => {
                        return Err(RequestError::invalid(format!(
                            "input parts of type {kind:?} cannot be scanned: shieldgate scores text only"
                        )))
                    }
                    Part::Text(_) => {
                        return Err(RequestError::invalid(
                            "input mixes strings and typed parts; send one or the other",
                        ))
                    }
                }
            }
            vec![text.join("\n")]
        }
    };
    if texts.is_empty() {
        return Err(RequestError::invalid("input is empty"));
    }
    if texts.len() > MAX_INPUTS {
        return Err(RequestError::invalid(format!(
            "{} inputs in one request; at most {MAX_INPUTS}",
            texts.len()
        )));
    }
    Ok(texts)
}

/// Handles a moderation request body with the policies and thresholds of `profile`.
pub async fn handle(gw: &Gateway, profile: &Profile, body: &[u8]) -> Result<Value, RequestError> {
    let request: ModerationRequest = serde_json::from_slice(body).map_err(|e| {
        RequestError::invalid(format!(
            "body is not a moderation request ({e}); expected {{\"input\": string | [string]}}"
        ))
    })?;
    let texts = texts(request.input)?;
    let requests: Vec<ScoreRequest> = texts
        .iter()
        .map(|user| ScoreRequest::new(user.clone(), None, profile.for_user_turns.clone()))
        .collect();
    let scores = tokio::time::timeout(gw.scorer_timeout, gw.scorer.score(requests))
        .await
        .map_err(|_| RequestError::ModerationUnavailable(Unchecked::ScorerTimeout))?
        .map_err(|e| RequestError::ModerationUnavailable((&e).into()))?;
    let kinds: Vec<Kind> = profile.pii_input.keys().copied().collect();
    let results: Vec<Value> = scores
        .iter()
        .zip(&texts)
        .map(|(s, text)| {
            let mut result = result(&Verdict::new(s, &profile.for_user_turns));
            let pii = count([text.as_str()], &kinds);
            if !pii.is_empty() {
                let alarming = |kind: &Kind| {
                    let action = profile.pii_input.get(kind).copied();
                    matches!(action, Some(PiiAction::Block | PiiAction::Flag))
                };
                if pii.keys().any(alarming) {
                    result["flagged"] = json!(true);
                }
                result["pii"] = json!(pii);
            }
            result
        })
        .collect();
    Ok(json!({
        "id": format!("modr-{}", gw.next_id()),
        "model": gw.model_name,
        "results": results,
    }))
}

fn result(verdict: &Verdict) -> Value {
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for key in CATEGORIES {
        let source = MAPPING
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, id)| verdict.policies.iter().find(|p| p.score.id == *id));
        categories.insert(key.into(), json!(source.is_some_and(|p| p.violated)));
        scores.insert(key.into(), json!(source.map_or(0.0, |p| p.score.p_yes)));
        applied.insert(key.into(), json!(["text"]));
    }
    let policy_scores: Map<String, Value> = verdict
        .policies
        .iter()
        .map(|p| (p.score.id.clone(), json!(p.score.p_yes)))
        .collect();
    json!({
        "flagged": !verdict.violated.is_empty(),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "policy_scores": policy_scores,
        "violated": verdict.violated,
    })
}
