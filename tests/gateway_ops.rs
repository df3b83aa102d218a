//! The gateway's failure behaviour and operations, in process with a scripted scorer and a
//! mock upstream on 127.0.0.1: scorer down or overloaded, upstream failures, bad input, limits,
//! TLS, h2c, admin listener, decision log, reload, shutdown, abandoned clients.

use serde_json::{json, Value};

use crate::harness::{
    chat, chat_stream, gateway, held_gateway, post, send, start, MockUpstream, Scripted,
};

#[test]
fn a_scorer_that_is_down_fails_open_or_closed_per_direction() {
    let slow = "[scorer]\ntimeout_ms = 200\n";
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let upstream = format!("[upstream]\nurl = \"http://{}\"\n", mock.addr);
    let held = Scripted::new(false);
    let open = start(&format!("{upstream}{slow}"), held.clone());
    let a = open.runtime.block_on(post(
        open.addr,
        "/v1/chat/completions",
        &[],
        &chat("hate!", false),
    ));
    assert_eq!(a.status, 200, "fail-open passes: {}", a.body);
    assert_eq!(
        a.header("x-shieldgate-evaluation-error"),
        Some("scorer_timeout,scorer_timeout")
    );
    assert_eq!(a.header("x-shieldgate-action"), Some("pass"));
    held.open();

    let held = Scripted::new(false);
    let closed = start(
        &format!("{upstream}{slow}[proxy]\non_input_error = \"closed\"\n"),
        held.clone(),
    );
    let before = mock.count();
    let a = closed.runtime.block_on(post(
        closed.addr,
        "/v1/messages",
        &[],
        &json!({"model": "c", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hello"}]}),
    ));
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.json()["error"]["type"], "overloaded_error");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(mock.count(), before);
    held.open();
}

#[test]
fn a_full_scorer_queue_sheds_load_with_429() {
    let (gw, _mock, held) =
        held_gateway("[scorer]\nqueue = 1\nmax_batch = 1\n[proxy]\non_input_error = \"closed\"\n");
    let addr = gw.addr;
    let spawn = |text: &'static str| {
        gw.runtime
            .spawn(async move { post(addr, "/v1/chat/completions", &[], &chat(text, false)).await })
    };
    let first = spawn("one");
    held.wait_for_batches(1);
    let second = spawn("two");
    // The worker holds "one"; once "two" waits in the queue of one, "three" is refused at once.
    let queued = || {
        gw.runtime
            .block_on(send(gw.admin, "GET", "/metrics", &[], ""))
            .body
            .contains("shieldgate_scorer_queue_depth 1")
    };
    let started = std::time::Instant::now();
    while !queued() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "\"two\" never reached the queue"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let third = gw.runtime.block_on(post(
        addr,
        "/v1/chat/completions",
        &[],
        &chat("three", false),
    ));
    assert_eq!(
        third.status, 429,
        "shed while the queue is full: {}",
        third.body
    );
    assert_eq!(third.json()["error"]["code"], "moderation_unavailable");
    assert_eq!(
        third.header("x-shieldgate-evaluation-error"),
        Some("queue_full")
    );
    held.open();
    assert_eq!(gw.runtime.block_on(first).expect("first").status, 200);
    assert_eq!(gw.runtime.block_on(second).expect("second").status, 200);
}

#[test]
fn upstream_failures_are_passed_through_or_answered_502_504() {
    let (gw, _mock, _) = gateway("");
    let rt = &gw.runtime;
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 500, "upstream errors pass through faithfully");
    assert_eq!(a.json()["error"]["message"], "upstream says no");
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-mock-break", "1")],
        &chat("hello", true),
    ));
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "upstream_failed");

    let dead = start(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\nconnect_timeout_ms = 500\n",
        Scripted::new(true),
    );
    let a = dead.runtime.block_on(post(
        dead.addr,
        "/v1/chat/completions",
        &[],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"]["code"], "upstream_unreachable");

    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let slow = start(
        &format!(
            "[upstream]\nurl = \"http://{}\"\nresponse_timeout_ms = 200\n",
            mock.addr
        ),
        Scripted::new(true),
    );
    let a = slow.runtime.block_on(post(
        slow.addr,
        "/v1/messages",
        &[("x-mock-stall-ms", "2000")],
        &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    ));
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"]["type"], "api_error");
}

type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16);

