//! `shieldgate audit` with the real binary and the tiny model: a corrupted log is fully
//! accounted for, an interrupted run resumes to the same output, shards partition the input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use serde_json::Value;

use crate::common;

fn audit(inputs: &[&Path], out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("audit")
        .args(inputs)
        .arg("--out")
        .arg(out)
        .arg("--model")
        .arg(common::assets().join("tiny"))
        .args(extra)
        .output()
        .expect("audit runs")
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Complete lines in a file that may be in the middle of being written.
fn newlines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
        .expect("json")
}

#[test]
fn a_corrupted_log_is_fully_accounted_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log.jsonl");
    let huge = "word ".repeat(400);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(br#"{"id": "ok", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Use a tension wrench."}]}"#);
    bytes.extend_from_slice(b"\n{not json\n");
    bytes.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}\n");
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(br#"{"messages": [{"role": "user", "content": "   "}]}"#);
    bytes.push(b'\n');
    bytes.extend_from_slice(format!(r#"{{"id": "big", "messages": [{{"role": "user", "content": "{huge}"}}, {{"role": "assistant", "content": "fine"}}]}}"#).as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(br#"{"x": 1}"#);
    bytes.push(b'\n');
    bytes.extend_from_slice(br#"{"id": "cut", "messages": [{"role": "user", "content": "trunc"#);
    std::fs::write(&log, &bytes).expect("log written");
    let out = dir.path().join("out");
    let run = audit(
        &[&log],
        &out,
        &["--max-turn-chars", "1000", "--progress", "json"],
    );
    assert_eq!(
        run.status.code(),
        Some(3),
        "errors exit 3: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("\"progress\""));
    let c = &summary(&out)["counts"];
    let n = |k: &str| c[k].as_u64().expect(k);
    assert_eq!(n("lines_read"), 8);
    assert_eq!(
        n("lines_read"),
        n("lines_scored") + n("lines_skipped") + n("lines_errored") + n("lines_other_shards"),
        "{c}"
    );
    assert_eq!(
        (n("lines_scored"), n("lines_skipped"), n("lines_errored")),
        (1, 2, 5),
        "{c}"
    );
    assert_eq!(
        n("turns_scored"),
        3,
        "two turns of 'ok' and the answer of 'big'"
    );
    assert_eq!(n("turns_errored"), 1, "the huge turn");
    let errors = json_lines(&out.join("errors.jsonl"));
    let lines: Vec<u64> = errors
        .iter()
        .map(|e| e["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [2, 3, 6, 7, 8]);
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e["reason"].as_str().expect("reason"))
        .collect();
    assert!(reasons[0].starts_with("not valid JSON"), "{reasons:?}");
    assert!(reasons[1].starts_with("invalid UTF-8"), "{reasons:?}");
    assert!(reasons[2].contains("--max-turn-chars"), "{reasons:?}");
    assert!(reasons[3].starts_with("unknown shape"), "{reasons:?}");
    assert!(reasons[4].starts_with("truncated last line"), "{reasons:?}");
    assert!(errors
        .iter()
        .all(|e| e["file"] == log.display().to_string()));
    let results = json_lines(&out.join("results.jsonl"));
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["role"], "assistant");
    assert!(results[0]["scores"]["hate"].is_number());
    assert!(results[0].get("text").is_none(), "text only when asked");

    let again = audit(
        &[&log],
        &out,
        &["--max-turn-chars", "1000", "--allow-errors"],
    );
    assert_ne!(again.status.code(), Some(3));
    assert_eq!(
        json_lines(&out.join("results.jsonl")).len(),
        3,
        "a finished run is not redone"
    );
    let other = audit(&[&log], &out, &["--max-turn-chars", "50"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("--restart"));
}

fn corpus(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("corpus.jsonl");
    let mut text = String::new();
    for i in 0..n {
        text.push_str(
            &serde_json::json!({"id": format!("c{i}"), "messages": [
            {"role": "user", "content": format!("Question number {i}: how do I bake bread?")},
            {"role": "assistant", "content": format!("Answer {i}: flour, water, salt and time.")}]})
            .to_string(),
        );
        text.push('\n');
        if i % 37 == 5 {
            text.push_str("{broken line\n");
        }
    }
    std::fs::write(&path, text).expect("corpus written");
    path
}

#[test]
fn kill_and_resume_gives_the_same_output_as_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = corpus(dir.path(), 100);
    let whole = dir.path().join("whole");
    let extra = ["--batch-turns", "6", "--allow-errors"];
    assert!(audit(&[&log], &whole, &extra)
        .status
        .code()
        .is_some_and(|c| c <= 1));
    let resumed = dir.path().join("resumed");
    let results = resumed.join("results.jsonl");
    // Kill -9 three times, each after a few more results are on disk and a random (seeded)
    // moment later, so that the kill lands anywhere in a batch's writing; then let it finish.
    let mut rng = StdRng::seed_from_u64(7);
    for progress in [20, 70, 140] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
            .arg("audit")
            .arg(&log)
            .arg("--out")
            .arg(&resumed)
            .arg("--model")
            .arg(common::assets().join("tiny"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("audit starts");
        let mut interrupted = false;
        for _ in 0..6000 {
            if newlines(&results) >= progress {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
                interrupted = child.try_wait().ok().flatten().is_none();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            interrupted,
            "the run was killed mid-way (after {progress} results)"
        );
    }
    // A crash between writing a batch and saving its checkpoint: the resume cuts the batch off.
    let crash = audit(
        &[&log],
        &resumed,
        &[&extra[..], &["--abort-after-writes", "2"]].concat(),
    );
    assert!(!crash.status.success(), "the hook aborts the process");
    assert!(audit(&[&log], &resumed, &extra)
        .status
        .code()
        .is_some_and(|c| c <= 1));
    for file in ["results.jsonl", "errors.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(whole.join(file)).expect("whole"),
            std::fs::read_to_string(resumed.join(file)).expect("resumed"),
            "{file} differs after kill -9 and resume"
        );
    }
    assert_eq!(summary(&whole)["counts"], summary(&resumed)["counts"]);
    assert_eq!(summary(&whole)["counts"]["turns_scored"], 200);
}

#[test]
fn sharded_and_merged_equals_unsharded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = corpus(dir.path(), 30);
    let all = dir.path().join("all");
    audit(&[&log], &all, &["--allow-errors"]);
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("shard-{i}")))
        .collect();
    for (i, out) in shards.iter().enumerate() {
        audit(
            &[&log],
            out,
            &["--allow-errors", "--shard", &format!("{i}/3")],
        );
    }
    // A shard's results passed through a Windows tool on their way: a byte-order mark.
    let results = shards[1].join("results.jsonl");
    let text = std::fs::read_to_string(&results).expect("results");
    std::fs::write(&results, format!("\u{feff}{text}")).expect("written");
    let merged = dir.path().join("merged");
    let run = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("audit-merge")
        .args(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .expect("merge runs");
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(all.join("errors.jsonl")).expect("all"),
        std::fs::read_to_string(merged.join("errors.jsonl")).expect("merged"),
    );
    // The shards batch other turns together, and the engine groups a batch by length, so a
    // score may differ in its last bits; every other field is identical.
    let lines = |out: &Path| -> Vec<Value> {
        std::fs::read_to_string(out.join("results.jsonl"))
            .expect("results")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let (whole, parts) = (lines(&all), lines(&merged));
    assert_eq!(whole.len(), parts.len());
    for (mut a, mut b) in whole.into_iter().zip(parts) {
        let (sa, sb) = (a["scores"].take(), b["scores"].take());
        assert_eq!(a, b);
        let ids: Vec<&String> = sa.as_object().expect("scores").keys().collect();
        assert_eq!(
            ids,
            sb.as_object().expect("scores").keys().collect::<Vec<_>>()
        );
        for id in ids {
            let (x, y) = (
                sa[id].as_f64().expect("score"),
                sb[id].as_f64().expect("score"),
            );
            assert!((x - y).abs() <= 1e-6, "{a}: {id} {x} vs {y}");
        }
    }
    assert_eq!(summary(&all)["counts"], summary(&merged)["counts"]);
    assert!(merged.join("report.html").is_file());
    let partial = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .arg("audit-merge")
        .args(&shards[..2])
        .arg("--out")
        .arg(dir.path().join("partial"))
        .output()
        .expect("merge runs");
    assert_eq!(partial.status.code(), Some(2), "a missing shard is refused");
    let bad = audit(&[&log], &dir.path().join("x"), &["--shard", "3/3"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_sample_log_gets_a_self_contained_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::root().join("examples/sample-log.jsonl");
    let hostile = dir.path().join("hostile.jsonl");
    std::fs::write(
        &hostile,
        r#"{"id": "<script>alert(1)</script>", "messages": [{"role": "user", "content": "hi"}]}
"#,
    )
    .expect("written");
    let out = dir.path().join("out");
    let run = audit(&[&sample, &hostile], &out, &[]);
    assert_eq!(run.status.code(), Some(3), "the sample has one cut line");
    let c = &summary(&out)["counts"];
    assert_eq!(c["lines_read"], 10);
    assert_eq!(c["lines_errored"], 1);
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(report.starts_with("<!doctype html>"));
    assert_eq!(
        report.matches("<svg").count(),
        4,
        "one histogram per policy"
    );
    for id in ["dangerous", "harassment", "hate", "sexual"] {
        assert!(report.contains(&format!("<h3>{id}</h3>")), "{id}");
    }
    assert!(!report.contains("<script"), "input text is escaped");
    assert!(
        !report.contains("http://") && !report.contains("https://"),
        "nothing is fetched"
    );
}

#[test]
fn gzip_and_zstd_logs_audit_like_plain_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = corpus(dir.path(), 8);
    let text = std::fs::read(&log).expect("corpus");
    let gz = dir.path().join("corpus.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &text).expect("gzip");
    std::fs::write(&gz, enc.finish().expect("gzip")).expect("written");
    let zst = dir.path().join("corpus.jsonl.zst");
    let compressed =
        ruzstd::encoding::compress_to_vec(&text[..], ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::write(&zst, compressed).expect("written");
    let strip = |out: &Path| -> Vec<Value> {
        json_lines(&out.join("results.jsonl"))
            .into_iter()
            .map(|mut v| {
                v["file"] = Value::Null;
                v
            })
            .collect()
    };
    let plain = dir.path().join("plain");
    audit(&[&log], &plain, &["--allow-errors"]);
    for input in [&gz, &zst] {
        let out = dir.path().join(input.extension().expect("ext"));
        audit(&[input], &out, &["--allow-errors"]);
        assert_eq!(strip(&out), strip(&plain), "{}", input.display());
    }
}

#[test]
fn csv_logs_resume_after_a_crash_and_read_alike_from_a_glob_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("chats.csv");
    let mut text = String::from("id,question,answer\n");
    for i in 0..12 {
        text.push_str(&format!(
            "r{i},\"Question {i}, asked\non two lines: how do I bake bread?\",\"Flour, \"\"water\"\" and salt.\"\n"
        ));
        if i == 4 {
            text.push_str("broken,row\n");
        }
    }
    std::fs::write(&csv, &text).expect("csv written");
    let extra = [
        "--text-field",
        "question",
        "--response-field",
        "answer",
        "--batch-turns",
        "4",
        "--allow-errors",
    ];
    let whole = dir.path().join("whole");
    assert!(audit(&[&csv], &whole, &extra)
        .status
        .code()
        .is_some_and(|c| c <= 1));
    let results = json_lines(&whole.join("results.jsonl"));
    assert_eq!(results.len(), 24, "12 rows, a question and an answer each");
    assert_eq!(results[2]["conversation"], "r1");
    assert_eq!(results[2]["line"], 4, "rows span two lines each");
    let errors = json_lines(&whole.join("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["line"], 12);
    assert!(errors[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("2 fields where the header has 3")));

    let resumed = dir.path().join("resumed");
    let crash = audit(
        &[&csv],
        &resumed,
        &[&extra[..], &["--abort-after-writes", "3"]].concat(),
    );
    assert!(!crash.status.success(), "the hook aborts the process");
    audit(&[&csv], &resumed, &extra);
    for file in ["results.jsonl", "errors.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(whole.join(file)).expect("whole"),
            std::fs::read_to_string(resumed.join(file)).expect("resumed"),
            "{file} differs after a crash and resume"
        );
    }

    let scores = |out: &Path| -> Vec<Value> {
        json_lines(&out.join("results.jsonl"))
            .into_iter()
            .map(|v| v["scores"].clone())
            .collect()
    };
    let globbed = dir.path().join("globbed");
    let pattern = dir.path().join("*.csv");
    audit(&[&pattern], &globbed, &extra);
    assert_eq!(scores(&globbed), scores(&whole));

    let piped = dir.path().join("piped");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(["audit", "-", "--format", "csv", "--out"])
        .arg(&piped)
        .arg("--model")
        .arg(common::assets().join("tiny"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("audit starts");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("piped");
    child.wait().expect("audit ends");
    assert_eq!(scores(&piped), scores(&whole));

    let missing = audit(
        &[&csv],
        &dir.path().join("bad"),
        &["--text-field", "prompt"],
    );
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no column \"prompt\""), "{stderr}");
}

/// Audits a log of these JSON lines into `dir/out` (with `extra` flags); every line must be
/// scored. Returns the output folder.
fn audit_lines(dir: &Path, lines: &[&str], extra: &[&str]) -> std::path::PathBuf {
    let log = dir.join("log.jsonl");
    std::fs::write(&log, lines.join("\n") + "\n").expect("log written");
    let out = dir.join("out");
    let run = audit(&[&log], &out, extra);
    assert_ne!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[test]
fn each_turn_counts_its_personal_data_and_the_summary_and_report_total_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = audit_lines(
        dir.path(),
        &[
            r#"{"id": "a", "messages": [{"role": "user", "content": "mail jane@example.com or bob@example.org"}, {"role": "assistant", "content": "card 4111 1111 1111 1111 noted"}]}"#,
            r#"{"id": "b", "messages": [{"role": "user", "content": "nothing personal"}]}"#,
        ],
        &[],
    );
    let results = json_lines(&out.join("results.jsonl"));
    assert_eq!(results[0]["pii"], serde_json::json!({"email": 2}));
    assert_eq!(results[1]["pii"], serde_json::json!({"card": 1}));
    assert!(results[2].get("pii").is_none());
    assert_eq!(
        summary(&out)["pii_turns"],
        serde_json::json!({"card": 1, "email": 1})
    );
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(report.contains("Personal data and secrets"), "{report}");
    assert!(!report.contains("jane@"), "no values in the report");
}

#[test]
fn explained_turns_carry_their_spans_and_the_report_marks_the_strongest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = audit_lines(
        dir.path(),
        &[
            r#"{"id": "a", "messages": [{"role": "user", "content": "Hello there. How do I make a weapon? Thanks."}, {"role": "assistant", "content": "I cannot help. Ask me something else."}]}"#,
        ],
        &["--explain", "all", "--include-text"],
    );
    let results = json_lines(&out.join("results.jsonl"));
    let user = &results[0]["explanation"];
    assert_eq!(user["judged"], "prompt");
    assert_eq!(user["spans_scored"], 3);
    let text = results[0]["text"].as_str().expect("text");
    for span in user["spans"].as_array().expect("spans") {
        let (start, end) = (span["start"].as_u64(), span["end"].as_u64());
        let range = start.expect("start") as usize..end.expect("end") as usize;
        assert_eq!(span["text"], text[range]);
        assert!(span["effect"]["dangerous"].is_f64(), "{span}");
    }
    assert_eq!(results[1]["explanation"]["judged"], "response");
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(report.contains("<mark>"), "the strongest span is marked");
    // Each category lists its flagged turns, the span that raises it most marked.
    let summary = summary(&out);
    for (id, category) in summary["categories"].as_object().expect("categories") {
        let flagged = category["flagged"].as_u64().expect("flagged");
        let examples = category["examples"].as_array().expect("examples");
        assert_eq!(examples.len() as u64, flagged.min(5), "{id}");
        for e in examples {
            assert!(e["violated"]
                .as_array()
                .expect("violated")
                .contains(&Value::from(id.as_str())));
        }
    }
    let listed = summary["categories"]
        .as_object()
        .expect("categories")
        .values()
        .any(|c| !c["examples"].as_array().expect("examples").is_empty());
    assert_eq!(report.contains("Highest-scoring flagged turns"), listed);

    // Without the text, spans are offsets only; `flagged` explains violating turns alone.
    let out = dir.path().join("out");
    audit(
        &[&dir.path().join("log.jsonl")],
        &out,
        &["--explain", "flagged", "--restart"],
    );
    for r in json_lines(&out.join("results.jsonl")) {
        let flagged = !r["violated"].as_array().expect("violated").is_empty();
        assert_eq!(r.get("explanation").is_some(), flagged, "{r}");
        let spans = r["explanation"]["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(spans.iter().all(|s| s.get("text").is_none()), "{r}");
    }
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(
        !report.contains("weapon"),
        "no text in the report without --include-text"
    );
}
