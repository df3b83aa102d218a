//! Profiles at run time: each one's policies (with thresholds applied) and actions, the rules
//! that select it, and a version string that changes whenever any of it changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{Action, Config, ConfigError, PiiAction, ProfileConfig};
use crate::pii::Kind;
use crate::policy::{Classifier, Policy, PolicySet, INDIRECT_INJECTION};

/// One profile, ready to score with.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// The policies scored, with this profile's thresholds.
    pub policies: Arc<[Policy]>,
    /// The action of each policy, in the same order.
    pub actions: Vec<Action>,
    /// What a user turn is scored with: every policy but `indirect_injection`.
    pub for_user_turns: Arc<[Policy]>,
    /// What other scanned texts (system prompt, tool calls and results) and answers are scored
    /// with: ShieldGemma's policies.
    pub for_other_texts: Arc<[Policy]>,
    /// What tool results and documents since the model's last turn are scored with:
    /// `indirect_injection`, when the profile has it.
    pub for_indirect: Arc<[Policy]>,
    /// What each kind of personal data or secret found in a request does (kinds that are off
    /// left out).
    pub pii_input: BTreeMap<Kind, PiiAction>,
    /// The same for the answer.
    pub pii_output: BTreeMap<Kind, PiiAction>,
    /// Whether the request's masked values are restored in the answer.
    pub pii_restore: bool,
    key_hashes: Vec<String>,
    tenants: Vec<String>,
    routes: Vec<String>,
}

/// Every profile; `default` always exists.
#[derive(Debug, Clone)]
pub struct Profiles {
    list: Vec<Arc<Profile>>,
    /// Short hash of the policies, thresholds and actions in force.
    pub version: String,
}

/// What a request offers for profile selection.
pub struct Selector<'a> {
    /// The request path.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The configured tenant header.
    pub tenant_header: &'a str,
}

impl Profiles {
    /// Loads the policies and builds every profile of `config`.
    pub fn build(config: &Config) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            origin: "policies".into(),
            reason,
        };
        let mut set =
            PolicySet::from_sources(config.policies.dir.as_deref(), &config.policies.files)
                .map_err(|e| invalid(e.to_string()))?;
        if config.injection.model.is_some() {
            set.add_injection().map_err(|e| invalid(e.to_string()))?;
        }
        for (id, calibration) in &config.calibration {
            set.calibrate(id, calibration.clone())
                .map_err(|e| invalid(format!("[calibration.{id}]: {e}")))?;
        }
        let mut list = Vec::new();
        let default = ProfileConfig::default();
        if !config.profiles.contains_key("default") {
            list.push(Arc::new(
                build_one("default", &default, &set).map_err(invalid)?,
            ));
        }
        for (name, profile) in &config.profiles {
            list.push(Arc::new(build_one(name, profile, &set).map_err(invalid)?));
        }
        let mut hash = Sha256::new();
        for p in &list {
            hash.update(p.name.as_bytes());
            for (policy, action) in p.policies.iter().zip(&p.actions) {
                hash.update(format!(
                    "\0{}\0{}\0{}\0",
                    policy.id,
                    policy.threshold,
                    action.as_str()
                ));
                if let Some(c) = &policy.calibration {
                    hash.update(format!("{c:?}"));
                }
                hash.update(policy.guideline.prompt.as_bytes());
                hash.update(policy.guideline.response.as_bytes());
            }
            for (side, rules) in [("input", &p.pii_input), ("output", &p.pii_output)] {
                for (kind, action) in rules {
                    hash.update(format!(
                        "\0pii\0{side}\0{}\0{}\0",
                        kind.name(),
                        action.as_str()
                    ));
                }
            }
            hash.update(if p.pii_restore { "\0restore" } else { "\0" });
        }
        let version = hex::encode(&hash.finalize()[..6]);
        Ok(Self { list, version })
    }

    /// The profiles' names.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|p| p.name.as_str()).collect()
    }

    /// The profile with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.list.iter().find(|p| p.name == name)
    }

    /// The profile named `default`.
    pub fn default_profile(&self) -> &Arc<Profile> {
        self.list
            .iter()
            .find(|p| p.name == "default")
            .unwrap_or(&self.list[0])
    }

    /// The profile for a request: API-key hash, then tenant, then longest route prefix, then
    /// `default`.
    pub fn select(&self, request: &Selector<'_>) -> &Arc<Profile> {
        // The key is hashed only when some profile is chosen by key hash.
        let by_key = self.list.iter().any(|p| !p.key_hashes.is_empty());
        if let Some(key) = api_key(request.headers).filter(|_| by_key) {
            let digest = hex::encode(Sha256::digest(key.as_bytes()));
            if let Some(p) = self.list.iter().find(|p| p.key_hashes.contains(&digest)) {
                return p;
            }
        }
        if let Some(tenant) = request
            .headers
            .get(request.tenant_header)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(p) = self
                .list
                .iter()
                .find(|p| p.tenants.iter().any(|t| t == tenant))
            {
                return p;
            }
        }
        self.list
            .iter()
            .filter_map(|p| {
                p.routes
                    .iter()
                    .filter(|r| request.path.starts_with(r.as_str()))
                    .map(|r| r.len())
                    .max()
                    .map(|len| (len, p))
            })
            .max_by_key(|(len, _)| *len)
            .map_or_else(|| self.default_profile(), |(_, p)| p)
    }
}

