//! Shared helpers: test assets and the reference fixture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use shieldgate::model::load::loader::{load, LoadOptions, ModelSource};
use shieldgate::policy::{Policy, PolicySet};
use shieldgate::scorer::{Engine, EngineOptions, ScoreRequest};

/// Runs the `shieldgate` binary with `args`, `stdin` on its standard input, offline, without
/// `SHIELDGATE_MODEL`.
pub fn shieldgate(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
        .args(args)
        .env_remove("SHIELDGATE_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        // A child that exits before reading (a refused option) closes the pipe first; its
        // exit status and messages then say why, for the caller to check.
        match pipe.write_all(bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.expect("stdin written"),
        }
    }
    drop(pipe);
    child.wait_with_output().expect("binary finishes")
}

/// One JSON value per line.
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real Gemma tokenizer, fetched by scripts/fetch-tokenizer.sh.
pub fn tokenizer_path() -> PathBuf {
    let path = root().join("tests/assets/tokenizer.json");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-tokenizer.sh first",
        path.display()
    );
    path
}

/// Test models on disk, written once per test run by the real `shieldgate export`:
/// `tiny/` (one safetensors file, plus `model-{f32,f16,q8_0,q4_0}.gguf`) and `odd/` (three
/// safetensors shards with an index).
pub fn assets() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/test-assets");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("old test assets removed");
        }
        let tokenizer = tokenizer_path();
        let export = |preset: &str, out: &str, extra: &[&str]| {
            let status = Command::new(env!("CARGO_BIN_EXE_shieldgate"))
                .args([
                    "export",
                    "--model",
                    &format!("synthetic:{preset}"),
                    "--tokenizer",
                ])
                .arg(&tokenizer)
                .arg("--out")
                .arg(dir.join(out))
                .args(extra)
                .status()
                .expect("shieldgate export runs");
            assert!(status.success(), "export {preset} to {out} failed");
        };
        export("tiny", "tiny", &[]);
        export("tiny", "tiny/model-f32.gguf", &[]);
        export("tiny", "tiny/model-f16.gguf", &["--dtype", "f16"]);
        export("odd", "odd", &["--shards", "3"]);
        export("tiny", "tiny/model-q8_0.gguf", &["--dtype", "q8_0"]);
        export("tiny", "tiny/model-q4_0.gguf", &["--dtype", "q4_0"]);
        export("kquant", "kquant/model-q4_k_m.gguf", &["--dtype", "q4_k_m"]);
        dir
    })
}

/// A synthetic test model (`tiny`, `odd`, `kquant`) loaded with the real tokenizer.
pub fn engine(preset: &str, dtype: candle_core::DType, options: EngineOptions) -> Engine {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    engine_from(&ModelSource::Synthetic(preset.to_string()), opts).with_options(options)
}

/// Any model source, with the real tokenizer and default engine options.
pub fn engine_from(source: &ModelSource, opts: LoadOptions) -> Engine {
    let opts = LoadOptions {
        tokenizer: Some(tokenizer_path()),
        ..opts
    };
    let loaded = load(source, &opts).unwrap_or_else(|e| panic!("{source:?} loads: {e}"));
    Engine::new(loaded, EngineOptions::default())
}

/// The four built-in policies.
pub fn policies() -> Arc<[Policy]> {
    PolicySet::builtin().iter().cloned().collect()
}

/// A request over all four policies.
pub fn request(user: &str, response: Option<&str>) -> ScoreRequest {
    ScoreRequest::new(user, response.map(str::to_string), policies())
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

/// A child process (a server under test) killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
