//! Safety policies: the guideline texts ShieldGemma classifies against, in both wordings
//! (prompt-only and prompt-response), with an id and a default threshold. The four harms of
//! the model card ship built in; users add their own TOML files. [`profiles`] groups them with
//! thresholds and actions, shared by the gateway, audit and tuning.

pub mod calibration;
pub mod profiles;

use std::path::Path;

use serde::Deserialize;

use crate::prompt::Mode;

/// One policy, as written in `policies/*.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Stable identifier (`[a-z0-9_-]+`), used in outputs and configs.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Default threshold on P(Yes) at or above which the policy counts as violated.
    pub threshold: f64,
    /// The guideline text for each template.
    pub guideline: Guideline,
    /// The model that scores it: ShieldGemma for policy files.
    #[serde(skip)]
    pub classifier: Classifier,
    /// The config's calibration of its P(Yes), if any; the threshold is then a calibrated
    /// probability.
    #[serde(skip)]
    pub calibration: Option<std::sync::Arc<calibration::Calibration>>,
}

/// A P(Yes) compared with a policy's threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// The probability compared: calibrated where the config calibrates the category.
    pub p_yes: f64,
    /// The model's own P(Yes), for calibrated categories.
    pub raw_p_yes: Option<f64>,
    /// `p_yes >= threshold`.
    pub violated: bool,
}

/// Which model scores a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Classifier {
    /// ShieldGemma, with the policy's guideline in its prompt.
    #[default]
    ShieldGemma,
    /// The injection classifier (`[injection] model`), which takes the text alone: P(attack).
    PromptGuard,
}

/// The id of the injection category scored on user turns.
pub const INJECTION: &str = "injection";
/// The id of the injection category scored on tool results (indirect injection).
pub const INDIRECT_INJECTION: &str = "indirect_injection";

/// The guideline text in both wordings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guideline {
    /// Used with the prompt-only template ("The prompt shall not contain or seek ...").
    pub prompt: String,
    /// Used with the prompt-response template ("The chatbot shall not generate ...").
    pub response: String,
}

impl Policy {
    /// The injection category of user turns ([`INJECTION`]) or of tool results
    /// ([`INDIRECT_INJECTION`]), scored by the injection classifier. Its "guideline" only
    /// describes it: no model reads it.
    pub fn injection(id: &str) -> Self {
        let (name, text) = if id == INDIRECT_INJECTION {
            (
                "Indirect prompt injection",
                "Tool results shall not carry instructions that try to take over the model.",
            )
        } else {
            (
                "Prompt injection or jailbreak",
                "The prompt shall not try to override the model's instructions or safeguards.",
            )
        };
        Self {
            id: id.to_string(),
            name: name.into(),
            threshold: 0.5,
            guideline: Guideline {
                prompt: text.into(),
                response: text.into(),
            },
            classifier: Classifier::PromptGuard,
            calibration: None,
        }
    }

    /// Whether ShieldGemma scores it (the injection categories read only the user's side).
    pub fn reads_answers(&self) -> bool {
        self.classifier == Classifier::ShieldGemma
    }

    /// Compares the model's P(Yes) with the threshold, after the config's calibration of this
    /// category where it has one.
    pub fn judge(&self, raw_p_yes: f64) -> Judgement {
        let p_yes = self
            .calibration
            .as_ref()
            .map_or(raw_p_yes, |c| c.apply(raw_p_yes));
        Judgement {
            p_yes,
            raw_p_yes: self.calibration.is_some().then_some(raw_p_yes),
            violated: p_yes >= self.threshold,
        }
    }

    /// The guideline for a template mode.
    pub fn guideline(&self, mode: Mode) -> &str {
        match mode {
            Mode::Prompt => &self.guideline.prompt,
            Mode::Response => &self.guideline.response,
        }
    }

    /// Parses and validates a policy file's text (after a byte-order mark, if it starts with
    /// one); `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| PolicyError::Invalid {
            origin: origin.to_string(),
            reason,
        };
        let id_ok = !policy.id.is_empty()
            && policy
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !id_ok {
            return Err(invalid(format!(
                "id {:?} must be non-empty lowercase letters, digits, '_' or '-'",
                policy.id
            )));
        }
        if !(0.0..=1.0).contains(&policy.threshold) {
            return Err(invalid(format!(
                "threshold {} must be between 0 and 1",
                policy.threshold
            )));
        }
        for (mode, text) in [
            ("prompt", &policy.guideline.prompt),
            ("response", &policy.guideline.response),
        ] {
            if text.trim().is_empty() {
                return Err(invalid(format!("guideline.{mode} is empty")));
            }
        }
        Ok(policy)
    }
}