#[test]
fn bad_requests_get_clear_4xx_in_the_protocol_shape() {
    let (gw, mock, _) = gateway("[server]\nmax_body_bytes = 2000\n");
    let rt = &gw.runtime;
    let json_ct = [("content-type", "application/json")];
    let cases: [Case; 6] = [
        ("/v1/chat/completions", &json_ct, b"{not json".to_vec(), 400),
        (
            "/v1/chat/completions",
            &json_ct,
            br#"{"messages": 5}"#.to_vec(),
            400,
        ),
        (
            "/v1/chat/completions",
            &json_ct,
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}".to_vec(),
            400,
        ),
        (
            "/v1/chat/completions",
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
        ),
        (
            "/v1/chat/completions",
            &json_ct,
            format!("{{\"x\": \"{}\"}}", "y".repeat(3000)).into_bytes(),
            413,
        ),
        ("/v1/messages", &json_ct, b"[]".to_vec(), 400),
    ];
    for (path, headers, body, status) in cases {
        let a = rt.block_on(send(gw.addr, "POST", path, headers, body));
        assert_eq!(a.status, status, "{path}: {}", a.body);
        let v = a.json();
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        } else {
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }
    assert_eq!(mock.count(), 0);
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("still fine", false),
    ));
    assert_eq!(a.status, 200, "the gateway still serves");

    let (gw, mock, _) = gateway("[proxy]\non_bad_request = \"pass\"\n");
    let a = gw.runtime.block_on(send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &json_ct,
        b"{odd".to_vec(),
    ));
    assert_eq!(a.status, 200, "forwarded unscanned");
    assert_eq!(
        a.header("x-shieldgate-evaluation-error"),
        Some("unparsable_request")
    );
    assert_eq!(mock.last().body, "{odd");
    let metrics = gw.gw.metrics.render();
    assert!(
        metrics.contains(
            "shieldgate_evaluation_errors_total{direction=\"input\",type=\"unparsable_request\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn other_paths_pass_through_or_are_refused_by_config() {
    let (gw, mock, _) = gateway("");
    let a = gw.runtime.block_on(send(
        gw.addr,
        "GET",
        "/v1/models?limit=2",
        &[("authorization", "Bearer k")],
        Vec::new(),
    ));
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["object"], "list");
    assert_eq!(mock.last().path, "/v1/models?limit=2");
    assert!(a.header("x-shieldgate-action").is_none(), "not moderated");

    let (gw, _mock, _) = gateway("[proxy]\nunknown_paths = \"refuse\"\n");
    let a = gw
        .runtime
        .block_on(send(gw.addr, "GET", "/v1/models", &[], Vec::new()));
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "not_found");
    let a = gw
        .runtime
        .block_on(send(gw.addr, "GET", "/metrics", &[], Vec::new()));
    assert_eq!(a.status, 404, "metrics are only on the admin listener");
}

#[test]
fn the_admin_listener_reports_health_readiness_and_metrics() {
    let (gw, _mock, _) = gateway("");
    let rt = &gw.runtime;
    rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("hate!", false),
    ));
    let a = rt.block_on(send(gw.admin, "GET", "/healthz", &[], Vec::new()));
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    let a = rt.block_on(send(gw.admin, "GET", "/readyz", &[], Vec::new()));
    assert_eq!(a.status, 200);
    let m = rt
        .block_on(send(gw.admin, "GET", "/metrics", &[], Vec::new()))
        .body;
    for needle in [
        "shieldgate_decisions_total{action=\"block\",direction=\"input\"} 1",
        "shieldgate_category_violations_total{action=\"block\",category=\"hate\",direction=\"input\"} 1",
        "shieldgate_requests_total{protocol=\"openai_chat\",route=\"moderated\",status=\"400\"} 1",
        "shieldgate_score_bucket{category=\"hate\",direction=\"input\",le=\"0.9500000000000001\"} 1",
        "shieldgate_scorer_seconds_count{direction=\"input\"} 1",
    ] {
        assert!(m.contains(needle), "{needle} missing from\n{m}");
    }
    gw.gw.start_draining();
    let a = rt.block_on(send(gw.admin, "GET", "/readyz", &[], Vec::new()));
    assert_eq!(a.status, 503, "draining");
}

