//! shieldgate: a safety-moderation gateway built on Google's ShieldGemma classifier.
//!
//! Crate map (module boundaries are drawn where a larger project would split crates):
//! - [`model`]: pure candle Gemma 2 (weights, forward with a caller-owned KV cache, Yes/No head,
//!   tokenizer); knows nothing of HTTP or policies.
//! - [`policy`]: the safety policies (built-in four harms and custom TOML files).
//! - [`prompt`]: ShieldGemma's two templates and their rendering into prefix + suffixes.
//! - [`scorer`]: the engine that turns requests into P(Yes) per policy, with prefix reuse, and
//!   the worker thread that serves it to async code.
//! - [`proxy`]: the gateway: public listener (chat APIs proxied with input and output checks,
//!   `/v1/moderations`), admin listener, protocol adapters, decisions, upstream client.
//! - [`config`]: the gateway's TOML configuration; [`metrics`]: its Prometheus metrics.
//! - [`audit`]: batch scoring of stored conversation logs (readers, resumable run, summary).
//! - [`tune`]: threshold tuning from labelled data (curves, suggestions, config edits, report,
//!   browser workbench); [`html`]: helpers of the HTML pages.
//! - [`cli`]: command-line arguments of the `shieldgate` binary; [`commands`] runs them.
//! - [`telemetry`]: logging setup.

pub mod allocator;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod html;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod prompt;
pub mod proxy;
pub mod scorer;
pub mod telemetry;
pub mod tune;
