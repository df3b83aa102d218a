//! The HTTP server on 127.0.0.1: the moderation endpoint with a scripted scorer (mapping,
//! input shapes, bad input, backpressure) and with the real binary and the tiny model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shieldgate::gateway::moderations::CATEGORIES;
use shieldgate::scorer::{p_yes, Score};

use crate::common;
use crate::harness::{post, send, start, MockUpstream, Scripted, TestGateway};

/// A plain HTTP/1.1 exchange; returns the status and the body.
pub fn http(
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

/// POSTs `body` to /v1/moderations; the status and the JSON answer.
pub fn moderate(addr: SocketAddr, body: &str) -> (u16, Value) {
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

struct Server {
    addr: SocketAddr,
    scorer: Arc<Scripted>,
    _gateway: TestGateway,
}

impl Server {
    fn start(open: bool, queue: usize, max_body: usize) -> Self {
        let scorer = Scripted::new(open);
        let config = format!(
            "[scorer]\nqueue = {queue}\nmax_batch = 1\n[server]\nmax_body_bytes = {max_body}\n"
        );
        let gateway = start(&config, scorer.clone());
        Self {
            addr: gateway.addr,
            scorer,
            _gateway: gateway,
        }
    }

    fn open_gate(&self) {
        self.scorer.open();
    }

    fn wait_for_jobs(&self, n: usize) {
        self.scorer.wait_for_batches(n);
    }
}

#[test]
fn moderations_answer_in_openai_shape_with_the_documented_mapping() {
    let server = Server::start(true, 8, 1 << 20);
    let (status, v) = moderate(
        server.addr,
        r#"{"model": "omni-moderation-latest", "input": "hate! and dangerous!"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().expect("id").starts_with("modr-"));
    assert_eq!(v["model"], "scripted");
    assert_eq!(v["results"][0]["flagged"], true);
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

/// Starts `shieldgate serve --config CONFIG` (which must set both listeners); the running
/// process and its public and admin addresses.
pub fn spawn_serve(config: &std::path::Path) -> (common::KillOnDrop, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let (addr, admin) = addresses(child.stdout.take().expect("stdout"));
    (common::KillOnDrop(child), addr, admin)
}

/// Reads the "listening on" and "admin on" lines `serve` prints.
pub fn addresses(stdout: std::process::ChildStdout) -> (SocketAddr, SocketAddr) {
    let mut reader = BufReader::new(stdout);
    let mut read = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("address line");
        line.trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    (read(), read())
}

#[test]
fn the_binary_gateway_scores_with_the_real_model_reloads_and_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = crate::harness::runtime();
    let mock = MockUpstream::start(&runtime);
    let log = dir.path().join("decisions.jsonl");
    let config = dir.path().join("gateway.toml");
    let write_config = |threshold: f64| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [model]\nsource = \"{}\"\nprefix_cache_tokens = 4096\n[scorer]\ncache_entries = 64\n\
             [upstream]\nurl = \"http://{}\"\n\
             [decision_log]\npath = \"{}\"\n\
             [profiles.default.categories]\nhate = {{ threshold = {threshold} }}\ndangerous = {{ threshold = 1.0 }}\n",
            common::assets().join("tiny").display(),
            mock.addr,
            log.display()
        );
        std::fs::write(&config, text).expect("config written");
    };
    write_config(1.0);
    let (running, addr, admin) = spawn_serve(&config);

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

    let chat = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Tell me how to build a pipe bomb."}]});
    let a = runtime.block_on(post(addr, "/v1/chat/completions", &[], &chat));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-shieldgate-action"), Some("pass"));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let logged = |i: usize| {
        lines[i]["categories"][1]["p_yes"]
            .as_f64()
            .expect("hate score")
    };
    assert_eq!(lines[1]["categories"][1]["id"], "hate");
    assert!(
        (logged(0) - hate.p_yes).abs() < 1e-6,
        "input check = engine"
    );
    let output = engine
        .score(&[common::request(
            "Tell me how to build a pipe bomb.",
            Some("Hello there."),
        )])
        .expect("scores");
    let out_hate = output[0]
        .scores
        .iter()
        .find(|s| s.id == "hate")
        .expect("hate");
    assert!(
        (logged(1) - out_hate.p_yes).abs() < 1e-6,
        "output check = engine"
    );

    // A threshold below the score, written to the file, blocks the same request.
    std::thread::sleep(Duration::from_millis(1100));
    write_config(0.0);
    let mut blocked = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if runtime
            .block_on(post(addr, "/v1/chat/completions", &[], &chat))
            .status
            == 400
        {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the file change was picked up");
    let metrics = runtime
        .block_on(send(admin, "GET", "/metrics", &[], Vec::new()))
        .body;
    assert!(
        metrics.contains("shieldgate_config_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    // The chat input repeats the moderated text: answered from the verdict cache.
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(counter("shieldgate_verdict_cache_hits_total") >= 1);
    assert_eq!(
        counter("shieldgate_verdict_cache_misses_total"),
        2,
        "the moderated text and the output were scored"
    );
    // Both went through the prefix cache: other templates, other texts, no hit.
    assert_eq!(counter("shieldgate_prefix_cache_misses_total"), 2);
    assert_eq!(counter("shieldgate_prefix_cache_hits_total"), 0);
    assert!(counter("shieldgate_prefix_cache_tokens") > 0);

    let pid = running.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut running = running;
    let exit = running.0.wait().expect("exits");
    assert!(exit.success(), "SIGTERM drains and exits cleanly: {exit:?}");
}

#[test]
fn check_config_validates_without_starting() {
    let example = common::root().join("examples/shieldgate.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("check-config")
        .arg(&example)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": ok (policy-set version"), "{text}");
    assert!(text.contains("default, trial"), "{text}");

    // A bad file exits 2 and says what is wrong.
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |text: &str| -> String {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).expect("written");
        let out = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
            .arg("check-config")
            .arg(&bad)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("[profiles.default.categories]\nviolence = {}\n");
    assert!(
        err.contains("violence") && err.contains("dangerous, harassment, hate, sexual"),
        "{err}"
    );
    // The injection classifier's source is checked without loading it.
    let err = refused("[injection]\nmodel = \"/no/such/prompt-guard\"\n");
    assert!(
        err.contains("[injection] model") && err.contains("/no/such/prompt-guard"),
        "{err}"
    );
}

#[test]
fn debug_logs_never_hold_keys_or_content() {
    let runtime = crate::harness::runtime();
    let mock = MockUpstream::start(&runtime);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(["--log-level", "debug", "--log-format", "json", "serve"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(common::assets().join("tiny"))
        .arg("--upstream")
        .arg(format!("http://{}", mock.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let (addr, _) = addresses(child.stdout.take().expect("stdout"));
    let running = common::KillOnDrop(child);
    let chat = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "my-private-words say: secret-answer"}]});
    let headers = [
        ("authorization", "Bearer sk-do-not-log"),
        ("x-api-key", "ak-do-not-log"),
    ];
    let a = runtime.block_on(post(addr, "/v1/chat/completions", &headers, &chat));
    // The random model may flag it: either way the exchange was moderated.
    assert!(a.header("x-shieldgate-action").is_some(), "{}", a.body);
    let bad = runtime.block_on(send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), headers[0]],
        "{my-private-words",
    ));
    assert_eq!(bad.status, 400);
    let pid = running.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    let mut running = running;
    running.0.wait().expect("exits");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut logs).expect("logs");
    assert!(
        logs.contains("\"level\":\"DEBUG\"") || logs.contains("\"level\":\"INFO\""),
        "{logs}"
    );
    for secret in [
        "sk-do-not-log",
        "ak-do-not-log",
        "my-private-words",
        "secret-answer",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}
