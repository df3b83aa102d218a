//! shieldgate: a safety-moderation gateway built on Google's ShieldGemma classifier.
//!
//! Crate map (module boundaries are drawn where a larger project would split crates; the data
//! flow is `http` → `gateway` → `scorer` → `model`):
//! - [`model`]: pure candle Gemma 2: `forward` (layers, attention, caller-owned KV cache, Yes/No
//!   head), `load` (configs, safetensors, GGUF, hub, tokenizer, synthetic models, export,
//!   quantize) and `kernels` (int8 GEMM, fused softmax and GeGLU); knows nothing of HTTP or
//!   policies.
//! - [`policy`]: the safety policies (built-in four harms and custom TOML files) and the
//!   profiles (thresholds, actions, selection) the gateway, audit and tuning share.
//! - [`pii`]: personal data and secrets: validating recognizers and masking with typed
//!   placeholders, for whole texts and streams.
//! - [`prompt`]: ShieldGemma's two templates and their rendering into prefix + suffixes.
//! - [`scorer`]: the engine that turns requests into P(Yes) per policy, with prefix reuse, the
//!   worker thread that serves it to async code, and the remote backend.
//! - [`http`]: transport only: listener, connection workers, limits, bodies, upstream client.
//! - [`gateway`]: moderation on the request path: routes, the exchange's phases, checks,
//!   decisions, typed error codes, decision log, metrics, `/v1/moderations`, admin, and
//!   `protocols` (one file per wire format, plus SSE).
//! - [`config`]: the gateway's TOML configuration.
//! - [`audit`]: batch scoring of stored conversation logs (readers, resumable run, summary).
//! - [`drift`]: the gateway's sliding window of recent scores and the baselines it is compared
//!   with.
//! - [`tune`]: threshold tuning from labelled data (curves, suggestions, config edits, report,
//!   browser workbench); [`html`]: helpers of the HTML pages.
//! - [`cli`]: command-line arguments of the `shieldgate` binary; [`commands`] runs them.
//! - [`telemetry`]: logging setup; [`allocator`]: the process's split allocator.

pub mod allocator;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod drift;
pub mod gateway;
pub mod html;
pub mod http;
pub mod injection;
pub mod model;
pub mod pii;
pub mod policy;
pub mod prompt;
pub mod scorer;
pub mod telemetry;
pub mod tune;
