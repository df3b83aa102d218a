//! Finds and loads a model: a local Hugging Face folder (single or sharded safetensors), a hub
//! id, a GGUF file, or a synthetic random-weight preset; each failure says what to do.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::model::load::quantize::{quantize, GgufType};
use crate::model::load::safetensors_files;
use crate::model::load::synthetic;
use crate::model::load::weights::WeightSource;
use crate::model::{Gemma2, Gemma2Config, GemmaTokenizer, ModelError};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A folder with config.json, tokenizer.json and safetensors weights.
    Folder(PathBuf),
    /// A GGUF file; the tokenizer.json is given or sits beside it.
    Gguf(PathBuf),
    /// A Hugging Face hub id such as `google/shieldgemma-2b`.
    Hub(String),
    /// A random-weight model of a named shape (`synthetic:tiny`, `synthetic:2b`, ...).
    Synthetic(String),
}

impl ModelSource {
    /// Interprets a `--model` argument.
    pub fn parse(arg: &str) -> Result<Self, ModelError> {
        if let Some(name) = arg.strip_prefix("synthetic:") {
            return match synthetic::preset(name) {
                Some(_) => Ok(Self::Synthetic(name.to_string())),
                None => Err(ModelError::Unsupported(format!(
                    "unknown synthetic preset {name:?}; choose one of {}",
                    synthetic::PRESETS.join(", ")
                ))),
            };
        }
        let path = Path::new(arg);
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if arg.ends_with(".gguf") {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.exists() {
            return Err(ModelError::UnknownSource(arg.to_string()));
        }
        let parts: Vec<&str> = arg.split('/').collect();
        let id_like = parts.len() == 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if id_like && !arg.starts_with('.') {
            Ok(Self::Hub(arg.to_string()))
        } else {
            Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: "give a model folder, a .gguf file or a hub id such as google/shieldgemma-2b",
            })
        }
    }
}

/// How to load: precision, device and an optional tokenizer override.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight and activation dtype (the head always runs in f32).
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// A tokenizer.json to use instead of the one beside the weights.
    pub tokenizer: Option<PathBuf>,
    /// Quantize the matrices to this type while loading.
    pub quantize: Option<GgufType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            tokenizer: None,
            quantize: None,
        }
    }
}

/// A model ready to score, with its tokenizer.
pub struct LoadedModel {
    /// The network.
    pub model: Gemma2,
    /// Its tokenizer.
    pub tokenizer: GemmaTokenizer,
    /// A short description of where it came from, for outputs and logs.
    pub name: String,
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType, ModelError> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(ModelError::Unsupported(format!(
            "dtype {other:?} is not supported; use f32, bf16 or f16"
        ))),
    }
}

/// A model's weights opened for reading, before the network is built.
pub struct Weights {
    /// The hyper-parameters.
    pub config: Gemma2Config,
    /// The tensors under their Hugging Face names.
    pub source: WeightSource,
    /// The tokenizer.json to use.
    pub tokenizer: PathBuf,
    /// Where the model came from, for outputs and logs.
    pub name: String,
}

/// Opens the config and weights of `source` (nothing is computed yet).
pub fn open(source: &ModelSource, opts: &LoadOptions) -> Result<Weights, ModelError> {
    let tokenizer_or = |default: PathBuf| opts.tokenizer.clone().unwrap_or(default);
    match source {
        ModelSource::Folder(dir) => {
            let files = HfFiles::in_folder(dir)?;
            open_hf(files, opts, dir.display().to_string())
        }
        #[cfg(feature = "hub")]
        ModelSource::Hub(id) => open_hf(crate::model::load::hub::download(id)?, opts, id.clone()),
        #[cfg(not(feature = "hub"))]
        ModelSource::Hub(id) => Err(ModelError::Hub {
            model: id.clone(),
            reason: "this build has no hub support; rebuild with --features hub or \
                     download the model folder and pass its path"
                .into(),
        }),
        ModelSource::Gguf(path) => {
            let (config, source) = crate::model::load::gguf::load(path, opts.dtype, &opts.device)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            Ok(Weights {
                config,
                source,
                tokenizer: tokenizer_or(dir.join("tokenizer.json")),
                name: path.display().to_string(),
            })
        }
        ModelSource::Synthetic(preset) => {
            let config = synthetic::preset(preset).ok_or_else(|| {
                ModelError::Unsupported(format!("unknown synthetic preset {preset:?}"))
            })?;
            let Some(tokenizer) = opts.tokenizer.clone() else {
                return Err(ModelError::Unsupported(
                    "a synthetic model needs --tokenizer PATH (scripts/fetch-tokenizer.sh \
                     writes tests/assets/tokenizer.json)"
                        .into(),
                ));
            };
            Ok(Weights {
                config,
                source: WeightSource::from_var_builder(synthetic::var_builder(
                    opts.dtype,
                    &opts.device,
                )),
                tokenizer,
                name: format!("synthetic:{preset}"),
            })
        }
    }
}

/// Loads a model from `source`. Also tells the allocator to keep freed memory for the next
/// step (see `allocator.rs`).
pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel, ModelError> {
    crate::model::load::malloc::keep_freed_memory();
    let mut weights = open(source, opts)?;
    let tokenizer = GemmaTokenizer::from_file(&weights.tokenizer)?;
    if let Some(kind) = opts.quantize {
        weights.source = quantize(&weights.source, &weights.config, kind)?;
    }
    let model = Gemma2::load(
        &weights.source,
        &weights.config,
        [tokenizer.yes, tokenizer.no],
    )
    .map_err(|e| ModelError::Weights {
        origin: weights.name.clone(),
        reason: format!("{e} (is this a Gemma 2 checkpoint matching its config.json?)"),
    })?;
    Ok(LoadedModel {
        model,
        tokenizer,
        name: weights.name,
    })
}

