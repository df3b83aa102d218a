//! Personal data and secrets in the tuning data: how often each kind appears in the labelled
//! examples and in the traffic, next to what the profile does with it, so that staff choose
//! between masking, blocking and flagging from the same data they tune thresholds on.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::data::Example;
use crate::config::PiiAction;
use crate::pii::{count, every_kind, Kind};
use crate::policy::profiles::Profile;

/// The kinds found in one item, with their counts.
pub type Found = BTreeMap<Kind, usize>;

/// One kind's share of the data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindShare {
    /// The kind.
    pub kind: Kind,
    /// Labelled examples whose prompt or response holds it.
    pub examples: usize,
    /// Traffic items (audit turns, gateway checks) that held it.
    pub traffic: usize,
    /// `traffic` over every traffic item; absent without traffic.
    pub traffic_share: Option<f64>,
    /// What the profile does with it in requests.
    pub input: PiiAction,
    /// What the profile does with it in answers.
    pub output: PiiAction,
}

impl KindShare {
    /// Its share of the traffic as a percentage (`25.0%`).
    pub fn percent(&self) -> Option<String> {
        self.traffic_share.map(|x| format!("{:.1}%", 100.0 * x))
    }
}

/// The kinds of an audit result (`"pii": {"email": 2}`) or a decision log line
/// (`"pii": {"email": {"count": 2, "action": "mask"}}`); unknown kinds are left out.
pub fn found_in_line(value: &Value) -> Found {
    let Some(map) = value.get("pii").and_then(Value::as_object) else {
        return Found::new();
    };
    map.iter()
        .filter_map(|(name, v)| {
            let kind: Kind = serde_json::from_value(Value::String(name.clone())).ok()?;
            let n = v.as_u64().or_else(|| v.get("count")?.as_u64())?;
            (n > 0).then_some((kind, n as usize))
        })
        .collect()
}

/// Every kind found in the examples (their texts) or the traffic, with its shares.
pub fn shares(examples: &[Example], traffic: &[Found], profile: &Profile) -> Vec<KindShare> {
    let kinds = every_kind();
    let mut in_examples: BTreeMap<Kind, usize> = BTreeMap::new();
    for e in examples {
        let texts = e.prompt.iter().chain(&e.response).map(String::as_str);
        for kind in count(texts, &kinds).into_keys() {
            *in_examples.entry(kind).or_default() += 1;
        }
    }
    let mut in_traffic: BTreeMap<Kind, usize> = BTreeMap::new();
    for kind in traffic.iter().flat_map(BTreeMap::keys) {
        *in_traffic.entry(*kind).or_default() += 1;
    }
    let action = |rules: &BTreeMap<Kind, PiiAction>, kind| rules.get(&kind).copied();
    kinds
        .into_iter()
        .filter(|k| in_examples.contains_key(k) || in_traffic.contains_key(k))
        .map(|kind| {
            let seen = in_traffic.get(&kind).copied().unwrap_or(0);
            KindShare {
                kind,
                examples: in_examples.get(&kind).copied().unwrap_or(0),
                traffic: seen,
                traffic_share: (!traffic.is_empty()).then(|| seen as f64 / traffic.len() as f64),
                input: action(&profile.pii_input, kind).unwrap_or_default(),
                output: action(&profile.pii_output, kind).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::profiles::Profiles;
    use serde_json::json;

    #[test]
    fn both_traffic_shapes_give_their_kinds() {
        let audit = json!({"scores": {}, "pii": {"email": 2, "card": 0, "colour": 1}});
        assert_eq!(found_in_line(&audit), Found::from([(Kind::Email, 2)]));
        let log = json!({"pii": {"card": {"count": 1, "action": "block"}}});
        assert_eq!(found_in_line(&log), Found::from([(Kind::Card, 1)]));
        assert!(found_in_line(&json!({"scores": {}})).is_empty());
    }

    #[test]
    fn shares_count_items_not_occurrences_and_name_the_profiles_actions() {
        let config = Config::parse(
            "[profiles.default.pii.input]\nemail = \"mask\"\n[profiles.default.pii.output]\n\
             card = \"block\"\n",
            "t",
        )
        .expect("config");
        let profiles = Profiles::build(&config).expect("profiles");
        let example = |prompt: &str| Example {
            id: "x".into(),
            prompt: Some(prompt.into()),
            response: None,
            labels: BTreeMap::new(),
            scores: BTreeMap::new(),
            context: Vec::new(),
            origin: (String::new(), 0),
        };
        let examples = [
            example("write to a@example.com or b@example.com"),
            example("nothing here"),
        ];
        let traffic = [
            Found::from([(Kind::Email, 3)]),
            Found::new(),
            Found::from([(Kind::Card, 1), (Kind::Email, 1)]),
            Found::new(),
        ];
        let got = shares(&examples, &traffic, profiles.default_profile());
        let row = |kind| got.iter().find(|s| s.kind == kind).cloned();
        let email = row(Kind::Email).expect("email");
        assert_eq!((email.examples, email.traffic), (1, 2));
        assert_eq!(email.traffic_share, Some(0.5));
        assert_eq!(
            (email.input, email.output),
            (PiiAction::Mask, PiiAction::Off)
        );
        let card = row(Kind::Card).expect("card");
        assert_eq!(
            (card.examples, card.traffic, card.output),
            (0, 1, PiiAction::Block)
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            shares(&examples, &[], profiles.default_profile())[0].traffic_share,
            None
        );
    }
}
