//! Quantized-matmul kernel benchmark: one linear layer of each ShieldGemma-2B shape, for each
//! GGUF type the kernels cover, through candle's quantized matmul (`SHIELDGATE_KERNELS=candle`
//! while the layer is built) and each of shieldgate's kernels the CPU runs: the AVX2 int8 tile
//! (`avx2`), the AVX-512 VNNI tile (`vnni`) and the AMX path (the default where it runs), on the
//! same weights and activations; prints ms per call (the best of the iterations), GOP/s and the
//! ratio of the default kernel to candle.
//!
//! Run: `cargo bench --bench kernels`
//! Environment: SHIELDGATE_BENCH_ROWS (tokens per call, 462: a short check's prefill),
//! SHIELDGATE_BENCH_TYPES (q8_0,q4_k,q4_0,q6_k), SHIELDGATE_BENCH_ITERS (5).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use shieldgate::model::load::synthetic;
use shieldgate::model::load::weights::{StoredTensor, WeightSource};

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

/// Runs `f` with `SHIELDGATE_KERNELS` set to `kernels` (unset when empty).
fn with_kernels<T>(kernels: &str, f: impl FnOnce() -> T) -> T {
    if kernels.is_empty() {
        std::env::remove_var("SHIELDGATE_KERNELS");
    } else {
        std::env::set_var("SHIELDGATE_KERNELS", kernels);
    }
    let result = f();
    std::env::remove_var("SHIELDGATE_KERNELS");
    result
}

/// A layer over `q`, built with `SHIELDGATE_KERNELS` set to `kernels`.
fn layer(q: &Arc<QTensor>, kernels: &str) -> impl Module {
    let (out_dim, in_dim) = or_fail(q.shape().dims2());
    let tensors = HashMap::from([("w.weight".to_string(), StoredTensor::Quantized(q.clone()))]);
    let source = WeightSource::from_tensors(tensors, DType::F32, &Device::Cpu);
    with_kernels(kernels, || source.linear(in_dim, out_dim, "w"))
        .unwrap_or_else(|e| common::fail(&format!("layer: {e}")))
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

fn main() {
    let rows = number("SHIELDGATE_BENCH_ROWS", 462);
    let iters = number("SHIELDGATE_BENCH_ITERS", 5).max(1);
    let types = env_or("SHIELDGATE_BENCH_TYPES", "q8_0,q4_k,q4_0,q6_k");
    let here: Vec<bool> = KERNELS
        .iter()
        .map(|(kernels, name)| with_kernels(kernels, shieldgate::model::quantized_kernel) == *name)
        .collect();
    let default = shieldgate::model::quantized_kernel();
    println!(
        "quantized matmul, {rows} tokens per call (1 for the last row), best of {iters}, {} threads, {}; default kernel {default}\n",
        rayon::current_num_threads(),
        cpu_name(),
    );
    println!("| type | layer | out × in | candle ms | AVX2 ms | VNNI ms | AMX ms | candle GOP/s | {default} GOP/s | {default} / candle time |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in types.split(',').map(str::trim) {
        let dtype = ggml_type(name);
        for (label, out_dim, in_dim) in SHAPES {
            let tokens = if label.ends_with("(1 token)") {
                1
            } else {
                rows
            };
            let w = synthetic::values("bench.weight", &[out_dim, in_dim]);
            let x = synthetic::values("bench.input", &[tokens, in_dim]);
            let w = or_fail(Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu));
            let x = or_fail(Tensor::from_vec(x, (tokens, in_dim), &Device::Cpu));
            let q = Arc::new(or_fail(QTensor::quantize(&w, dtype)));
            let times: Vec<Option<f64>> = KERNELS
                .iter()
                .zip(&here)
                .map(|((kernels, _), &here)| here.then(|| time(&layer(&q, kernels), &x, iters)))
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
            println!(
                "| {name} | {label} | {out_dim} × {in_dim} | {} | {:.0} | {:.0} | {:.2} |",
                cells.join(" | "),
                ops / candle / 1e9,
                ops / ours / 1e9,
                ours / candle
            );
        }
    }
}
