//! Which model the gateway loads and how it runs; `shieldgate score` uses the same settings
//! with its command-line flags applied on top.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Model source and run options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// A model folder, a .gguf file, a hub id, or synthetic:PRESET.
    pub source: String,
    /// tokenizer.json to use instead of the one beside the weights.
    pub tokenizer: Option<PathBuf>,
    /// f32, bf16 or f16.
    pub dtype: String,
    /// Quantize the weight matrices while loading: q8_0, q4_0 or q4_k_m.
    pub quantize: Option<String>,
    /// cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Longest prompt in tokens; longer content is cut inside its slot.
    pub max_tokens: usize,
    /// Tokens per sequence per prefill step.
    pub prefill_chunk: usize,
    /// Padded tokens (rows × longest prompt) run together; a larger batch runs in groups of
    /// similar length within it, which bounds the key-value cache's memory.
    pub batch_tokens: usize,
    /// Tokens of recently prefilled prefixes kept, so that a check extending an earlier one
    /// (`incremental` output mode) prefills only its new tokens; 0 keeps none.
    pub prefix_cache_tokens: usize,
    /// Share the content prefix across policies (off only to compare).
    pub prefix_reuse: bool,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            source: "google/shieldgemma-2b".into(),
            tokenizer: None,
            dtype: "f32".into(),
            quantize: None,
            device: "cpu".into(),
            max_tokens: 8192,
            prefill_chunk: 512,
            batch_tokens: 4096,
            prefix_cache_tokens: 0,
            prefix_reuse: true,
        }
    }
}

/// The injection classifier beside ShieldGemma (off while `model` is unset).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectionSettings {
    /// A Prompt Guard 2 folder (config.json, model.safetensors, tokenizer.json), a hub id
    /// (`meta-llama/Llama-Prompt-Guard-2-86M`), or synthetic:22m / synthetic:86m (seeded test
    /// weights).
    pub model: Option<String>,
    /// cpu, cuda, cuda:N or metal.
    pub device: String,
}

impl Default for InjectionSettings {
    fn default() -> Self {
        Self {
            model: None,
            device: "cpu".into(),
        }
    }
}
