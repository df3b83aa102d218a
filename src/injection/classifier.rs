//! The classifier: a DeBERTa-v2 sequence classifier (candle-transformers' model) with its
//! tokenizer, scoring texts window by window.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::debertav2::{Config, DebertaV2SeqClassificationModel};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

use super::config::{attack_label, labels, parse};
use super::windows::windows;
use super::InjectionError;
use crate::model::load::safetensors_files;
use crate::model::ModelError;

/// Tokens (windows × padded length) run in one forward pass at most.
const BATCH_TOKENS: usize = 8192;

/// A loaded Prompt Guard classifier.
pub struct PromptGuard {
    model: DebertaV2SeqClassificationModel,
    tokenizer: Tokenizer,
    attack: usize,
    limit: usize,
    cls: u32,
    sep: u32,
    pad: u32,
    device: Device,
}

impl PromptGuard {
    /// Loads a Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, InjectionError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path, source })
        };
        let config_path = dir.join("config.json");
        let config = parse(&read("config.json")?, &config_path.display().to_string())?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
                origin: tokenizer_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(ModelError::MissingFile {
                path: weights,
                hint: "a Prompt Guard folder holds its weights as model.safetensors",
            }
            .into());
        }
        let vb = safetensors_files::var_builder(std::slice::from_ref(&weights), DType::F32, device)
            .map_err(|reason| ModelError::Weights {
                origin: weights.display().to_string(),
                reason,
            })?;
        Self::new(&config, vb, tokenizer, &weights.display().to_string())
    }

    /// A classifier of `config`'s shape with the seeded test weights of
    /// [`crate::model::load::synthetic`] and a tokenizer that knows DeBERTa's special tokens
    /// only (`[PAD]` 0, `[CLS]` 1, `[SEP]` 2; every word is `[UNK]`, 3): for tests and
    /// benchmarks, which give it tokens.
    pub fn synthetic(config: &Config, device: &Device) -> Result<Self, InjectionError> {
        let vb = crate::model::load::synthetic::var_builder(DType::F32, device);
        Self::new(config, vb, special_tokens_only()?, "synthetic weights")
    }

    fn new(
        config: &Config,
        vb: VarBuilder<'_>,
        tokenizer: Tokenizer,
        origin: &str,
    ) -> Result<Self, InjectionError> {
        let labels = labels(config);
        let attack = attack_label(&labels, origin)? as usize;
        let model = DebertaV2SeqClassificationModel::load(vb.pp("deberta"), config, Some(labels))
            .map_err(|e| ModelError::Weights {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let special = |name: &str| {
            tokenizer
                .token_to_id(name)
                .ok_or_else(|| ModelError::Tokenizer {
                    origin: origin.to_string(),
                    reason: format!("it has no {name} token"),
                })
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let pad = match config.pad_token_id {
            Some(id) => id as u32,
            None => special("[PAD]")?,
        };
        Ok(Self {
            model,
            tokenizer,
            attack,
            limit: config.max_position_embeddings,
            cls,
            sep,
            pad,
            device: vb.device().clone(),
        })
    }

    /// Each text's verdict: its most alarming window's.
    pub fn score(&self, texts: &[&str]) -> Result<Vec<Detection>, InjectionError> {
        let tokens = texts
            .iter()
            .map(|t| self.tokens(t))
            .collect::<Result<Vec<_>, _>>()?;
        self.score_tokens(&tokens)
    }

    /// The verdict of each text given as tokens (without special tokens).
    pub fn score_tokens(&self, texts: &[Vec<u32>]) -> Result<Vec<Detection>, InjectionError> {
        let mut owner = Vec::new();
        let mut all = Vec::new();
        for (i, tokens) in texts.iter().enumerate() {
            for window in windows(tokens, self.limit, self.cls, self.sep) {
                owner.push(i);
                all.push(window);
            }
        }
        let logits = self.logits(&all)?;
        let mut found: Vec<Option<Detection>> = vec![None; texts.len()];
        for (i, l) in owner.into_iter().zip(logits) {
            let window = Detection::of(&l, self.attack, texts[i].len());
            if found[i].is_none_or(|d| window.p_attack() > d.p_attack()) {
                found[i] = Some(window);
            }
        }
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.unwrap_or(Detection::empty(texts[i].len())))
            .collect())
    }

    /// The logits of each window (`[CLS] … [SEP]`, within the limit), run in batches of
    /// similar lengths padded to the longest.
    pub fn logits(&self, windows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InjectionError> {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| windows[i].len());
        let mut out = vec![Vec::new(); windows.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && windows[order[end]].len() * (end + 1 - start) <= BATCH_TOKENS
            {
                end += 1;
            }
            let batch: Vec<&Vec<u32>> = order[start..end].iter().map(|&i| &windows[i]).collect();
            for (&i, l) in order[start..end].iter().zip(self.forward(&batch)?) {
                out[i] = l;
            }
            start = end;
        }
        Ok(out)
    }

    fn forward(&self, batch: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>, InjectionError> {
        let width = batch.iter().map(|w| w.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for w in batch {
            ids.extend(
                w.iter()
                    .copied()
                    .chain(std::iter::repeat(self.pad))
                    .take(width),
            );
            mask.extend((0..width).map(|i| i64::from(i < w.len())));
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (batch.len(), width), &self.device)?;
            let mask = Tensor::from_vec(mask, (batch.len(), width), &self.device)?;
            self.model
                .forward(&ids, None, Some(mask))?
                .to_dtype(DType::F32)?
                .to_vec2()
        };
        run().map_err(|e| InjectionError::Forward(e.to_string()))
    }

    fn tokens(&self, text: &str) -> Result<Vec<u32>, InjectionError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| InjectionError::Forward(format!("tokenizing: {e}")))
    }
}

