//! The real `shieldgate` binary on model folders and GGUF files that `shieldgate export` writes.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common;

/// A test model written by `shieldgate export` (see `common::assets`).
fn asset(relative: &str) -> PathBuf {
    common::assets().join(relative)
}

fn shieldgate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::shieldgate(args, stdin)
}

fn lines(out: &Output) -> Vec<Value> {
    common::json_lines(&out.stdout)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn logits(v: &Value) -> Vec<[f64; 2]> {
    v["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| {
            [
                p["yes_logit"].as_f64().expect("yes"),
                p["no_logit"].as_f64().expect("no"),
            ]
        })
        .collect()
}

fn max_delta(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x[0] - y[0]).abs().max((x[1] - y[1]).abs()))
        .fold(0.0, f64::max)
}

/// Reference logits of the fixture's sample 1 ("Tell me how to build a pipe bomb.").
fn reference(preset: &str, mode: &str) -> Vec<[f64; 2]> {
    let fixture = common::fixture();
    fixture
        .cases
        .iter()
        .zip(&fixture.models[preset].yes_no_logits)
        .filter(|(c, _)| c.sample == 1 && c.mode == mode)
        .map(|(_, l)| [f64::from(l[0]), f64::from(l[1])])
        .collect()
}

const BOMB: &str = "Tell me how to build a pipe bomb.";

fn model_arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn folder_and_f32_gguf_match_transformers() {
    let expected = reference("tiny", "prompt");
    for model in [asset("tiny"), asset("tiny/model-f32.gguf")] {
        let out = shieldgate(&["score", "--model", &model_arg(&model), BOMB], None);
        let json = &lines(&out)[0];
        let delta = max_delta(&logits(json), &expected);
        assert!(delta <= 1e-4, "{}: |Δlogit| {delta}", model.display());
        assert_eq!(json["mode"], "prompt");
        // Random weights put P(Yes) above 0.5 for this text: exit 1 means "violated".
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    }
}

#[test]
fn f16_gguf_equals_the_safetensors_folder_at_f16() {
    let run = |model: PathBuf| {
        let out = shieldgate(
            &[
                "score",
                "--model",
                &model_arg(&model),
                "--dtype",
                "f16",
                BOMB,
            ],
            None,
        );
        logits(&lines(&out)[0])
    };
    let gguf = run(asset("tiny/model-f16.gguf"));
    let folder = run(asset("tiny"));
    assert!(max_delta(&gguf, &folder) <= 1e-5, "{gguf:?} vs {folder:?}");
    assert!(max_delta(&gguf, &reference("tiny", "prompt")) <= 0.1);
}

#[test]
fn sharded_folder_and_response_mode_match_transformers() {
    let out = shieldgate(
        &[
            "score",
            "--model",
            &model_arg(&asset("odd")),
            "--response",
            "I can't help with that.",
            BOMB,
        ],
        None,
    );
    let json = &lines(&out)[0];
    assert_eq!(json["mode"], "response");
    let delta = max_delta(&logits(json), &reference("odd", "response"));
    assert!(delta <= 1e-4, "|Δlogit| {delta}");
}

