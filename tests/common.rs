//! Shared helpers: test assets and the reference fixture.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use shieldgate::model::loader::{load, LoadOptions, ModelSource};
use shieldgate::policy::{Policy, PolicySet};
use shieldgate::scorer::{Engine, EngineOptions, ScoreRequest};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real Gemma tokenizer, fetched by scripts/fetch-tokenizer.sh.
pub fn tokenizer_path() -> PathBuf {
    let path = root().join("tests/assets/tokenizer.json");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test-assets.sh (or scripts/fetch-tokenizer.sh) first",
        path.display()
    );
    path
}

/// A synthetic test model (`tiny`, `odd`) loaded with the real tokenizer.
pub fn engine(preset: &str, dtype: candle_core::DType, options: EngineOptions) -> Engine {
    let opts = LoadOptions {
        dtype,
        tokenizer: Some(tokenizer_path()),
        ..LoadOptions::default()
    };
    let source = ModelSource::Synthetic(preset.to_string());
    Engine::new(
        load(&source, &opts).expect("synthetic model loads"),
        options,
    )
}

/// The four built-in policies.
pub fn policies() -> Arc<[Policy]> {
    PolicySet::builtin().iter().cloned().collect()
}

/// A request over all four policies.
pub fn request(user: &str, response: Option<&str>) -> ScoreRequest {
    ScoreRequest {
        user: user.to_string(),
        response: response.map(str::to_string),
        policies: policies(),
    }
}

/// tests/fixtures/parity.json, written by `scripts/fixtures.py reference`.
#[derive(Deserialize)]
pub struct Fixture {
    pub yes_id: u32,
    pub no_id: u32,
    pub cases: Vec<Case>,
    pub models: std::collections::HashMap<String, ReferenceModel>,
}

/// One rendered prompt of the fixture.
#[derive(Deserialize)]
pub struct Case {
    pub sample: usize,
    pub mode: String,
    pub policy: String,
    pub user: String,
    pub response: Option<String>,
    pub text: String,
    pub ids: Vec<u32>,
}

/// Reference logits of one preset, one (Yes, No) pair per case.
#[derive(Deserialize)]
pub struct ReferenceModel {
    pub yes_no_logits: Vec<[f32; 2]>,
}

/// Loads the parity fixture.
pub fn fixture() -> Fixture {
    let text = std::fs::read_to_string(root().join("tests/fixtures/parity.json"))
        .expect("tests/fixtures/parity.json exists");
    serde_json::from_str(&text).expect("parity fixture parses")
}
