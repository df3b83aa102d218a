//! Faults, case by case: a scorer that panics, fails or is too slow on the input or the output
//! check, under fail-open and fail-closed, for JSON and streamed answers; an upstream that
//! resets mid-stream, stalls mid-body, answers garbage or a 5xx. Every case gets the configured
//! behaviour, and every case shows in the metrics and (for checks) in the decision log.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shieldgate::scorer::{PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};

use crate::harness::{chat, post, send, start, MockUpstream, TestGateway};

/// Scores every policy 0.1, except where the judged text (the response when there is one)
/// asks for a fault: `panic!`, `fail!` or `slow!` (longer than the test's scorer timeout).
struct Faulty;

impl Score for Faulty {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        for r in requests {
            let judged = r.response.as_deref().unwrap_or(&r.user);
            if judged.contains("panic!") {
                std::panic::panic_any(INJECTED);
            }
            if judged.contains("fail!") {
                return Err(ScoreError::Remote("injected failure".into()));
            }
            if judged.contains("slow!") {
                std::thread::sleep(Duration::from_millis(1200));
            }
        }
        Ok(requests
            .iter()
            .map(|r| RequestScores {
                scores: r
                    .policies
                    .iter()
                    .map(|p| PolicyScore {
                        id: p.id.clone(),
                        p_yes: 0.1,
                        yes_logit: -1.1,
                        no_logit: 1.1,
                        tokens: 10,
                    })
                    .collect(),
                truncated: None,
            })
            .collect())
    }
}

/// Keeps the injected panics quiet and fast: printing a backtrace for each (with
/// RUST_BACKTRACE set, on a loaded machine) can take longer than the scorer timeout. Other
/// panics go to the hook in place before.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == INJECTED);
            if !injected {
                previous(info);
            }
        }));
    });
}

const INJECTED: &str = "injected scorer panic";

/// A metric's value in the Prometheus text (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(gw: &TestGateway) -> String {
    gw.runtime
        .block_on(send(gw.admin, "GET", "/metrics", &[], ""))
        .body
}

fn decisions(path: &std::path::Path, request_id: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["request_id"] == request_id)
        .collect()
}

#[test]
fn every_scorer_fault_gets_the_configured_behaviour_and_is_recorded() {
    quiet_injected_panics();
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tried = 0;
    for mode in ["open", "closed"] {
        let log = dir.path().join(format!("{mode}.jsonl"));
        let gw = start(
            &format!(
                "[upstream]\nurl = \"http://{}\"\n[scorer]\ntimeout_ms = 1000\n\
                 [proxy]\non_input_error = \"{mode}\"\non_output_error = \"{mode}\"\n\
                 [decision_log]\npath = {:?}\n",
                mock.addr,
                log.display().to_string()
            ),
            Arc::new(Faulty),
        );
        for (fault, error_type) in [
            ("panic", "scoring_failed"),
            ("fail", "scoring_failed"),
            ("slow", "scorer_timeout"),
        ] {
            for direction in ["input", "output"] {
                for stream in [false, true] {
                    // The mock answers what follows `say:`, with `~` as `!`: the output
                    // check then sees the fault marker, the input check does not.
                    let user = match direction {
                        "input" => format!("please {fault}!"),
                        _ => format!("say:{fault}~"),
                    };
                    let case = format!("{fault} on {direction}, fail-{mode}, stream {stream}");
                    let before = metrics(&gw);
                    let upstream_before = mock.count();
                    let a = gw.runtime.block_on(post(
                        gw.addr,
                        "/v1/chat/completions",
                        &[],
                        &chat(&user, stream),
                    ));
                    tried += 1;
                    if mode == "open" {
                        assert_eq!(a.status, 200, "{case}: {}", a.body);
                        assert_eq!(a.header("x-shieldgate-action"), Some("pass"), "{case}");
                    } else {
                        assert_eq!(a.status, 503, "{case}: {}", a.body);
                        assert_eq!(
                            a.json()["error"]["code"],
                            "moderation_unavailable",
                            "{case}"
                        );
                        assert_eq!(a.header("retry-after"), Some("1"), "{case}");
                        let expected_calls = usize::from(direction == "output");
                        assert_eq!(
                            mock.count() - upstream_before,
                            expected_calls,
                            "{case}: a failed input check never reaches the upstream"
                        );
                    }
                    assert!(
                        a.header("x-shieldgate-evaluation-error")
                            .is_some_and(|e| e.contains(error_type)),
                        "{case}: {:?}",
                        a.headers
                    );
                    let after = metrics(&gw);
                    let labels = [("direction", direction), ("type", error_type)];
                    let counted = metric(&after, "shieldgate_evaluation_errors_total", &labels)
                        - metric(&before, "shieldgate_evaluation_errors_total", &labels);
                    assert_eq!(counted, 1.0, "{case}: counted in the metrics");
                    let id = a.header("x-shieldgate-request-id").expect("request id");
                    let lines = decisions(&log, id);
                    assert!(
                        lines.iter().any(|d| d["direction"] == direction
                            && d["evaluation_error"] == error_type
                            && d["disposition"]
                                == if mode == "open" {
                                    "pass"
                                } else {
                                    "unavailable"
                                }),
                        "{case}: in the decision log: {lines:?}"
                    );
                }
            }
        }
        // The panics did not take the scorer down: a clean request is still scored.
        let a = gw.runtime.block_on(post(
            gw.addr,
            "/v1/chat/completions",
            &[],
            &chat("hello", false),
        ));
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("x-shieldgate-evaluation-error"),
            None,
            "{:?}",
            a.headers
        );
    }
    println!("faults: {tried} scorer fault cases, all honoured");
}

