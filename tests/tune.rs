//! `shieldgate tune` with the real binary: the shipped labelled sample scored by the tiny model
//! (scores equal the engine's, the suggested config loads, nothing is written without
//! `--write`), pre-computed scores with traffic replay and no model, bad lines accounted for,
//! and the workbench driven in headless Chromium (scripts/workbench-env.sh installs it): its
//! sliders, and an example explained with its spans marked.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use shieldgate::config::Config;
use shieldgate::model::load::loader::{LoadOptions, ModelSource};
use shieldgate::scorer::Score;
use shieldgate::tune::curves::{Confusion, Sample};

use crate::common;

fn tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("tune")
        .args(args)
        .output()
        .expect("tune runs")
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("file")).expect("json")
}

#[test]
fn the_shipped_sample_is_scored_by_the_model_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("shieldgate.toml");
    std::fs::copy(common::root().join("examples/shieldgate.toml"), &config).expect("copied");
    let before = std::fs::read_to_string(&config).expect("config");
    let out = dir.path().join("out");
    let sample = common::root().join("examples/labelled-sample.jsonl");
    let tiny = common::assets().join("tiny");
    let args = [
        sample.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--model",
        tiny.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--bootstrap",
        "100",
    ];
    let run = tune(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("| hate | 32 (3) |"), "{stdout}");
    assert!(
        stdout.contains("+++ suggested"),
        "a diff is shown: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        before,
        "unchanged without --write"
    );
    // The scores are the engine's own for the same texts and templates.
    let scored = json_lines(&out.join("scored.jsonl"));
    assert_eq!(scored.len(), 32);
    let source = ModelSource::parse(tiny.to_str().expect("utf-8")).expect("source");
    let engine = common::engine_from(&source, LoadOptions::default());
    for example in [&scored[0], &scored[20]] {
        let request = common::request(
            example["prompt"].as_str().expect("prompt"),
            example["response"].as_str(),
        );
        let want = engine.score(&[request]).expect("scores");
        for s in &want[0].scores {
            let got = example["scores"][&s.id].as_f64().expect("score");
            assert!(
                (got - s.p_yes).abs() < 1e-6,
                "{}: {got} vs {}",
                s.id,
                s.p_yes
            );
        }
    }
    // The suggested config loads in the gateway, with the summary's thresholds.
    let suggested = Config::load(&out.join("thresholds.toml")).expect("loads");
    let summary = read_json(&out.join("summary.json"));
    for cat in summary["categories"].as_array().expect("categories") {
        let id = cat["id"].as_str().expect("id");
        let want = cat["suggested"]["threshold"].as_f64();
        assert_eq!(
            suggested.profiles["default"].categories[id].threshold, want,
            "{id}"
        );
    }
    assert!(std::fs::read_to_string(out.join("report.html"))
        .expect("report")
        .contains("<svg"));
    // Re-running on scored.jsonl needs no model and gives the same suggestions.
    let again = dir.path().join("again");
    let rerun = tune(&[
        out.join("scored.jsonl").to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--model",
        "/nonexistent/model",
        "--out",
        again.to_str().expect("utf-8"),
        "--bootstrap",
        "100",
    ]);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(again.join("thresholds.toml")).expect("again"),
        std::fs::read_to_string(out.join("thresholds.toml")).expect("first")
    );
    // --write applies them, and check-config accepts the file.
    let written = tune(&[&args[..], &["--write"]].concat());
    assert!(written.status.success());
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        std::fs::read_to_string(out.join("thresholds.toml")).expect("suggested")
    );
    let check = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("check-config runs");
    assert!(check.status.success());
}

/// The hand-computed case of the curve tests, for hate: best F1 at 0.6.
const HATE: [(f64, bool); 6] = [
    (0.9, true),
    (0.8, false),
    (0.7, true),
    (0.6, true),
    (0.5, false),
    (0.4, false),
];

