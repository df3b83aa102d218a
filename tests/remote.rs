//! The remote scorer backend with the real binary: `serve` and `audit` score through an
//! OpenAI-compatible completions server (a mock on 127.0.0.1 answering fixed logprobs) with no
//! model loaded, and the scores are P(Yes) from those logprobs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use serde_json::{json, Value};
use shieldgate::proxy::body::{json_response, Body};
use shieldgate::proxy::server::{serve, Limits};

/// Logprobs the mock gives: `Yes` higher than `No` for hate's guideline, lower otherwise.
async fn completions(req: Request<hyper::body::Incoming>) -> Response<Body> {
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

fn start_mock(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            max_header_bytes: 65536,
            shutdown_grace: Duration::from_secs(1),
        };
        tokio::spawn(serve(listener, limits, completions, std::future::pending()));
        addr
    })
}

fn p_yes(yes: f64, no: f64) -> f64 {
    1.0 / (1.0 + (no - yes).exp())
}

#[test]
fn serve_and_audit_score_through_a_completions_server_without_a_model() {
    let runtime = crate::harness::runtime();
    let mock = start_mock(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("remote.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"\"\n\
             [model]\nsource = \"/nonexistent/model\"\n\
             [scorer.remote]\nurls = [\"http://{mock}\"]\nmodel = \"shieldgemma-2b\"\nhealth_interval_ms = 0\n"
        ),
    )
    .expect("config written");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("shieldgate serve: listening on http://")
                .map(str::to_string)
        });
    let moderation = addr.map(|addr| {
        let client = crate::harness::runtime();
        client.block_on(async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connects");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let req = Request::post("/v1/moderations")
                .header("host", &addr)
                .header("content-type", "application/json")
                .body(shieldgate::proxy::body::full(r#"{"input": "some text"}"#))
                .expect("request");
            let answer = send.send_request(req).await.expect("answer");
            let bytes = answer.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<Value>(&bytes).expect("json")
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let moderation = moderation.expect("the gateway started without loading a model");
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
