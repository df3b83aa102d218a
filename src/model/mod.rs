//! Pure candle: the Gemma 2 model, its weights (safetensors, sharded, GGUF, synthetic), the KV
//! cache passed into each step, the Yes/No head and the tokenizer. Knows nothing of HTTP,
//! policies or metrics.

mod device;
pub mod forward;
pub mod kernels;
pub mod load;
pub mod profile;

use std::path::PathBuf;

pub use device::parse_device;
pub use forward::gemma2::{Gemma2, Step};
pub use forward::kv_cache::KvCache;
pub use kernels::int8_gemm::quantized_kernel;
pub use load::config::Gemma2Config;
pub use load::loader::{LoadOptions, LoadedModel, ModelSource};
pub use load::tokenizer::GemmaTokenizer;

/// Everything that can go wrong while loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file is absent.
    #[error("{path}: not found; {hint}")]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// A file exists but cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is not a usable Gemma 2 configuration.
    #[error("{origin}: not a usable Gemma 2 config: {reason}")]
    Config {
        /// The file or source of the config.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer is unusable for ShieldGemma.
    #[error("tokenizer {origin}: {reason}")]
    Tokenizer {
        /// The file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Weights are missing, malformed or of the wrong shape.
    #[error("weights {origin}: {reason}")]
    Weights {
        /// The weight file(s).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The Hugging Face hub could not provide the model.
    #[error("hub model {model}: {reason}")]
    Hub {
        /// The model id.
        model: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// A `--model` argument that is neither a folder, a GGUF file nor a hub id.
    #[error("model {0:?}: not a folder, a .gguf file or a hub id such as google/shieldgemma-2b")]
    UnknownSource(String),
    /// An unsupported dtype or device was asked for.
    #[error("{0}")]
    Unsupported(String),
    /// A tensor operation failed while running the model.
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