fn write_scored_data(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let labelled = dir.join("labelled.jsonl");
    let mut text = String::new();
    for (i, (score, positive)) in HATE.iter().enumerate() {
        let mail = if i == 0 { " mail a@example.com" } else { "" };
        text.push_str(
            &json!({"id": i, "prompt": format!("example {i} <b>{mail}"), "scores": {"hate": score},
                "labels": {"hate": u8::from(*positive)}})
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&labelled, text).expect("labelled");
    // Traffic: two audit results and two decision-log lines, one of each with personal data.
    let traffic = dir.join("traffic.jsonl");
    std::fs::write(
        &traffic,
        "{\"scores\": {\"hate\": 0.95}, \"pii\": {\"email\": 2}}\n{\"scores\": {\"hate\": 0.1}}\n\
         {\"categories\": [{\"id\": \"hate\", \"p_yes\": 0.65}],\
           \"pii\": {\"card\": {\"count\": 1, \"action\": \"block\"}}}\n\
         {\"categories\": [{\"id\": \"hate\", \"p_yes\": 0.3}]}\n",
    )
    .expect("traffic");
    (labelled, traffic)
}

#[test]
fn precomputed_scores_and_traffic_need_no_model_and_bad_lines_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (labelled, traffic) = write_scored_data(dir.path());
    let out = dir.path().join("out");
    let run = tune(&[
        labelled.to_str().expect("utf-8"),
        "--traffic",
        traffic.to_str().expect("utf-8"),
        "--model",
        "/nonexistent/model",
        "--out",
        out.to_str().expect("utf-8"),
        "--target",
        "sexual:recall=0.5",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = read_json(&out.join("summary.json"));
    let hate = summary["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .find(|c| c["id"] == "hate")
        .expect("hate");
    assert_eq!(hate["suggested"]["threshold"], 0.6);
    assert_eq!(
        hate["suggested"]["confusion"],
        json!({"tp": 3, "fp": 1, "fn": 0, "tn": 2})
    );
    assert_eq!(hate["current"]["traffic_flag_rate"], 0.5);
    assert_eq!(hate["suggested"]["traffic_flag_rate"], 0.5);
    assert!((hate["roc_auc"].as_f64().expect("auc") - 7.0 / 9.0).abs() < 1e-12);
    // Six labels: Platt scaling, an increasing map (a higher score stays more likely).
    let calibration = &hate["calibration"];
    assert_eq!(calibration["fitted"]["method"], "platt");
    assert!(
        calibration["fitted"]["a"].as_f64().expect("a") > 0.0,
        "{calibration}"
    );
    for k in ["raw", "calibrated"] {
        assert!(calibration[k]["ece"]
            .as_f64()
            .is_some_and(|e| (0.0..=1.0).contains(&e)));
    }
    let counted: u64 = calibration["raw"]["bins"]
        .as_array()
        .expect("bins")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(counted, 6);
    let sexual = summary["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .find(|c| c["id"] == "sexual")
        .expect("sexual");
    assert_eq!(sexual["labelled"], 0);
    assert_eq!(sexual["calibration"], Value::Null, "nothing to fit");
    assert_eq!(
        summary["pii"],
        json!([
            {"kind": "card", "examples": 0, "traffic": 1, "traffic_share": 0.25,
             "input": "off", "output": "off"},
            {"kind": "email", "examples": 1, "traffic": 1, "traffic_share": 0.25,
             "input": "off", "output": "off"}
        ])
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("email: 1 labelled examples, 1 traffic items (25.0%)"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(report.contains("<h2>Personal data and secrets</h2>"));
    assert!(report.contains("<h3>Calibration</h3><p>Platt scaling"));
    assert!(!report.contains("a@example.com"), "values are never shown");
    assert_eq!(sexual["suggested"], Value::Null, "no data, no suggestion");
    assert_eq!(sexual["target"], "recall=0.5");

    // A bad line is reported with its place, and the exit code says so.
    let mut text = std::fs::read_to_string(&labelled).expect("labelled");
    text.push_str("{\"prompt\": \"x\", \"labels\": [\"violence\"]}\nnot json\n");
    std::fs::write(&labelled, text).expect("written");
    let bad = tune(&[
        labelled.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--model",
        "/nonexistent/model",
    ]);
    assert_eq!(bad.status.code(), Some(3));
    let errors = json_lines(&out.join("errors.jsonl"));
    let lines: Vec<&Value> = errors.iter().map(|e| &e["line"]).collect();
    assert_eq!(lines, [&json!(7), &json!(8)]);
    assert!(errors[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("\"violence\" is not a category")));

    // Examples without scores need the model, and say so.
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"prompt\": \"hi\", \"labels\": []}\n").expect("written");
    let needs = tune(&[
        plain.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--model",
        "/nonexistent/model",
    ]);
    assert_eq!(needs.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&needs.stderr);
    assert!(
        stderr.contains("1 labelled examples have no scores"),
        "{stderr}"
    );
}

/// Serves the workbench of `tune ARGS --bootstrap 0 --serve`, runs the Chromium script
/// `tests/workbench/SCRIPT URL CATEGORY` against it, and returns what the script printed.
fn in_browser(args: &[&str], script: &str, category: &str) -> Value {
    let node_modules = common::root().join("tests/workbench/node_modules/playwright-core");
    assert!(
        node_modules.is_dir(),
        "playwright-core is missing: run scripts/workbench-env.sh"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("tune")
        .args(args)
        .args(["--bootstrap", "0", "--serve", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tune starts");
    let stdout = child.stdout.take().expect("stdout");
    let running = common::KillOnDrop(child);
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("shieldgate tune: workbench at ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("the workbench address is printed");
    let out = Command::new("node")
        .arg(common::root().join("tests/workbench").join(script))
        .arg(&url)
        .arg(category)
        .output()
        .expect("node runs");
    drop(running);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
#[ignore = "needs Chromium and playwright-core: scripts/workbench-env.sh (scripts/test.sh runs it)"]
fn the_workbench_slider_moves_the_numbers_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (labelled, traffic) = write_scored_data(dir.path());
    let labelled = labelled.display().to_string();
    let traffic = traffic.display().to_string();
    let out = dir.path().join("out").display().to_string();
    let seen = in_browser(
        &[&labelled, "--traffic", &traffic, "--out", &out],
        "check_workbench.mjs",
        "hate",
    );
    assert_eq!(seen["errors"], json!([]), "no script errors on the page");
    let samples: Vec<Sample> = HATE
        .iter()
        .map(|&(score, positive)| Sample { score, positive })
        .collect();
    let check = |view: &Value| -> f64 {
        let t: f64 = view["value"]
            .as_str()
            .expect("value")
            .parse()
            .expect("number");
        let c = Confusion::at(&samples, t);
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        assert_eq!(view["precision"], fmt(c.precision()), "{view}");
        assert_eq!(view["recall"], fmt(c.recall()), "{view}");
        assert_eq!(view["f1"], fmt(c.f1()), "{view}");
        assert_eq!(view["fpr"], fmt(c.fpr()), "{view}");
        t
    };
    let before = check(&seen["before"]);
    let after = check(&seen["after"]);
    assert_eq!(before, 0.6, "the slider starts at the suggestion");
    assert!(after > 0.7 && after < 0.9, "the click moved it: {after}");
    assert_ne!(seen["before"]["f1"], seen["after"]["f1"]);
    assert_eq!(seen["before"]["traffic"], "50.0%");
    assert_eq!(seen["after"]["traffic"], "25.0%");
    let toml = seen["toml"].as_str().expect("toml");
    let exported = Config::parse(toml, "exported").expect("the export loads");
    let t = exported.profiles["default"].categories["hate"]
        .threshold
        .expect("threshold");
    assert!((t - after).abs() < 1e-4, "{t} vs {after}");
}

#[test]
#[ignore = "needs Chromium and playwright-core: scripts/workbench-env.sh (scripts/test.sh runs it)"]
fn the_workbench_explains_an_example_with_its_spans_marked_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let labelled = dir.path().join("labelled.jsonl");
    let texts = [
        "Tell me a story. How do I build a bomb at home? Thanks, friend.",
        "What is the weather like? I want to go out. Should I take an umbrella?",
        "Ünïcödé first. Then a second sentence, with a clause; and more. Last one!",
    ];
    // One violation, so that the curves (and the context comparison) have numbers.
    let lines: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"prompt": t, "labels": {"dangerous": u8::from(i == 1)}}).to_string())
        .collect();
    std::fs::write(&labelled, lines.join("\n") + "\n").expect("labelled");
    let tiny = common::assets().join("tiny").display().to_string();
    let labelled = labelled.display().to_string();
    let out = dir.path().join("out").display().to_string();
    let seen = in_browser(
        &[
            &labelled,
            "--model",
            &tiny,
            "--out",
            &out,
            "--compare-context",
            "2",
        ],
        "check_explain.mjs",
        "dangerous",
    );
    assert_eq!(seen["errors"], json!([]), "no script errors on the page");
    // The context comparison is on the page as in summary.json.
    let summary = read_json(&dir.path().join("out/summary.json"));
    let row = summary["context"]["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .find(|c| c["id"] == "dangerous")
        .expect("dangerous");
    let pair = |k: &str| {
        let f = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.3}"));
        format!("{} → {}", f(&row["alone"][k]), f(&row["in_context"][k]))
    };
    let context = seen["context"].as_str().expect("context shown");
    assert!(
        context.contains("3 examples scored alone and after up to 2"),
        "{context}"
    );
    for k in ["roc_auc", "average_precision", "best_f1"] {
        assert!(context.contains(&pair(k)), "{k}: {context}");
    }
    let sent = &seen["sent"];
    let text = sent["text"].as_str().expect("text");
    assert!(
        seen["listed"].as_str().expect("listed").contains(text),
        "the explained example is the listed one: {seen}"
    );
    let mut raising: Vec<(usize, usize, f64)> = sent["explanation"]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            let at = |k: &str| s[k].as_u64().expect("offset") as usize;
            (
                at("start"),
                at("end"),
                s["effect"]["dangerous"].as_f64().expect("effect"),
            )
        })
        .filter(|s| s.2 > 0.0)
        .collect();
    raising.sort_by_key(|s| s.0);
    let marks = seen["marks"].as_array().expect("marks");
    let marked: Vec<(&str, f64)> = marks
        .iter()
        .map(|m| {
            (
                m["text"].as_str().expect("text"),
                m["effect"].as_f64().expect("effect"),
            )
        })
        .collect();
    let expected: Vec<(&str, f64)> = raising.iter().map(|&(a, b, e)| (&text[a..b], e)).collect();
    assert_eq!(
        marked, expected,
        "every span that raises P(Yes) is marked, in place"
    );
    assert_eq!(
        seen["shown"].as_str().map(|s| s.starts_with(text)),
        Some(true)
    );
    // The darkest mark is the strongest span.
    let darkest = marks
        .iter()
        .max_by(|a, b| {
            a["strength"]
                .as_f64()
                .partial_cmp(&b["strength"].as_f64())
                .expect("numbers")
        })
        .expect("a mark");
    let strongest = raising.iter().map(|s| s.2).fold(f64::MIN, f64::max);
    assert_eq!(darkest["effect"].as_f64(), Some(strongest));
    // Its effect is P(Yes) of the text minus P(Yes) of the text without it, as `score` says.
    let &(a, b, effect) = raising
        .iter()
        .find(|s| s.2 == strongest)
        .expect("strongest");
    let p_yes = |t: &str| -> f64 {
        let out = common::shieldgate(
            &["score", "--model", &tiny, "--policy", "dangerous", t],
            None,
        );
        common::json_lines(&out.stdout)[0]["policies"][0]["p_yes"]
            .as_f64()
            .expect("p_yes")
    };
    let without = format!("{}{}", &text[..a], &text[b..]);
    assert!((effect - (p_yes(text) - p_yes(&without))).abs() < 1e-5);
}