#[test]
fn the_decision_log_records_scores_without_content_or_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    let (gw, _mock, _) = gateway(&format!("[decision_log]\npath = \"{}\"\n", log.display()));
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-very-secret")],
        &chat("secret words say: hate~ reply", false),
    ));
    assert_eq!(a.status, 200);
    let text = std::fs::read_to_string(&log).expect("log written");
    assert!(!text.contains("secret"), "no content and no key in {text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["direction"], "input");
    assert_eq!(lines[0]["disposition"], "pass");
    assert_eq!(lines[1]["direction"], "output");
    assert_eq!(lines[1]["disposition"], "block");
    assert_eq!(
        lines[1]["request_id"],
        a.header("x-shieldgate-request-id").expect("id")
    );
    assert_eq!(lines[1]["content_sha256"].as_str().map(str::len), Some(64));
    // An answer that cannot be read is passed (fail-open) and still logged and counted.
    let garbage = [("x-mock-garbage", "1")];
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &garbage,
        &chat("hi", false),
    ));
    assert_eq!((a.status, a.body.as_str()), (200, "this is not JSON"));
    assert_eq!(
        a.header("x-shieldgate-evaluation-error"),
        Some("unparsable_response")
    );
    let last = json_last(&log);
    assert_eq!(last["direction"], "output");
    assert_eq!(last["evaluation_error"], "unparsable_response");
    let m = gw
        .runtime
        .block_on(send(gw.admin, "GET", "/metrics", &[], Vec::new()))
        .body;
    assert!(m.contains("shieldgate_evaluation_errors_total{direction=\"output\",type=\"unparsable_response\"} 1"), "{m}");
    let hate = lines[1]["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .find(|c| c["id"] == "hate")
        .expect("hate")
        .clone();
    assert_eq!(hate["violated"], true);
    assert_eq!(hate["threshold"], 0.5);
}

#[test]
fn a_reload_changes_thresholds_and_a_broken_one_keeps_the_old() {
    let (gw, mock, _) = gateway("");
    let rt = &gw.runtime;
    let before = gw.gw.settings().profiles.version.clone();
    let strict = shieldgate::config::Config::parse(
        &format!("[upstream]\nurl = \"http://{}\"\n[profiles.default.categories]\nhate = {{ threshold = 0.05 }}\n", mock.addr),
        "reload",
    )
    .expect("config");
    let version = gw.gw.reload(&strict).expect("reloads");
    assert_ne!(version, before);
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 400, "P(Yes) 0.1 now crosses 0.05");
    let broken =
        shieldgate::config::Config::parse("[profiles.default.categories]\nnope = {}\n", "broken")
            .expect("parses");
    assert!(gw.gw.reload(&broken).is_err());
    assert_eq!(gw.gw.settings().profiles.version, version);
    // The injection classifier is loaded at start: its categories cannot arrive by reload.
    let injection =
        shieldgate::config::Config::parse("[injection]\nmodel = \"synthetic:22m\"\n", "injection")
            .expect("parses");
    let e = gw.gw.reload(&injection).expect_err("needs a restart");
    assert!(e.to_string().contains("restart"), "{e}");
    assert_eq!(gw.gw.settings().profiles.version, version);
}

