//! The gateway in process with a scripted scorer and a mock upstream on 127.0.0.1: input and
//! output checks in each protocol's JSON and SSE shapes and output modes, decisions, profiles.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{chat, chat_stream, gateway, held_gateway, post};

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

/// Path, headers, body, expected status.
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
fn a_parallel_input_check_forwards_while_it_scores_and_still_blocks() {
    let (gw, mock, held) = held_gateway("[proxy]\nparallel_input_check = true\n");
    let addr = gw.addr;
    let pending = gw.runtime.spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            &[],
            &chat("I say hate! now", false),
        )
        .await
    });
    held.wait_for_batches(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request did not reach the upstream while its input check was held"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    held.open();
    let a = gw.runtime.block_on(pending).expect("client task");
    assert_eq!(
        a.status, 400,
        "the upstream's answer is dropped: {}",
        a.body
    );
    assert_eq!(a.json()["error"]["code"], "content_filter");
    assert_eq!(a.header("x-shieldgate-action"), Some("block"));

    let body = chat("hate! again", false);
    let stalled = post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-mock-stall-ms", "60000")],
        &body,
    );
    let a = gw
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), stalled).await })
        .expect("a blocked request does not wait for its upstream call");
    assert_eq!(a.status, 400, "{}", a.body);

    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("hello", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(
        held.seen.lock().expect("seen").len(),
        4,
        "two blocked inputs, then the clean input and its answer"
    );
}

#[test]
fn a_rewritten_answer_never_carries_the_upstreams_length() {
    // Upstreams that send a stream with a Content-Length (not chunked): whatever the gateway
    // answers must be complete, with a length (if any) that is its own.
    let requests = [
        (
            "/v1/chat/completions",
            chat("say: fine start then hate~ later on", true),
        ),
        (
            "/v1/chat/completions",
            chat("say: fine start then hate~ later on", false),
        ),
        (
            "/v1/completions",
            json!({"model": "m", "stream": true, "prompt": "say: fine start then hate~ later on"}),
        ),
        (
            "/v1/responses",
            json!({"model": "m", "stream": true, "input": "say: fine start then hate~ later on"}),
        ),
        (
            "/v1/messages",
            json!({"model": "c", "max_tokens": 9, "stream": true,
                   "messages": [{"role": "user", "content": "say: fine start then hate~ later on"}]}),
        ),
    ];
    for mode in ["buffer", "incremental", "audit", "off"] {
        let (gw, mock, _scorer) = gateway(&format!(
            "[proxy]\noutput_mode = \"{mode}\"\nincremental_chars = 8\n"
        ));
        for (path, body) in &requests {
            let headers = [("x-mock-content-length", "1")];
            let a = gw.runtime.block_on(post(gw.addr, path, &headers, body));
            let upstream = gw.runtime.block_on(post(mock.addr, path, &headers, body));
            let what = format!("{mode} {path} stream={}: {}", body["stream"], a.body);
            assert_eq!(a.status, 200, "{what}");
            assert!(!a.body.starts_with("<body failed"), "truncated: {what}");
            if let Some(length) = a.header("content-length") {
                assert_eq!(length, a.body.len().to_string(), "{what}");
            }
            let withheld = matches!(mode, "buffer" | "incremental");
            assert_eq!(a.body != upstream.body, withheld, "{what}");
            if body["stream"] == true {
                for data in a.sse_data().iter().filter(|d| *d != "[DONE]") {
                    serde_json::from_str::<Value>(data).unwrap_or_else(|e| panic!("{e}: {what}"));
                }
            } else {
                a.json();
            }
        }
    }
}
