//! The tokenizer in a GGUF file, as llama.cpp reads Gemma's: the SentencePiece-style vocabulary
//! (`tokenizer.ggml.model = "llama"`), one score per token that orders merges as the Hugging
//! Face BPE merges do (Gemma's merges create tokens in id order, so the score is `-id`), token
//! types (control, unknown, user-defined, byte, normal), the special ids, and no space prefix
//! (Gemma's normalizer only maps ' ' to '▁'). Written so that llama.cpp tokenizes like the
//! `tokenizer.json` it comes from.

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// GGUF metadata for the tokenizer in `tokenizer_json` (the text of a tokenizer.json), for a
/// vocabulary of `vocab_size` ids.
pub fn metadata(tokenizer_json: &str, vocab_size: usize) -> Result<Vec<(String, Value)>, String> {
    let t: Json =
        serde_json::from_str(tokenizer_json).map_err(|e| format!("tokenizer.json: {e}"))?;
    let vocab = t
        .pointer("/model/vocab")
        .and_then(Json::as_object)
        .ok_or("tokenizer.json has no model.vocab")?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    for (text, id) in vocab {
        let id = id.as_u64().ok_or("a vocab id is not a number")? as usize;
        if let Some(slot) = tokens.get_mut(id) {
            *slot = Some(text.clone());
        }
    }
    let mut types = vec![NORMAL; vocab_size];
    for added in t["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        if id < vocab_size {
            tokens[id] = Some(content.to_string());
            types[id] = if added["special"].as_bool() == Some(true) {
                CONTROL
            } else {
                USER_DEFINED
            };
        }
    }
    let special = |name: &str| -> Option<u32> {
        let id = vocab.get(name)?.as_u64()?;
        Some(id as u32)
    };
    let unk = special("<unk>");
    let mut names = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    for (id, token) in tokens.into_iter().enumerate() {
        let token = token.ok_or_else(|| format!("tokenizer.json has no token with id {id}"))?;
        if Some(id as u32) == unk {
            types[id] = UNKNOWN;
        } else if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
            types[id] = BYTE;
        }
        scores.push(Value::F32(if types[id] == NORMAL {
            -(id as f32)
        } else {
            0.0
        }));
        names.push(Value::String(token));
    }
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("default".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(names)),
        ("tokenizer.ggml.scores".to_string(), Value::Array(scores)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(true),
        ),
        (
            "tokenizer.ggml.add_eos_token".to_string(),
            Value::Bool(false),
        ),
        (
            "tokenizer.ggml.add_space_prefix".to_string(),
            Value::Bool(false),
        ),
    ];
    for (key, name) in [
        ("bos_token_id", "<bos>"),
        ("eos_token_id", "<eos>"),
        ("unknown_token_id", "<unk>"),
        ("padding_token_id", "<pad>"),
    ] {
        if let Some(id) = special(name) {
            out.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_scores_and_types_follow_the_ids() {
        let json = r#"{"model": {"type": "BPE", "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2,
            "<unk>": 3, "<start_of_turn>": 4, "<0x41>": 5, "▁a": 6, "b": 7}},
            "added_tokens": [{"id": 0, "content": "<pad>", "special": true},
            {"id": 1, "content": "<eos>", "special": true}, {"id": 2, "content": "<bos>", "special": true},
            {"id": 3, "content": "<unk>", "special": true},
            {"id": 4, "content": "<start_of_turn>", "special": false}]}"#;
        let meta = metadata(json, 8).expect("metadata");
        let get = |k: &str| &meta.iter().find(|(n, _)| n == k).expect(k).1;
        let Value::Array(types) = get("tokenizer.ggml.token_type") else {
            panic!("types")
        };
        let types: Vec<i32> = types
            .iter()
            .map(|v| match v {
                Value::I32(t) => *t,
                _ => 0,
            })
            .collect();
        assert_eq!(
            types,
            [
                CONTROL,
                CONTROL,
                CONTROL,
                UNKNOWN,
                USER_DEFINED,
                BYTE,
                NORMAL,
                NORMAL
            ]
        );
        let Value::Array(scores) = get("tokenizer.ggml.scores") else {
            panic!("scores")
        };
        assert!(matches!(scores[7], Value::F32(s) if s == -7.0));
        assert!(matches!(get("tokenizer.ggml.bos_token_id"), Value::U32(2)));
        assert!(matches!(
            get("tokenizer.ggml.add_space_prefix"),
            Value::Bool(false)
        ));
        assert!(metadata(json, 9).is_err(), "a missing id is refused");
    }
}
