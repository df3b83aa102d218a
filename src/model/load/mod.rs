//! Getting a model into memory: its config (config.json or GGUF metadata), weights
//! (safetensors, sharded or not; GGUF; seeded synthetic ones of the real shapes), the hub,
//! the tokenizer, quantizing in memory and exporting to GGUF.

pub mod config;
pub mod export;
pub(crate) mod gguf;
pub(crate) mod gguf_tokenizer;
#[cfg(feature = "hub")]
pub(crate) mod hub;
pub mod loader;
pub(crate) mod malloc;
pub mod quantize;
pub(crate) mod safetensors_files;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;
