//! The commands behind the CLI, and the setup they share (model and policy loading).

pub mod export;
pub mod score;
pub mod serve;

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::{ModelArgs, PolicyArgs};
use crate::model::loader::{self, LoadOptions, ModelSource};
use crate::model::quantize::GgufType;
use crate::policy::{Policy, PolicySet};
use crate::scorer::{Engine, EngineOptions};

/// How a command ended, mapped to the process exit code by `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was scored and no policy was violated (exit 0).
    Clean,
    /// Everything was scored and at least one policy was violated (exit 1).
    Flagged,
    /// Some inputs could not be scored; each is reported in the output (exit 3).
    InputErrors,
}

impl Outcome {
    /// The process exit code. 2 is reserved for errors that stop the command.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Flagged => 1,
            Self::InputErrors => 3,
        }
    }
}

/// Loads the model described by the arguments.
pub fn load_engine(args: &ModelArgs) -> anyhow::Result<Engine> {
    let source = ModelSource::parse(&args.model)?;
    let opts = LoadOptions {
        dtype: loader::parse_dtype(&args.dtype)?,
        device: loader::parse_device(&args.device)?,
        tokenizer: args.tokenizer.clone(),
        quantize: args.quantize.as_deref().and_then(GgufType::parse),
    };
    tracing::info!(model = %args.model, dtype = %args.dtype, "loading model");
    let loaded = loader::load(&source, &opts)?;
    Ok(Engine::new(
        loaded,
        EngineOptions {
            prefix_reuse: !args.no_prefix_reuse,
            max_tokens: args.max_tokens,
            prefill_chunk: args.prefill_chunk,
        },
    ))
}

/// The selected policies with threshold overrides applied.
pub fn load_policies(args: &PolicyArgs) -> anyhow::Result<Arc<[Policy]>> {
    let mut set = match &args.policies_dir {
        Some(dir) => PolicySet::load_dir(dir)?,
        None => PolicySet::builtin(),
    };
    for file in &args.policy_file {
        set.add_file(file)?;
    }
    let mut chosen = set.select(&args.policies)?;
    for spec in &args.threshold {
        let (id, value) = spec
            .split_once('=')
            .with_context(|| format!("--threshold {spec:?}: expected ID=VALUE"))?;
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("--threshold {spec:?}: {value:?} is not a number"))?;
        if !(0.0..=1.0).contains(&value) {
            bail!("--threshold {spec:?}: thresholds are probabilities between 0 and 1");
        }
        let policy = chosen
            .iter_mut()
            .find(|p| p.id == id.trim())
            .with_context(|| format!("--threshold {spec:?}: policy {id:?} is not selected"))?;
        policy.threshold = value;
    }
    Ok(chosen.into())
}