/// The client's API key: `Authorization: Bearer`, `x-api-key` (Anthropic) or `api-key` (Azure).
fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

fn build_one(name: &str, config: &ProfileConfig, set: &PolicySet) -> Result<Profile, String> {
    let (policies, actions): (Vec<Policy>, Vec<Action>) = if config.categories.is_empty() {
        set.iter().map(|p| (p.clone(), Action::Block)).unzip()
    } else {
        let mut pairs = Vec::new();
        for (id, rule) in &config.categories {
            let mut policy = set
                .get(id)
                .map_err(|e| format!("[profiles.{name}.categories]: {e}"))?
                .clone();
            if let Some(t) = rule.threshold {
                policy.threshold = t;
            }
            pairs.push((policy, rule.action));
        }
        pairs.into_iter().unzip()
    };
    let only = |keep: &dyn Fn(&Policy) -> bool| -> Arc<[Policy]> {
        policies.iter().filter(|p| keep(p)).cloned().collect()
    };
    let indirect =
        |p: &Policy| p.classifier == Classifier::PromptGuard && p.id == INDIRECT_INJECTION;
    Ok(Profile {
        name: name.to_string(),
        for_user_turns: only(&|p| !indirect(p)),
        for_other_texts: only(&Policy::reads_answers),
        for_indirect: only(&indirect),
        policies: policies.into(),
        actions,
        key_hashes: config
            .api_key_sha256
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        tenants: config.tenants.clone(),
        routes: config.routes.clone(),
        pii_input: active(&config.pii.input),
        pii_output: active(&config.pii.output),
        pii_restore: config.pii.restore,
    })
}

