//! The Gemma tokenizer, checked at load time for the tokens ShieldGemma scoring relies on.
//!
//! Text is always encoded as plain text: special-token markers such as `<start_of_turn>` inside
//! user content become ordinary pieces, so content cannot change a prompt's structure. Special
//! tokens enter a sequence only through [`GemmaTokenizer::special_id`].

use std::collections::HashMap;
use std::path::Path;

use crate::model::ModelError;

/// A loaded Gemma tokenizer and the ids scoring needs.
pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
    specials: HashMap<String, u32>,
    /// Id of `Yes`.
    pub yes: u32,
    /// Id of `No`.
    pub no: u32,
}

impl GemmaTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: "the model needs the Gemma tokenizer.json beside its weights \
                       (for a GGUF file, pass --tokenizer)",
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            origin: path.display().to_string(),
            reason: format!("cannot parse it: {e}"),
        })?;
        Self::new(inner, &path.display().to_string())
    }

    /// Wraps an already parsed tokenizer; `origin` names it in errors.
    pub fn new(mut inner: tokenizers::Tokenizer, origin: &str) -> Result<Self, ModelError> {
        inner.set_encode_special_tokens(true);
        let specials: HashMap<String, u32> = inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .filter_map(|t| inner.token_to_id(&t.content).map(|id| (t.content, id)))
            .collect();
        let mut tokenizer = Self {
            inner,
            specials,
            yes: 0,
            no: 0,
        };
        let wrong = |reason: String| ModelError::Tokenizer {
            origin: origin.to_string(),
            reason: format!(
                "{reason}; this is not the Gemma tokenizer ShieldGemma was trained with"
            ),
        };
        tokenizer.yes = tokenizer.single_token("Yes").map_err(wrong)?;
        tokenizer.no = tokenizer.single_token("No").map_err(wrong)?;
        for marker in ["<bos>", "<start_of_turn>", "<end_of_turn>"] {
            tokenizer.special_id(marker).map_err(wrong)?;
        }
        Ok(tokenizer)
    }

    fn single_token(&self, text: &str) -> Result<u32, String> {
        match self.encode(text).map_err(|e| e.to_string())?.as_slice() {
            [id] => Ok(*id),
            ids => Err(format!("{text:?} encodes to {} tokens, not one", ids.len())),
        }
    }

    /// The id of a special token such as `<bos>`.
    pub fn special_id(&self, marker: &str) -> Result<u32, String> {
        self.specials
            .get(marker)
            .copied()
            .ok_or_else(|| format!("{marker} is not a special token"))
    }

    /// Encodes text as plain text (no special tokens added or matched).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .encode_with_offsets(text)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Encodes text and returns, for each token, the byte offset where it starts.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(u32, usize)>, ModelError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                origin: "encode".into(),
                reason: e.to_string(),
            })?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, _))| (id, start))
            .collect())
    }
}
