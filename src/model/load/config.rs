//! Gemma 2 hyper-parameters: read from a Hugging Face `config.json` or GGUF metadata,
//! or taken from the ShieldGemma 2B / 9B / 27B presets.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

use crate::model::ModelError;

/// The shape and constants of a Gemma 2 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma2Config {
    /// Vocabulary rows of the (tied) embedding.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Inner width of the GeGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Attention scores are scaled by `1 / sqrt(query_pre_attn_scalar)`.
    pub query_pre_attn_scalar: f64,
    /// `tanh(x / cap) * cap` on attention scores.
    pub attn_logit_softcapping: f64,
    /// `tanh(x / cap) * cap` on the output logits.
    pub final_logit_softcapping: f64,
    /// Window of the sliding-window layers.
    pub sliding_window: usize,
    /// Which layers use the sliding window (the even ones in every released Gemma 2).
    pub sliding_layers: Vec<bool>,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
}

/// The subset of a Hugging Face `config.json` that Gemma 2 needs.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    query_pre_attn_scalar: f64,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    hidden_activation: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

fn default_max_positions() -> usize {
    8192
}

fn default_eps() -> f64 {
    1e-6
}

/// The sliding window of every released Gemma 2 model.
const GEMMA2_WINDOW: usize = 4096;

impl Gemma2Config {
    /// Parses a Hugging Face `config.json`; `origin` names the file in errors.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Config {
            origin: origin.to_string(),
            reason,
        };
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str());
        if model_type != Some("gemma2") {
            return Err(invalid(format!(
                "model_type is {model_type:?}, expected \"gemma2\": ShieldGemma v1 is a Gemma 2 model"
            )));
        }
        let hf: HfConfig = serde_json::from_value(raw)
            .map_err(|e| invalid(format!("missing or malformed Gemma 2 field: {e}")))?;
        if let Some(act) = &hf.hidden_activation {
            if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
                return Err(invalid(format!(
                    "hidden_activation {act:?} is not supported (Gemma 2 uses gelu_pytorch_tanh)"
                )));
            }
        }
        let sliding_layers = match &hf.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(invalid(format!("unknown layer type {other:?}"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => even_layers_slide(hf.num_hidden_layers),
        };
        let rope_theta = hf
            .rope_theta
            .or(hf.rope_parameters.and_then(|p| p.rope_theta))
            .unwrap_or(10000.0);
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads,
            head_dim: hf.head_dim,
            query_pre_attn_scalar: hf.query_pre_attn_scalar,
            attn_logit_softcapping: hf.attn_logit_softcapping.unwrap_or(50.0),
            final_logit_softcapping: hf.final_logit_softcapping.unwrap_or(30.0),
            sliding_window: hf.sliding_window.unwrap_or(GEMMA2_WINDOW),
            sliding_layers,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Reads the `gemma2.*` metadata of a GGUF file; `origin` names the file in errors.
    pub fn from_tensors(
        metadata: &HashMap<String, Value>,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Config {
            origin: origin.to_string(),
            reason,
        };
        let arch = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned();
        if arch.as_deref() != Some("gemma2") {
            return Err(invalid(format!(
                "general.architecture is {arch:?}, expected \"gemma2\""
            )));
        }
        let get = |key: &str| {
            metadata
                .get(&format!("gemma2.{key}"))
                .ok_or_else(|| invalid(format!("metadata key gemma2.{key} is missing")))
        };
        let int = |key: &str| -> Result<usize, ModelError> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| invalid(format!("gemma2.{key}: {e}")))
        };
        let float = |key: &str, default: f64| -> Result<f64, ModelError> {
            match metadata.get(&format!("gemma2.{key}")) {
                None => Ok(default),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .map_err(|e| invalid(format!("gemma2.{key}: {e}"))),
            }
        };
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let layers = int("block_count")?;
        let head_dim = match get("attention.key_length") {
            Ok(_) => int("attention.key_length")?,
            Err(_) => hidden_size / heads.max(1),
        };
        let vocab_size = match get("vocab_size") {
            Ok(_) => int("vocab_size")?,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| invalid("no vocabulary size in the metadata".into()))?,
        };
        // llama.cpp keeps no query_pre_attn_scalar: it scales by 1/sqrt(hidden/heads) for the
        // 27B (46 layers) and 1/sqrt(head_dim) otherwise. Files written by shieldgate state it.
        let query_pre_attn_scalar = match metadata.get("shieldgate.query_pre_attn_scalar") {
            Some(v) => f64::from(
                v.to_f32()
                    .map_err(|e| invalid(format!("shieldgate.query_pre_attn_scalar: {e}")))?,
            ),
            None if layers == 46 => (hidden_size / heads.max(1)) as f64,
            None => head_dim as f64,
        };
        let config = Self {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv")?,
            head_dim,
            query_pre_attn_scalar,
            attn_logit_softcapping: float("attn_logit_softcapping", 50.0)?,
            final_logit_softcapping: float("final_logit_softcapping", 30.0)?,
            sliding_window: match get("attention.sliding_window") {
                Ok(_) => int("attention.sliding_window")?,
                Err(_) => GEMMA2_WINDOW,
            },
            sliding_layers: even_layers_slide(layers),
            max_position_embeddings: match get("context_length") {
                Ok(_) => int("context_length")?,
                Err(_) => 8192,
            },
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope_theta: float("rope.freq_base", 10000.0)?,
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// ShieldGemma 2B.
    pub fn shieldgemma_2b() -> Self {
        Self::released(2304, 26, 8, 4, 256, 9216, 256.0)
    }

    /// ShieldGemma 9B (its config.json ships query_pre_attn_scalar 224; llama.cpp uses 256).
    pub fn shieldgemma_9b() -> Self {
        Self::released(3584, 42, 16, 8, 256, 14336, 256.0)
    }

    /// ShieldGemma 27B.
    pub fn shieldgemma_27b() -> Self {
        Self::released(4608, 46, 32, 16, 128, 36864, 144.0)
    }

    fn released(
        hidden_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        intermediate_size: usize,
        query_pre_attn_scalar: f64,
    ) -> Self {
        Self {
            vocab_size: 256000,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            query_pre_attn_scalar,
            attn_logit_softcapping: 50.0,
            final_logit_softcapping: 30.0,
            sliding_window: GEMMA2_WINDOW,
            sliding_layers: even_layers_slide(layers),
            max_position_embeddings: 8192,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
        }
    }

    /// The Hugging Face `config.json` text of this configuration.
    pub fn to_hf_json(&self) -> String {
        let layer_types: Vec<&str> = self
            .sliding_layers
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        let json = serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            // transformers validates this field as an integer, as every release ships it.
            "query_pre_attn_scalar": if self.query_pre_attn_scalar.fract() == 0.0 {
                serde_json::json!(self.query_pre_attn_scalar as u64)
            } else {
                serde_json::json!(self.query_pre_attn_scalar)
            },
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "final_logit_softcapping": self.final_logit_softcapping,
            "sliding_window": self.sliding_window,
            "layer_types": layer_types,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_activation": "gelu_pytorch_tanh",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
        });
        format!("{json:#}\n")
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("sliding_window", self.sliding_window),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.sliding_layers.len() != self.num_hidden_layers {
            return Err(format!(
                "{} layer types for {} layers",
                self.sliding_layers.len(),
                self.num_hidden_layers
            ));
        }
        let positive_f = [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("rope_theta", self.rope_theta),
        ];
        if let Some((name, v)) = positive_f.iter().find(|(_, v)| v.is_nan() || *v <= 0.0) {
            return Err(format!("{name} must be positive, got {v}"));
        }
        Ok(())
    }
}

