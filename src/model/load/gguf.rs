//! GGUF (llama.cpp) Gemma 2 files: metadata to config, tensor names to Hugging Face names,
//! and norm weights from llama.cpp's stored `1 + w` back to `w`.

use std::collections::HashMap;
use std::path::Path;

use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::model::load::weights::{StoredTensor, WeightSource};
use crate::model::{Gemma2Config, ModelError};

/// llama.cpp block tensor names and their Hugging Face names; `true` marks norms.
const BLOCK_NAMES: [(&str, &str, bool); 11] = [
    ("attn_norm", "input_layernorm", true),
    ("post_attention_norm", "post_attention_layernorm", true),
    ("ffn_norm", "pre_feedforward_layernorm", true),
    ("post_ffw_norm", "post_feedforward_layernorm", true),
    ("attn_q", "self_attn.q_proj", false),
    ("attn_k", "self_attn.k_proj", false),
    ("attn_v", "self_attn.v_proj", false),
    ("attn_output", "self_attn.o_proj", false),
    ("ffn_gate", "mlp.gate_proj", false),
    ("ffn_up", "mlp.up_proj", false),
    ("ffn_down", "mlp.down_proj", false),
];

/// Maps a GGUF tensor name to its Hugging Face name and whether it is a norm weight.
/// Returns `None` for tensors the scorer does not use (e.g. an untied `output.weight`).
pub fn hf_name(gguf: &str) -> Option<(String, bool)> {
    match gguf {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), false)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), true)),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    BLOCK_NAMES
        .iter()
        .find(|(g, _, _)| *g == name)
        .map(|(_, hf, norm)| (format!("model.layers.{layer}.{hf}.weight"), *norm))
}

/// The inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    BLOCK_NAMES
        .iter()
        .find(|(_, h, _)| *h == name)
        .map(|(g, _, _)| format!("blk.{layer}.{g}.weight"))
}

/// Reads a GGUF file into a config and its tensors under Hugging Face names: norms
/// dequantized (back from `1 + w` to `w`), float tensors as dense tensors, quantized matrices
/// and a quantized embedding kept quantized.
pub fn load(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(Gemma2Config, WeightSource), ModelError> {
    let origin = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: "give the path of a Gemma 2 GGUF file",
        },
        _ => ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let bad = |reason: String| ModelError::Weights {
        origin: origin.clone(),
        reason,
    };
    let content =
        Content::read(&mut file).map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
    let config = Gemma2Config::from_tensors(&content.metadata, &origin)?;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some((hf, is_norm)) = hf_name(name) else {
            continue;
        };
        let q = content
            .tensor(&mut file, name, device)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let entry = if float || is_norm {
            let mut t = q
                .dequantize(device)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            if is_norm {
                t = (t - 1.0)?;
            }
            StoredTensor::Dense(t.to_dtype(dtype)?)
        } else {
            StoredTensor::Quantized(Arc::new(q))
        };
        tensors.insert(hf, entry);
    }
    if !tensors.contains_key("model.embed_tokens.weight") {
        return Err(bad("no token_embd.weight tensor".into()));
    }
    Ok((config, WeightSource::from_tensors(tensors, dtype, device)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (g, _, _) in BLOCK_NAMES {
            let gguf = format!("blk.7.{g}.weight");
            let (hf, _) = hf_name(&gguf).expect("mapped");
            assert_eq!(gguf_name(&hf).as_deref(), Some(gguf.as_str()));
        }
        assert_eq!(
            hf_name("output_norm.weight"),
            Some(("model.norm.weight".into(), true))
        );
        assert_eq!(hf_name("output.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }
}
