//! What the model benchmarks share: settings from the environment, the machine's name, peak
//! memory, the prompts of each length bucket, and building the random-weight model. Each
//! benchmark compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;
use shieldgate::model::load::loader::{load, parse_dtype, LoadOptions, ModelSource};
use shieldgate::model::load::quantize::GgufType;
use shieldgate::policy::{Policy, PolicySet};
use shieldgate::scorer::{Engine, EngineOptions, Score, ScoreRequest};

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A whole-number environment variable, or `default`; anything else ends the bench.
pub fn number(name: &str, default: usize) -> usize {
    env_or(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| fail(&format!("{name} must be a number")))
}

/// Peak resident memory of this process since the last reset, in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Starts a new peak-memory measurement.
pub fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); harmless where unsupported.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The CPU's model name.
pub fn cpu_name() -> String {
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

/// User prompts of roughly 10, 60 and 400 tokens (scripts/peers/bench.py uses the same).
pub fn buckets() -> Vec<(&'static str, String)> {
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

/// The built-in policies.
pub fn policies() -> Arc<[Policy]> {
    PolicySet::builtin().iter().cloned().collect()
}

/// A prompt-only request for the built-in policies.
pub fn request(user: &str, policies: &Arc<[Policy]>) -> ScoreRequest {
    ScoreRequest::new(user, None, policies.clone())
}

/// Builds `synthetic:PRESET` in `precision` (f32, bf16, f16, or q8_0 / q4_0 / q4_k_m
/// quantized while loading) with the real Gemma tokenizer, and scores one untimed warm-up
/// check (candle repacks quantized matrices on first use). Exits with a message on failure.
pub fn engine(preset: &str, precision: &str) -> Engine {
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/tokenizer.json");
    if !tokenizer.is_file() {
        fail(&format!(
            "{} is missing: run scripts/fetch-tokenizer.sh",
            tokenizer.display()
        ));
    }
    let (dtype, quantize) = match (parse_dtype(precision), GgufType::parse(precision)) {
        (Ok(d), _) => (d, None),
        (Err(_), Some(q)) => (DType::F32, Some(q)),
        (Err(e), None) => fail(&format!("{e} (or q8_0, q4_0, q4_k_m)")),
    };
    let opts = LoadOptions {
        dtype,
        tokenizer: Some(tokenizer),
        quantize,
        ..LoadOptions::default()
    };
    let start = Instant::now();
    let loaded = load(&ModelSource::Synthetic(preset.to_string()), &opts)
        .unwrap_or_else(|e| fail(&format!("cannot build the model: {e}")));
    eprintln!(
        "built synthetic:{preset} {precision} in {:.1?}",
        start.elapsed()
    );
    let engine = Engine::new(loaded, EngineOptions::default());
    let start = Instant::now();
    if let Err(e) = engine.score(&[request("warm-up", &policies())]) {
        fail(&format!("scoring failed: {e}"));
    }
    eprintln!("warm-up check: {:.1?}", start.elapsed());
    engine
}

/// Prints `message` and exits with status 2.
pub fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}