fn special_tokens_only() -> Result<Tokenizer, InjectionError> {
    let vocab = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| ModelError::Tokenizer {
            origin: "the synthetic tokenizer".into(),
            reason: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    Ok(tokenizer)
}

/// A text's verdict: the logit of the attack label and the log-sum-exp of the others in its
/// most alarming window, so that P(attack) is the two-way softmax of the pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// The attack label's logit.
    pub attack: f32,
    /// The other labels' logits, combined.
    pub benign: f32,
    /// The text's tokens (all windows).
    pub tokens: usize,
}

impl Detection {
    fn of(logits: &[f32], attack: usize, tokens: usize) -> Self {
        let others = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != attack)
            .map(|(_, l)| *l);
        let max = others.clone().fold(f32::NEG_INFINITY, f32::max);
        let benign = max + others.map(|l| (l - max).exp()).sum::<f32>().ln();
        Self {
            attack: logits.get(attack).copied().unwrap_or(f32::NEG_INFINITY),
            benign,
            tokens,
        }
    }

    /// No window (no text): certainly benign.
    fn empty(tokens: usize) -> Self {
        Self {
            attack: f32::NEG_INFINITY,
            benign: 0.0,
            tokens,
        }
    }

    /// P(attack).
    pub fn p_attack(&self) -> f64 {
        crate::scorer::p_yes(self.attack, self.benign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> serde_json::Value {
        serde_json::json!({
            "model_type": "deberta-v2", "vocab_size": 16, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 64, "type_vocab_size": 0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-7, "relative_attention": true, "max_relative_positions": -1,
            "pad_token_id": 0, "position_biased_input": false, "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 16, "share_att_key": true, "norm_rel_ebd": "layer_norm",
            "pooler_dropout": 0, "pooler_hidden_act": "gelu", "pooler_hidden_size": 8
        })
    }

    #[test]
    fn a_folder_missing_a_file_says_which() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = |dir: &Path| match PromptGuard::load(dir, &Device::Cpu) {
            Ok(_) => panic!("loaded an incomplete folder"),
            Err(e) => e.to_string(),
        };
        assert!(error(dir.path()).contains("config.json"));
        let mut config = tiny_config();
        let write = |value: &serde_json::Value| {
            std::fs::write(dir.path().join("config.json"), value.to_string()).expect("write")
        };
        write(&config);
        assert!(error(dir.path()).contains("tokenizer.json"));
        special_tokens_only()
            .expect("tokenizer")
            .save(dir.path().join("tokenizer.json"), false)
            .expect("save");
        let missing = error(dir.path());
        assert!(missing.contains("model.safetensors"), "{missing}");
        config["model_type"] = "bert".into();
        write(&config);
        assert!(error(dir.path()).contains("model_type"));
    }

    /// A folder written from a model's own weights loads to the same model.
    #[test]
    fn a_folder_loads_what_was_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = tiny_config().to_string();
        let config = parse(&text, "tiny").expect("config");
        let weights = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu);
        let tokenizer = special_tokens_only().expect("tokenizer");
        let built = PromptGuard::new(&config, vb, tokenizer.clone(), "varmap").expect("model");
        weights
            .save(dir.path().join("model.safetensors"))
            .expect("save weights");
        std::fs::write(dir.path().join("config.json"), text).expect("config");
        tokenizer
            .save(dir.path().join("tokenizer.json"), false)
            .expect("tokenizer");
        let loaded = PromptGuard::load(dir.path(), &Device::Cpu).expect("the folder loads");
        let window = vec![vec![1, 5, 9, 3, 2]];
        assert_eq!(
            loaded.logits(&window).expect("loaded"),
            built.logits(&window).expect("built")
        );
        assert_eq!(
            loaded.score(&["some words"]).expect("score"),
            built.score(&["some words"]).expect("score")
        );
    }

    #[test]
    fn probabilities_are_a_softmax() {
        let p = |logits: &[f32], label| Detection::of(logits, label, 1).p_attack();
        assert!((p(&[0.0, 0.0], 1) - 0.5).abs() < 1e-6);
        assert!(p(&[-100.0, 100.0], 1) > 0.999);
        assert_eq!(p(&[1.0, 2.0], 5), 0.0);
        let three = p(&[1.0, 2.0, 0.5], 1);
        let softmax = 2f64.exp() / (1f64.exp() + 2f64.exp() + 0.5f64.exp());
        assert!((three - softmax).abs() < 1e-6, "{three} vs {softmax}");
        assert_eq!(Detection::empty(0).p_attack(), 0.0);
    }
}
