//! The classifier's configuration: a DeBERTa-v2 sequence classifier's `config.json`, checked
//! for what the model code runs, and the released Prompt Guard 2 shapes.

use candle_transformers::models::debertav2::{Config, HiddenAct, Id2Label};

use super::InjectionError;

/// Reads and checks a `config.json`; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, InjectionError> {
    let invalid = |reason: String| InjectionError::Config {
        origin: origin.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let model_type = value.get("model_type").and_then(|v| v.as_str());
    if model_type != Some("deberta-v2") {
        return Err(invalid(format!(
            "model_type is {model_type:?}, not \"deberta-v2\" (Prompt Guard 2 is a DeBERTa-v2 \
             sequence classifier)"
        )));
    }
    let config: Config = serde_json::from_value(value)
        .map_err(|e| invalid(format!("a field is missing or of another type: {e}")))?;
    if config.conv_kernel_size.unwrap_or(0) > 0 {
        return Err(invalid(
            "conv_kernel_size > 0: DeBERTa models with a convolution layer are not supported"
                .into(),
        ));
    }
    if config.pooler_hidden_size.is_none() || config.pooler_hidden_act.is_none() {
        return Err(invalid(
            "pooler_hidden_size and pooler_hidden_act are required (a sequence classifier's \
             pooler)"
                .into(),
        ));
    }
    if config.max_position_embeddings < 8 {
        return Err(invalid("max_position_embeddings is below 8".into()));
    }
    Ok(config)
}

/// The labels, as the config names them or `LABEL_0`, `LABEL_1` when it does not.
pub fn labels(config: &Config) -> Id2Label {
    config
        .id2label
        .clone()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| (0..2).map(|i| (i, format!("LABEL_{i}"))).collect())
}

/// The label that means an attack: one named for it (`MALICIOUS`, `INJECTION`, `JAILBREAK`),
/// else label 1 (Prompt Guard 2's `LABEL_1`); an error when there is no such label.
pub fn attack_label(labels: &Id2Label, origin: &str) -> Result<u32, InjectionError> {
    let named = labels.iter().find(|(_, name)| {
        let name = name.to_ascii_uppercase();
        ["MALICIOUS", "INJECTION", "JAILBREAK"]
            .iter()
            .any(|w| name.contains(w))
    });
    match named {
        Some((id, _)) => Ok(*id),
        None if labels.contains_key(&1) => Ok(1),
        None => Err(InjectionError::Config {
            origin: origin.to_string(),
            reason: "no label names an attack and there is no label 1".into(),
        }),
    }
}

/// Prompt Guard 2 86M (mDeBERTa-v3-base): 768 wide, 12 layers of 12 heads.
pub fn prompt_guard_86m() -> Config {
    shape(768, 12, 3072, 251_000)
}

/// Prompt Guard 2 22M (DeBERTa-v3-xsmall): 384 wide, 12 layers of 6 heads.
pub fn prompt_guard_22m() -> Config {
    shape(384, 6, 1536, 128_100)
}

fn shape(hidden: usize, heads: usize, ffn: usize, vocab: usize) -> Config {
    Config {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: 12,
        num_attention_heads: heads,
        intermediate_size: ffn,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 512,
        type_vocab_size: 0,
        initializer_range: 0.02,
        layer_norm_eps: 1e-7,
        relative_attention: true,
        max_relative_positions: -1,
        pad_token_id: Some(0),
        position_biased_input: false,
        pos_att_type: vec!["p2c".into(), "c2p".into()],
        position_buckets: Some(256),
        share_att_key: Some(true),
        attention_head_size: None,
        embedding_size: None,
        norm_rel_ebd: Some("layer_norm".into()),
        conv_kernel_size: None,
        conv_groups: None,
        conv_act: None,
        id2label: Some([(0, "LABEL_0".into()), (1, "LABEL_1".into())].into()),
        label2id: None,
        pooler_dropout: Some(0.0),
        pooler_hidden_act: Some(HiddenAct::Gelu),
        pooler_hidden_size: Some(hidden),
        cls_dropout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_and_name_what_is_wrong() {
        let good = serde_json::json!({
            "model_type": "deberta-v2", "vocab_size": 100, "hidden_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 512, "type_vocab_size": 0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-7, "relative_attention": true, "max_relative_positions": -1,
            "pad_token_id": 0, "position_biased_input": false, "pos_att_type": "p2c|c2p",
            "position_buckets": 256, "share_att_key": true, "norm_rel_ebd": "layer_norm",
            "pooler_dropout": 0, "pooler_hidden_act": "gelu", "pooler_hidden_size": 16,
            "id2label": {"0": "BENIGN", "1": "MALICIOUS"}
        });
        let config = parse(&good.to_string(), "c.json").expect("a good config");
        assert_eq!(config.pos_att_type, ["p2c", "c2p"]);
        assert_eq!(attack_label(&labels(&config), "c.json").expect("label"), 1);
        for (change, what) in [
            (serde_json::json!({"model_type": "gemma2"}), "model_type"),
            (
                serde_json::json!({"conv_kernel_size": 3}),
                "conv_kernel_size",
            ),
            (serde_json::json!({"pooler_hidden_size": null}), "pooler"),
            (
                serde_json::json!({"hidden_size": "wide"}),
                "of another type",
            ),
        ] {
            let mut bad = good.clone();
            for (k, v) in change.as_object().expect("object") {
                bad[k] = v.clone();
            }
            let e = parse(&bad.to_string(), "c.json")
                .expect_err(what)
                .to_string();
            assert!(e.contains("c.json") && e.contains(what), "{e}");
        }
        assert!(parse("{", "c.json").is_err());
        let named: Id2Label = [(0, "INJECTION".into()), (1, "BENIGN".into())].into();
        assert_eq!(attack_label(&named, "c").expect("label"), 0);
        let none: Id2Label = [(0, "A".into()), (2, "B".into())].into();
        assert!(attack_label(&none, "c").is_err());
        assert_eq!(labels(&prompt_guard_22m()).len(), 2);
    }
}