/// The rules whose action is not `off`.
fn active(rules: &BTreeMap<Kind, PiiAction>) -> BTreeMap<Kind, PiiAction> {
    rules
        .iter()
        .filter(|(_, action)| **action != PiiAction::Off)
        .map(|(kind, action)| (*kind, *action))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Profiles {
        let key_hash = hex::encode(Sha256::digest(b"sk-secret"));
        let text = format!(
            r#"
[profiles.default.categories]
hate = {{ threshold = 0.4 }}
[profiles.by-key]
api_key_sha256 = ["{key_hash}"]
[profiles.by-tenant]
tenants = ["acme"]
[profiles.anthropic]
routes = ["/v1"]
[profiles.messages]
routes = ["/v1/messages"]
"#
        );
        Profiles::build(&Config::parse(&text, "test").expect("config")).expect("profiles")
    }

    fn pick<'a>(p: &'a Profiles, path: &str, headers: &[(&'static str, &'static str)]) -> &'a str {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, hyper::header::HeaderValue::from_static(v));
        }
        let sel = Selector {
            path,
            headers: &map,
            tenant_header: "x-shieldgate-tenant",
        };
        &p.select(&sel).name
    }

    #[test]
    fn selection_follows_the_documented_precedence() {
        let p = profiles();
        let key = ("authorization", "Bearer sk-secret");
        let tenant = ("x-shieldgate-tenant", "acme");
        assert_eq!(pick(&p, "/v1/messages", &[key, tenant]), "by-key");
        assert_eq!(
            pick(&p, "/v1/messages", &[("x-api-key", "sk-secret")]),
            "by-key"
        );
        assert_eq!(
            pick(&p, "/v1/messages", &[tenant, ("x-api-key", "other")]),
            "by-tenant"
        );
        assert_eq!(pick(&p, "/v1/messages", &[]), "messages");
        assert_eq!(pick(&p, "/v1/chat/completions", &[]), "anthropic");
        assert_eq!(pick(&p, "/other", &[]), "default");
    }

    #[test]
    fn categories_set_policies_thresholds_and_actions() {
        let p = profiles();
        let d = p.default_profile();
        assert_eq!(d.policies.len(), 1);
        assert_eq!(
            (d.policies[0].id.as_str(), d.policies[0].threshold),
            ("hate", 0.4)
        );
        assert_eq!(d.actions, [Action::Block]);
        let all = pick(&p, "/other", &[("x-shieldgate-tenant", "acme")]);
        assert_eq!(all, "by-tenant");
        let e = Profiles::build(
            &Config::parse("[profiles.x.categories]\nnope = {}\n", "t").expect("parses"),
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn injection_categories_need_the_classifier_and_read_their_own_texts() {
        let e = Profiles::build(
            &Config::parse("[profiles.default.categories]\ninjection = {}\n", "t").expect("parses"),
        )
        .expect_err("no classifier");
        assert!(e.to_string().contains("set [injection] model"), "{e}");
        let with = "[injection]\nmodel = \"synthetic:22m\"\n";
        let profiles = Profiles::build(&Config::parse(with, "t").expect("parses")).expect("builds");
        let ids = |policies: &[Policy]| -> Vec<String> {
            policies.iter().map(|p| p.id.clone()).collect()
        };
        let d = profiles.default_profile();
        let harms = ["dangerous", "harassment", "hate", "sexual"];
        assert_eq!(
            ids(&d.policies),
            [&harms[..], &["injection", "indirect_injection"]].concat()
        );
        assert_eq!(
            ids(&d.for_user_turns),
            [&harms[..], &["injection"]].concat()
        );
        assert_eq!(ids(&d.for_other_texts), harms);
        assert_eq!(ids(&d.for_indirect), ["indirect_injection"]);
        assert_ne!(
            profiles.version,
            Profiles::build(&Config::default()).expect("a").version
        );
        let only = format!(
            "{with}[profiles.default.categories]\nindirect_injection = {{ threshold = 0.9 }}\n"
        );
        let profiles =
            Profiles::build(&Config::parse(&only, "t").expect("parses")).expect("builds");
        let d = profiles.default_profile();
        assert!(d.for_user_turns.is_empty() && d.for_other_texts.is_empty());
        assert_eq!(d.for_indirect[0].threshold, 0.9);
        let e = PolicySet::builtin()
            .select(&["indirect_injection".into()])
            .expect_err("not without the classifier");
        assert!(e.to_string().contains("[injection] model"), "{e}");
    }

    #[test]
    fn the_version_changes_with_a_threshold() {
        let a = Profiles::build(&Config::default()).expect("a").version;
        let b = Profiles::build(
            &Config::parse(
                "[profiles.default.categories]\nhate = { threshold = 0.3 }\n",
                "t",
            )
            .expect("parses"),
        )
        .expect("b")
        .version;
        assert_ne!(a, b);
        assert_eq!(a, Profiles::build(&Config::default()).expect("a").version);
    }
}