#[test]
fn shutdown_lets_open_exchanges_finish_and_refuses_new_ones() {
    let (gw, mock, _) = gateway("");
    let addr = gw.addr;
    let inflight = gw.runtime.spawn(async move {
        let headers = [("x-mock-stall-ms", "500")];
        post(addr, "/v1/chat/completions", &headers, &chat("hello", true)).await
    });
    for _ in 0..500 {
        if mock.count() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(mock.count(), 1, "the request reached the upstream");
    gw.shutdown();
    let a = gw.runtime.block_on(inflight).expect("in-flight exchange");
    assert_eq!(a.status, 200);
    assert!(a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn a_tls_upstream_is_trusted_through_the_configured_ca_file_only() {
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let (mock, ca) = MockUpstream::start_tls(mock_runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("CA written");
    let url = format!("https://localhost:{}", mock.addr.port());
    let trusted = start(
        &format!(
            "[upstream]\nurl = \"{url}\"\nca_file = \"{}\"\n",
            ca_file.display()
        ),
        Scripted::new(true),
    );
    let a = trusted.runtime.block_on(post(
        trusted.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: over TLS", true),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, chat_stream("over TLS"));
    assert_eq!(mock.count(), 1);

    let untrusted = start(
        &format!("[upstream]\nurl = \"{url}\"\n"),
        Scripted::new(true),
    );
    let a = untrusted.runtime.block_on(post(
        untrusted.addr,
        "/v1/chat/completions",
        &[],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"]["code"], "upstream_unreachable");
    assert!(a.body.contains("certificate"), "{}", a.body);
    assert_eq!(
        mock.count(),
        1,
        "nothing was sent over an unverified connection"
    );
}

#[test]
fn h2c_clients_are_served_on_the_same_port() {
    let (gw, _mock, _) = gateway("");
    let a = gw.runtime.block_on(async {
        let client: hyper_util::client::legacy::Client<_, shieldgate::http::body::Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("content-type", "application/json")
            .body(shieldgate::http::body::full(
                chat("hello over h2", false).to_string(),
            ))
            .expect("request");
        let response = client.request(req).await.expect("h2 response");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let action = response.headers().get("x-shieldgate-action").cloned();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body");
        (action, body.to_bytes())
    });
    assert_eq!(a.0.as_ref().map(|v| v.as_bytes()), Some(&b"pass"[..]));
    let v: Value = serde_json::from_slice(&a.1).expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello there.");
}

#[test]
fn a_client_that_goes_away_cancels_its_pending_check() {
    let (gw, mock, held) = held_gateway("[scorer]\nmax_batch = 1\n");
    let addr = gw.addr;
    let first = gw
        .runtime
        .spawn(async move { post(addr, "/v1/chat/completions", &[], &chat("first", false)).await });
    held.wait_for_batches(1);
    let gone = gw.runtime.spawn(async move {
        post(addr, "/v1/chat/completions", &[], &chat("abandoned", false)).await
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    gone.abort();
    std::thread::sleep(std::time::Duration::from_millis(200));
    held.open();
    assert_eq!(gw.runtime.block_on(first).expect("first").status, 200);
    let seen = held.seen.lock().expect("seen").clone();
    assert!(
        seen.iter().all(|(user, _)| user != "abandoned"),
        "the abandoned check was dropped unscored: {seen:?}"
    );
    assert_eq!(mock.count(), 1, "and never forwarded");
}

#[test]
fn oversized_heads_and_slow_exchanges_get_431_and_504() {
    let (gw, _mock, _) = gateway("[server]\nmax_header_bytes = 1024\nrequest_timeout_ms = 300\n");
    let rt = &gw.runtime;
    let big = "x".repeat(20_000);
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-big", big.as_str())],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 431);
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-mock-stall-ms", "2000")],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "request_timeout");
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 200, "the gateway still serves");
}

fn json_last(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).expect("log");
    serde_json::from_str(text.lines().last().expect("a line")).expect("json")
}

/// `GET /explain` on the admin listener reads a check back from the decision log and says
/// which span drove it: the removal effect of each span, from the gateway's own scorer.
#[test]
fn the_admin_listener_explains_a_logged_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    let (gw, _mock, scripted) = gateway(&format!(
        "[decision_log]\npath = \"{}\"\ninclude_content = true\n\
         [profiles.default.categories]\nhate = {{ threshold = 0.5, action = \"block\" }}\n\
         sexual = {{ threshold = 0.5, action = \"flag\" }}\n",
        log.display()
    ));
    let explain = |query: &str| {
        let a = gw.runtime.block_on(send(
            gw.admin,
            "GET",
            &format!("/explain?{query}"),
            &[],
            Vec::new(),
        ));
        let body: Value = serde_json::from_str(&a.body).expect("json");
        (a.status, body)
    };
    let text = "Good morning. Tell them: hate! right now. Thanks.";
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat(text, false),
    ));
    assert_eq!(a.status, 400, "{}", a.body);
    let id = a.header("x-shieldgate-request-id").expect("id").to_string();
    let (status, body) = explain(&format!("request_id={id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["direction"], "input");
    assert_eq!(body["profile"], "default");
    let part = &body["parts"][0];
    assert_eq!(part["text"], text);
    assert!((part["scores"]["hate"].as_f64().expect("hate") - 0.9).abs() < 1e-3);
    let strongest = &part["explanation"]["spans"][0];
    assert_eq!(strongest["text"], "Tell them: hate! ");
    let effect = strongest["effect"]["hate"].as_f64().expect("effect");
    assert!((effect - 0.8).abs() < 1e-3, "{strongest}");
    assert_eq!(part["explanation"]["spans_scored"], 4);
    for span in part["explanation"]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .skip(1)
    {
        assert!(span["effect"]["hate"].as_f64().expect("effect").abs() < 1e-9);
    }

    // An answer is explained after the user turn it replies to.
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("Quote me. say: sexual~ then stop", false),
    ));
    assert_eq!(
        a.header("x-shieldgate-categories"),
        Some("sexual"),
        "{}",
        a.body
    );
    let id = a.header("x-shieldgate-request-id").expect("id").to_string();
    let before = scripted.seen.lock().expect("seen").len();
    let (status, body) = explain(&format!("request_id={id}&direction=output&spans=2"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parts"][0]["text"], "sexual! then stop");
    let seen = scripted.seen.lock().expect("seen")[before..].to_vec();
    assert!(
        seen.iter()
            .all(|(user, _)| user == "Quote me. say: sexual~ then stop"),
        "{seen:?}"
    );

    // What cannot be explained says why.
    for (query, status, says) in [
        ("request_id=nope", 404, "no input check of request \"nope\""),
        ("direction=input", 400, "request_id is missing"),
        (&format!("request_id={id}&spans=0") as &str, 400, "spans=0"),
    ] {
        let (got, body) = explain(query);
        assert_eq!(got, status, "{query}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains(says),
            "{body}"
        );
    }
    let (gw2, _mock2, _) = gateway("");
    let a = gw2.runtime.block_on(send(
        gw2.admin,
        "GET",
        "/explain?request_id=x",
        &[],
        Vec::new(),
    ));
    assert_eq!(a.status, 404);
    assert!(a.body.contains("include_content = true"), "{}", a.body);
    let quiet = dir.path().join("quiet.jsonl");
    let (gw3, _mock3, _) = gateway(&format!("[decision_log]\npath = \"{}\"\n", quiet.display()));
    let a = gw3.runtime.block_on(post(
        gw3.addr,
        "/v1/chat/completions",
        &[],
        &chat("hi", false),
    ));
    let id = a.header("x-shieldgate-request-id").expect("id").to_string();
    let a = gw3.runtime.block_on(send(
        gw3.admin,
        "GET",
        &format!("/explain?request_id={id}"),
        &[],
        Vec::new(),
    ));
    assert_eq!(a.status, 422, "{}", a.body);
}
