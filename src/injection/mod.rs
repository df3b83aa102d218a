//! Prompt-injection and jailbreak detection with Meta's Llama Prompt Guard 2 (86M and 22M, a
//! DeBERTa-v2 sequence classifier with two labels), beside ShieldGemma: a text's P(attack) is
//! the highest of its windows' (the model reads 512 tokens at most).

mod classifier;
pub mod config;
mod load;
pub mod scorer;
mod windows;

use crate::model::ModelError;

pub use classifier::{Detection, PromptGuard};
pub use load::{check, load};
pub use scorer::{Detect, WithInjection};
pub use windows::{windows, OVERLAP};

/// Why the classifier could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum InjectionError {
    /// A file of the model folder is missing or unreadable, the tokenizer lacks a special
    /// token, or the weights do not fit the configuration.
    #[error(transparent)]
    Files(#[from] ModelError),
    /// The configuration is not a usable DeBERTa-v2 classifier's.
    #[error("{origin}: not a usable Prompt Guard config: {reason}")]
    Config {
        /// The file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Running the model failed.
    #[error("the injection classifier failed: {0}")]
    Forward(String),
}
