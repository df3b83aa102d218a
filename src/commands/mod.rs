//! The commands behind the CLI, and the setup they share (model and policy loading).

pub mod audit;
pub mod check_config;
pub mod export;
pub mod score;
pub mod serve;
pub mod tune;

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::PolicyArgs;
use crate::config::{Config, ModelSettings, PromptFormat, MAX_CONTEXT_TURNS};
use crate::injection::WithInjection;
use crate::model::load::loader::{self, load_tokenizer, LoadOptions, ModelSource};
use crate::model::load::quantize::GgufType;
use crate::policy::profiles::{Profile, Profiles};
use crate::policy::{Policy, PolicySet};
use crate::scorer::cache::CachedScorer;
use crate::scorer::remote::RemoteScorer;
use crate::scorer::{Engine, EngineOptions, Score};

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

/// Loads the model the settings describe.
pub fn load_engine(settings: &ModelSettings) -> anyhow::Result<Engine> {
    let source = ModelSource::parse(&settings.source)?;
    let opts = LoadOptions {
        dtype: loader::parse_dtype(&settings.dtype)?,
        device: crate::model::parse_device(&settings.device)?,
        tokenizer: settings.tokenizer.clone(),
        quantize: match settings.quantize.as_deref() {
            None => None,
            Some(q) => Some(
                GgufType::parse(q)
                    .with_context(|| format!("quantize {q:?}: expected q8_0, q4_0 or q4_k_m"))?,
            ),
        },
    };
    tracing::info!(
        model = %settings.source,
        dtype = %settings.dtype,
        quantized_kernel = crate::model::quantized_kernel(),
        "loading model"
    );
    let loaded = loader::load(&source, &opts)?;
    Ok(Engine::new(
        loaded,
        EngineOptions {
            prefix_reuse: settings.prefix_reuse,
            max_tokens: settings.max_tokens,
            prefill_chunk: settings.prefill_chunk,
            batch_tokens: settings.batch_tokens,
            prefix_cache_tokens: settings.prefix_cache_tokens,
        },
    ))
}

/// The selected policies with threshold overrides applied.
pub fn load_policies(args: &PolicyArgs) -> anyhow::Result<Arc<[Policy]>> {
    let mut set = PolicySet::from_sources(args.policies_dir.as_deref(), &args.policy_file)?;
    if args.injection_model.is_some() {
        set.add_injection()?;
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

/// A scorer ready for use, with the model's name and the verdict cache it goes through (when
/// `[scorer] cache_entries` asks for one), whose counters the gateway exports.
pub struct LoadedScorer {
    /// The scorer (through the cache, when there is one).
    pub scorer: Arc<dyn Score>,
    /// The model's name.
    pub model_name: String,
    /// The caches' metrics (the verdict cache's, the embedded engine's prefix cache's), for
    /// the gateway's registry.
    pub metrics: Vec<Box<dyn prometheus::core::Collector>>,
}

/// The scorer the config asks for — the endpoints of `[scorer.remote]`, or else the embedded
/// model of `model`, with the injection classifier of `[injection]` beside it — behind the
/// verdict cache when one is configured.
pub fn load_scorer(config: &Config, model: &ModelSettings) -> anyhow::Result<LoadedScorer> {
    let LoadedScorer {
        mut scorer,
        model_name,
        mut metrics,
    } = uncached_scorer(config, model)?;
    if let Some(source) = &config.injection.model {
        tracing::info!(model = %source, device = %config.injection.device, "loading the injection classifier");
        let guard = crate::injection::load(source, &config.injection.device)
            .with_context(|| format!("[injection] model {source:?}"))?;
        scorer = Arc::new(WithInjection::new(scorer, Arc::new(guard)));
    }
    if let Some(capacity) = std::num::NonZeroUsize::new(config.scorer.cache_entries) {
        let cache = CachedScorer::new(scorer, capacity, &model_name);
        metrics.extend(
            cache
                .counters()
                .map(|c| Box::new(c) as Box<dyn prometheus::core::Collector>),
        );
        scorer = Arc::new(cache);
    }
    Ok(LoadedScorer {
        scorer,
        model_name,
        metrics,
    })
}

/// The remote or embedded scorer, without the verdict cache, with its name and metrics.
fn uncached_scorer(config: &Config, model: &ModelSettings) -> anyhow::Result<LoadedScorer> {
    match &config.scorer.remote {
        Some(remote) => {
            tracing::info!(endpoints = ?remote.urls, model = %remote.model, format = ?remote.prompt_format, "using remote scorer");
            // The tokenizer alone: the weights stay on the servers.
            let tokenizer = match remote.prompt_format {
                PromptFormat::TokenIds => Some(
                    load_tokenizer(&ModelSource::parse(&model.source)?, model.tokenizer.as_deref())
                        .context("[scorer.remote] sends token ids, so it needs the served model's tokenizer: set [model] source or [model] tokenizer")?,
                ),
                PromptFormat::Text => None,
            };
            Ok(LoadedScorer {
                scorer: Arc::new(RemoteScorer::new(remote.clone(), tokenizer)?),
                model_name: remote.model.clone(),
                metrics: Vec::new(),
            })
        }
        None => {
            let engine = load_engine(model)?;
            let name = engine.model_name().to_string();
            Ok(LoadedScorer {
                metrics: engine.prefix_cache_metrics(),
                scorer: Arc::new(engine),
                model_name: name,
            })
        }
    }
}

/// The config (a file, or the defaults) and one of its profiles.
pub fn profile(
    config: Option<&std::path::Path>,
    name: &str,
) -> anyhow::Result<(Config, Arc<Profile>)> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let profiles = Profiles::build(&config)?;
    let profile = profiles.get(name).cloned().with_context(|| {
        format!(
            "--profile {name:?}: the config has {}",
            profiles.names().join(", ")
        )
    })?;
    Ok((config, profile))
}

/// The earlier turns each text is judged after: `--context-turns`, else `configured`.
pub fn context_turns(flag: Option<usize>, configured: usize) -> anyhow::Result<usize> {
    let turns = flag.unwrap_or(configured);
    if turns > MAX_CONTEXT_TURNS {
        bail!(
            "--context-turns {turns} is more than {MAX_CONTEXT_TURNS}; long histories are cut \
             to fit the model anyway, so name at most the turns that matter"
        );
    }
    Ok(turns)
}
