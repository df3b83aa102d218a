//! Calibrated probabilities with the real binary: a config's `[calibration.ID]` makes the
//! gateway's decisions, its decision log, `/v1/moderations` and audit compare and report the
//! calibrated probability (the raw one beside it), and `tune --calibrate --write` fits the map
//! on labelled scores and writes it with thresholds that make the same decisions.

use std::process::Command;

use serde_json::{json, Value};
use shieldgate::config::Config;
use shieldgate::policy::calibration::{logit, sigmoid};

use crate::remote::{audit, gateway_config};
use crate::serve::{moderate, spawn_serve};

/// The remote mock's P(Yes) for hate (logprobs -0.2 and -1.8) and for every other policy.
fn raw(hate: bool) -> f64 {
    let (yes, no) = if hate {
        (-0.2f64, -1.8f64)
    } else {
        (-3.0, -0.05)
    };
    1.0 / (1.0 + (no - yes).exp())
}

#[test]
fn the_gateway_moderations_and_audit_compare_and_report_calibrated_probabilities() {
    let runtime = crate::harness::runtime();
    let mock = crate::harness::serve_on_loopback(&runtime, crate::remote::completions);
    let upstream = crate::harness::MockUpstream::start(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    let config = dir.path().join("calibrated.toml");
    // Raw hate 0.832 stays under 0.88; calibrated (a = 2, b = -1) it is 0.900 and crosses it.
    // Sexual's raw 0.05 falls on the isotonic step from 0.0: 0.2, over its threshold of 0.15.
    std::fs::write(
        &config,
        gateway_config(
            upstream.addr,
            mock,
            &format!(
                "[decision_log]\npath = {:?}\n\
             [calibration.hate]\nmethod = \"platt\"\na = 2.0\nb = -1.0\n\
             [calibration.sexual]\nmethod = \"isotonic\"\nsteps = [[0.0, 0.2], [0.5, 0.9]]\n\
             [profiles.default.categories]\nhate = {{ threshold = 0.88, action = \"flag\" }}\n\
             sexual = {{ threshold = 0.15, action = \"flag\" }}\n\
             dangerous = {{ threshold = 0.5, action = \"flag\" }}\n",
                log.display().to_string()
            ),
        ),
    )
    .expect("config written");
    let hate = sigmoid(2.0 * logit(raw(true)) - 1.0);
    assert!(raw(true) < 0.88 && hate >= 0.88, "{hate}");

    let (gateway, addr, _) = spawn_serve(&config);
    let (status, moderation) = moderate(addr, r#"{"input": "some text"}"#);
    assert_eq!(status, 200, "{moderation}");
    let result = &moderation["results"][0];
    let close = |v: &Value, want: f64| (v.as_f64().expect("number") - want).abs() < 1e-9;
    assert!(close(&result["category_scores"]["hate"], hate), "{result}");
    assert!(close(&result["policy_scores"]["sexual"], 0.2), "{result}");
    assert!(
        close(&result["policy_scores"]["dangerous"], raw(false)),
        "{result}"
    );
    assert_eq!(result["flagged"], true);
    assert_eq!(result["violated"], json!(["hate", "sexual"]));

    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let answer = runtime.block_on(crate::harness::post(
        addr,
        "/v1/chat/completions",
        &[],
        &chat,
    ));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-shieldgate-action"), Some("flag"));
    drop(gateway);
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .expect("decision log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let input = lines
        .iter()
        .find(|l| l["direction"] == "input")
        .expect("input check");
    let category = |id: &str| {
        input["categories"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id))
            .cloned()
            .expect("category")
    };
    assert!(close(&category("hate")["p_yes"], hate));
    assert!(close(&category("hate")["raw_p_yes"], raw(true)));
    assert_eq!(category("hate")["violated"], true);
    assert_eq!(
        category("dangerous").get("raw_p_yes"),
        None,
        "not calibrated"
    );

    let conversations = dir.path().join("log.jsonl");
    std::fs::write(
        &conversations,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .expect("log written");
    let out = dir.path().join("audit");
    let audit = audit(&conversations, &out, &config, &[]);
    assert_eq!(audit.status.code(), Some(1), "flagged turns");
    let results = std::fs::read_to_string(out.join("results.jsonl")).expect("results");
    let line: Value = serde_json::from_str(results.trim()).expect("json");
    assert!(close(&line["scores"]["hate"], hate), "{line}");
    assert!(close(&line["raw_scores"]["hate"], raw(true)), "{line}");
    assert!(close(&line["scores"]["sexual"], 0.2), "{line}");
    assert_eq!(line["raw_scores"].get("dangerous"), None);
    assert_eq!(line["violated"], json!(["hate", "sexual"]));
}

#[test]
fn a_bad_calibration_is_refused_with_where_and_why() {
    for (text, says) in [
        (
            "[calibration.hate]\nmethod = \"platt\"\na = -1.0\nb = 0.0\n",
            "[calibration.hate]: platt: a must be a positive number",
        ),
        (
            "[calibration.hate]\nmethod = \"isotonic\"\nsteps = [[0.5, 0.9], [0.6, 0.1]]\n",
            "not descend in probability",
        ),
    ] {
        let e = Config::parse(text, "t").expect_err("refused");
        assert!(e.to_string().contains(says), "{e}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[calibration.nope]\nmethod = \"platt\"\na = 1.0\nb = 0.0\n",
    )
    .expect("written");
    let check = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        stderr.contains("[calibration.nope]") && stderr.contains("unknown policy"),
        "{stderr}"
    );
}

/// Labelled hate scores whose violations follow `sigmoid(2·logit(s) − 1)`: raw P(Yes) is
/// overconfident low and high (a fixed pseudo-random sequence).
fn miscalibrated(n: usize) -> String {
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let score = ((next() * 0.98 + 0.01) * 1000.0).round() / 1000.0;
            let positive = next() < sigmoid(2.0 * logit(score) - 1.0);
            json!({"id": i, "prompt": format!("example {i}"), "scores": {"hate": score},
                "labels": {"hate": u8::from(positive)}})
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn tune_calibrate_writes_the_map_and_thresholds_that_make_the_same_decisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let labelled = dir.path().join("labelled.jsonl");
    std::fs::write(&labelled, miscalibrated(60)).expect("labelled");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "# ours\n[profiles.default.categories]\nhate = { threshold = 0.5, action = \"flag\" }\n",
    )
    .expect("config");
    let tune = |extra: &[&str], out: &str| {
        let run = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
            .arg("tune")
            .arg(&labelled)
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--model", "/nonexistent/model"])
            .args(extra)
            .output()
            .expect("tune runs");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("summary.json")).expect("summary"),
        )
        .expect("json");
        let hate = summary["categories"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == "hate"))
            .cloned()
            .expect("hate");
        (String::from_utf8_lossy(&run.stdout).to_string(), hate)
    };
    let (stdout, hate) = tune(&["--calibrate", "--write"], "first");
    assert!(stdout.contains("calibrated"), "{stdout}");
    let written = Config::load(&config).expect("the gateway loads the written config");
    let fitted = &written.calibration["hate"];
    // Fewer than 50 labels of each kind: Platt scaling, as summary.json reports it.
    assert_eq!(
        serde_json::to_value(fitted).expect("json"),
        hate["calibration"]["fitted"]
    );
    let raw_threshold = hate["suggested"]["threshold"].as_f64().expect("suggested");
    let threshold = written.profiles["default"].categories["hate"]
        .threshold
        .expect("threshold");
    assert!((threshold - fitted.apply(raw_threshold)).abs() < 1e-12);
    // Every labelled score is judged alike raw against the raw threshold and calibrated
    // against the written one.
    for line in miscalibrated(60).lines() {
        let v: Value = serde_json::from_str(line).expect("json");
        let s = v["scores"]["hate"].as_f64().expect("score");
        assert_eq!(
            s >= raw_threshold,
            fitted.apply(s) >= threshold,
            "score {s}"
        );
    }
    assert!(std::fs::read_to_string(&config)
        .expect("config")
        .starts_with("# ours\n"));
    // Tuned again on the written config, the thresholds in force are the suggested ones.
    let (stdout, again) = tune(&[], "second");
    assert!(
        (again["current"]["threshold"].as_f64().expect("current") - raw_threshold).abs() < 1e-9,
        "{again}"
    );
    assert!(stdout.contains("equal the current ones"), "{stdout}");
}
