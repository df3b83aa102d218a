//! Prompt Guard 2 on CPU: latency and checks per second of the 22M and 86M shapes (seeded
//! weights, f32) for one short text (64 tokens), one full window (512 tokens) and a batch of
//! eight short texts; next to Hugging Face transformers on the same weights and windows in the
//! same run (`scripts/peers/prompt_guard.py`) when a python with torch is at hand
//! (`SHIELDGATE_TORCH_PYTHON`, or the venv `scripts/torch-venv.sh` makes). Prints a table.
//!
//! Run: `cargo bench --bench injection` (SHIELDGATE_BENCH_ROUNDS, default 5: the best run of
//! each case is reported).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::Device;
use shieldgate::injection::config::{prompt_guard_22m, prompt_guard_86m};
use shieldgate::injection::PromptGuard;

use common::{cpu_name, number};

/// `[CLS]` + `n - 2` fixed ids + `[SEP]`.
fn window(n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed;
    let mut w = vec![1];
    for _ in 0..n - 2 {
        x = (x.wrapping_mul(6364136223846793005)).wrapping_add(1442695040888963407);
        w.push(3 + (x >> 33) as u32 % 120_000);
    }
    w.push(2);
    w
}

fn cases() -> Vec<(&'static str, Vec<Vec<u32>>)> {
    vec![
        ("1 × 64 tokens", vec![window(64, 1)]),
        ("1 × 512 tokens", vec![window(512, 2)]),
        (
            "8 × 64 tokens",
            (0..8).map(|i| window(64, 10 + i)).collect(),
        ),
    ]
}

/// transformers' best time per case, when a python with torch is at hand.
fn transformers(shape: &str, rounds: usize) -> Option<serde_json::Value> {
    let default = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/shieldgate/torch-venv/bin/python"))
        .ok()?;
    let python = std::env::var("SHIELDGATE_TORCH_PYTHON").unwrap_or(default);
    if !std::path::Path::new(&python).exists() {
        return None;
    }
    let cases: serde_json::Map<String, serde_json::Value> = cases()
        .into_iter()
        .map(|(name, w)| (name.to_string(), serde_json::json!(w)))
        .collect();
    let job = serde_json::json!({"shape": shape, "threads": 2, "rounds": rounds, "cases": cases});
    let mut child = Command::new(python)
        .arg("scripts/peers/prompt_guard.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()?
        .write_all(job.to_string().as_bytes())
        .ok()?;
    let out = child.wait_with_output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    let rounds = number("SHIELDGATE_BENCH_ROUNDS", 5);
    println!(
        "shieldgate Prompt Guard 2 benchmark: f32, seeded weights, best of {rounds}, {}",
        cpu_name()
    );
    println!();
    println!("| shape | input | shieldgate (ms) | checks/s | transformers (ms) | shieldgate / transformers |");
    println!("|---|---|---|---|---|---|");
    for (shape, config) in [("22m", prompt_guard_22m()), ("86m", prompt_guard_86m())] {
        let guard = PromptGuard::synthetic(&config, &Device::Cpu)
            .unwrap_or_else(|e| common::fail(&e.to_string()));
        let peer = transformers(shape, rounds);
        for (name, windows) in cases() {
            guard
                .logits(&windows)
                .unwrap_or_else(|e| common::fail(&e.to_string()));
            let mut best = f64::INFINITY;
            for _ in 0..rounds {
                let started = Instant::now();
                guard
                    .logits(&windows)
                    .unwrap_or_else(|e| common::fail(&e.to_string()));
                best = best.min(started.elapsed().as_secs_f64());
            }
            let checks = windows.len() as f64 / best;
            let theirs = peer.as_ref().and_then(|p| p[name].as_f64());
            let (theirs_ms, ratio) = match theirs {
                Some(t) => (format!("{:.1}", t * 1e3), format!("{:.2}×", best / t)),
                None => ("–".into(), "–".into()),
            };
            println!(
                "| {shape} | {name} | {:.1} | {checks:.1} | {theirs_ms} | {ratio} |",
                best * 1e3
            );
        }
    }
}
