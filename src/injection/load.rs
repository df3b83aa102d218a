//! Finds the classifier that `[injection] model` names: a Hugging Face folder, a hub id, or a
//! synthetic shape of seeded test weights.

use std::path::{Path, PathBuf};

use candle_transformers::models::debertav2::Config;

use super::config::{parse, prompt_guard_22m, prompt_guard_86m};
use super::{InjectionError, PromptGuard};
use crate::model::load::loader::ModelSource;
use crate::model::{parse_device, ModelError};

/// Where a classifier comes from.
enum Source {
    Synthetic(Box<Config>),
    Folder(PathBuf),
    Hub(String),
}

/// Reads `source` without loading anything.
fn resolve(source: &str) -> Result<Source, InjectionError> {
    if let Some(shape) = source.strip_prefix("synthetic:") {
        return match shape {
            "22m" => Ok(Source::Synthetic(Box::new(prompt_guard_22m()))),
            "86m" => Ok(Source::Synthetic(Box::new(prompt_guard_86m()))),
            _ => Err(InjectionError::Config {
                origin: source.to_string(),
                reason: "the synthetic shapes are synthetic:22m and synthetic:86m".into(),
            }),
        };
    }
    match ModelSource::parse(source)? {
        ModelSource::Folder(dir) => Ok(Source::Folder(dir)),
        ModelSource::Hub(id) => Ok(Source::Hub(id)),
        ModelSource::Gguf(_) | ModelSource::Synthetic(_) => Err(InjectionError::Config {
            origin: source.to_string(),
            reason: "a Prompt Guard model is a Hugging Face folder or hub id".into(),
        }),
    }
}

/// Checks what can be checked without loading (`check-config`): the device, the source, and a
/// folder's files and config.json; a hub id is fetched only when the gateway starts.
pub fn check(source: &str, device: &str) -> Result<(), InjectionError> {
    parse_device(device)?;
    let Source::Folder(dir) = resolve(source)? else {
        return Ok(());
    };
    for name in ["tokenizer.json", "model.safetensors"] {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path,
                hint:
                    "a Prompt Guard folder holds config.json, tokenizer.json and model.safetensors",
            }
            .into());
        }
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text, &path.display().to_string()).map(|_| ())
}

/// Loads the classifier of `source` onto `device` (`cpu`, `cuda`, `cuda:N`, `metal`).
pub fn load(source: &str, device: &str) -> Result<PromptGuard, InjectionError> {
    let device = parse_device(device)?;
    match resolve(source)? {
        Source::Synthetic(config) => PromptGuard::synthetic(&config, &device),
        Source::Folder(dir) => PromptGuard::load(&dir, &device),
        Source::Hub(id) => PromptGuard::load(&hub_folder(&id)?, &device),
    }
}

/// The hub repository's files, fetched into (or found in) the hub cache.
#[cfg(feature = "hub")]
fn hub_folder(id: &str) -> Result<PathBuf, InjectionError> {
    let files = crate::model::load::hub::download(id)?;
    files.config.parent().map(Path::to_path_buf).ok_or_else(|| {
        ModelError::Hub {
            model: id.to_string(),
            reason: "the hub cache gave a config.json without a folder".into(),
        }
        .into()
    })
}

#[cfg(not(feature = "hub"))]
fn hub_folder(id: &str) -> Result<PathBuf, InjectionError> {
    Err(ModelError::Hub {
        model: id.to_string(),
        reason: "this build has no hub support; download the model folder and give its path".into(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_that_are_no_classifier_say_so() {
        for (source, expected) in [
            ("synthetic:7b", "synthetic:22m and synthetic:86m"),
            ("weights.gguf", "folder or hub id"),
            ("./no/such/folder", "no/such/folder"),
        ] {
            let e = load(source, "cpu").err().map(|e| e.to_string());
            let e = e.unwrap_or_else(|| panic!("{source} loaded"));
            assert!(e.contains(expected), "{source}: {e}");
        }
        let e = load("synthetic:22m", "tpu").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("tpu")));
    }

    #[test]
    fn a_check_reads_the_folder_without_loading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().display().to_string();
        let e = check(&folder, "cpu").expect_err("empty folder").to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        for name in ["tokenizer.json", "model.safetensors"] {
            std::fs::write(dir.path().join(name), "").expect("written");
        }
        std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\"}")
            .expect("written");
        let e = check(&folder, "cpu").expect_err("not DeBERTa").to_string();
        assert!(e.contains("deberta-v2"), "{e}");
        assert!(check("meta-llama/Llama-Prompt-Guard-2-22M", "cpu").is_ok());
        assert!(check("synthetic:86m", "cpu").is_ok());
        assert!(check("synthetic:1b", "cpu").is_err());
    }
}
