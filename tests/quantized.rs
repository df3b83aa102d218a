//! Quantized weights (GGUF Q8_0 / Q4_0 files; Q8_0, Q4_0 and Q4_K_M quantized in memory)
//! against the f32 path: P(Yes) on every parity-fixture prompt.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::DType;
use shieldgate::model::load::loader::{LoadOptions, ModelSource};
use shieldgate::model::load::quantize::GgufType;
use shieldgate::scorer::{Engine, Score, ScoreRequest};

use crate::common;
use crate::parity::requests;

fn p_yes(engine: &Engine, batch: &[ScoreRequest]) -> Vec<f64> {
    engine
        .score(batch)
        .expect("scores")
        .iter()
        .flat_map(|r| r.scores.iter().map(|s| s.p_yes))
        .collect()
}

fn fixture_requests() -> Vec<ScoreRequest> {
    let fixture = common::fixture();
    requests(&fixture).into_iter().map(|(r, _)| r).collect()
}

/// P(Yes) of the f32 model of `preset` on the fixture requests, computed once per preset.
fn reference(preset: &str) -> Vec<f64> {
    static CACHE: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(preset.to_string())
        .or_insert_with(|| {
            let engine = common::engine(preset, DType::F32, Default::default());
            p_yes(&engine, &fixture_requests())
        })
        .clone()
}

/// (max, mean) |ΔP(Yes)| of `engine` against the f32 model of the same preset.
fn deltas(preset: &str, engine: &Engine) -> (f64, f64) {
    let want = reference(preset);
    let got = p_yes(engine, &fixture_requests());
    let diffs: Vec<f64> = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0.0, f64::max);
    (max, diffs.iter().sum::<f64>() / diffs.len() as f64)
}

fn gguf(relative: &str) -> ModelSource {
    ModelSource::Gguf(common::assets().join(relative))
}

#[test]
fn quantized_gguf_files_stay_close_to_f32() {
    for (preset, file, bound) in [
        ("tiny", "tiny/model-q8_0.gguf", 0.02),
        ("tiny", "tiny/model-q4_0.gguf", 0.1),
        // Q4_K and Q6_K matrices and a Q6_K embedding (decoded row by row). 4 bits on
        // uniform random weights: 0.140 here, 0.139 with candle's kernel.
        ("kquant", "kquant/model-q4_k_m.gguf", 0.15),
    ] {
        let engine = common::engine_from(&gguf(file), LoadOptions::default());
        let (max, mean) = deltas(preset, &engine);
        eprintln!("{file}: max |ΔP(Yes)| {max:.4}, mean {mean:.4}");
        assert!(max <= bound, "{file}: max |ΔP(Yes)| {max}");
    }
}

#[test]
fn quantizing_while_loading_matches_f32_closely() {
    for (preset, kind, bound) in [
        ("tiny", GgufType::Q8_0, 0.02),
        // Rows of 48 and 80 do not split into blocks of 32: those matrices stay f16.
        ("odd", GgufType::Q8_0, 0.02),
        ("tiny", GgufType::Q4_0, 0.1),
        // Rows of 256 and 512: Q4_K, and Q6_K for layer 1's value and down projections,
        // through the int8 kernel where the CPU has VNNI (0.091; candle's kernel 0.097).
        ("kquant", GgufType::Q4KM, 0.15),
    ] {
        let opts = LoadOptions {
            quantize: Some(kind),
            ..LoadOptions::default()
        };
        let engine = common::engine_from(&ModelSource::Synthetic(preset.into()), opts);
        let (max, mean) = deltas(preset, &engine);
        eprintln!("{preset} {kind:?} in memory: max |ΔP(Yes)| {max:.4}, mean {mean:.4}");
        assert!(max <= bound, "{preset} {kind:?}: max |ΔP(Yes)| {max}");
        assert!(
            max > 0.0,
            "{preset} {kind:?} changed nothing: not quantized?"
        );
    }
}

#[test]
fn a_k_quant_embedding_stays_quantized_when_loaded() {
    use candle_core::quantized::GgmlDType;
    use shieldgate::model::forward::embedding::Embedding;
    use shieldgate::model::load::loader::open;

    let weights = open(&gguf("kquant/model-q4_k_m.gguf"), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("the Q4_K_M file opens: {e}"));
    let config = &weights.config;
    let embedding = weights
        .source
        .embedding(
            config.vocab_size,
            config.hidden_size,
            "model.embed_tokens.weight",
        )
        .expect("embedding");
    match embedding {
        Embedding::Quantized { table, .. } => assert_eq!(table.dtype(), GgmlDType::Q6K),
        Embedding::Dense(_) => panic!("the Q6_K embedding was dequantized (2.2 GiB on the 2B)"),
    }
}