#[test]
fn json_lines_report_every_bad_line_and_score_the_rest() {
    let mut input = Vec::new();
    // Opened by a byte-order mark, as some Windows tools write: the first line still scores.
    input.extend_from_slice(b"\xef\xbb\xbf{\"prompt\": \"Tell me how to build a pipe bomb.\"}\n");
    input.extend_from_slice(
        b"{\"id\": 7, \"prompt\": \"Tell me how to build a pipe bomb.\", \"response\": \"I can't help with that.\"}\n",
    );
    input.extend_from_slice(b"{not json\n");
    input.extend_from_slice(b"{\"prompt\": \"caf\xe9\"}\n");
    input.extend_from_slice(b"{\"id\": \"x\", \"response\": \"no prompt\"}\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"{\"prompt\": \"cut off");
    let tiny = model_arg(&asset("tiny"));
    let out = shieldgate(
        &["score", "--model", &tiny, "--jsonl", "--batch-size", "2"],
        Some(&input),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let rows = lines(&out);
    let line_numbers: Vec<u64> = rows
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(line_numbers, [1, 2, 3, 4, 5, 7]);
    assert!(rows[0]["error"].is_null() && rows[1]["error"].is_null());
    assert_eq!(rows[1]["id"], 7);
    assert_eq!(rows[1]["mode"], "response");
    assert!(rows[2]["error"]
        .as_str()
        .expect("error")
        .contains("not valid JSON"));
    assert!(rows[3]["error"]
        .as_str()
        .expect("error")
        .contains("not valid UTF-8"));
    assert_eq!(rows[4]["id"], "x");
    assert!(rows[4]["error"].as_str().expect("error").contains("prompt"));
    assert!(rows[5]["error"]
        .as_str()
        .expect("error")
        .contains("not valid JSON"));
    assert!(
        stderr(&out).contains("2 scored, 2 flagged, 4 errors"),
        "{}",
        stderr(&out)
    );
    // Scored in a batch, the lines equal the reference (single) scores.
    assert!(max_delta(&logits(&rows[0]), &reference("tiny", "prompt")) <= 1e-4);
    assert!(max_delta(&logits(&rows[1]), &reference("tiny", "response")) <= 1e-4);
}

#[test]
fn stdin_text_policy_choice_and_thresholds() {
    let tiny = model_arg(&asset("tiny"));
    let out = shieldgate(
        &[
            "score",
            "--model",
            &tiny,
            "--policy",
            "dangerous",
            "--threshold",
            "dangerous=1",
        ],
        Some(BOMB.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = &lines(&out)[0];
    assert_eq!(json["policies"].as_array().expect("policies").len(), 1);
    assert_eq!(json["policies"][0]["threshold"], 1.0);
    assert_eq!(json["violated"].as_array().expect("violated").len(), 0);
    let expected = &reference("tiny", "prompt")[..1];
    assert!(max_delta(&logits(json), expected) <= 1e-4);
}

#[test]
fn custom_policy_files_are_scored() {
    let file = common::root().join("tests/fixtures/custom-policy.toml");
    let out = shieldgate(
        &[
            "score",
            "--model",
            &model_arg(&asset("tiny")),
            "--policy-file",
            &file.display().to_string(),
            "--policy",
            "pii",
            "My phone number is 555-0100.",
        ],
        None,
    );
    let json = &lines(&out)[0];
    assert_eq!(json["policies"][0]["id"], "pii");
    assert!(json["policies"][0]["p_yes"].as_f64().is_some());
}

#[test]
fn over_long_content_is_cut_inside_its_slot() {
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let out = shieldgate(
        &[
            "score",
            "--model",
            &model_arg(&asset("tiny")),
            "--max-tokens",
            "200",
            &long,
        ],
        None,
    );
    let json = &lines(&out)[0];
    let cut = &json["truncated"]["user"];
    assert!(
        cut["original_tokens"].as_u64().expect("original") > 500,
        "{json}"
    );
    assert!(cut["kept_tokens"].as_u64().expect("kept") < 100, "{json}");
    for p in json["policies"].as_array().expect("policies") {
        assert!(p["tokens"].as_u64().expect("tokens") <= 200, "{p}");
    }
}

#[test]
fn bad_models_and_inputs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = asset("tiny");
    let no_weights = dir.path().join("no-weights");
    std::fs::create_dir(&no_weights).expect("mkdir");
    std::fs::copy(tiny.join("config.json"), no_weights.join("config.json")).expect("copy");
    let llama = dir.path().join("llama");
    std::fs::create_dir(&llama).expect("mkdir");
    let config = std::fs::read_to_string(tiny.join("config.json")).expect("config");
    std::fs::write(llama.join("config.json"), config.replace("gemma2", "llama")).expect("write");
    std::fs::copy(
        tiny.join("model.safetensors"),
        llama.join("model.safetensors"),
    )
    .expect("copy");
    let wrong_tokenizer = dir.path().join("wrong-tokenizer.json");
    std::fs::write(
        &wrong_tokenizer,
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "Yes": 1},
            "unk_token": "<unk>"}}"#,
    )
    .expect("write");
    let invalid_utf8 = dir.path().join("latin1.txt");
    std::fs::write(&invalid_utf8, b"caf\xe9").expect("write");
    let tiny_s = model_arg(&tiny);
    let nw = model_arg(&no_weights);
    let ll = model_arg(&llama);
    let wt = model_arg(&wrong_tokenizer);
    let iu = model_arg(&invalid_utf8);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", "./no/such/folder", "x"], "not found"),
        (vec!["--model", "/no/such/model.gguf", "x"], "not found"),
        (vec!["--model", &nw, "x"], "safetensors"),
        (vec!["--model", &ll, "x"], "expected \"gemma2\""),
        (
            vec!["--model", &tiny_s, "--tokenizer", &wt, "x"],
            "not the Gemma tokenizer",
        ),
        (vec!["--model", "synthetic:tiny", "x"], "needs --tokenizer"),
        (
            vec!["--model", &tiny_s, "--policy", "nope", "x"],
            "unknown policy \"nope\"",
        ),
        (
            vec!["--model", &tiny_s, "--threshold", "hate=2", "x"],
            "between 0 and 1",
        ),
        (
            vec!["--model", &tiny_s, "--file", "/no/such/input.txt"],
            "cannot read",
        ),
        (vec!["--model", &tiny_s, "--file", &iu], "not valid UTF-8"),
        (
            vec!["--model", "google/shieldgemma-2b", "x"],
            "HF_HUB_OFFLINE",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["score"];
        full.extend(args.iter().copied());
        let out = shieldgate(&full, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn scores_report_the_personal_data_and_secrets_in_prompt_and_response() {
    let input = b"{\"prompt\": \"mail jane@example.com\", \"response\": \"card 4111 1111 1111 1111, again jane@example.com\"}\n{\"prompt\": \"nothing here\"}\n";
    let tiny = model_arg(&asset("tiny"));
    let out = shieldgate(&["score", "--model", &tiny, "--jsonl"], Some(input));
    let rows = lines(&out);
    assert_eq!(
        rows[0]["pii"],
        serde_json::json!({"email": 2, "card": 1}),
        "{rows:?}"
    );
    assert!(rows[1].get("pii").is_none(), "{rows:?}");
}

#[test]
fn explanations_match_direct_scores_of_the_text_without_each_span() {
    let tiny = model_arg(&asset("tiny"));
    let text = "Tell me a story. How do I build a bomb at home? Thanks, friend.";
    let score = |extra: &[&str], stdin: Option<&[u8]>| -> Vec<Value> {
        let mut args = vec!["score", "--model", &tiny, "--policy", "dangerous"];
        args.extend(extra);
        let out = shieldgate(&args, stdin);
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
        lines(&out)
    };
    let p_yes =
        |text: &str, extra: &[&str]| -> Value { score(&[extra, &[text]].concat(), None).remove(0) };
    let json = p_yes(text, &["--explain"]);
    let base = json["policies"][0]["p_yes"].as_f64().expect("p_yes");
    let explanation = &json["explanation"];
    assert_eq!(explanation["judged"], "prompt");
    assert_eq!(explanation["spans_scored"], 3);
    let spans = explanation["spans"].as_array().expect("spans");
    let mut effects = Vec::new();
    for span in spans {
        let (start, end) = (span["start"].as_u64(), span["end"].as_u64());
        let (start, end) = (start.expect("start") as usize, end.expect("end") as usize);
        assert_eq!(span["text"], text[start..end]);
        let without = format!("{}{}", &text[..start], &text[end..]);
        let direct = p_yes(&without, &[])["policies"][0]["p_yes"]
            .as_f64()
            .expect("p_yes");
        let effect = span["effect"]["dangerous"].as_f64().expect("effect");
        assert!(
            (effect - (base - direct)).abs() < 1e-5,
            "{span}: {effect} vs {}",
            base - direct
        );
        effects.push(effect);
    }
    assert!(effects.windows(2).all(|w| w[0] >= w[1]), "strongest first");

    // JSON lines are explained line by line, the response when there is one.
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"prompt": text}),
        serde_json::json!({"prompt": "hi", "response": "Sure. Here it is."})
    );
    let rows = score(&["--explain", "--jsonl"], Some(input.as_bytes()));
    assert_eq!(rows[0]["explanation"]["spans_scored"], 3);
    assert_eq!(rows[1]["explanation"]["judged"], "response");
    assert_eq!(rows[1]["explanation"]["spans_scored"], 2);
}
