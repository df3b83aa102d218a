//! Profiles: per-category thresholds and actions, and which requests each profile applies to.
//!
//! Precedence (first match wins): a profile listing the SHA-256 of the request's API key, then
//! one listing the tenant header's value, then the one with the longest matching route prefix,
//! then `default`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One profile.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Hex SHA-256 digests of API keys (the `Authorization: Bearer` token or `x-api-key`)
    /// this profile applies to; the keys themselves are never stored.
    pub api_key_sha256: Vec<String>,
    /// Values of the tenant header this profile applies to.
    pub tenants: Vec<String>,
    /// Path prefixes this profile applies to.
    pub routes: Vec<String>,
    /// The categories scored, by policy id; empty: every loaded policy at its own threshold,
    /// with action `block`.
    pub categories: BTreeMap<String, CategoryRule>,
    /// Personal data and secrets: what each kind found does.
    pub pii: PiiRules,
}

/// What personal data and secrets found in a request do, per kind (`email`, `phone`, `card`,
/// `iban`, `ssn`, `ip`, `private_key`, `jwt`, `cloud_key`, `api_key`, `bearer_token`); a kind
/// not listed is not looked for.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiRules {
    /// In the request's texts (every message, whoever wrote it, and tool calls and results).
    pub input: BTreeMap<crate::pii::Kind, PiiAction>,
    /// In the answer's texts (whole JSON answers; `block` withholds the answer).
    pub output: BTreeMap<crate::pii::Kind, PiiAction>,
    /// Put the values the request's placeholders hid back where the answer repeats the
    /// placeholders, for the client (they never go upstream).
    pub restore: bool,
}

/// What a kind of personal data or secret does where it is found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PiiAction {
    /// Not looked for.
    #[default]
    Off,
    /// Replaced by a typed placeholder (`[EMAIL_1]`) before the request goes upstream.
    Mask,
    /// The request is refused (`pii_blocked`), with the kinds found but never the values; an
    /// answer is withheld like a blocked one.
    Block,
    /// Passed as it is; counted and noted in the `x-shieldgate-pii` header and the decision log.
    Flag,
}

impl PiiAction {
    /// The name used in headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A category's threshold and action.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoryRule {
    /// P(Yes) at or above which the category is violated; absent: the policy file's.
    pub threshold: Option<f64>,
    /// What a violation does.
    pub action: Action,
}

/// What a violated category does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the request or withhold the response.
    #[default]
    Block,
    /// Pass, annotated in headers and the decision log.
    Flag,
    /// Pass; record only that it would have been blocked.
    Shadow,
}

impl Action {
    /// The name used in headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Flag => "flag",
            Self::Shadow => "shadow",
        }
    }
}

impl ProfileConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (id, rule) in &self.categories {
            if let Some(t) = rule.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(format!(
                        "category {id}: threshold {t} is not a probability between 0 and 1"
                    ));
                }
            }
        }
        for digest in &self.api_key_sha256 {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "api_key_sha256 {digest:?} is not a hex SHA-256 digest (64 hex digits; \
                     compute it with `printf %s \"$KEY\" | sha256sum`)"
                ));
            }
        }
        if let Some(route) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(format!("route {route:?} must start with '/'"));
        }
        Ok(())
    }
}
