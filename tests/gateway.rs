//! The gateway in process with a scripted scorer and a mock upstream on 127.0.0.1: input and
//! output checks in each protocol's JSON and SSE shapes, decisions, profiles, failures and
//! bad input.

use serde_json::{json, Value};

use crate::harness::{chat_stream, post, send, start, MockUpstream, Scripted, TestGateway};

/// A gateway in front of a fresh mock upstream; `extra` is appended to the config.
fn gateway(extra: &str) -> (TestGateway, MockUpstream, std::sync::Arc<Scripted>) {
    // The mock runs on its own runtime so that a stalled gateway cannot stall it.
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let scorer = Scripted::new(true);
    let config = format!("[upstream]\nurl = \"http://{}\"\n{extra}", mock.addr);
    (start(&config, scorer.clone()), mock, scorer)
}

fn chat(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-x", "stream": stream, "temperature": 0.2,
           "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}]})
}

#[test]
fn a_clean_chat_passes_untouched_with_decision_headers() {
    let (gw, mock, scorer) = gateway("");
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-test"),
            ("accept-encoding", "gzip"),
        ],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(a.header("x-shieldgate-action"), Some("pass"));
    assert_eq!(a.header("x-shieldgate-profile"), Some("default"));
    assert_eq!(a.header("x-upstream"), Some("mock"));
    assert!(a
        .header("x-shieldgate-request-id")
        .is_some_and(|v| v.starts_with("sg-")));
    assert_eq!(
        a.header("x-shieldgate-policy-version"),
        Some(gw.gw.settings().profiles.version.as_str())
    );
    let up = mock.last();
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.headers.get("authorization").map(String::as_str),
        Some("Bearer sk-test")
    );
    assert!(
        !up.headers.contains_key("accept-encoding"),
        "the gateway reads the answer"
    );
    let forwarded: Value = serde_json::from_str(&up.body).expect("json");
    assert_eq!(
        forwarded,
        chat("hello", false),
        "the body is forwarded as sent"
    );
    let seen = scorer.seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        [
            ("hello".to_string(), None),
            ("hello".to_string(), Some("Hello there.".to_string()))
        ],
        "input: last user turn (not the system prompt); output: user turn + answer"
    );
}

#[test]
fn a_violating_prompt_gets_the_azure_content_filter_error_and_never_reaches_upstream() {
    let (gw, mock, _) = gateway("");
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("I say hate! now", false),
    ));
    assert_eq!(a.status, 400, "{}", a.body);
    let e = &a.json()["error"];
    assert_eq!(e["code"], "content_filter");
    assert_eq!(e["param"], "prompt");
    assert_eq!(e["innererror"]["code"], "ResponsibleAIPolicyViolation");
    let result = &e["innererror"]["content_filter_result"];
    assert_eq!(result["hate"]["filtered"], true);
    assert_eq!(result["hate"]["severity"], "high");
    assert_eq!(result["sexual"]["filtered"], false);
    assert!(
        result["hate"].get("score").is_none(),
        "scores are not revealed by default"
    );
    assert!(e["message"].as_str().expect("message").contains("hate"));
    assert_eq!(a.header("x-shieldgate-action"), Some("block"));
    assert_eq!(a.header("x-shieldgate-categories"), Some("hate"));
    assert_eq!(mock.count(), 0);
}

#[test]
fn a_violating_answer_is_withheld_in_each_protocol_json_shape() {
    let (gw, _mock, _) = gateway("");
    let rt = &gw.runtime;
    let replacement = "This response was withheld by the content policy.";
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: dangerous~ stuff", false),
    ));
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["message"]["content"], replacement);
    assert_eq!(
        v["choices"][0]["content_filter_results"]["dangerous"]["filtered"],
        true
    );
    assert_eq!(v["usage"]["total_tokens"], 8, "other fields stay");
    assert_eq!(a.header("x-shieldgate-action"), Some("block"));
    assert_eq!(a.header("x-shieldgate-categories"), Some("dangerous"));

    let a = rt.block_on(post(
        gw.addr,
        "/v1/messages",
        &[],
        &json!({"model": "c", "max_tokens": 9,
        "messages": [{"role": "user", "content": "say: hate~ x"}]}),
    ));
    let v = a.json();
    assert_eq!(v["stop_reason"], "refusal");
    assert_eq!(v["content"], json!([{"type": "text", "text": replacement}]));

    let a = rt.block_on(post(
        gw.addr,
        "/v1/responses",
        &[],
        &json!({"model": "m", "input": "say: sexual~ x"}),
    ));
    let v = a.json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "content_filter");
    assert_eq!(v["output"][0]["content"][0]["text"], replacement);

    let a = rt.block_on(post(
        gw.addr,
        "/v1/completions",
        &[],
        &json!({"model": "m", "prompt": "say: harassment~ x"}),
    ));
    let v = a.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["text"], replacement);
}

