//! Incremental-check benchmark: the gateway's `incremental` output mode scores a growing answer
//! again and again. This times such a series of 4-policy checks (prompt-response template, the
//! answer growing by one sentence per check) on the 2B-shaped random model, without and with
//! the engine's prefix store (`[model] prefix_cache_tokens`), and prints a table.
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench incremental`
//! Environment: SHIELDGATE_BENCH_PRESET (2b; tiny for a smoke run), SHIELDGATE_BENCH_DTYPE
//! (q8_0), SHIELDGATE_BENCH_SENTENCES (sentences in the first answer, 20), SHIELDGATE_BENCH_STEPS
//! (checks per series, 4).

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

mod common;

use std::time::Instant;

use shieldgate::scorer::{EngineOptions, Score};

use common::{cpu_name, env_or, number};

fn main() {
    let preset = env_or("SHIELDGATE_BENCH_PRESET", "2b");
    let precision = env_or("SHIELDGATE_BENCH_DTYPE", "q8_0");
    let sentences = number("SHIELDGATE_BENCH_SENTENCES", 20);
    let steps = number("SHIELDGATE_BENCH_STEPS", 4);
    let sentence = "Every morning the fox walked down to the river to watch the boats. ";
    let mut engine = common::engine(&preset, &precision);
    let policies = common::policies();
    println!(
        "shieldgate incremental checks: synthetic:{preset} {precision}, 4 policies, an answer of {sentences} sentences growing by one per check, {} threads, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_name()
    );
    println!();
    println!("| prefix store | check | answer tokens | latency (s) | prefix tokens reused |");
    println!("|---|---|---|---|---|");
    for capacity in [0, 4096] {
        let options = EngineOptions {
            prefix_cache_tokens: capacity,
            ..engine.options()
        };
        engine = engine.with_options(options);
        for step in 0..steps {
            let mut request = common::request("Tell me a story about a fox.", &policies);
            let answer = sentence.repeat(sentences + step);
            let answer_tokens = engine
                .tokenizer()
                .encode(&answer)
                .map_or(0, |ids| ids.len());
            request.response = Some(answer);
            let before = engine.reused_prefix_tokens();
            let started = Instant::now();
            if let Err(e) = engine.score(std::slice::from_ref(&request)) {
                common::fail(&format!("scoring failed: {e}"));
            }
            println!(
                "| {} | {} | {answer_tokens} | {:.2} | {} |",
                if capacity == 0 { "off" } else { "4096 tokens" },
                step + 1,
                started.elapsed().as_secs_f64(),
                engine.reused_prefix_tokens() - before
            );
        }
    }
}
