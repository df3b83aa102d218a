//! Engine benchmark: one 4-policy check on a random-weight model of the exact ShieldGemma-2B
//! shape (built in-process, no weight file) with the real Gemma tokenizer, for short, medium
//! and long user prompts; full forward vs prefix reuse; f32, bf16 and weights quantized while
//! loading (q8_0, q4_k_m, q4_0). Prints a table, with each quantized row's largest P(Yes)
//! difference from the f32 row when f32 runs first.
//!
//! Each model first scores one untimed warm-up check (candle repacks quantized matrices on first
//! use); the timed cells follow.
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench engine`
//! Environment: SHIELDGATE_BENCH_PRESET (2b; tiny for a smoke run), SHIELDGATE_BENCH_DTYPES
//! (f32,bf16,q8_0,q4_k_m), SHIELDGATE_BENCH_BUCKETS (short,medium,long), SHIELDGATE_BENCH_MODES
//! (full,prefix), SHIELDGATE_BENCH_ITERS (timed runs per cell, default 1).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;
use shieldgate::model::loader::{load, parse_dtype, LoadOptions, ModelSource};
use shieldgate::model::quantize::GgufType;
use shieldgate::policy::{Policy, PolicySet};
use shieldgate::scorer::{Engine, EngineOptions, Score, ScoreRequest};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Peak resident memory of this process since the last reset, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); harmless where unsupported.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// User prompts of roughly 10, 60 and 400 tokens.
fn buckets() -> Vec<(&'static str, String)> {
    let sentence = "I keep thinking about what my neighbour said at the meeting last week, \
                    and I want to write him a letter that explains how I feel. ";
    vec![
        (
            "short",
            "How do I make my neighbour stop parking here?".to_string(),
        ),
        ("medium", sentence.repeat(2) + "Can you help me word it?"),
        ("long", sentence.repeat(14) + "Can you help me word it?"),
    ]
}

fn main() {
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/tokenizer.json");
    if !tokenizer.is_file() {
        eprintln!(
            "{} is missing: run scripts/fetch-tokenizer.sh",
            tokenizer.display()
        );
        std::process::exit(2);
    }
    let preset = env_or("SHIELDGATE_BENCH_PRESET", "2b");
    let dtypes = env_or("SHIELDGATE_BENCH_DTYPES", "f32,bf16,q8_0,q4_k_m");
    let wanted = env_or("SHIELDGATE_BENCH_BUCKETS", "short,medium,long");
    let modes = env_or("SHIELDGATE_BENCH_MODES", "full,prefix");
    let modes: Vec<bool> = [(false, "full"), (true, "prefix")]
        .into_iter()
        .filter(|(_, name)| modes.split(',').any(|m| m.trim() == *name))
        .map(|(reuse, _)| reuse)
        .collect();
    let iters: usize = env_or("SHIELDGATE_BENCH_ITERS", "1")
        .parse()
        .unwrap_or(1)
        .max(1);
    let policies: Arc<[Policy]> = PolicySet::builtin().iter().cloned().collect();
    println!(
        "shieldgate engine benchmark: synthetic:{preset}, 4 policies, {} threads, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_name()
    );
    println!();
    println!(
        "| weights | bucket | user tokens | mode | tokens run | latency (s) | prefill tok/s | peak RSS (MiB) | max abs ΔP(Yes) vs f32 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut f32_scores: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for dtype_name in dtypes.split(',').map(str::trim) {
        let (dtype, quantize) = match (parse_dtype(dtype_name), GgufType::parse(dtype_name)) {
            (Ok(d), _) => (d, None),
            (Err(_), Some(q)) => (DType::F32, Some(q)),
            (Err(e), None) => {
                eprintln!("{e} (or q8_0, q4_0, q4_k_m)");
                std::process::exit(2);
            }
        };
        reset_peak_rss();
        let opts = LoadOptions {
            dtype,
            tokenizer: Some(tokenizer.clone()),
            quantize,
            ..LoadOptions::default()
        };
        let start = Instant::now();
        let loaded = match load(&ModelSource::Synthetic(preset.clone()), &opts) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot build the model: {e}");
                std::process::exit(2);
            }
        };
        eprintln!(
            "built synthetic:{preset} {dtype_name} in {:.1?}",
            start.elapsed()
        );
        let mut engine = Engine::new(loaded, EngineOptions::default());
        // candle repacks quantized matrices on their first use: keep that one-time cost (paid
        // once per process in a server) out of the timed cells.
        let warm_up = ScoreRequest {
            user: "warm-up".to_string(),
            response: None,
            policies: policies.clone(),
        };
        let start = Instant::now();
        if let Err(e) = engine.score(std::slice::from_ref(&warm_up)) {
            eprintln!("scoring failed: {e}");
            std::process::exit(2);
        }
        eprintln!("warm-up check: {:.1?}", start.elapsed());
        for (bucket, user) in buckets()
            .into_iter()
            .filter(|(b, _)| wanted.split(',').any(|w| w.trim() == *b))
        {
            let user_tokens = engine.tokenizer().encode(&user).map_or(0, |ids| ids.len());
            for &prefix_reuse in &modes {
                let options = EngineOptions {
                    prefix_reuse,
                    ..engine.options()
                };
                engine = engine.with_options(options);
                let request = ScoreRequest {
                    user: user.clone(),
                    response: None,
                    policies: policies.clone(),
                };
                let tokens_run = match engine.encode(&request) {
                    Ok((e, _)) if prefix_reuse => {
                        e.shared.len() + e.suffixes.iter().map(Vec::len).sum::<usize>()
                    }
                    Ok((e, _)) => (0..e.suffixes.len()).map(|k| e.full(k).len()).sum(),
                    Err(err) => {
                        eprintln!("encode failed: {err}");
                        std::process::exit(2);
                    }
                };
                let mut best = f64::INFINITY;
                let mut scores = Vec::new();
                for _ in 0..iters {
                    let t = Instant::now();
                    match engine.score(std::slice::from_ref(&request)) {
                        Ok(r) => scores = r[0].scores.iter().map(|s| s.p_yes).collect(),
                        Err(err) => {
                            eprintln!("scoring failed: {err}");
                            std::process::exit(2);
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let delta = match (dtype_name, f32_scores.get(bucket)) {
                    ("f32", _) => {
                        f32_scores.insert(bucket, scores);
                        "0".to_string()
                    }
                    (_, Some(reference)) => {
                        let d = reference
                            .iter()
                            .zip(&scores)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0, f64::max);
                        format!("{d:.4}")
                    }
                    (_, None) => "-".to_string(),
                };
                println!(
                    "| {dtype_name} | {bucket} | {user_tokens} | {} | {tokens_run} | {best:.2} | {:.1} | {:.0} | {delta} |",
                    if prefix_reuse { "prefix reuse" } else { "full forward" },
                    tokens_run as f64 / best,
                    peak_rss_mib().unwrap_or(f64::NAN)
                );
            }
        }
        drop(engine);
    }
}