#[test]
fn a_clean_stream_arrives_byte_for_byte() {
    let (gw, _mock, _) = gateway("");
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: all good here", true),
    ));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert_eq!(a.body, chat_stream("all good here"));
}

#[test]
fn a_violating_stream_ends_cleanly_inside_each_protocol() {
    let (gw, _mock, _) = gateway("");
    let rt = &gw.runtime;
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: hate~ in a stream", true),
    ));
    assert_eq!(a.status, 200);
    assert!(!a.body.contains("hate!"), "{}", a.body);
    let data = a.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(last["id"], "chatcmpl-1", "chunks keep the stream's id");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "This response was withheld by the content policy.");

    let a = rt.block_on(post(
        gw.addr,
        "/v1/messages",
        &[],
        &json!({"model": "c", "max_tokens": 9, "stream": true,
        "messages": [{"role": "user", "content": "say: hate~ x"}]}),
    ));
    assert!(!a.body.contains("hate!"));
    let events: Vec<&str> = a
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let delta: Value = serde_json::from_str(&a.sse_data()[4]).expect("json");
    assert_eq!(delta["delta"]["stop_reason"], "refusal");
    let start: Value = serde_json::from_str(&a.sse_data()[0]).expect("json");
    assert_eq!(start["message"]["id"], "msg_1");

    let a = rt.block_on(post(
        gw.addr,
        "/v1/responses",
        &[],
        &json!({"model": "m", "stream": true, "input": "say: hate~ x"}),
    ));
    let last: Value = serde_json::from_str(a.sse_data().last().expect("events")).expect("json");
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "content_filter"
    );

    let a = rt.block_on(post(
        gw.addr,
        "/v1/completions",
        &[],
        &json!({"model": "m", "stream": true, "prompt": "say: hate~ x"}),
    ));
    let data = a.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunk: Value = serde_json::from_str(&data[0]).expect("json");
    assert_eq!(chunk["choices"][0]["finish_reason"], "content_filter");
}

#[test]
fn flag_and_shadow_pass_with_annotations_and_profiles_follow_the_tenant() {
    let (gw, mock, _) = gateway(
        r#"
[proxy]
reveal = "scores"
[profiles.default.categories]
hate = { action = "block" }
harassment = { threshold = 0.5, action = "flag" }
sexual = { threshold = 0.5, action = "shadow" }
[profiles.lenient]
tenants = ["acme"]
[profiles.lenient.categories]
hate = { threshold = 0.95 }
"#,
    );
    let rt = &gw.runtime;
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("harassment! sexual!", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-shieldgate-action"), Some("flag"));
    assert_eq!(a.header("x-shieldgate-categories"), Some("harassment"));
    assert_eq!(a.header("x-shieldgate-shadow"), Some("sexual"));
    assert!(a
        .header("x-shieldgate-scores")
        .is_some_and(|s| s.contains("input:hate=0.0998")));
    assert_eq!(mock.count(), 1);
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("hate!", false),
    ));
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["innererror"]["content_filter_result"]["hate"]["score"].is_number());
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-shieldgate-tenant", "acme")],
        &chat("hate!", false),
    ));
    assert_eq!(a.status, 200, "P(Yes) 0.9 is under acme's 0.95");
    assert_eq!(a.header("x-shieldgate-profile"), Some("lenient"));
}

