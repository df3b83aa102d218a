//! Throughput benchmark: 4-policy checks sent through the scorer worker (as `serve` runs them)
//! by 1, 4 and 16 concurrent clients, on a random-weight model of the exact ShieldGemma-2B
//! shape with the real Gemma tokenizer. Each level scores the same requests (the short, medium
//! and long prompts of the engine benchmark in turn); the worker gathers waiting checks into
//! batches of up to `max_batch` texts, which the engine runs in groups of similar length within
//! its token budget. Prints checks per second, latency percentiles, engine batches and peak
//! memory, and each level's rate relative to one client.
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench throughput`
//! Environment: SHIELDGATE_BENCH_PRESET (2b; tiny for a smoke run), SHIELDGATE_BENCH_DTYPE
//! (q8_0; or f32, bf16, q4_k_m, q4_0), SHIELDGATE_BENCH_CONCURRENCY (levels, "1,4,16"),
//! SHIELDGATE_BENCH_REQUESTS (checks per level, 16), SHIELDGATE_BENCH_BUCKETS (the prompts
//! taken in turn, "short,medium,long"), SHIELDGATE_BENCH_MAX_BATCH (texts per
//! worker batch, 16 as in `[scorer]`), SHIELDGATE_BENCH_BATCH_TOKENS (the engine's budget,
//! 4096 as in `[model]`).

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shieldgate::scorer::worker::ScorerHandle;
use shieldgate::scorer::{EngineOptions, ScoreRequest};

use common::{buckets, cpu_name, env_or, number, peak_rss_mib, reset_peak_rss};

/// One level's outcome.
struct Level {
    latencies: Vec<Duration>,
    wall: Duration,
    batches: Vec<usize>,
}

/// Sends every request through `handle` from `clients` concurrent tasks.
fn run_level(
    handle: &ScorerHandle,
    batches: &Arc<Mutex<Vec<usize>>>,
    requests: &Arc<Vec<ScoreRequest>>,
    clients: usize,
) -> Level {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| common::fail(&format!("cannot start a runtime: {e}")));
    batches.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (handle, next, requests) = (handle.clone(), next.clone(), requests.clone());
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        return times;
                    };
                    let t = Instant::now();
                    if let Err(e) = handle.score(vec![request.clone()]).await {
                        common::fail(&format!("scoring failed: {e}"));
                    }
                    times.push(t.elapsed());
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all
    });
    Level {
        latencies,
        wall: started.elapsed(),
        batches: batches.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, Duration::as_secs_f64)
}

fn main() {
    let preset = env_or("SHIELDGATE_BENCH_PRESET", "2b");
    let precision = env_or("SHIELDGATE_BENCH_DTYPE", "q8_0");
    let levels: Vec<usize> = env_or("SHIELDGATE_BENCH_CONCURRENCY", "1,4,16")
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|c| *c > 0)
        .collect();
    let count = number("SHIELDGATE_BENCH_REQUESTS", 16).max(1);
    let max_batch = number("SHIELDGATE_BENCH_MAX_BATCH", 16).max(1);
    let batch_tokens = number(
        "SHIELDGATE_BENCH_BATCH_TOKENS",
        EngineOptions::default().batch_tokens,
    );

    reset_peak_rss();
    let engine = common::engine(&preset, &precision);
    let options = EngineOptions {
        batch_tokens,
        ..engine.options()
    };
    let engine = engine.with_options(options);
    let policies = common::policies();
    let wanted = env_or("SHIELDGATE_BENCH_BUCKETS", "short,medium,long");
    let prompts: Vec<(&str, String)> = buckets()
        .into_iter()
        .filter(|(b, _)| wanted.split(',').any(|w| w.trim() == *b))
        .collect();
    if prompts.is_empty() {
        common::fail("SHIELDGATE_BENCH_BUCKETS names none of short, medium, long");
    }
    let requests: Arc<Vec<ScoreRequest>> = Arc::new(
        (0..count)
            .map(|i| common::request(&prompts[i % prompts.len()].1, &policies))
            .collect(),
    );
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    let recorder = batches.clone();
    let handle = ScorerHandle::spawn_with_hook(
        Arc::new(engine),
        count,
        max_batch,
        Arc::new(move |n| recorder.lock().unwrap_or_else(|e| e.into_inner()).push(n)),
    )
    .unwrap_or_else(|e| common::fail(&format!("cannot start the scorer thread: {e}")));

    println!(
        "shieldgate throughput: synthetic:{preset} {precision}, 4 policies, {count} checks per level ({wanted} prompts in turn), worker batches of up to {max_batch} texts, engine budget {batch_tokens} padded tokens, {} threads, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_name()
    );
    println!();
    println!("| concurrent clients | checks/s | × 1 client | p50 latency (s) | p99 latency (s) | engine batches (mean texts) | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    let mut single: Option<f64> = None;
    for clients in levels {
        let mut level = run_level(&handle, &batches, &requests, clients);
        level.latencies.sort_unstable();
        let rate = level.latencies.len() as f64 / level.wall.as_secs_f64();
        let base = *single.get_or_insert(rate);
        let mean_batch =
            level.batches.iter().sum::<usize>() as f64 / level.batches.len().max(1) as f64;
        println!(
            "| {clients} | {rate:.3} | {:.2} | {:.2} | {:.2} | {} ({mean_batch:.1}) | {:.0} |",
            rate / base,
            percentile(&level.latencies, 0.5),
            percentile(&level.latencies, 0.99),
            level.batches.len(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
}
