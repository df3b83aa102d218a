//! Personal data and secrets in requests, through the gateway in process (scripted scorer,
//! mock upstream on 127.0.0.1): masked before they go upstream, refused, or flagged, per kind
//! as the profile says; counted in the metrics, headers and decision log, never written out.

use serde_json::Value;

use crate::harness::{chat, gateway, post, send};

const RULES: &str = r#"
[proxy]
scan = ["all_user", "system", "tool_calls", "tool_results"]
[profiles.default.pii.input]
email = "mask"
card = "mask"
phone = "flag"
api_key = "block"
ssn = "off"
"#;

#[test]
fn masked_kinds_never_reach_the_upstream_or_the_scorer_and_every_other_byte_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    let config = format!(
        "{RULES}[decision_log]\npath = \"{}\"\ninclude_content = true\n",
        log.display()
    );
    let (gw, mock, scorer) = gateway(&config);
    // Sent as written (not re-serialized), so the upstream's copy can be compared byte for byte.
    let body = r#"{"model": "gpt-x", "messages": [
        {"role": "system", "content": "Escalate to ops@corp.example"},
        {"role": "user", "content": "Card 4111 1111 1111 1111, SSN 536-22-1234, call +1 415 555 0100"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
          "function": {"name": "mail", "arguments": "{\"to\": \"jane\u0040example.com\"}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sent to jane@example.com"},
        {"role": "user", "content": "Thanks!  Also  bill   4111111111111111 ."}]}"#;
    let headers = [("content-type", "application/json")];
    let a = gw.runtime.block_on(send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        body.to_string(),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.header("x-shieldgate-pii"),
        Some("input:card=mask:2,input:phone=flag:1,input:email=mask:3")
    );
    let sent = mock.last().body;
    let expected = body
        .replace("ops@corp.example", "[EMAIL_1]")
        .replace("4111 1111 1111 1111", "[CARD_1]")
        .replace("4111111111111111", "[CARD_1]")
        .replace(r"jane\u0040example.com", "[EMAIL_2]")
        .replace("jane@example.com", "[EMAIL_2]");
    assert_eq!(sent, expected, "only the values changed, byte for byte");
    serde_json::from_str::<Value>(&sent).expect("still JSON");
    let seen = format!("{:?}", scorer.seen.lock().expect("seen"));
    assert!(
        seen.contains("[CARD_1]") && !seen.contains("4111"),
        "{seen}"
    );
    assert!(
        seen.contains("+1 415 555 0100"),
        "flagged kinds pass as they are"
    );
    assert!(
        seen.contains("536-22-1234"),
        "kinds that are off are not looked for"
    );
    let text = std::fs::read_to_string(&log).expect("log written");
    assert!(!text.contains("4111") && !text.contains("jane@"), "{text}");
    let input: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert_eq!(input["pii"]["email"]["count"], 3);
    assert_eq!(input["pii"]["email"]["action"], "mask");
    assert_eq!(input["pii"]["phone"]["action"], "flag");
    let metrics = gw.gw.metrics.render();
    assert!(
        metrics.contains(
            r#"shieldgate_pii_found_total{action="mask",direction="input",kind="email"} 3"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_blocked_kind_refuses_the_request_naming_the_kind_not_the_value() {
    let (gw, mock, scorer) = gateway(RULES);
    let key = "sk-proj-abc123def456ghi789jkl0mn";
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat(&format!("use {key} please"), false),
        ),
        (
            "/v1/messages",
            serde_json::json!({"model": "c", "max_tokens": 9, "messages": [{"role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": format!("KEY={key}")}]}]}),
        ),
        (
            "/v1/responses",
            serde_json::json!({"model": "m", "input": format!("my key: {key}")}),
        ),
        (
            "/v1/completions",
            serde_json::json!({"model": "m", "prompt": [format!("key {key}")]}),
        ),
    ] {
        let a = gw.runtime.block_on(post(gw.addr, path, &[], &body));
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(!a.body.contains(key), "{path}: {}", a.body);
        let error = &a.json()["error"];
        if path != "/v1/messages" {
            // Anthropic's envelope has no code, only its own error type.
            assert_eq!(error["code"], "pii_blocked", "{path}");
        }
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("api_key"), "{path}: {message}");
    }
    assert_eq!(mock.count(), 0, "nothing blocked went upstream");
    assert!(
        scorer.seen.lock().expect("seen").is_empty(),
        "nor to the scorer"
    );
    let metrics = gw.gw.metrics.render();
    assert!(
        metrics.contains(r#"shieldgate_errors_total{type="pii_blocked"} 4"#),
        "{metrics}"
    );
}

