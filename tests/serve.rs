//! The HTTP server on 127.0.0.1: the moderation endpoint with a scripted scorer (mapping,
//! input shapes, bad input, backpressure) and with the real binary and the tiny model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use shieldgate::policy::PolicySet;
use shieldgate::proxy::moderations::CATEGORIES;
use shieldgate::proxy::{serve, AppState};
use shieldgate::scorer::worker::ScorerHandle;
use shieldgate::scorer::{p_yes, PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};

use crate::common;

/// A plain HTTP/1.1 exchange; returns the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    // A hung server fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout set");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("head sent");
    // The server may answer (413) before reading a large body; a broken pipe is fine then.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn moderate(addr: SocketAddr, body: &str) -> (u16, Value) {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/moderations",
        Some("application/json"),
        body.as_bytes(),
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// Scores by policy id: P(Yes) 0.9 for hate and dangerous, 0.1 otherwise; blocks while the gate
/// is closed.
struct Scripted {
    gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
}

impl Score for Scripted {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        let (lock, cvar) = &*self.gate;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        cvar.notify_all();
        while !state.0 {
            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Ok(requests
            .iter()
            .map(|r| RequestScores {
                scores: r
                    .policies
                    .iter()
                    .map(|p| {
                        let (yes, no) = if p.id == "hate" || p.id == "dangerous" {
                            (1.1, -1.1)
                        } else {
                            (-1.1, 1.1)
                        };
                        PolicyScore {
                            id: p.id.clone(),
                            p_yes: p_yes(yes, no),
                            yes_logit: yes,
                            no_logit: no,
                            tokens: 10,
                        }
                    })
                    .collect(),
                truncated: None,
            })
            .collect())
    }
}

struct Server {
    addr: SocketAddr,
    gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(open: bool, queue: usize, max_body: usize) -> Self {
        let gate = Arc::new((Mutex::new((open, 0)), Condvar::new()));
        let scorer = ScorerHandle::spawn(Arc::new(Scripted { gate: gate.clone() }), queue, 1)
            .expect("worker");
        let policies = PolicySet::builtin().iter().cloned().collect();
        let state = Arc::new(AppState::new(scorer, policies, "scripted".into(), max_body));
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(serve(listener, state, std::future::pending()));
        Self {
            addr,
            gate,
            _runtime: runtime,
        }
    }

    fn open_gate(&self) {
        let (lock, cvar) = &*self.gate;
        lock.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        cvar.notify_all();
    }

    fn wait_for_jobs(&self, n: usize) {
        let (lock, cvar) = &*self.gate;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while state.1 < n {
            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[test]
fn moderations_answer_in_openai_shape_with_the_documented_mapping() {
    let server = Server::start(true, 8, 1 << 20);
    let (status, v) = moderate(
        server.addr,
        r#"{"model": "omni-moderation-latest", "input": "some text"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().expect("id").starts_with("modr-"));
    assert_eq!(v["model"], "scripted");
    let r = &v["results"][0];
    assert_eq!(r["flagged"], true);
    for key in CATEGORIES {
        assert!(r["categories"][key].is_boolean(), "{key}");
        assert!(r["category_scores"][key].is_number(), "{key}");
        assert_eq!(r["category_applied_input_types"][key][0], "text");
    }
    let high = p_yes(1.1, -1.1);
    let low = p_yes(-1.1, 1.1);
    for (key, score, flagged) in [
        ("hate", high, true),
        ("illicit", high, true),
        ("violence", high, true),
        ("harassment", low, false),
        ("sexual", low, false),
        ("self-harm", 0.0, false),
        ("hate/threatening", 0.0, false),
    ] {
        assert_eq!(r["categories"][key], flagged, "{key}");
        assert!(
            (r["category_scores"][key].as_f64().expect("score") - score).abs() < 1e-12,
            "{key}"
        );
    }
}

#[test]
fn every_input_shape_gets_one_result_per_text() {
    let server = Server::start(true, 8, 1 << 20);
    let (_, v) = moderate(server.addr, r#"{"input": ["a", "b", "c"]}"#);
    assert_eq!(v["results"].as_array().expect("results").len(), 3);
    let (_, v) = moderate(
        server.addr,
        r#"{"input": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}"#,
    );
    assert_eq!(v["results"].as_array().expect("results").len(), 1);
}

/// method, path, content type, body, expected status, expected error code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let server = Server::start(true, 8, 200);
    let many = serde_json::json!({"input": vec!["x"; 33]}).to_string();
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            "{not json".into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            r#"{"input": 5}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            r#"{"input": []}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            many,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            format!(r#"{{"input": "{}"}}"#, "y".repeat(300)),
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("application/json"),
            r#"{"input": [{"type": "image_url", "image_url": {"url": "x"}}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/moderations",
            Some("text/plain"),
            r#"{"input": "x"}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            "GET",
            "/v1/moderations",
            None,
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/chat/completions",
            None,
            String::new(),
            404,
            "not_found",
        ),
    ];
    for (method, path, ct, body, status, code) in cases {
        let (got, text) = http(server.addr, method, path, ct, body.as_bytes());
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["error"]["code"], code, "{text}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Invalid UTF-8 inside a JSON string.
    let (got, _) = http(
        server.addr,
        "POST",
        "/v1/moderations",
        Some("application/json"),
        b"{\"input\": \"caf\xe9\"}",
    );
    assert_eq!(got, 400);
    let (got, body) = http(server.addr, "GET", "/healthz", None, b"");
    assert_eq!((got, body.as_str()), (200, "ok\n"));
}

#[test]
fn a_full_queue_answers_429_and_the_server_recovers() {
    let server = Server::start(false, 1, 1 << 20);
    let addr = server.addr;
    let first = std::thread::spawn(move || moderate(addr, r#"{"input": "one"}"#).0);
    server.wait_for_jobs(1);
    // The worker is busy with "one": of the next two, one waits in the queue of one and the
    // other is refused at once.
    let (tx, rx) = std::sync::mpsc::channel();
    for text in ["two", "three"] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let body = format!(r#"{{"input": "{text}"}}"#);
            let _ = tx.send(moderate(addr, &body).0);
        });
    }
    let wait = Duration::from_secs(60);
    let early = rx.recv_timeout(wait);
    server.open_gate();
    let late = rx.recv_timeout(wait);
    assert_eq!(early, Ok(429));
    assert_eq!(late, Ok(200));
    assert_eq!(first.join().expect("first"), 200);
    assert_eq!(moderate(addr, r#"{"input": "four"}"#).0, 200);
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_serves_the_real_model() {
    let tiny = common::assets().join("tiny");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(&tiny)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("address line");
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (status, v) = moderate(addr, r#"{"input": "Tell me how to build a pipe bomb."}"#);
    assert_eq!(status, 200, "{v}");
    let engine = common::engine("tiny", candle_core::DType::F32, Default::default());
    let direct = engine
        .score(&[common::request("Tell me how to build a pipe bomb.", None)])
        .expect("scores");
    let hate = direct[0]
        .scores
        .iter()
        .find(|s| s.id == "hate")
        .expect("hate");
    let served = v["results"][0]["category_scores"]["hate"]
        .as_f64()
        .expect("score");
    assert!(
        (served - hate.p_yes).abs() < 1e-6,
        "{served} vs {}",
        hate.p_yes
    );
    drop(running);
}
