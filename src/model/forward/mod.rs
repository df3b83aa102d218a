//! The Gemma 2 forward pass: embedding, decoder layers (attention with soft-capped logits,
//! GeGLU MLP, RMS norms), the KV cache the caller owns, and the Yes/No head read in f32.

pub(crate) mod attention;
pub mod embedding;
pub mod gemma2;
pub(crate) mod head;
pub mod kv_cache;
pub(crate) mod linear;
pub(crate) mod norm;
