//! Audit benchmark: conversations/s and turns/s of `shieldgate audit` against the engine's
//! standalone throughput on the same turns, in the same batches, in one run — on the tiny
//! model and on a random-weight model of the exact ShieldGemma-2B shape, with the real Gemma
//! tokenizer. Prints a table with the audit/engine ratio (target ≥ 0.90).
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench audit`
//! Environment: SHIELDGATE_BENCH_PRESETS (tiny,2b), SHIELDGATE_BENCH_QUANTIZE (q8_0; `none`
//! for f32), SHIELDGATE_BENCH_CONVERSATIONS (per preset: tiny=200,2b=4), SHIELDGATE_BENCH_BATCH
//! (turns per batch, 32).

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use shieldgate::audit::reader::Fields;
use shieldgate::audit::{self, AuditOptions, Input};
use shieldgate::commands::load_engine;
use shieldgate::config::ModelSettings;
use shieldgate::policy::{Policy, PolicySet};
use shieldgate::scorer::{Engine, Score, ScoreRequest};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

/// A user question and an answer per conversation, of everyday lengths, each one different.
fn conversations(n: usize) -> Vec<(String, String)> {
    let topics = [
        "bake sourdough bread at home",
        "fix a bicycle chain that keeps slipping",
        "write a polite letter to a noisy neighbour",
        "plan a week of vegetarian dinners",
        "explain compound interest to a teenager",
    ];
    (0..n)
        .map(|i| {
            let topic = topics[i % topics.len()];
            (
                format!("Conversation {i}: can you tell me how to {topic}? I tried once and it went wrong."),
                format!(
                    "Sure. To {topic}, start small, check each step, and keep notes of what you \
                     changed (attempt {i}). Most problems come from rushing the first step."
                ),
            )
        })
        .collect()
}

fn write_log(path: &Path, convs: &[(String, String)]) {
    let mut text = String::new();
    for (i, (q, a)) in convs.iter().enumerate() {
        text.push_str(
            &serde_json::json!({"id": format!("c{i}"), "messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
}

/// The engine alone: the same turns, the same batches, nothing read or written.
fn engine_alone(
    engine: &Engine,
    convs: &[(String, String)],
    policies: &Arc<[Policy]>,
    batch: usize,
) -> f64 {
    let requests: Vec<ScoreRequest> = convs
        .iter()
        .flat_map(|(q, a)| {
            [
                ScoreRequest::new(q.clone(), None, policies.clone()),
                ScoreRequest::new(q.clone(), Some(a.clone()), policies.clone()),
            ]
        })
        .collect();
    let start = Instant::now();
    for chunk in requests.chunks(batch) {
        if let Err(e) = engine.score(chunk) {
            fail(format!("scoring failed: {e}"));
        }
    }
    start.elapsed().as_secs_f64()
}

fn audit_run(
    engine: &Engine,
    log: &Path,
    out: PathBuf,
    policies: &Arc<[Policy]>,
    batch: usize,
) -> f64 {
    let opts = AuditOptions {
        inputs: vec![Input::File(log.to_path_buf())],
        out,
        fields: Fields::default(),
        format: None,
        policies: policies.clone(),
        batch_turns: batch,
        max_turn_chars: 20_000,
        shard: (0, 1),
        include_text: false,
        context_turns: 0,
        explain: audit::Explain::Off,
        explain_spans: 16,
        restart: true,
        abort_after_writes: None,
    };
    let start = Instant::now();
    match audit::run(engine, &opts, &mut |_| {}) {
        Ok(s) if s.counts.lines_errored == 0 => start.elapsed().as_secs_f64(),
        Ok(s) => fail(format!("the audit recorded errors: {:?}", s.counts)),
        Err(e) => fail(format!("the audit failed: {e}")),
    }
}

fn main() {
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/tokenizer.json");
    if !tokenizer.is_file() {
        fail(format!(
            "{} is missing: run scripts/fetch-tokenizer.sh",
            tokenizer.display()
        ));
    }
    let presets = env_or("SHIELDGATE_BENCH_PRESETS", "tiny,2b");
    let quantize = env_or("SHIELDGATE_BENCH_QUANTIZE", "q8_0");
    let counts = env_or("SHIELDGATE_BENCH_CONVERSATIONS", "tiny=200,2b=4");
    let batch: usize = env_or("SHIELDGATE_BENCH_BATCH", "32")
        .parse()
        .unwrap_or_else(|_| fail("SHIELDGATE_BENCH_BATCH: expected a number".into()));
    let policies: Arc<[Policy]> = PolicySet::builtin().iter().cloned().collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("temp dir: {e}")));
    println!(
        "shieldgate audit benchmark: 4 policies, {batch} turns per batch, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| model | weights | conversations | turns | engine turns/s | audit turns/s | audit conversations/s | audit / engine |");
    println!("|---|---|---|---|---|---|---|---|");
    for preset in presets.split(',').map(str::trim) {
        let n: usize = counts
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(&format!("{preset}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let settings = ModelSettings {
            source: format!("synthetic:{preset}"),
            tokenizer: Some(tokenizer.clone()),
            quantize: (quantize != "none").then(|| quantize.clone()),
            ..ModelSettings::default()
        };
        let engine = load_engine(&settings).unwrap_or_else(|e| fail(format!("{e:#}")));
        let convs = conversations(n);
        let log = dir.path().join(format!("{preset}.jsonl"));
        write_log(&log, &convs);
        let out = dir.path().join(format!("{preset}-out"));
        // A warm-up pass, then the engine alone and the audit on the same turns.
        let warm = &convs[..convs.len().min(2)];
        engine_alone(&engine, warm, &policies, batch);
        let engine_s = engine_alone(&engine, &convs, &policies, batch);
        let audit_s = audit_run(&engine, &log, out, &policies, batch);
        let turns = 2 * n;
        let weights = if quantize == "none" { "f32" } else { &quantize };
        println!(
            "| synthetic:{preset} | {weights} | {n} | {turns} | {:.2} | {:.2} | {:.2} | {:.3} |",
            turns as f64 / engine_s,
            turns as f64 / audit_s,
            n as f64 / audit_s,
            engine_s / audit_s
        );
    }
}
