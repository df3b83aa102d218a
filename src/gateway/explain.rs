//! `GET /explain` on the admin listener: which spans drive a logged check. The decision-log
//! line of the request's check (logged with `include_content = true`) is read back, each
//! checked text is scored again with the profile's policies (and its context), and the text
//! is scored once more with each span removed — all through the gateway's scorer.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::decision::Direction;
use super::decision_log::{find, Logged};
use super::Gateway;
use crate::http::body::{json_response, Body};
use crate::scorer::explain::{Explanation, Plan, DEFAULT_SPANS};
use crate::scorer::{RequestScores, ScoreRequest};

/// The most spans one text may be cut into.
const MAX_SPANS: usize = 64;

/// What to explain.
#[derive(Debug, PartialEq)]
struct Query {
    request_id: String,
    direction: Direction,
    spans: usize,
}

/// Reads `request_id=…&direction=input|output&spans=N`.
fn parse(query: Option<&str>) -> Result<Query, String> {
    let (mut request_id, mut direction, mut spans) = (None, Direction::Input, DEFAULT_SPANS);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "request_id" => request_id = Some(value.into_owned()),
            "direction" => {
                direction = match &*value {
                    "input" => Direction::Input,
                    "output" => Direction::Output,
                    other => return Err(format!("direction={other}: use input or output")),
                }
            }
            "spans" => {
                spans = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_SPANS).contains(n))
                    .ok_or(format!("spans={value}: use a number from 1 to {MAX_SPANS}"))?
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let request_id = request_id
        .filter(|id| !id.is_empty())
        .ok_or("request_id is missing: give the x-shieldgate-request-id of the exchange")?;
    Ok(Query {
        request_id,
        direction,
        spans,
    })
}

/// One checked text, scored again and explained.
#[derive(Serialize)]
struct Part {
    text: String,
    scores: BTreeMap<String, f64>,
    explanation: Explanation,
}

/// The requests that score the logged texts again: the profile's policies for the direction,
/// the logged context before the last input text and before every answer.
fn requests(
    gw: &Gateway,
    logged: &Logged,
    direction: Direction,
) -> Result<Vec<ScoreRequest>, String> {
    let settings = gw.settings();
    let profile = settings.profiles.get(&logged.profile).ok_or(format!(
        "the logged profile {:?} is no longer configured",
        logged.profile
    ))?;
    let content = logged.content.clone().unwrap_or_default();
    let last = content.len().saturating_sub(1);
    Ok(content
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let request = match direction {
                Direction::Input => ScoreRequest::new(text, None, profile.for_user_turns.clone()),
                Direction::Output => ScoreRequest::new(
                    logged.prompt.clone().unwrap_or_default(),
                    Some(text),
                    profile.for_other_texts.clone(),
                ),
            };
            let with_context = direction == Direction::Output || i == last;
            ScoreRequest {
                context: match with_context {
                    true => logged.context.clone(),
                    false => Vec::new(),
                },
                ..request
            }
        })
        .filter(|r| !r.policies.is_empty())
        .collect())
}

/// Answers `GET /explain`.
pub async fn handle(gw: &Gateway, query: Option<&str>) -> hyper::Response<Body> {
    let answer =
        |status: StatusCode, message: String| json_response(status, &json!({"error": message}));
    let query = match parse(query) {
        Ok(q) => q,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    let Some(log) = &gw.decision_log else {
        return answer(
            StatusCode::NOT_FOUND,
            "explanations read the decision log: set [decision_log] path and include_content = true".into(),
        );
    };
    let path = log.path().to_path_buf();
    let (id, direction) = (query.request_id.clone(), query.direction);
    let found = tokio::task::spawn_blocking(move || find(&path, &id, direction)).await;
    let logged = match found {
        Ok(Ok(Some(logged))) => logged,
        Ok(Ok(None)) => {
            return answer(
                StatusCode::NOT_FOUND,
                format!(
                    "the decision log has no {} check of request {:?}",
                    direction.as_str(),
                    query.request_id
                ),
            )
        }
        Ok(Err(e)) => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the decision log {}: {e}", log.path().display()),
            )
        }
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if logged.content.is_none() {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this check was logged without its content; set [decision_log] include_content = true to explain later checks".into(),
        );
    }
    let requests = match requests(gw, &logged, direction) {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::CONFLICT, e),
    };
    let plans: Vec<Plan> = requests.iter().map(|r| Plan::new(r, query.spans)).collect();
    let mut all = requests.clone();
    all.extend(plans.iter().flat_map(|p| p.variants.iter().cloned()));
    let scored = match gw.scorer.score(all).await {
        Ok(s) => s,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the scorer could not score the texts: {e}"),
            )
        }
    };
    let (bases, mut variants) = scored.split_at(requests.len().min(scored.len()));
    let mut parts = Vec::new();
    for ((request, plan), base) in requests.iter().zip(plans).zip(bases) {
        let (mine, rest) = variants.split_at(plan.variants.len().min(variants.len()));
        variants = rest;
        let explanation = match plan.finish(base, mine, true) {
            Ok(e) => e,
            Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        parts.push(Part {
            text: request
                .response
                .clone()
                .unwrap_or_else(|| request.user.clone()),
            scores: scores(base),
            explanation,
        });
    }
    let body = json!({"request_id": query.request_id, "direction": direction.as_str(),
        "profile": logged.profile, "context_turns": logged.context.len(), "parts": parts});
    json_response(StatusCode::OK, &body)
}

fn scores(base: &RequestScores) -> BTreeMap<String, f64> {
    base.scores
        .iter()
        .map(|s| (s.id.clone(), s.p_yes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_say_what_is_wrong() {
        assert_eq!(
            parse(Some("request_id=a%20b&direction=output&spans=4")),
            Ok(Query {
                request_id: "a b".into(),
                direction: Direction::Output,
                spans: 4
            })
        );
        assert_eq!(
            parse(Some("request_id=x")).map(|q| (q.direction, q.spans)),
            Ok((Direction::Input, DEFAULT_SPANS))
        );
        for (bad, says) in [
            (None, "request_id is missing"),
            (Some("request_id="), "request_id is missing"),
            (
                Some("request_id=x&direction=sideways"),
                "direction=sideways",
            ),
            (Some("request_id=x&spans=0"), "spans=0"),
            (Some("request_id=x&spans=65"), "spans=65"),
            (Some("request_id=x&spans=many"), "spans=many"),
            (Some("request_id=x&id=y"), "unknown parameter \"id\""),
        ] {
            let e = parse(bad).expect_err("refused");
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
