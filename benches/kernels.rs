//! Quantized-matmul kernel benchmark: one linear layer of each ShieldGemma-2B shape, for each
//! GGUF type the kernels cover, through candle's quantized matmul (`SHIELDGATE_KERNELS=candle`
//! while the layer is built), shieldgate's int8 VNNI tile (`SHIELDGATE_KERNELS=vnni`) and, where
//! the CPU has it, its AMX path (the default), on the same weights and activations; prints ms
//! per call (the best of the iterations), GOP/s and the ratio of the default to candle.
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
use shieldgate::model::synthetic;
use shieldgate::model::weights::{StoredTensor, WeightSource};

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

/// A layer over `q`, built with `SHIELDGATE_KERNELS` set to `kernels` (unset when empty).
fn layer(q: &Arc<QTensor>, kernels: &str) -> impl Module {
    if kernels.is_empty() {
        std::env::remove_var("SHIELDGATE_KERNELS");
    } else {
        std::env::set_var("SHIELDGATE_KERNELS", kernels);
    }
    let (out_dim, in_dim) = or_fail(q.shape().dims2());
    let tensors = HashMap::from([("w.weight".to_string(), StoredTensor::Quantized(q.clone()))]);
    let source = WeightSource::from_tensors(tensors, DType::F32, &Device::Cpu);
    let built = source.linear(in_dim, out_dim, "w");
    std::env::remove_var("SHIELDGATE_KERNELS");
    built.unwrap_or_else(|e| common::fail(&format!("layer: {e}")))
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
    std::env::remove_var("SHIELDGATE_KERNELS");
    let amx = shieldgate::model::quantized_kernel() == "amx";
    println!(
        "quantized matmul, {rows} tokens per call (1 for the last row), best of {iters}, {} threads, {}; AMX {}\n",
        rayon::current_num_threads(),
        cpu_name(),
        if amx { "on" } else { "not available" }
    );
    println!("| type | layer | out × in | candle ms | VNNI ms | AMX ms | candle GOP/s | shieldgate GOP/s | shieldgate / candle time |");
    println!("|---|---|---|---|---|---|---|---|---|");
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
            let candle = time(&layer(&q, "candle"), &x, iters);
            let vnni = time(&layer(&q, "vnni"), &x, iters);
            let with_amx = amx.then(|| time(&layer(&q, ""), &x, iters));
            let ours = with_amx.unwrap_or(vnni);
            let ops = 2.0 * (tokens * out_dim * in_dim) as f64;
            println!(
                "| {name} | {label} | {out_dim} × {in_dim} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.2} |",
                candle * 1e3,
                vnni * 1e3,
                with_amx.map_or("–".to_string(), |t| format!("{:.2}", t * 1e3)),
                ops / candle / 1e9,
                ops / ours / 1e9,
                ours / candle
            );
        }
    }
}
