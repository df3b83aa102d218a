//! `shieldgate tune --serve`: a local web page with one slider per category showing live
//! precision, recall, F1, false-positive rate and traffic flag rate, the examples nearest the
//! threshold (each explained on request: its spans that move P(Yes) most, highlighted), and an
//! export of the config TOML with the chosen thresholds (made by the same editor as `--write`,
//! and checked by the gateway's config loader).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::analysis::CategoryReport;
use super::context::Comparison;
use super::data::{Example, Scores};
use super::thresholds::Tuned;
use crate::config::Config;
use crate::http::body::{json_response, read_limited, text_response, with_type, Body, BodyError};
use crate::policy::{for_answers, Policy};
use crate::scorer::explain::{explain, DEFAULT_SPANS};
use crate::scorer::{Score, ScoreRequest};

const PAGE: &str = include_str!("workbench.html");

/// Longest example text put in the page (characters).
const SNIPPET_CHARS: usize = 400;

/// Loads the scorer the first time an example is explained.
pub type LoadScorer = Box<dyn Fn() -> Result<Arc<dyn Score>, String> + Send + Sync>;

/// How the workbench explains an example: the examples' texts, the profile's policies, the
/// context they were scored with, and the scorer (loaded on the first request).
pub struct Explainer {
    examples: Vec<Example>,
    policies: Arc<[Policy]>,
    context_turns: usize,
    load: LoadScorer,
    scorer: OnceLock<Result<Arc<dyn Score>, String>>,
}

impl Explainer {
    /// Explains `examples` with `policies`, after up to `context_turns` earlier turns.
    pub fn new(
        examples: &[Example],
        policies: Arc<[Policy]>,
        context_turns: usize,
        load: LoadScorer,
    ) -> Self {
        Self {
            examples: examples.to_vec(),
            policies,
            context_turns,
            load,
            scorer: OnceLock::new(),
        }
    }

    /// The judged text of example `index` and its spans' effects on `category`.
    fn explain(&self, index: usize, category: &str) -> Result<Value, String> {
        let example = self
            .examples
            .get(index)
            .ok_or(format!("there is no example {index}"))?;
        let prompt = example
            .prompt
            .clone()
            .ok_or("this example was given as scores, without a text to explain")?;
        let policies: Arc<[Policy]> = match example.response {
            Some(_) => for_answers(&self.policies),
            None => self.policies.clone(),
        }
        .iter()
        .filter(|p| p.id == category)
        .cloned()
        .collect();
        if policies.is_empty() {
            return Err(format!("{category:?} is not a category of this profile"));
        }
        let context = &example.context;
        let request = ScoreRequest {
            context: context[context.len().saturating_sub(self.context_turns)..].to_vec(),
            ..ScoreRequest::new(prompt, example.response.clone(), policies)
        };
        let scorer = self.scorer.get_or_init(|| (self.load)()).clone()?;
        let fail = |e: crate::scorer::ScoreError| format!("scoring failed: {e}");
        let base = scorer.score(std::slice::from_ref(&request)).map_err(fail)?;
        let base = base.first().ok_or("scoring gave no result")?;
        let explanation = explain(&*scorer, &request, base, DEFAULT_SPANS, false).map_err(fail)?;
        let text = request.response.as_ref().unwrap_or(&request.user);
        Ok(
            json!({"text": text, "p_yes": base.scores.first().map(|s| s.p_yes),
            "explanation": explanation}),
        )
    }
}

/// What the page shows and how its export edits the config.
pub struct Workbench {
    page: String,
    config: Tuned,
    explainer: Option<Arc<Explainer>>,
}