/// The tokenizer of `source` without its weights (for scoring through a remote server):
/// `tokenizer` if given, else the tokenizer.json of the folder, beside the GGUF file, or of the
/// hub repository (fetched alone).
pub fn load_tokenizer(
    source: &ModelSource,
    tokenizer: Option<&Path>,
) -> Result<GemmaTokenizer, ModelError> {
    let path = match (tokenizer, source) {
        (Some(path), _) => path.to_path_buf(),
        (None, ModelSource::Folder(dir)) => dir.join("tokenizer.json"),
        (None, ModelSource::Gguf(path)) => path
            .parent()
            .unwrap_or(Path::new("."))
            .join("tokenizer.json"),
        #[cfg(feature = "hub")]
        (None, ModelSource::Hub(id)) => crate::model::load::hub::download_tokenizer(id)?,
        #[cfg(not(feature = "hub"))]
        (None, ModelSource::Hub(id)) => {
            return Err(ModelError::Hub {
                model: id.clone(),
                reason: "this build has no hub support; pass the tokenizer.json's path".into(),
            })
        }
        (None, ModelSource::Synthetic(_)) => {
            return Err(ModelError::Unsupported(
                "a synthetic model needs a tokenizer path (scripts/fetch-tokenizer.sh writes \
                 tests/assets/tokenizer.json)"
                    .into(),
            ))
        }
    };
    GemmaTokenizer::from_file(&path)
}

/// The files of a Hugging Face checkpoint.
pub(crate) struct HfFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
}

impl HfFiles {
    fn in_folder(dir: &Path) -> Result<Self, ModelError> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile {
                path: config,
                hint: "a model folder needs the config.json of a Gemma 2 checkpoint",
            });
        }
        Ok(Self {
            config,
            tokenizer: dir.join("tokenizer.json"),
            weights: safetensors_in(dir)?,
        })
    }
}

/// The weight files of a folder: the shards named by model.safetensors.index.json, a single
/// model.safetensors, or `model-0000N-of-0000M.safetensors` shards.
fn safetensors_in(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let shards = shards_from_index(&index)?;
        return shards
            .into_iter()
            .map(|name| {
                let path = dir.join(&name);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(ModelError::MissingFile {
                        path,
                        hint: "model.safetensors.index.json names this shard; download every shard",
                    })
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(ModelError::MissingFile {
            path: single,
            hint: "no model.safetensors, model.safetensors.index.json or model-*.safetensors \
                   shards in the folder; download the checkpoint's weights",
        });
    }
    Ok(shards)
}

fn shards_from_index(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ModelError::Weights {
        origin: index.display().to_string(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut shards: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("weight_map values must be file names".into()))
        })
        .collect::<Result<_, _>>()?;
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(shards)
}

fn open_hf(files: HfFiles, opts: &LoadOptions, name: String) -> Result<Weights, ModelError> {
    let text = std::fs::read_to_string(&files.config).map_err(|source| ModelError::Io {
        path: files.config.clone(),
        source,
    })?;
    let config = Gemma2Config::from_hf_json(&text, &files.config.display().to_string())?;
    Ok(Weights {
        config,
        source: WeightSource::from_var_builder(read_safetensors(&files.weights, opts)?),
        tokenizer: opts.tokenizer.clone().unwrap_or(files.tokenizer),
        name,
    })
}

fn read_safetensors(
    paths: &[PathBuf],
    opts: &LoadOptions,
) -> Result<VarBuilder<'static>, ModelError> {
    safetensors_files::var_builder(paths, opts.dtype, &opts.device).map_err(|reason| {
        ModelError::Weights {
            origin: describe(paths),
            reason: format!("cannot read safetensors: {reason}"),
        }
    })
}

fn describe(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        _ => format!("{} safetensors shards", paths.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("google/shieldgemma-2b").expect("hub"),
            ModelSource::Hub("google/shieldgemma-2b".into())
        );
        assert_eq!(
            ModelSource::parse("synthetic:tiny").expect("preset"),
            ModelSource::Synthetic("tiny".into())
        );
        assert!(ModelSource::parse("synthetic:huge").is_err());
        assert_eq!(
            ModelSource::parse("/nonexistent/model.gguf").expect("gguf"),
            ModelSource::Gguf("/nonexistent/model.gguf".into())
        );
        let msg = ModelSource::parse("./no/such/dir/x")
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn folder_errors_name_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let msg = HfFiles::in_folder(dir.path())
            .err()
            .expect("no config")
            .to_string();
        assert!(msg.contains("config.json"), "{msg}");
        std::fs::write(dir.path().join("config.json"), "{}").expect("write");
        let msg = HfFiles::in_folder(dir.path())
            .err()
            .expect("no weights")
            .to_string();
        assert!(msg.contains("safetensors"), "{msg}");
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .expect("write");
        let msg = HfFiles::in_folder(dir.path())
            .err()
            .expect("no shard")
            .to_string();
        assert!(msg.contains("model-00001-of-00002.safetensors"), "{msg}");
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!(parse_dtype("bf16").expect("bf16"), DType::BF16);
        assert!(parse_dtype("int3").is_err());
    }
}
