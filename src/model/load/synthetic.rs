//! Seeded random-weight Gemma 2 models, generated on demand from a deterministic integer
//! formula that `scripts/fixtures.py` implements too, so tests and benchmarks need no weight
//! files and the reference fixtures describe exactly the same model.
//!
//! For element `i` of the tensor named `name` (its Hugging Face name):
//! `z = splitmix64(fnv1a64(name) + i * GOLDEN)`,
//! `value = (2 * (z >> (64 - bits)) - 2^bits) / 2^(bits + shift)`, exact in f32; `shift` is 0
//! for the embedding, 2 for norms and `ceil(log2(fan_in) / 2)` for linear layers; `bits` is 24
//! except 12 for norms, so that llama.cpp's stored `1 + w` is exact in f32 as well. A tensor
//! named `…LayerNorm.weight` (DeBERTa's, used as it is) is `1 + value`.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::model::load::config::Gemma2Config;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The named test shapes (`tiny` and `odd` shared with `scripts/fixtures.py`; `kquant`, whose
/// rows split into Q4_K/Q6_K blocks of 256, for the quantized tests), plus the released sizes.
pub fn preset(name: &str) -> Option<Gemma2Config> {
    match name {
        "tiny" => Some(test_config(64, 4, 4, 2, 16, 128, 16.0, 32, (50.0, 30.0))),
        "odd" => Some(test_config(48, 3, 3, 1, 32, 80, 20.0, 48, (20.0, 15.0))),
        "kquant" => Some(test_config(256, 2, 2, 1, 128, 512, 128.0, 32, (50.0, 30.0))),
        "2b" => Some(Gemma2Config::shieldgemma_2b()),
        "9b" => Some(Gemma2Config::shieldgemma_9b()),
        "27b" => Some(Gemma2Config::shieldgemma_27b()),
        _ => None,
    }
}

/// Names accepted by [`preset`].
pub const PRESETS: [&str; 6] = ["tiny", "odd", "kquant", "2b", "9b", "27b"];

#[allow(clippy::too_many_arguments)]
fn test_config(
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    query_pre_attn_scalar: f64,
    window: usize,
    (attn_cap, final_cap): (f64, f64),
) -> Gemma2Config {
    Gemma2Config {
        vocab_size: 256000,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        query_pre_attn_scalar,
        attn_logit_softcapping: attn_cap,
        final_logit_softcapping: final_cap,
        sliding_window: window,
        sliding_layers: (0..layers).map(|i| i % 2 == 0).collect(),
        max_position_embeddings: 8192,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
    }
}

/// A `VarBuilder` whose tensors are computed from the formula when the model asks for them.
pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Synthetic), dtype, device.clone())
}

/// The values of one tensor, as f32, in row-major order.
pub fn values(name: &str, shape: &[usize]) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let shift = shift_for(name, shape);
    let bits = if shape.len() == 1 { 12 } else { 24 };
    let seed = fnv1a64(name.as_bytes());
    let scale = 1.0 / (1u64 << (bits + shift)) as f32;
    // A LayerNorm's scale (DeBERTa's) is used as it is, not as Gemma's `1 + w`: centred on 1
    // so that the signal lives through the layers (still exact in f32).
    let offset = if name.ends_with("LayerNorm.weight") {
        1.0
    } else {
        0.0
    };
    (0..count as u64)
        .map(|i| {
            let z = splitmix64(seed.wrapping_add(i.wrapping_mul(GOLDEN)));
            let u = (z >> (64 - bits)) as i64;
            offset + (2 * u - (1 << bits)) as f32 * scale
        })
        .collect()
}

fn shift_for(name: &str, shape: &[usize]) -> u32 {
    if name.ends_with("embed_tokens.weight") {
        0
    } else if shape.len() == 1 {
        2
    } else {
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as u64;
        let bit_length = 64 - (fan_in - 1).leading_zeros();
        bit_length.div_ceil(2)
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Synthetic;

impl SimpleBackend for Synthetic {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::from_vec(values(name, s.dims()), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_is_deterministic_and_exact() {
        let a = values("model.layers.0.mlp.up_proj.weight", &[4, 64]);
        assert_eq!(a, values("model.layers.0.mlp.up_proj.weight", &[4, 64]));
        assert_ne!(a, values("model.layers.1.mlp.up_proj.weight", &[4, 64]));
        // fan_in 64 -> shift 3: every value is a multiple of 2^-27 inside [-1/8, 1/8).
        assert!(a.iter().all(|v| (-0.125..0.125).contains(v)));
        assert!(a.iter().all(|v| (v * (1u64 << 27) as f32).fract() == 0.0));
    }

    #[test]
    fn norm_weights_survive_the_gguf_one_plus_w_round_trip() {
        let w = values("model.layers.3.input_layernorm.weight", &[64]);
        assert!(w.iter().all(|&v| (1.0 + v) - 1.0 == v));
    }

    #[test]
    fn shifts_follow_fan_in() {
        assert_eq!(shift_for("model.embed_tokens.weight", &[10, 64]), 0);
        assert_eq!(shift_for("model.norm.weight", &[64]), 2);
        assert_eq!(shift_for("x.weight", &[8, 64]), 3);
        assert_eq!(shift_for("x.weight", &[8, 128]), 4);
        assert_eq!(shift_for("x.weight", &[8, 48]), 3);
        assert_eq!(shift_for("x.weight", &[8, 80]), 4);
    }

    #[test]
    fn matches_the_python_generator() {
        // scripts/fixtures.py: formula("model.norm.weight", 4, 2, 12)
        let expected = [-1849.0f32, -1484.0, -402.0, 575.0].map(|v| v / 8192.0);
        assert_eq!(values("model.norm.weight", &[4]), expected);
    }
}