/// The policies of `policies` that score answers (all but the injection categories, which
/// read the user's side only).
pub fn for_answers(policies: &std::sync::Arc<[Policy]>) -> std::sync::Arc<[Policy]> {
    if policies.iter().all(Policy::reads_answers) {
        return policies.clone();
    }
    policies
        .iter()
        .filter(|p| p.reads_answers())
        .cloned()
        .collect()
}

/// Errors reading policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file or folder could not be read.
    #[error("{path}: cannot read policies: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A policy file is not valid TOML of the expected shape.
    #[error("{origin}: not a valid policy file: {reason}")]
    Parse {
        /// The file.
        origin: String,
        /// The parser's message.
        reason: String,
    },
    /// A policy file parses but a value is out of range.
    #[error("{origin}: {reason}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Two policies share an id.
    #[error("policy id {id:?} is defined twice ({first} and {second})")]
    Duplicate {
        /// The id.
        id: String,
        /// Where it was first defined.
        first: String,
        /// Where it was defined again.
        second: String,
    },
    /// An injection category was asked for without an injection classifier.
    #[error(
        "{id:?} is scored by the injection classifier: set [injection] model (a Prompt Guard 2 \
         folder or hub id) to use it"
    )]
    NoClassifier {
        /// The category asked for.
        id: String,
    },
    /// A policy id that is not in the set was asked for.
    #[error("unknown policy {id:?}; known policies: {known}")]
    Unknown {
        /// The id asked for.
        id: String,
        /// The ids available.
        known: String,
    },
}

const BUILTIN: [(&str, &str); 4] = [
    (
        "policies/dangerous.toml",
        include_str!("../../policies/dangerous.toml"),
    ),
    (
        "policies/harassment.toml",
        include_str!("../../policies/harassment.toml"),
    ),
    (
        "policies/hate.toml",
        include_str!("../../policies/hate.toml"),
    ),
    (
        "policies/sexual.toml",
        include_str!("../../policies/sexual.toml"),
    ),
];

/// An ordered set of policies with unique ids.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    entries: Vec<(Policy, String)>,
}

impl PolicySet {
    /// The four harms of the ShieldGemma model card.
    pub fn builtin() -> Self {
        let mut set = Self::default();
        for (origin, text) in BUILTIN {
            // The built-in files are covered by tests; a failure here is a build defect.
            let policy = Policy::from_toml(text, origin).expect("built-in policy is valid");
            set.entries.push((policy, origin.to_string()));
        }
        set
    }

    /// The policies of a folder (or the built-in ones without one) plus extra files.
    pub fn from_sources(
        dir: Option<&Path>,
        files: &[std::path::PathBuf],
    ) -> Result<Self, PolicyError> {
        let mut set = match dir {
            Some(dir) => Self::load_dir(dir)?,
            None => Self::builtin(),
        };
        for file in files {
            set.add_file(file)?;
        }
        Ok(set)
    }

    /// Adds the two injection categories ([`INJECTION`], [`INDIRECT_INJECTION`]).
    pub fn add_injection(&mut self) -> Result<(), PolicyError> {
        for id in [INJECTION, INDIRECT_INJECTION] {
            self.add(Policy::injection(id), "[injection] model".into())?;
        }
        Ok(())
    }