fn even_layers_slide(layers: usize) -> Vec<bool> {
    (0..layers).map(|i| i % 2 == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
        "sliding_window": 32, "rope_parameters": {"rope_theta": 10000.0}}"#;

    #[test]
    fn reads_hf_config_with_defaults() {
        let c = Gemma2Config::from_hf_json(TINY, "config.json").expect("valid");
        assert_eq!(c.sliding_layers, vec![true, false, true, false]);
        assert_eq!(c.attn_logit_softcapping, 50.0);
        assert_eq!(c.final_logit_softcapping, 30.0);
    }

    #[test]
    fn rejects_other_architectures_with_a_clear_reason() {
        let text = TINY.replace("gemma2", "llama");
        let err = Gemma2Config::from_hf_json(&text, "x/config.json").expect_err("llama");
        let msg = err.to_string();
        assert!(
            msg.contains("x/config.json") && msg.contains("gemma2"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_missing_fields_and_bad_shapes() {
        let text = TINY.replace(r#""head_dim": 16,"#, "");
        let msg = Gemma2Config::from_hf_json(&text, "c")
            .expect_err("head_dim")
            .to_string();
        assert!(msg.contains("head_dim"), "{msg}");
        let text = TINY.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#);
        let msg = Gemma2Config::from_hf_json(&text, "c")
            .expect_err("kv")
            .to_string();
        assert!(msg.contains("multiple"), "{msg}");
        let msg = Gemma2Config::from_hf_json("{", "c")
            .expect_err("json")
            .to_string();
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    #[test]
    fn layer_types_override_the_even_rule() {
        let text = TINY.replace(
            r#""sliding_window": 32,"#,
            r#""sliding_window": 32, "layer_types": ["full_attention", "sliding_attention",
            "full_attention", "full_attention"],"#,
        );
        let c = Gemma2Config::from_hf_json(&text, "c").expect("valid");
        assert_eq!(c.sliding_layers, vec![false, true, false, false]);
    }

    #[test]
    fn hf_json_round_trips() {
        let c = Gemma2Config::shieldgemma_27b();
        let back = Gemma2Config::from_hf_json(&c.to_hf_json(), "c").expect("parses");
        assert_eq!(back, c);
    }

    #[test]
    fn presets_match_the_released_shapes() {
        let c = Gemma2Config::shieldgemma_27b();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim),
            (4608, 46, 128)
        );
        assert_eq!(c.query_pre_attn_scalar, 144.0);
        assert!(c.validate().is_ok());
        assert!(Gemma2Config::shieldgemma_2b().validate().is_ok());
        assert!(Gemma2Config::shieldgemma_9b().validate().is_ok());
    }
}
