//! Finds the classifier that `[injection] model` names: a Hugging Face folder, a hub id, or a
//! synthetic shape of seeded test weights.

use super::config::{prompt_guard_22m, prompt_guard_86m};
use super::{InjectionError, PromptGuard};
use crate::model::load::loader::ModelSource;
use crate::model::{parse_device, ModelError};

/// Loads the classifier of `source` onto `device` (`cpu`, `cuda`, `cuda:N`, `metal`).
pub fn load(source: &str, device: &str) -> Result<PromptGuard, InjectionError> {
    let device = parse_device(device)?;
    if let Some(shape) = source.strip_prefix("synthetic:") {
        let config = match shape {
            "22m" => prompt_guard_22m(),
            "86m" => prompt_guard_86m(),
            _ => {
                return Err(InjectionError::Config {
                    origin: source.to_string(),
                    reason: "the synthetic shapes are synthetic:22m and synthetic:86m".into(),
                })
            }
        };
        return PromptGuard::synthetic(&config, &device);
    }
    match ModelSource::parse(source)? {
        ModelSource::Folder(dir) => PromptGuard::load(&dir, &device),
        #[cfg(feature = "hub")]
        ModelSource::Hub(id) => {
            let files = crate::model::load::hub::download(&id)?;
            let dir = files.config.parent().ok_or_else(|| ModelError::Hub {
                model: id.clone(),
                reason: "the hub cache gave a config.json without a folder".into(),
            })?;
            PromptGuard::load(dir, &device)
        }
        #[cfg(not(feature = "hub"))]
        ModelSource::Hub(id) => Err(ModelError::Hub {
            model: id,
            reason: "this build has no hub support; download the model folder and give its path"
                .into(),
        }
        .into()),
        ModelSource::Gguf(_) | ModelSource::Synthetic(_) => Err(InjectionError::Config {
            origin: source.to_string(),
            reason: "a Prompt Guard model is a Hugging Face folder or hub id".into(),
        }),
    }
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
}
