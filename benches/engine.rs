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

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use shieldgate::scorer::{EngineOptions, Score};

use common::{buckets, cpu_name, env_or, peak_rss_mib, reset_peak_rss};

fn main() {
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
    let policies = common::policies();
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
        reset_peak_rss();
        let mut engine = common::engine(&preset, dtype_name);
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
                let request = common::request(&user, &policies);
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