#[test]
fn without_an_input_check_what_is_found_is_still_masked_and_shown() {
    let (gw, mock, scorer) = gateway(&format!("{RULES}\n[proxy]\ninput_check = false\n").replace(
        "[proxy]\nscan = [\"all_user\", \"system\", \"tool_calls\", \"tool_results\"]\n",
        "",
    ));
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("mail a@b.example.org", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-shieldgate-pii"), Some("input:email=mask:1"));
    assert!(mock.last().body.contains("[EMAIL_1]"));
    assert!(
        scorer
            .seen
            .lock()
            .expect("seen")
            .iter()
            .all(|s| s.1.is_some()),
        "only the output was checked"
    );
}

#[test]
fn answers_are_masked_and_the_requests_placeholders_restored_for_the_client() {
    let (gw, mock, scorer) = gateway(
        r#"
[profiles.default.pii]
input = { email = "mask" }
output = { phone = "mask", email = "mask" }
restore = true
"#,
    );
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: write to ana@example.com, call +1 415 555 0100", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        mock.last()
            .body
            .contains("say: write to [EMAIL_1], call +1 415 555 0100"),
        "{}",
        mock.last().body
    );
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "write to ana@example.com, call [PHONE_1]",
        "the request's address restored, the answer's own number masked"
    );
    assert_eq!(
        a.header("x-shieldgate-pii"),
        Some("input:email=mask:1,output:phone=mask:1")
    );
    let seen = format!("{:?}", scorer.seen.lock().expect("seen"));
    assert!(!seen.contains("ana@"), "{seen}");
    assert!(
        seen.contains(r#"Some("write to [EMAIL_1], call [PHONE_1]")"#),
        "{seen}"
    );
}