#[test]
fn every_upstream_fault_is_answered_faithfully_and_counted() {
    let mock_runtime = Box::leak(Box::new(crate::harness::runtime()));
    let mock = MockUpstream::start(mock_runtime);
    for mode in ["open", "closed"] {
        let gw = start(
            &format!(
                "[upstream]\nurl = \"http://{}\"\nidle_timeout_ms = 200\n\
                 [proxy]\non_output_error = \"{mode}\"\n",
                mock.addr
            ),
            Arc::new(Faulty),
        );
        let garbage_status = if mode == "open" { 200 } else { 503 };
        for (header, stream, status, counter, label) in [
            (
                "x-mock-break",
                true,
                502,
                "shieldgate_errors_total",
                "upstream_failed",
            ),
            (
                "x-mock-stall-body-ms",
                false,
                504,
                "shieldgate_errors_total",
                "upstream_stalled",
            ),
            (
                "x-mock-stall-body-ms",
                true,
                504,
                "shieldgate_errors_total",
                "upstream_stalled",
            ),
            (
                "x-mock-garbage",
                false,
                garbage_status,
                "shieldgate_evaluation_errors_total",
                "unparsable_response",
            ),
            (
                "x-mock-status",
                false,
                500,
                "shieldgate_upstream_seconds_count",
                "5xx",
            ),
        ] {
            let value = match header {
                "x-mock-status" => "500",
                "x-mock-stall-body-ms" => "600",
                _ => "1",
            };
            let case = format!("{header} (stream {stream}), output fail-{mode}");
            let before = metrics(&gw);
            let a = gw.runtime.block_on(post(
                gw.addr,
                "/v1/chat/completions",
                &[(header, value)],
                &chat("hello", stream),
            ));
            assert_eq!(a.status, status, "{case}: {}", a.body);
            let after = metrics(&gw);
            let key = if counter == "shieldgate_upstream_seconds_count" {
                "status_class"
            } else {
                "type"
            };
            let counted = metric(&after, counter, &[(key, label)])
                - metric(&before, counter, &[(key, label)]);
            assert_eq!(counted, 1.0, "{case}: {counter}{{{key}={label}}}");
            let requests = metric(
                &after,
                "shieldgate_requests_total",
                &[("status", &status.to_string())],
            ) - metric(
                &before,
                "shieldgate_requests_total",
                &[("status", &status.to_string())],
            );
            assert_eq!(requests, 1.0, "{case}: counted by status");
        }
    }
}
