//! The gateway's TOML configuration: every setting has a documented default
//! (`examples/shieldgate.toml` shows them all), unknown keys are refused, and `validate()` checks
//! what serde cannot. The file is re-read on reload; only `[policies]`, `[profiles]` and
//! `[proxy]` take effect without a restart.

mod model;
mod profile;
mod proxy;
mod server;
mod telemetry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::calibration::Calibration;

pub use model::{InjectionSettings, ModelSettings};
pub use profile::{Action, CategoryRule, PiiAction, PiiRules, ProfileConfig};
pub use proxy::{
    BadRequest, FailMode, OutputMode, ProxyConfig, Reveal, Scan, UnknownPaths, MAX_CONTEXT_TURNS,
};
pub use server::{
    DecisionLogConfig, PromptFormat, RemoteSettings, ScorerConfig, ServerConfig, UpstreamConfig,
};
pub use telemetry::{DriftConfig, OtlpProtocol, TelemetryConfig};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{origin}: {reason}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and limits.
    pub server: ServerConfig,
    /// Which model to load.
    pub model: ModelSettings,
    /// The scorer worker.
    pub scorer: ScorerConfig,
    /// The prompt-injection classifier.
    pub injection: InjectionSettings,
    /// Where custom policies come from.
    pub policies: PoliciesConfig,
    /// The chat API behind the gateway; without it only `/v1/moderations` is served.
    pub upstream: Option<UpstreamConfig>,
    /// What is scanned and how blocks look.
    pub proxy: ProxyConfig,
    /// The JSONL decision log.
    pub decision_log: DecisionLogConfig,
    /// The window of recent checks behind the drift gauges.
    pub drift: DriftConfig,
    /// OpenTelemetry traces.
    pub telemetry: TelemetryConfig,
    /// Thresholds and actions, by profile name; `default` applies when no other matches.
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// Per category id: the map from raw P(Yes) to calibrated probability (written by `tune
    /// --calibrate`). A calibrated category's thresholds are calibrated probabilities.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub calibration: BTreeMap<String, Calibration>,
}

