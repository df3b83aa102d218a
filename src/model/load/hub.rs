//! Downloads a checkpoint from the Hugging Face hub into the standard cache (`HF_HOME`),
//! honouring `HF_TOKEN` and offline mode (`HF_HUB_OFFLINE=1`).

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo};

use crate::model::load::loader::HfFiles;
use crate::model::ModelError;

/// Resolves one file of the repository to a local path.
type Fetch<'a> = Box<dyn Fn(&str) -> Result<PathBuf, ModelError> + 'a>;

/// Fetches (or finds in the cache) the repository's tokenizer.json alone.
pub(crate) fn download_tokenizer(id: &str) -> Result<PathBuf, ModelError> {
    fetcher(id)?("tokenizer.json")
}

/// Fetches (or finds in the cache) config.json, tokenizer.json and the safetensors weights.
pub(crate) fn download(id: &str) -> Result<HfFiles, ModelError> {
    let fetch = fetcher(id)?;
    let config = fetch("config.json")?;
    let tokenizer = fetch("tokenizer.json")?;
    let weights = match fetch("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            shard_names(&text, id)?
                .iter()
                .map(|name| fetch(name))
                .collect::<Result<Vec<_>, _>>()?
        }
        Err(_) => vec![fetch("model.safetensors")?],
    };
    Ok(HfFiles {
        config,
        tokenizer,
        weights,
    })
}

/// Resolves files of `id`: from the local cache in offline mode, else through the hub.
fn fetcher(id: &str) -> Result<Fetch<'_>, ModelError> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let fetch: Fetch = if offline {
        let cache = Cache::from_env().repo(Repo::model(id.to_string()));
        Box::new(move |file: &str| {
            cache.get(file).ok_or_else(|| ModelError::Hub {
                model: id.to_string(),
                reason: format!(
                    "{file} is not in the local hub cache and HF_HUB_OFFLINE is set; \
                     download it once with network access, or pass a local folder"
                ),
            })
        })
    } else {
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        let has_token = token.is_some() || Cache::from_env().token().is_some();
        let mut builder = ApiBuilder::from_env().with_progress(false);
        if token.is_some() {
            builder = builder.with_token(token);
        }
        let api = builder.build().map_err(|e| ModelError::Hub {
            model: id.to_string(),
            reason: format!("cannot set up the hub client: {e}"),
        })?;
        let repo = api.model(id.to_string());
        Box::new(move |file: &str| get(&repo, id, file, has_token))
    };
    Ok(fetch)
}

fn shard_names(index: &str, id: &str) -> Result<Vec<String>, ModelError> {
    let json: serde_json::Value = serde_json::from_str(index).map_err(|e| ModelError::Hub {
        model: id.to_string(),
        reason: format!("model.safetensors.index.json is not valid JSON: {e}"),
    })?;
    let mut names: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

fn get(repo: &ApiRepo, id: &str, file: &str, has_token: bool) -> Result<PathBuf, ModelError> {
    repo.get(file).map_err(|e| {
        let text = e.to_string();
        let reason = if text.contains("status code 401") || text.contains("status code 403") {
            if has_token {
                format!(
                    "access to {file} was refused: accept the model's licence on its hub page \
                     with the account of your HF_TOKEN"
                )
            } else {
                format!(
                    "{file} needs authentication: ShieldGemma is gated; accept its licence on \
                     the hub and set HF_TOKEN"
                )
            }
        } else if text.contains("status code 404") {
            format!("{file} does not exist in this repository (check the model id)")
        } else {
            format!(
                "cannot download {file} ({text}); check the network, or set HF_HUB_OFFLINE=1 \
                 to use the local cache, or pass a local folder"
            )
        };
        ModelError::Hub {
            model: id.to_string(),
            reason,
        }
    })
}
