//! The remote scorer backend with the real binary: `serve` and `audit` score through an
//! OpenAI-compatible completions server (a mock on 127.0.0.1 answering fixed logprobs) with no
//! model loaded, and the scores are P(Yes) from those logprobs.

use std::process::Command;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use serde_json::{json, Value};
use shieldgate::proxy::body::{json_response, Body};

use crate::serve::{moderate, spawn_serve};

/// Logprobs the mock gives: `Yes` higher than `No` for hate's guideline, lower otherwise.
pub async fn completions(req: Request<hyper::body::Incoming>) -> Response<Body> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let request: Value = body
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let choices: Vec<Value> = request["prompt"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            let hate = p.as_str().is_some_and(|t| t.contains("Hate Speech"));
            let (yes, no) = if hate { (-0.2, -1.8) } else { (-3.0, -0.05) };
            json!({"index": i, "text": "Yes", "logprobs": {"top_logprobs": [{"Yes": yes, "No": no}]}})
        })
        .collect();
    json_response(
        hyper::StatusCode::OK,
        &json!({"object": "text_completion", "choices": choices}),
    )
}

fn p_yes(yes: f64, no: f64) -> f64 {
    1.0 / (1.0 + (no - yes).exp())
}

#[test]
fn serve_and_audit_score_through_a_completions_server_without_a_model() {
    let runtime = crate::harness::runtime();
    let mock = crate::harness::serve_on_loopback(&runtime, completions);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("remote.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [model]\nsource = \"/nonexistent/model\"\n\
             [scorer.remote]\nurls = [\"http://{mock}\"]\nmodel = \"shieldgemma-2b\"\nhealth_interval_ms = 0\n"
        ),
    )
    .expect("config written");
    let (running, addr, _) = spawn_serve(&config);
    let (status, moderation) = moderate(addr, r#"{"input": "some text"}"#);
    drop(running);
    assert_eq!(
        status, 200,
        "the gateway started without loading a model: {moderation}"
    );
    let scores = &moderation["results"][0]["category_scores"];
    assert!((scores["hate"].as_f64().expect("hate") - p_yes(-0.2, -1.8)).abs() < 1e-9);
    assert!((scores["violence"].as_f64().expect("violence") - p_yes(-3.0, -0.05)).abs() < 1e-9);
    assert_eq!(moderation["results"][0]["flagged"], true);

    let log = dir.path().join("log.jsonl");
    std::fs::write(
        &log,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .expect("log written");
    let out = dir.path().join("audit");
    let audit = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("audit")
        .arg(&log)
        .arg("--out")
        .arg(&out)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("audit runs");
    assert_eq!(audit.status.code(), Some(1), "hate is flagged");
    let results = std::fs::read_to_string(out.join("results.jsonl")).expect("results");
    let line: Value = serde_json::from_str(results.trim()).expect("json");
    assert!((line["scores"]["hate"].as_f64().expect("hate") - p_yes(-0.2, -1.8)).abs() < 1e-9);
}