/// Policy files loaded in addition to (or instead of) the four built-in harms.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Load every `*.toml` of this folder instead of the built-in policies.
    pub dir: Option<PathBuf>,
    /// Extra policy files.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// Parses and validates a configuration text (after a byte-order mark, if it starts with
    /// one); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            origin: origin.to_string(),
            reason,
        })?;
        Ok(config)
    }

    /// Reads, parses and validates a file. Relative paths inside it are taken from the file's
    /// folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        Ok(config)
    }

    /// Makes relative file paths relative to `base`.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.policies.dir.iter_mut().for_each(fix);
        self.policies.files.iter_mut().for_each(fix);
        self.model.tokenizer.iter_mut().for_each(fix);
        self.decision_log.path.iter_mut().for_each(fix);
        if let Some(upstream) = &mut self.upstream {
            upstream.ca_file.iter_mut().for_each(fix);
        }
        let model = base.join(&self.model.source);
        if !self.model.source.contains(':') && model.exists() {
            self.model.source = model.display().to_string();
        }
        if let Some(source) = &mut self.injection.model {
            let folder = base.join(&*source);
            if !source.contains(':') && folder.exists() {
                *source = folder.display().to_string();
            }
        }
    }

    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.server.validate()?;
        self.scorer.validate()?;
        self.proxy.validate()?;
        self.drift.validate()?;
        self.telemetry.validate()?;
        if let Some(upstream) = &self.upstream {
            upstream.validate()?;
        }
        for (name, profile) in &self.profiles {
            profile
                .validate()
                .map_err(|e| format!("[profiles.{name}]: {e}"))?;
        }
        for (id, calibration) in &self.calibration {
            calibration
                .check()
                .map_err(|e| format!("[calibration.{id}]: {e}"))?;
        }
        Ok(())
    }

    /// The configuration as TOML (what `check-config --print` shows).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_default_plus_an_upstream() {
        let text = include_str!("../../examples/shieldgate.toml");
        let config = Config::parse(text, "examples/shieldgate.toml").expect("example parses");
        let expected = Config {
            upstream: config.upstream.clone(),
            profiles: config.profiles.clone(),
            ..Config::default()
        };
        assert_eq!(config, expected, "the example must show the defaults");
        assert!(config.upstream.is_some());
    }

    #[test]
    fn a_file_opened_by_a_byte_order_mark_parses() {
        let text = format!("\u{feff}{}", include_str!("../../examples/shieldgate.toml"));
        let with = Config::parse(&text, "bom.toml").expect("parses");
        let without = Config::parse(&text[3..], "plain.toml").expect("parses");
        assert_eq!(with, without);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_origin() {
        let e = Config::parse("[server]\nlisten_addr = \"x\"\n", "a.toml").expect_err("must fail");
        assert!(e.to_string().starts_with("a.toml:"), "{e}");
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = Config::parse("[scorer]\nqueue = 0\n", "b.toml").expect_err("must fail");
        assert!(e.to_string().contains("queue"), "{e}");
        let e = Config::parse(
            "[profiles.x.categories]\nhate = { threshold = 1.5 }\n",
            "c.toml",
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("[profiles.x]"), "{e}");
        let e = Config::parse("[proxy]\nscan = []\n", "d.toml").expect_err("must fail");
        assert!(e.to_string().contains("scan"), "{e}");
        let e = Config::parse("[server]\nworkers = 100000\n", "e.toml").expect_err("must fail");
        assert!(e.to_string().contains("workers"), "{e}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "[policies]\nfiles = [\"extra.toml\"]\n[decision_log]\npath = \"/abs/log.jsonl\"\n",
        )
        .expect("written");
        let config = Config::load(&path).expect("loads");
        assert_eq!(config.policies.files, [dir.path().join("extra.toml")]);
        assert_eq!(
            config.decision_log.path.as_deref(),
            Some(Path::new("/abs/log.jsonl"))
        );
        let e = Config::load(&dir.path().join("missing.toml")).expect_err("must fail");
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    /// `section → key → default cell` of docs/configuration.md's tables.
    fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = None;
        for line in include_str!("../../docs/configuration.md").lines() {
            if let Some(heading) = line.strip_prefix("## `[") {
                section = heading.strip_suffix("]`").map(str::to_string);
                continue;
            }
            let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
                continue;
            };
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_end_matches('`').to_string();
            let default = cells[1].trim().trim_matches('`').to_string();
            out.entry(section.clone()).or_default().insert(key, default);
        }
        out
    }

    /// `section → keys` of the example config, commented-out keys and sections included.
    fn example_keys() -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut section = String::new();
        for line in include_str!("../../examples/shieldgate.toml").lines() {
            let line = line.trim_start_matches("# ").trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, _)) = line.split_once(" = ") {
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.entry(section.clone())
                        .or_default()
                        .push(key.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn docs_give_every_key_with_the_codes_default() {
        let docs = documented();
        let example = Config::parse(
            include_str!("../../examples/shieldgate.toml"),
            "examples/shieldgate.toml",
        )
        .expect("example parses");
        let mut config = example.clone();
        config.scorer.remote = Some(RemoteSettings::default());
        let code = toml::Value::try_from(&config).expect("serializes");
        let profile = toml::Value::try_from(ProfileConfig::default()).expect("serializes");
        let examples = example_keys();
        for (section, keys) in &docs {
            let values = if section == "profiles.NAME" {
                &profile
            } else {
                section
                    .split('.')
                    .try_fold(&code, |v, part| v.get(part))
                    .unwrap_or_else(|| panic!("[{section}] is not a config section"))
            };
            let table = values.as_table().expect("a table");
            for (key, default) in keys {
                let value = table.get(key);
                match default.as_str() {
                    "unset" => assert!(value.is_none(), "[{section}] {key} has a default"),
                    "required" => assert!(value.is_some(), "[{section}] {key} is missing"),
                    _ if section == "profiles.NAME" => assert!(value.is_some(), "{key}"),
                    _ => {
                        let parsed: toml::Table = toml::from_str(&format!("v = {default}"))
                            .unwrap_or_else(|e| panic!("[{section}] {key}: {default}: {e}"));
                        assert_eq!(value, parsed.get("v"), "[{section}] {key}");
                    }
                }
            }
            let nested = |v: &toml::Value| v.is_table() && section != "profiles.NAME";
            for key in table.iter().filter(|(_, v)| !nested(v)).map(|(k, _)| k) {
                assert!(
                    keys.contains_key(key),
                    "[{section}] {key} is not documented"
                );
            }
            if section != "profiles.NAME" {
                let mut shown = examples.get(section).cloned().unwrap_or_default();
                shown.sort();
                let documented: Vec<String> = keys.keys().cloned().collect();
                assert_eq!(shown, documented, "[{section}] in examples/shieldgate.toml");
            }
        }
        let sections: Vec<&String> = docs.keys().collect();
        for name in [
            "server",
            "model",
            "scorer",
            "scorer.remote",
            "injection",
            "policies",
            "upstream",
        ] {
            assert!(
                sections.iter().any(|s| *s == name),
                "no [{name}] in the docs"
            );
        }
    }
}
