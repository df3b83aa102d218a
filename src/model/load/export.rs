//! Writes a model as a Hugging Face folder (config.json, tokenizer.json, single or sharded
//! safetensors with an index) or as a llama.cpp-convention GGUF file (F32, F16, Q8_0, Q4_0 or
//! the Q4_K_M mix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::model::load::quantize::{tensor_shapes, GgufType};
use crate::model::load::weights::WeightSource;
use crate::model::load::{gguf, gguf_tokenizer};
use crate::model::{Gemma2Config, ModelError};

/// The output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A Hugging Face folder with this many safetensors shards (1: `model.safetensors`), in
    /// this float dtype.
    Folder {
        /// Number of shards.
        shards: usize,
        /// f32, f16 or bf16.
        dtype: DType,
    },
    /// One GGUF file with matrices of this type.
    Gguf(GgufType),
}

/// Reads every tensor of `config` from `source` and writes it to `out` in `format` (GGUF norm
/// weights stay f32, as llama.cpp stores them). The tokenizer is copied beside the weights.
pub fn export(
    source: &WeightSource,
    config: &Gemma2Config,
    tokenizer: &Path,
    out: &Path,
    format: ExportFormat,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let folder = match format {
        ExportFormat::Folder { .. } => out.to_path_buf(),
        ExportFormat::Gguf(_) => out.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let tensors = tensor_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let t = source.tensor(shape, &name)?.to_dtype(DType::F32)?;
            Ok((name, t))
        })
        .collect::<Result<Vec<_>, candle_core::Error>>()?;
    match format {
        ExportFormat::Folder { shards, dtype } => {
            write_folder(out, config, tensors, shards.max(1), dtype)?
        }
        ExportFormat::Gguf(kind) => {
            let text = std::fs::read_to_string(tokenizer).map_err(io(tokenizer))?;
            let vocab = gguf_tokenizer::metadata(&text, config.vocab_size).map_err(|reason| {
                ModelError::Weights {
                    origin: tokenizer.display().to_string(),
                    reason,
                }
            })?;
            write_gguf(out, config, tensors, kind, vocab)?
        }
    }
    let target = folder.join("tokenizer.json");
    if tokenizer != target {
        std::fs::copy(tokenizer, &target).map_err(io(tokenizer))?;
    }
    Ok(())
}

fn write_folder(
    dir: &Path,
    config: &Gemma2Config,
    tensors: Vec<(String, Tensor)>,
    shards: usize,
    dtype: DType,
) -> Result<(), ModelError> {
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_hf_json()).map_err(|source| ModelError::Io {
        path: config_path,
        source,
    })?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let file_name = |i: usize| {
        if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for shard in 0..shards {
        let part: Vec<&(String, Tensor)> = tensors.iter().skip(shard).step_by(shards).collect();
        let path: PathBuf = dir.join(file_name(shard));
        for (name, t) in &part {
            weight_map.insert(name.clone(), file_name(shard).into());
            total += t.elem_count() * dtype.size_in_bytes();
        }
        let converted = part
            .iter()
            .map(|(n, t)| Ok((n.as_str(), t.to_dtype(dtype)?)))
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        safetensors::serialize_to_file(converted, metadata.clone(), &path).map_err(|e| {
            ModelError::Weights {
                origin: path.display().to_string(),
                reason: format!("cannot write: {e}"),
            }
        })?;
    }
    if shards > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string())
            .map_err(|source| ModelError::Io { path, source })?;
    }
    Ok(())
}

/// Writes a GGUF file: the model's metadata, the tokenizer's (`vocab`), the tensors.
fn write_gguf(
    path: &Path,
    c: &Gemma2Config,
    tensors: Vec<(String, Tensor)>,
    kind: GgufType,
    vocab: Vec<(String, Value)>,
) -> Result<(), ModelError> {
    let u32_of = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("gemma2".into())),
        ("general.name", Value::String("shieldgate export".into())),
        ("general.file_type", Value::U32(kind.file_type())),
        ("gemma2.context_length", u32_of(c.max_position_embeddings)),
        ("gemma2.embedding_length", u32_of(c.hidden_size)),
        ("gemma2.block_count", u32_of(c.num_hidden_layers)),
        ("gemma2.feed_forward_length", u32_of(c.intermediate_size)),
        ("gemma2.attention.head_count", u32_of(c.num_attention_heads)),
        (
            "gemma2.attention.head_count_kv",
            u32_of(c.num_key_value_heads),
        ),
        (
            "gemma2.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("gemma2.attention.key_length", u32_of(c.head_dim)),
        ("gemma2.attention.value_length", u32_of(c.head_dim)),
        ("gemma2.attention.sliding_window", u32_of(c.sliding_window)),
        ("gemma2.rope.freq_base", Value::F32(c.rope_theta as f32)),
        (
            "gemma2.attn_logit_softcapping",
            Value::F32(c.attn_logit_softcapping as f32),
        ),
        (
            "gemma2.final_logit_softcapping",
            Value::F32(c.final_logit_softcapping as f32),
        ),
        ("gemma2.vocab_size", u32_of(c.vocab_size)),
        (
            "shieldgate.query_pre_attn_scalar",
            Value::F32(c.query_pre_attn_scalar as f32),
        ),
    ];
    let mut quantized = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let gguf_name = gguf::gguf_name(name).ok_or_else(|| ModelError::Weights {
            origin: path.display().to_string(),
            reason: format!("no GGUF name for tensor {name}"),
        })?;
        let q = if t.rank() == 1 {
            // llama.cpp stores Gemma norm weights as (1 + w), in f32.
            QTensor::quantize(&(t + 1.0)?, GgmlDType::F32)?
        } else {
            kind.quantize_matrix(name, t, c.num_hidden_layers)?
        };
        quantized.push((gguf_name, q));
    }
    let mut file = std::fs::File::create(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    metadata.extend(vocab.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (n.as_str(), q)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &meta, &refs)?;
    Ok(())
}