#[test]
fn a_blocked_kind_in_an_answer_withholds_it() {
    let (gw, _mock, _) = gateway("[profiles.default.pii.output]\ncard = \"block\"\n");
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/chat/completions",
        &[],
        &chat("say: it is 4111 1111 1111 1111", false),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.body.contains("4111"), "{}", a.body);
    assert_eq!(a.json()["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(a.header("x-shieldgate-action"), Some("block"));
    assert_eq!(a.header("x-shieldgate-pii"), Some("output:card=block:1"));
}

#[test]
fn moderations_count_the_profiles_kinds_and_flag_what_it_blocks_or_flags() {
    let (gw, _mock, _) = gateway(RULES);
    let a = gw.runtime.block_on(post(
        gw.addr,
        "/v1/moderations",
        &[],
        &serde_json::json!({"input": ["mail a@b.example.org", "call +1 415 555 0100", "SSN 536-22-1234"]}),
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    let results = &a.json()["results"];
    assert_eq!(results[0]["pii"], serde_json::json!({"email": 1}));
    assert_eq!(results[0]["flagged"], false, "masked kinds pass");
    assert_eq!(results[1]["pii"], serde_json::json!({"phone": 1}));
    assert_eq!(results[1]["flagged"], true, "flagged kinds flag");
    assert!(
        results[2].get("pii").is_none(),
        "kinds that are off are not looked for"
    );
}

#[test]
fn a_request_that_cannot_be_read_is_not_forwarded_where_personal_data_is_masked_or_blocked() {
    let unreadable = serde_json::json!({"model": "m", "prompt_text": "mail jane@example.com"});
    for (rules, forwarded) in [("email = \"mask\"", false), ("email = \"flag\"", true)] {
        let (gw, mock, _) = gateway(&format!(
            "[proxy]\non_bad_request = \"pass\"\n[profiles.default.pii.input]\n{rules}\n"
        ));
        let a = gw
            .runtime
            .block_on(post(gw.addr, "/v1/chat/completions", &[], &unreadable));
        assert_eq!(mock.count() == 1, forwarded, "{rules}: {}", a.body);
        if !forwarded {
            assert_eq!(a.status, 400, "{}", a.body);
            assert!(
                a.body.contains("masks or blocks personal data"),
                "{}",
                a.body
            );
        }
    }
}

/// The answer's text as a client reassembles it from a stream in the protocol of `path`.
fn streamed_text(path: &str, body: &str) -> String {
    let mut text = String::new();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            assert_eq!(data, "[DONE]", "every event is JSON");
            continue;
        };
        let piece = match path {
            "/v1/chat/completions" => &event["choices"][0]["delta"]["content"],
            "/v1/completions" => &event["choices"][0]["text"],
            "/v1/responses" => &event["delta"],
            _ => &event["delta"]["text"],
        };
        text += piece.as_str().unwrap_or_default();
    }
    text
}

fn streamed_request(path: &str, user: &str) -> Value {
    match path {
        "/v1/chat/completions" => chat(user, true),
        "/v1/completions" => serde_json::json!({"model": "m", "prompt": user, "stream": true}),
        "/v1/responses" => serde_json::json!({"model": "m", "input": user, "stream": true}),
        _ => serde_json::json!({"model": "m", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": user}]}),
    }
}

const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
];

/// The mock streams its answer four characters an event, seven bytes a read: every value is
/// split across events and reads.
#[test]
fn streamed_answers_are_masked_and_restored_in_every_protocol_and_output_mode() {
    for mode in ["buffer", "incremental", "audit", "off"] {
        let (gw, mock, _) = gateway(&format!(
            r#"
[proxy]
output_mode = "{mode}"
incremental_chars = 8
[profiles.default.pii]
input = {{ email = "mask" }}
output = {{ card = "mask", phone = "mask", api_key = "block" }}
restore = true
"#
        ));
        for path in PATHS {
            let user =
                "say: write to ana@example.com, card 4111 1111 1111 1111, call +1 415 555 0100.";
            let a = gw
                .runtime
                .block_on(post(gw.addr, path, &[], &streamed_request(path, user)));
            assert_eq!(a.status, 200, "{mode} {path}: {}", a.body);
            assert!(mock.last().body.contains("[EMAIL_1]"), "{mode} {path}");
            for secret in ["4111", "1111", "555 0100"] {
                assert!(
                    !a.body.contains(secret),
                    "{mode} {path}: {secret} in {}",
                    a.body
                );
            }
            assert_eq!(
                streamed_text(path, &a.body),
                "write to ana@example.com, card [CARD_1], call [PHONE_1].",
                "{mode} {path}: {}",
                a.body
            );
            if path == "/v1/responses" {
                let completed = a
                    .sse_data()
                    .into_iter()
                    .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
                    .find(|e| e["type"] == "response.completed")
                    .expect("completed");
                assert_eq!(
                    completed["response"]["output"][0]["content"][0]["text"],
                    "write to ana@example.com, card [CARD_1], call [PHONE_1].",
                    "{mode}: the final snapshot as streamed"
                );
            }
        }
        let metrics = gw.gw.metrics.render();
        for kind in ["card", "phone"] {
            let line = format!(
                "shieldgate_pii_found_total{{action=\"mask\",direction=\"output\",kind=\"{kind}\"}} 4"
            );
            let seen = || gw.gw.metrics.render().contains(&line);
            // In `audit` mode the count comes with the check that follows the relay.
            for _ in 0..50 {
                if seen() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(seen(), "{mode}: {line} in {metrics}");
        }
    }
}

#[test]
fn a_blocked_kind_in_a_stream_withholds_it_or_masks_it_where_nothing_is_withheld() {
    for (mode, withheld) in [
        ("buffer", true),
        ("incremental", true),
        ("audit", false),
        ("off", false),
    ] {
        let (gw, _mock, _) = gateway(&format!(
            "[proxy]\noutput_mode = \"{mode}\"\n[profiles.default.pii.output]\ncard = \"block\"\n"
        ));
        for path in PATHS {
            let user =
                "say: a long enough lead-in before the number, then 4111 1111 1111 1111 and more";
            let a = gw
                .runtime
                .block_on(post(gw.addr, path, &[], &streamed_request(path, user)));
            assert_eq!(a.status, 200, "{mode} {path}: {}", a.body);
            assert!(!a.body.contains("4111"), "{mode} {path}: {}", a.body);
            let text = streamed_text(path, &a.body);
            assert_eq!(
                text.contains("[CARD_1]"),
                !withheld,
                "{mode} {path}: {text}"
            );
            if withheld {
                assert!(
                    a.body.contains("content_filter") || a.body.contains("refusal"),
                    "{mode} {path}: {}",
                    a.body
                );
            }
        }
    }
}

/// A JSON answer in a mode that does not wait for its check is held whole to be masked and
/// restored; in `off` mode, where nothing is withheld, a blocked kind is masked and noted so.
#[test]
fn json_answers_are_masked_in_the_modes_that_relay_at_once() {
    for mode in ["audit", "off"] {
        let (gw, _mock, _) = gateway(&format!(
            r#"
[proxy]
output_mode = "{mode}"
[profiles.default.pii]
input = {{ email = "mask" }}
output = {{ card = "block", phone = "mask" }}
restore = true
"#
        ));
        let a = gw.runtime.block_on(post(
            gw.addr,
            "/v1/chat/completions",
            &[],
            &chat(
                "say: to ana@example.com, card 4111 1111 1111 1111, call +1 415 555 0100",
                false,
            ),
        ));
        assert_eq!(a.status, 200, "{mode}: {}", a.body);
        assert_eq!(
            a.json()["choices"][0]["message"]["content"],
            "to ana@example.com, card [CARD_1], call [PHONE_1]",
            "{mode}"
        );
        if mode == "off" {
            assert_eq!(
                a.header("x-shieldgate-pii"),
                Some("input:email=mask:1,output:card=mask:1,output:phone=mask:1")
            );
        }
    }
}