#[test]
fn the_scan_setting_decides_what_is_checked_and_unscannable_parts_are_reported() {
    let (gw, _mock, _) = gateway("[proxy]\nscan = [\"all_user\", \"system\"]\nreveal = \"none\"\n");
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "hate! in the system prompt"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]});
    let a = gw
        .runtime
        .block_on(post(gw.addr, "/v1/chat/completions", &[], &body));
    assert_eq!(a.status, 400);
    assert_eq!(a.header("x-shieldgate-unscanned"), Some("1"));
    assert_eq!(a.header("x-shieldgate-categories"), None, "reveal = none");
    let e = &a.json()["error"];
    assert_eq!(
        e["message"],
        "The prompt was filtered by the content policy."
    );
    assert_eq!(e["innererror"]["content_filter_result"], json!({}));
}

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
    let held = Scripted::new(false);
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let gw = start(
        &format!("[upstream]\nurl = \"http://{}\"\n[scorer]\nqueue = 1\nmax_batch = 1\n[proxy]\non_input_error = \"closed\"\n", mock.addr),
        held.clone(),
    );
    let addr = gw.addr;
    let spawn = |text: &'static str| {
        gw.runtime
            .spawn(async move { post(addr, "/v1/chat/completions", &[], &chat(text, false)).await })
    };
    let first = spawn("one");
    held.wait_for_batches(1);
    let second = spawn("two");
    // The worker holds "one"; "two" waits in the queue of one; "three" is refused at once.
    let mut third = None;
    for _ in 0..200 {
        let a = gw.runtime.block_on(post(
            addr,
            "/v1/chat/completions",
            &[],
            &chat("three", false),
        ));
        if a.status == 429 {
            third = Some(a);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let third = third.expect("a request is shed while the queue is full");
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

/// Path, headers, body, expected status.
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
fn audit_mode_relays_at_once_and_records_the_verdict_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    let (gw, _mock, _) = gateway(&format!(
        "[proxy]\noutput_mode = \"audit\"\n[decision_log]\npath = \"{}\"\n",
        log.display()
    ));
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: hate~ streamed", true),
    ));
    assert_eq!(
        a.body,
        chat_stream("hate! streamed"),
        "audit never changes the stream"
    );
    let mut output = None;
    for _ in 0..500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("\"direction\":\"output\""))
        {
            output = Some(serde_json::from_str::<Value>(line).expect("json"));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = output.expect("the audited answer is recorded");
    assert_eq!(output["disposition"], "block");
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
fn incremental_mode_relays_checked_text_and_cuts_the_stream_where_it_turns() {
    let (gw, _mock, scorer) =
        gateway("[proxy]\noutput_mode = \"incremental\"\nincremental_chars = 8\n");
    let rt = &gw.runtime;
    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: all of this is fine text", true),
    ));
    assert_eq!(
        a.body,
        chat_stream("all of this is fine text"),
        "a clean stream is unchanged"
    );
    let checks: Vec<String> = scorer
        .seen
        .lock()
        .expect("seen")
        .iter()
        .filter_map(|s| s.1.clone())
        .collect();
    assert!(
        checks.len() >= 3,
        "the growing answer is checked several times: {checks:?}"
    );
    assert!(
        checks.windows(2).all(|w| w[1].starts_with(&w[0])),
        "{checks:?}"
    );
    assert_eq!(
        checks.last().map(String::as_str),
        Some("all of this is fine text")
    );

    let a = rt.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: fine start then hate~ later on", true),
    ));
    assert!(
        !a.body.contains("hate!") && !a.body.contains("later"),
        "{}",
        a.body
    );
    let data = a.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        text.starts_with("fine start"),
        "checked text was relayed: {text:?}"
    );
    assert_eq!(
        chunks.last().expect("chunk")["choices"][0]["finish_reason"],
        "content_filter"
    );

    let a = rt.block_on(post(
        gw.addr,
        "/v1/messages",
        &[],
        &json!({"model": "c", "max_tokens": 9, "stream": true,
        "messages": [{"role": "user", "content": "say: fine start then hate~ later on"}]}),
    ));
    assert!(!a.body.contains("hate!"), "{}", a.body);
    let events: Vec<&str> = a
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(
        &events[events.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        events.contains(&"content_block_delta"),
        "checked text was relayed"
    );
    let delta: Value = serde_json::from_str(&a.sse_data()[a.sse_data().len() - 2]).expect("json");
    assert_eq!(delta["delta"]["stop_reason"], "refusal");

    let a = rt.block_on(post(
        gw.addr,
        "/v1/responses",
        &[],
        &json!({"model": "m", "stream": true, "input": "say: fine start then hate~ later"}),
    ));
    let last: Value = serde_json::from_str(a.sse_data().last().expect("events")).expect("json");
    assert_eq!(last["type"], "response.incomplete");
    assert!(
        a.body.contains("response.output_text.delta"),
        "checked text was relayed"
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
        let client: hyper_util::client::legacy::Client<_, shieldgate::proxy::body::Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("content-type", "application/json")
            .body(shieldgate::proxy::body::full(
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
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let held = Scripted::new(false);
    let gw = start(
        &format!(
            "[upstream]\nurl = \"http://{}\"\n[scorer]\nmax_batch = 1\n",
            mock.addr
        ),
        held.clone(),
    );
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