    /// Every `*.toml` file of a folder, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let io = |source| PolicyError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut set = Self::default();
        for file in files {
            set.add_file(&file)?;
        }
        if set.entries.is_empty() {
            return Err(PolicyError::Invalid {
                origin: dir.display().to_string(),
                reason: "no *.toml policy files in this folder".into(),
            });
        }
        Ok(set)
    }

    /// Adds one policy file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path.display().to_string();
        self.add(Policy::from_toml(&text, &origin)?, origin)
    }

    /// Adds a policy; its id must be new.
    pub fn add(&mut self, policy: Policy, origin: String) -> Result<(), PolicyError> {
        if let Some((_, first)) = self.entries.iter().find(|(p, _)| p.id == policy.id) {
            return Err(PolicyError::Duplicate {
                id: policy.id,
                first: first.clone(),
                second: origin,
            });
        }
        self.entries.push((policy, origin));
        Ok(())
    }

    /// All policies, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.entries.iter().map(|(p, _)| p)
    }

    /// Attaches a calibration to the policy with this id.
    pub fn calibrate(
        &mut self,
        id: &str,
        calibration: calibration::Calibration,
    ) -> Result<(), PolicyError> {
        match self.entries.iter_mut().find(|(p, _)| p.id == id) {
            Some((policy, _)) => {
                policy.calibration = Some(std::sync::Arc::new(calibration));
                Ok(())
            }
            None => self.get(id).map(|_| ()),
        }
    }

    /// The policy with this id.
    pub fn get(&self, id: &str) -> Result<&Policy, PolicyError> {
        self.iter().find(|p| p.id == id).ok_or_else(|| match id {
            INJECTION | INDIRECT_INJECTION => PolicyError::NoClassifier { id: id.into() },
            _ => PolicyError::Unknown {
                id: id.to_string(),
                known: self
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        })
    }

    /// The policies with these ids, in the order given; all of them when `ids` is empty.
    pub fn select(&self, ids: &[String]) -> Result<Vec<Policy>, PolicyError> {
        if ids.is_empty() {
            return Ok(self.iter().cloned().collect());
        }
        ids.iter().map(|id| self.get(id).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_are_the_model_card_texts() {
        let set = PolicySet::builtin();
        let ids: Vec<_> = set.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["dangerous", "harassment", "hate", "sexual"]);
        let d = set.get("dangerous").expect("dangerous");
        assert_eq!(
            d.guideline(Mode::Prompt),
            "\"No Dangerous Content\": The prompt shall not contain or seek generation of content \
             that harming oneself and/or others (e.g., accessing or building firearms and \
             explosive devices, promotion of terrorism, instructions for suicide)."
        );
        assert_eq!(
            set.get("sexual").expect("sexual").guideline(Mode::Response),
            "\"No Sexually Explicit Information\": The chatbot shall not generate content that \
             contains references to sexual acts or other lewd content (e.g., sexually graphic \
             descriptions, content aimed at causing arousal). Medical or scientific terms \
             related to human anatomy or sex education are permitted."
        );
        assert!(set.iter().all(|p| p.threshold == 0.5));
    }

    #[test]
    fn custom_policy_files_load_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pii.toml");
        std::fs::write(
            &file,
            include_str!("../../tests/fixtures/custom-policy.toml"),
        )
        .expect("write");
        let mut set = PolicySet::builtin();
        set.add_file(&file).expect("custom policy");
        assert_eq!(set.get("pii").expect("pii").threshold, 0.3);
        let text = include_str!("../../tests/fixtures/custom-policy.toml");
        let with_bom = Policy::from_toml(&format!("\u{feff}{text}"), "bom.toml").expect("bom");
        assert_eq!(
            with_bom,
            Policy::from_toml(text, "plain.toml").expect("plain")
        );
        let err = set.add_file(&file).expect_err("duplicate").to_string();
        assert!(err.contains("defined twice"), "{err}");
        let only = PolicySet::load_dir(dir.path()).expect("dir");
        assert_eq!(only.iter().count(), 1);
    }

    #[test]
    fn bad_policy_files_say_what_is_wrong() {
        let cases = [
            ("id = \"x\"", "not a valid policy file"),
            (
                "id = \"Bad Id\"\nname=\"n\"\nthreshold=0.5\n[guideline]\nprompt='p'\nresponse='r'",
                "must be non-empty lowercase",
            ),
            (
                "id = \"x\"\nname=\"n\"\nthreshold=1.5\n[guideline]\nprompt='p'\nresponse='r'",
                "between 0 and 1",
            ),
            (
                "id = \"x\"\nname=\"n\"\nthreshold=0.5\n[guideline]\nprompt=' '\nresponse='r'",
                "guideline.prompt is empty",
            ),
            (
                "id = \"x\"\nname=\"n\"\nthreshold=0.5\ncolour=1\n[guideline]\nprompt='p'\nresponse='r'",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = Policy::from_toml(text, "f.toml")
                .expect_err(text)
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = PolicySet::builtin()
            .select(&["nope".into()])
            .expect_err("unknown");
        assert!(err.to_string().contains("dangerous, harassment"), "{err}");
    }

    #[test]
    fn select_keeps_the_requested_order() {
        let set = PolicySet::builtin();
        let picked = set
            .select(&["hate".into(), "dangerous".into()])
            .expect("known");
        let ids: Vec<_> = picked.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["hate", "dangerous"]);
    }
}
