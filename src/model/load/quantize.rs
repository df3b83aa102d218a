//! GGUF matrix types (F32, F16, Q8_0, Q4_0, the Q4_K_M mix), the checkpoint's tensor list, and
//! quantization of a loaded model in memory.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Result, Tensor};

use crate::model::load::weights::{StoredTensor, WeightSource};
use crate::model::Gemma2Config;

/// Every weight of a Gemma 2 checkpoint: Hugging Face name and shape (`[out, in]`).
pub fn tensor_shapes(c: &Gemma2Config) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let f = c.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            out.push((format!("{p}{norm}.weight"), vec![h]));
        }
        for (name, shape) in [
            ("self_attn.q_proj", vec![q, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, q]),
            ("mlp.gate_proj", vec![f, h]),
            ("mlp.up_proj", vec![f, h]),
            ("mlp.down_proj", vec![h, f]),
        ] {
            out.push((format!("{p}{name}.weight"), shape));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out
}

/// The matrix type of a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    /// Every matrix in f32.
    F32,
    /// Every matrix in f16.
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit blocks of 32.
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the embedding and for the value and
    /// down projections of the layers that llama.cpp gives more bits.
    Q4KM,
}

impl GgufType {
    /// Parses f32, f16, q8_0, q4_0 or q4_k_m.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8_0" => Some(Self::Q8_0),
            "q4_0" => Some(Self::Q4_0),
            "q4_k_m" => Some(Self::Q4KM),
            _ => None,
        }
    }

    /// llama.cpp's `general.file_type` number.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
        }
    }

    /// The type of the matrix `name` (a Hugging Face name) in a model of `layers` layers.
    fn matrix_type(self, name: &str, layers: usize) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4KM => {
                let layer = name
                    .strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok());
                let more_bits =
                    |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
                let sensitive = name.contains("v_proj") || name.contains("down_proj");
                match layer {
                    None => GgmlDType::Q6K,
                    Some(i) if sensitive && more_bits(i) => GgmlDType::Q6K,
                    Some(_) => GgmlDType::Q4K,
                }
            }
        }
    }

    /// Quantizes the matrix `name` (`[out, in]`, f32); rows that do not split into whole
    /// blocks stay in f16, as llama.cpp does.
    pub fn quantize_matrix(self, name: &str, t: &Tensor, layers: usize) -> Result<QTensor> {
        let mut ggml = self.matrix_type(name, layers);
        let row = t.dims().last().copied().unwrap_or(0);
        if row % ggml.block_size() != 0 {
            tracing::warn!(tensor = %name, row, "row not a multiple of the block size: f16");
            ggml = GgmlDType::F16;
        }
        QTensor::quantize(t, ggml)
    }
}

/// Quantizes the matrices of `source` (all but the embedding) to `kind`, in memory; the other
/// tensors stay dense.
pub fn quantize(
    source: &WeightSource,
    config: &Gemma2Config,
    kind: GgufType,
) -> Result<WeightSource> {
    let mut tensors = HashMap::new();
    for (name, shape) in tensor_shapes(config) {
        let t = source.tensor(shape.as_slice(), &name)?;
        let entry = if shape.len() == 2 && name != "model.embed_tokens.weight" {
            let q =
                kind.quantize_matrix(&name, &t.to_dtype(DType::F32)?, config.num_hidden_layers)?;
            match q.dtype() {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    StoredTensor::Dense(q.dequantize(source.device())?.to_dtype(source.dtype())?)
                }
                _ => StoredTensor::Quantized(Arc::new(q)),
            }
        } else {
            StoredTensor::Dense(t)
        };
        tensors.insert(name, entry);
    }
    Ok(WeightSource::from_tensors(
        tensors,
        source.dtype(),
        source.device(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        for (name, want) in [
            ("model.embed_tokens.weight", GgmlDType::Q6K),
            ("model.layers.0.self_attn.v_proj.weight", GgmlDType::Q6K),
            ("model.layers.4.mlp.down_proj.weight", GgmlDType::Q4K),
            ("model.layers.5.mlp.down_proj.weight", GgmlDType::Q6K),
            ("model.layers.5.mlp.up_proj.weight", GgmlDType::Q4K),
            ("model.layers.25.self_attn.v_proj.weight", GgmlDType::Q6K),
        ] {
            assert_eq!(GgufType::Q4KM.matrix_type(name, 26), want, "{name}");
        }
    }

    #[test]
    fn quantized_matrices_round_trip_and_odd_rows_fall_back_to_f16() {
        let values: Vec<f32> = (0..8 * 256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let t = Tensor::from_vec(values, (8, 256), &Device::Cpu).expect("tensor");
        let q = GgufType::Q4KM
            .quantize_matrix("model.layers.1.mlp.up_proj.weight", &t, 26)
            .expect("quantizes");
        assert_eq!(q.dtype(), GgmlDType::Q4K);
        let back = q.dequantize(&Device::Cpu).expect("dequantizes");
        let err = (back - &t)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        // Values span ±0.8: 4-bit steps of about 0.1 give errors up to half a step.
        assert!(err < 0.08, "Q4_K round trip error {err}");
        let narrow = t
            .narrow(1, 0, 48)
            .and_then(|n| n.contiguous())
            .expect("narrow");
        let q = GgufType::Q8_0
            .quantize_matrix("x", &narrow, 26)
            .expect("quantizes");
        assert_eq!(q.dtype(), GgmlDType::F16);
    }
}