impl Workbench {
    /// Builds the page data from the examples, the traffic and the analysis.
    pub fn new(
        examples: &[Example],
        traffic: &[Scores],
        reports: &[CategoryReport],
        config: Tuned,
        explainer: Option<Explainer>,
        context: Option<&Comparison>,
    ) -> Self {
        let categories: Vec<Value> = reports
            .iter()
            .map(|r| {
                let samples: Vec<Value> = examples
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let score = e.scores.get(&r.id)?;
                        let label = e.labels.get(&r.id)?;
                        Some(json!([score, u8::from(*label), i]))
                    })
                    .collect();
                let traffic: Vec<f64> = traffic.iter().filter_map(|t| t.get(&r.id).copied()).collect();
                json!({"id": r.id, "current": r.current.threshold, "target": r.target,
                    "suggested": r.suggested.map(|s| s.threshold), "samples": samples, "traffic": traffic})
            })
            .collect();
        let shown: Vec<Value> = examples
            .iter()
            .map(|e| {
                let mut text = e.prompt.clone().unwrap_or_default();
                if let Some(r) = &e.response {
                    text.push_str(" → ");
                    text.push_str(r);
                }
                let snippet: String = text.chars().take(SNIPPET_CHARS).collect();
                json!({"id": e.id, "text": snippet, "explainable": e.prompt.is_some()})
            })
            .collect();
        let data = json!({"categories": categories, "examples": shown,
            "explain": explainer.is_some(), "context": context})
        .to_string();
        // Inside <script>: no "</script>" or "<!--" can appear once '<' is escaped.
        let data = data.replace('<', "\\u003c");
        Self {
            page: PAGE.replace("__DATA__", &data),
            config,
            explainer: explainer.map(Arc::new),
        }
    }

    /// Answers one request: the page, or the exported TOML.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => with_type(
                StatusCode::OK,
                crate::http::body::full(self.page.clone()),
                "text/html; charset=utf-8",
            ),
            (&Method::POST, path @ ("/export" | "/explain")) => {
                let explaining = path == "/explain";
                match read_limited(req.into_body(), 1 << 20, Duration::from_secs(30)).await {
                    Ok(body) if explaining => self.explain(&body).await,
                    Ok(body) => self.export(&body),
                    Err(e @ BodyError::TooLarge(_)) => {
                        text_response(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n"))
                    }
                    Err(e) => {
                        text_response(StatusCode::BAD_REQUEST, format!("{e}; send it again\n"))
                    }
                }
            }
            _ => text_response(StatusCode::NOT_FOUND, "not found: the workbench is at /\n"),
        }
    }

    /// The explanation of `{"example": index, "category": id}`, computed off the async runtime.
    async fn explain(&self, body: &Bytes) -> Response<Body> {
        let bad = |msg: String| text_response(StatusCode::BAD_REQUEST, msg + "\n");
        let Some(explainer) = self.explainer.clone() else {
            return text_response(
                StatusCode::NOT_FOUND,
                "this workbench cannot explain: no model is configured\n",
            );
        };
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(format!("not JSON: {e}")),
        };
        let (Some(index), Some(category)) = (
            request.get("example").and_then(Value::as_u64),
            request.get("category").and_then(Value::as_str),
        ) else {
            return bad("expected {\"example\": index, \"category\": id}".into());
        };
        let category = category.to_string();
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        let done = tokio::task::spawn_blocking(move || explainer.explain(index, &category)).await;
        match done {
            Ok(Ok(value)) => json_response(StatusCode::OK, &value),
            Ok(Err(e)) => text_response(StatusCode::UNPROCESSABLE_ENTITY, e + "\n"),
            Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    /// The config with `{"thresholds": {id: value}}` applied, validated by the config loader.
    fn export(&self, body: &Bytes) -> Response<Body> {
        let bad = |msg: String| text_response(StatusCode::BAD_REQUEST, msg + "\n");
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(format!("not JSON: {e}")),
        };
        let Some(map) = request.get("thresholds").and_then(Value::as_object) else {
            return bad("expected {\"thresholds\": {\"category\": value}}".into());
        };
        let mut thresholds = Vec::new();
        for (id, v) in map {
            match v.as_f64().filter(|t| (0.0..=1.0).contains(t)) {
                // A slider's value, kept to four decimals in the file.
                Some(t) => thresholds.push((id.clone(), (t * 1e4).round() / 1e4)),
                None => return bad(format!("{id}: {v} is not a threshold between 0 and 1")),
            }
        }
        match self.config.with_thresholds(&thresholds) {
            Ok(text) => match Config::parse(&text, "the exported config") {
                Ok(_) => text_response(StatusCode::OK, text),
                Err(e) => bad(format!("the result would not load: {e}")),
            },
            Err(e) => bad(e.to_string()),
        }
    }
}
