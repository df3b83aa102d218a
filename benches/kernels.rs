//! Kernel benchmark and roofline. First the CPU's measured ceilings: each instruction sequence a
//! GEMM kernel is built on, in a microkernel that only multiplies, on every thread. Then one
//! linear layer of each ShieldGemma-2B shape, for each GGUF type the kernels cover, through
//! candle's quantized matmul (`SHIELDGATE_KERNELS=candle` while the layer is built) and each of
//! shieldgate's kernels the CPU runs: the AVX2 int8 tile (`avx2`), the AVX-512 VNNI tile
//! (`vnni`) and the AMX path (the default where it runs), on the same weights and activations;
//! ms per call (the best of the iterations), GOP/s, the default kernel's share of its ceiling
//! and its ratio to candle. Then the same shapes with bf16 and f32 weights: candle's matmul
//! against the dense tile where the CPU runs it (AVX-512 BF16 for bf16, AVX-512 for f32). Last,
//! where one short 4-policy check on the 2B shape spends its time, phase by phase, and how far
//! it is from its floor (its GEMM work at the ceiling of the instructions its weights run on).
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench kernels`
//! Environment: SHIELDGATE_BENCH_ROWS (tokens per call, 462: a short check's prefill),
//! SHIELDGATE_BENCH_TYPES (q8_0,q4_k,q4_0,q6_k,bf16,f32; empty for none),
//! SHIELDGATE_BENCH_ITERS (5),
//! SHIELDGATE_BENCH_CHECK (the check's weights: q8_0, any precision of the engine bench, or
//! none). `SHIELDGATE_KERNELS=avx2 MISTRALRS_FORCE_AVX2=1` (the second is candle's) times the
//! layers and the check as an AVX2-only CPU would run them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use shieldgate::model::kernels::dense_gemm::{self, Precision};
use shieldgate::model::kernels::peak::Micro;
use shieldgate::model::load::synthetic;
use shieldgate::model::load::weights::{StoredTensor, WeightSource};
use shieldgate::model::profile::{self, Phase};
use shieldgate::scorer::Score;

use common::{cpu_name, env_or, number};

/// (layer, out, in) of the 2B's matrices.
const SHAPES: [(&str, usize, usize); 6] = [
    ("q_proj", 2048, 2304),
    ("k_proj / v_proj", 1024, 2304),
    ("o_proj", 2304, 2048),
    ("gate_proj / up_proj", 9216, 2304),
    ("down_proj", 2304, 9216),
    ("down_proj (1 token)", 2304, 9216),
];

/// Tokens per call for a row of `SHAPES`.
fn tokens_of(label: &str, rows: usize) -> usize {
    if label.ends_with("(1 token)") {
        1
    } else {
        rows
    }
}

fn or_fail<T>(result: candle_core::Result<T>) -> T {
    result.unwrap_or_else(|e| common::fail(&e.to_string()))
}

fn ggml_type(name: &str) -> GgmlDType {
    match name {
        "q8_0" => GgmlDType::Q8_0,
        "q4_k" => GgmlDType::Q4K,
        "q4_0" => GgmlDType::Q4_0,
        "q6_k" => GgmlDType::Q6K,
        other => common::fail(&format!("unknown type {other}: q8_0, q4_k, q4_0 or q6_k")),
    }
}

/// The kernels timed, by the `SHIELDGATE_KERNELS` value that selects each and the name
/// `quantized_kernel()` gives it (the AMX path runs only as the default).
const KERNELS: [(&str, &str); 4] = [
    ("candle", "candle"),
    ("avx2", "avx2"),
    ("vnni", "vnni"),
    ("", "amx"),
];

/// Runs `f` with `SHIELDGATE_KERNELS` set to `kernels` (the caller's own value when empty, so
/// that `SHIELDGATE_KERNELS=avx2 cargo bench` times the check as an AVX2-only CPU would run it).
fn with_kernels<T>(kernels: &str, f: impl FnOnce() -> T) -> T {
    let own = std::env::var_os("SHIELDGATE_KERNELS");
    if !kernels.is_empty() {
        std::env::set_var("SHIELDGATE_KERNELS", kernels);
    }
    let result = f();
    match own {
        Some(value) => std::env::set_var("SHIELDGATE_KERNELS", value),
        None => std::env::remove_var("SHIELDGATE_KERNELS"),
    }
    result
}

/// A layer over `w`, in `dtype`, built with `SHIELDGATE_KERNELS` set to `kernels`.
fn layer(w: StoredTensor, dtype: DType, kernels: &str) -> impl Module {
    let (out_dim, in_dim) = match &w {
        StoredTensor::Quantized(q) => or_fail(q.shape().dims2()),
        StoredTensor::Dense(t) => or_fail(t.dims2()),
    };
    let tensors = HashMap::from([("w.weight".to_string(), w)]);
    let source = WeightSource::from_tensors(tensors, dtype, &Device::Cpu);
    with_kernels(kernels, || source.linear(in_dim, out_dim, "w"))
        .unwrap_or_else(|e| common::fail(&format!("layer: {e}")))
}

/// A layer's f32 weights `[out, in]` and `tokens` rows of activations.
fn operands(out_dim: usize, in_dim: usize, tokens: usize) -> (Tensor, Tensor) {
    let w = synthetic::values("bench.weight", &[out_dim, in_dim]);
    let x = synthetic::values("bench.input", &[tokens, in_dim]);
    (
        or_fail(Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu)),
        or_fail(Tensor::from_vec(x, (tokens, in_dim), &Device::Cpu)),
    )
}

/// Fewest seconds per call of `layer` on `x` over `iters` calls, after one untimed call (the
/// best of several is steadier than the mean on a shared VM).
fn time(layer: &impl Module, x: &Tensor, iters: usize) -> f64 {
    let run = || {
        layer
            .forward(x)
            .unwrap_or_else(|e| common::fail(&format!("forward: {e}")))
    };
    run();
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The ceiling a kernel runs against on weights of `ggml_type` (q8_0, q6_k, q4_k, q4_0 or a
/// check's precision): the instructions of its inner loop. The AVX2 tile multiplies 8-bit
/// weights (Q8_0, and Q6_K requantized to it) with the sign trick, 4-bit ones in 16-bit sums
/// (a Q4_K_M check's Q6_K matrices aside).
fn ceiling_of(kernel: &str, ggml_type: &str) -> Option<Micro> {
    match kernel {
        "vnni" => Some(Micro::Vnni),
        "avx2" if ggml_type.starts_with("q8") || ggml_type.starts_with("q6") => {
            Some(Micro::Avx2SignedInt8)
        }
        "avx2" => Some(Micro::Avx2Nibble),
        // The AMX path's bf16 tiles have no microkernel here.
        _ => None,
    }
}

/// Prints the measured ceilings and returns them.
fn ceilings(threads: usize) -> Vec<(Micro, f64)> {
    println!("Ceilings (microkernels that only multiply, {threads} threads):\n");
    println!("| instructions | GOP/s |");
    println!("|---|---|");
    // Each three times, the best kept: the first run of wide vector code after a quiet spell can
    // meet clocks that have not come up yet, and a neighbour on a shared VM can take a run's
    // core for a moment (one run of the signed AVX2 sequence read 252 GOP/s among 290-293).
    let measured: Vec<(Micro, f64)> = Micro::ALL
        .into_iter()
        .filter_map(|m| {
            let span = std::time::Duration::from_millis(300);
            let rate = (0..3)
                .map(|_| m.measure(threads, span))
                .try_fold(0f64, |best, rate| rate.map(|r| best.max(r)))?;
            Some((m, rate))
        })
        .collect();
    for (m, rate) in &measured {
        println!("| {} | {:.0} |", m.name(), rate / 1e9);
    }
    println!();
    measured
}

/// One timed check: seconds in all, each phase's seconds, and the weight GEMMs' operations.
struct Timed {
    total: f64,
    phases: Vec<(Phase, f64)>,
    ops: f64,
}

/// Times one short check with the forward pass's phases timed, and prints where it went.
fn check_breakdown(precision: &str, ceilings: &[(Micro, f64)], iters: usize) {
    let engine = common::engine("2b", precision);
    let policies = common::policies();
    let user = &common::buckets()[0].1;
    let request = common::request(user, &policies);
    let mut best: Option<Timed> = None;
    for _ in 0..iters.clamp(1, 3) {
        profile::enable(true);
        let start = Instant::now();
        if let Err(e) = engine.score(std::slice::from_ref(&request)) {
            common::fail(&format!("scoring failed: {e}"));
        }
        let total = start.elapsed().as_secs_f64();
        let run = Timed {
            total,
            phases: profile::seconds(),
            ops: profile::gemm_ops(),
        };
        profile::enable(false);
        if best.as_ref().is_none_or(|b| total < b.total) {
            best = Some(run);
        }
    }
    let Some(Timed { total, phases, ops }) = best else {
        return;
    };
    println!(
        "\nOne short 4-policy check, synthetic:2b {precision}, prefix reuse, {} threads: {total:.2} s\n",
        rayon::current_num_threads()
    );
    println!("| phase | s | share of the check |");
    println!("|---|---|---|");
    for (phase, s) in &phases {
        println!("| {} | {s:.2} | {:.0} % |", phase.name(), 100.0 * s / total);
    }
    let other = total - phases.iter().map(|(_, s)| s).sum::<f64>();
    println!(
        "| the rest (embedding, masks, Yes/No head, tokenizing, engine) | {other:.2} | {:.0} % |",
        100.0 * other / total
    );
    // The floor: the check's weight GEMM work at the ceiling of the instructions its weights
    // run on (bf16 tile, f32 FMA, or the int8 tile the CPU and `SHIELDGATE_KERNELS` choose)
    // (the AMX path, which has no microkernel, against the VNNI tile's).
    let int8 = match shieldgate::model::quantized_kernel() {
        "amx" => Some(Micro::Vnni),
        kernel => ceiling_of(kernel, precision),
    };
    let wanted: Vec<Micro> = match precision {
        "bf16" => vec![Micro::Bf16, Micro::Fma512, Micro::Fma256],
        "f32" | "f16" => vec![Micro::Fma512, Micro::Fma256],
        _ => int8.into_iter().collect(),
    };
    let ceiling = wanted
        .iter()
        .find_map(|w| ceilings.iter().find(|(m, _)| m == w));
    if let Some((m, rate)) = ceiling {
        let floor = ops / rate;
        println!(
            "\nWeight GEMM work: {:.0} GOP. At the {} ceiling that is {floor:.2} s: the check takes {:.1}× this floor.",
            ops / 1e9,
            m.name(),
            total / floor
        );
    }
}

fn main() {
    let rows = number("SHIELDGATE_BENCH_ROWS", 462);
    let iters = number("SHIELDGATE_BENCH_ITERS", 5).max(1);
    let types = env_or("SHIELDGATE_BENCH_TYPES", "q8_0,q4_k,q4_0,q6_k,bf16,f32");
    let check = env_or("SHIELDGATE_BENCH_CHECK", "q8_0");
    let here: Vec<bool> = KERNELS
        .iter()
        .map(|(kernels, name)| with_kernels(kernels, shieldgate::model::quantized_kernel) == *name)
        .collect();
    let default = shieldgate::model::quantized_kernel();
    let threads = rayon::current_num_threads();
    println!(
        "shieldgate kernels and roofline, {threads} threads, {}\n",
        cpu_name()
    );
    let ceilings = ceilings(threads);
    println!(
        "quantized matmul, {rows} tokens per call (1 for the last row), best of {iters}; default kernel {default}\n",
    );
    println!("| type | layer | out × in | candle ms | AVX2 ms | VNNI ms | AMX ms | candle GOP/s | {default} GOP/s | {default} share of its ceiling | {default} / candle time |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let types: Vec<&str> = types
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    for &name in types
        .iter()
        .filter(|t| !DENSE.iter().any(|(dense, ..)| dense == *t))
    {
        let dtype = ggml_type(name);
        let ceiling = ceiling_of(default, name)
            .and_then(|m| ceilings.iter().find(|(c, _)| *c == m))
            .map(|&(_, rate)| rate);
        for (label, out_dim, in_dim) in SHAPES {
            let tokens = tokens_of(label, rows);
            let (w, x) = operands(out_dim, in_dim, tokens);
            let q = Arc::new(or_fail(QTensor::quantize(&w, dtype)));
            let times: Vec<Option<f64>> = KERNELS
                .iter()
                .zip(&here)
                .map(|((kernels, _), &here)| {
                    here.then(|| {
                        let layer = layer(StoredTensor::Quantized(q.clone()), DType::F32, kernels);
                        time(&layer, &x, iters)
                    })
                })
                .collect();
            let candle = times[0].unwrap_or(f64::NAN);
            let ours = KERNELS
                .iter()
                .zip(&times)
                .find_map(|((_, name), t)| (*name == default).then_some(*t).flatten())
                .unwrap_or(f64::NAN);
            let ops = 2.0 * (tokens * out_dim * in_dim) as f64;
            let cells: Vec<String> = times
                .iter()
                .map(|t| t.map_or("–".to_string(), |t| format!("{:.2}", t * 1e3)))
                .collect();
            let share = ceiling.map_or("–".to_string(), |c| {
                format!("{:.0} %", 100.0 * ops / ours / c)
            });
            println!(
                "| {name} | {label} | {out_dim} × {in_dim} | {} | {:.0} | {:.0} | {share} | {:.2} |",
                cells.join(" | "),
                ops / candle / 1e9,
                ops / ours / 1e9,
                ours / candle
            );
        }
    }
    dense_layers(&types, rows, iters, &ceilings);
    if check != "none" {
        check_breakdown(&check, &ceilings, iters);
    }
}

/// The dense weight types, with the ceiling the dense tile runs against in each.
const DENSE: [(&str, DType, Micro); 2] = [
    ("bf16", DType::BF16, Micro::Bf16),
    ("f32", DType::F32, Micro::Fma512),
];

/// The 2B shapes with dense weights (`bf16`, `f32`): candle's matmul (which widens bf16 to f32
/// on every call) and the dense tile where the CPU runs it, on the same weights.
fn dense_layers(names: &[&str], rows: usize, iters: usize, ceilings: &[(Micro, f64)]) {
    let wanted: Vec<_> = DENSE
        .into_iter()
        .filter(|(name, ..)| names.contains(name))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let against: Vec<String> = wanted
        .iter()
        .map(|(name, _, micro)| format!("{name} against {}", micro.name()))
        .collect();
    println!(
        "\ndense weights, {rows} tokens per call (1 for the last row), best of {iters}; shares: {}\n",
        against.join(", ")
    );
    println!("| weights | layer | out × in | candle ms | tile ms | tile GOP/s | tile share of its ceiling | tile / candle time |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut without_tile = Vec::new();
    for (name, dtype, micro) in wanted {
        let tile = Precision::of(dtype).is_some_and(dense_gemm::available);
        let ceiling = ceilings
            .iter()
            .find(|(m, _)| *m == micro)
            .map(|&(_, rate)| rate);
        for (label, out_dim, in_dim) in SHAPES {
            let tokens = tokens_of(label, rows);
            let (w, x) = operands(out_dim, in_dim, tokens);
            let (w, x) = (or_fail(w.to_dtype(dtype)), or_fail(x.to_dtype(dtype)));
            let dense = |kernels| layer(StoredTensor::Dense(w.clone()), dtype, kernels);
            let candle = time(&dense("candle"), &x, iters);
            let ours = tile.then(|| time(&dense(""), &x, iters));
            let ops = 2.0 * (tokens * out_dim * in_dim) as f64;
            let cell = |f: &dyn Fn(f64) -> String| ours.map_or("–".to_string(), f);
            println!(
                "| {name} | {label} | {out_dim} × {in_dim} | {:.2} | {} | {} | {} | {} |",
                candle * 1e3,
                cell(&|t| format!("{:.2}", t * 1e3)),
                cell(&|t| format!("{:.0}", ops / t / 1e9)),
                cell(&|t| ceiling.map_or("–".to_string(), |c| format!(
                    "{:.0} %",
                    100.0 * ops / t / c
                ))),
                cell(&|t| format!("{:.2}", t / candle)),
            );
        }
        if !tile {
            without_tile.push(name);
        }
    }
    if !without_tile.is_empty() {
        println!(
            "\n(no {} tile on this CPU: candle's matmul only)",
            without_tile.join(" or ")
        );
    }
}
