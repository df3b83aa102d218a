//! Decisions: a check's scores compared with the profile's thresholds and turned into one
//! disposition (pass, flag, block), or the record of a check that could not be made.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Action, FailMode, PiiAction};
use crate::pii::Kind;
use crate::scorer::RequestScores;

use crate::policy::profiles::Profile;

use super::error::Unchecked;

/// Which side of the exchange was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The request (prompt-only template).
    Input,
    /// The response (prompt-response template).
    Output,
}

impl Direction {
    /// The label used in headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// What the gateway does with the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Nothing crossed a threshold (or only shadow categories did).
    Pass,
    /// A `flag` category crossed its threshold: passed and annotated.
    Flag,
    /// A `block` category crossed its threshold.
    Block,
    /// The check could not be made and the direction fails closed (503).
    Unavailable,
}

impl Disposition {
    /// The label used in headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Flag => "flag",
            Self::Block => "block",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One category's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryResult {
    /// The policy id.
    pub id: String,
    /// The highest P(Yes) over the checked parts; calibrated where the config calibrates the
    /// category.
    pub p_yes: f64,
    /// The model's own P(Yes) before calibration, for calibrated categories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_p_yes: Option<f64>,
    /// The threshold in force.
    pub threshold: f64,
    /// The configured action.
    pub action: Action,
    /// `p_yes >= threshold`.
    pub violated: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Input or output.
    pub direction: Direction,
    /// The profile applied.
    pub profile: String,
    /// What happens.
    pub disposition: Disposition,
    /// Every scored category.
    pub categories: Vec<CategoryResult>,
    /// Parts of the content that could not be scanned (images, audio, ...).
    pub unscanned: Vec<String>,
    /// Why the check could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation_error: Option<Unchecked>,
    /// Personal data and secrets found in the checked side, per kind (never the values).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pii: BTreeMap<Kind, PiiFound>,
    /// With conversation context on: the earlier turns the classifier saw before the latest
    /// checked turn (fewer than asked when the conversation is shorter or they did not fit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_turns: Option<usize>,
    /// For each checked part (one per choice on output): whether it alone must be blocked.
    #[serde(skip)]
    pub parts_blocked: Vec<bool>,
}

/// How often one kind of personal data or secret was found, and what was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PiiFound {
    /// Occurrences.
    pub count: usize,
    /// The profile's action for the kind.
    pub action: PiiAction,
}

impl Decision {
    /// Whether the request or response must not go on: blocked, or unchecked and failing
    /// closed.
    pub fn stops(&self) -> bool {
        matches!(
            self.disposition,
            Disposition::Block | Disposition::Unavailable
        )
    }

    /// A block without category detail: the smallest decision a protocol's block shape can be
    /// shown with (tests, fuzzing).
    pub fn bare_block(direction: Direction) -> Self {
        Self {
            direction,
            profile: "default".into(),
            disposition: Disposition::Block,
            categories: Vec::new(),
            unscanned: Vec::new(),
            evaluation_error: None,
            pii: BTreeMap::new(),
            context_turns: None,
            parts_blocked: Vec::new(),
        }
    }

    /// The input side's personal data and secrets alone (no check was made): a block when a
    /// kind found is blocked, else a pass.
    pub fn pii_only(
        direction: Direction,
        profile: &Profile,
        pii: BTreeMap<Kind, PiiFound>,
    ) -> Self {
        let blocked = pii.values().any(|f| f.action == PiiAction::Block);
        Self {
            disposition: if blocked {
                Disposition::Block
            } else {
                Disposition::Pass
            },
            profile: profile.name.clone(),
            pii,
            ..Self::bare_block(direction)
        }
    }

    /// Compares the scores of each checked part with the profile: every category the direction
    /// reads (answers are not scored for injection) at the highest score any part has for it.
    pub fn from_scores(direction: Direction, profile: &Profile, parts: &[RequestScores]) -> Self {
        let judged: Vec<(&crate::policy::Policy, CategoryResult)> = profile
            .policies
            .iter()
            .zip(&profile.actions)
            .filter(|(policy, _)| direction == Direction::Input || policy.reads_answers())
            .map(|(policy, &action)| {
                let raw = parts
                    .iter()
                    .flat_map(|s| &s.scores)
                    .filter(|s| s.id == policy.id)
                    .map(|s| s.p_yes)
                    .fold(0.0, f64::max);
                // Calibrations are non-decreasing: the highest raw score is the highest
                // calibrated one.
                let judged = policy.judge(raw);
                let result = CategoryResult {
                    id: policy.id.clone(),
                    p_yes: judged.p_yes,
                    raw_p_yes: judged.raw_p_yes,
                    threshold: policy.threshold,
                    action,
                    violated: judged.violated,
                };
                (policy, result)
            })
            .collect();
        // A part is blocked by its own score in a blocking category.
        let blocks = |score: &crate::scorer::PolicyScore| {
            judged.iter().any(|(policy, c)| {
                c.id == score.id && c.action == Action::Block && policy.judge(score.p_yes).violated
            })
        };
        let parts_blocked = parts.iter().map(|s| s.scores.iter().any(blocks)).collect();
        let categories: Vec<CategoryResult> = judged.into_iter().map(|(_, c)| c).collect();
        let worst = |action| categories.iter().any(|c| c.violated && c.action == action);
        let disposition = if worst(Action::Block) {
            Disposition::Block
        } else if worst(Action::Flag) {
            Disposition::Flag
        } else {
            Disposition::Pass
        };
        Self {
            direction,
            profile: profile.name.clone(),
            disposition,
            categories,
            unscanned: Vec::new(),
            evaluation_error: None,
            pii: BTreeMap::new(),
            context_turns: None,
            parts_blocked,
        }
    }

    /// A check that could not be made: passes (fail-open) or refuses (fail-closed).
    pub fn failed(
        direction: Direction,
        profile: &Profile,
        error: Unchecked,
        mode: FailMode,
    ) -> Self {
        Self {
            direction,
            profile: profile.name.clone(),
            disposition: match mode {
                FailMode::Open => Disposition::Pass,
                FailMode::Closed => Disposition::Unavailable,
            },
            categories: Vec::new(),
            unscanned: Vec::new(),
            evaluation_error: Some(error),
            pii: BTreeMap::new(),
            context_turns: None,
            parts_blocked: Vec::new(),
        }
    }

    /// Ids of the violated categories with this action.
    pub fn violated(&self, action: Action) -> Vec<&str> {
        self.categories
            .iter()
            .filter(|c| c.violated && c.action == action)
            .map(|c| c.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::profiles::Profiles;
    use crate::scorer::PolicyScore;

    fn scores(values: &[(&str, f64)]) -> RequestScores {
        RequestScores {
            scores: values
                .iter()
                .map(|(id, p)| PolicyScore {
                    id: (*id).into(),
                    p_yes: *p,
                    yes_logit: 0.0,
                    no_logit: 0.0,
                    tokens: 1,
                })
                .collect(),
            truncated: None,
        }
    }

    fn profile() -> Profile {
        let config = Config::parse(
            r#"
[profiles.default.categories]
hate = { threshold = 0.5, action = "block" }
harassment = { threshold = 0.3, action = "flag" }
sexual = { threshold = 0.2, action = "shadow" }
"#,
            "t",
        )
        .expect("config");
        Profiles::build(&config)
            .expect("profiles")
            .default_profile()
            .as_ref()
            .clone()
    }

    #[test]
    fn the_strongest_violated_action_wins_and_parts_are_judged_alone() {
        let p = profile();
        // Policies are in the profile's (sorted) order: harassment, hate, sexual.
        let a = scores(&[("harassment", 0.1), ("hate", 0.6), ("sexual", 0.0)]);
        let b = scores(&[("harassment", 0.4), ("hate", 0.2), ("sexual", 0.9)]);
        let d = Decision::from_scores(Direction::Output, &p, &[a.clone(), b.clone()]);
        assert_eq!(d.disposition, Disposition::Block);
        assert_eq!(d.parts_blocked, [true, false]);
        assert_eq!(d.violated(Action::Flag), ["harassment"]);
        assert_eq!(d.violated(Action::Shadow), ["sexual"]);
        assert_eq!(d.categories[1].p_yes, 0.6);
        let d = Decision::from_scores(Direction::Input, &p, &[b]);
        assert_eq!(d.disposition, Disposition::Flag);
        let quiet = scores(&[("harassment", 0.0), ("hate", 0.0), ("sexual", 0.5)]);
        let d = Decision::from_scores(Direction::Input, &p, &[quiet]);
        assert_eq!(d.disposition, Disposition::Pass, "shadow only records");
        let d = Decision::from_scores(Direction::Input, &p, &[]);
        assert_eq!(d.disposition, Disposition::Pass);
    }

    #[test]
    fn scores_meet_their_categories_by_id_and_answers_have_no_injection_category() {
        let config = Config::parse(
            "[injection]\nmodel = \"synthetic:22m\"\n[profiles.default.categories]\n\
             hate = {}\ninjection = { action = \"flag\" }\nindirect_injection = {}\n",
            "t",
        )
        .expect("config");
        let profiles = Profiles::build(&config).expect("profiles");
        let p = profiles.default_profile();
        // A user turn scored for hate and injection, a tool result for indirect injection.
        let user = scores(&[("hate", 0.1), ("injection", 0.7)]);
        let tool = scores(&[("indirect_injection", 0.2)]);
        let d = Decision::from_scores(Direction::Input, p, &[user, tool.clone()]);
        let got: Vec<(&str, f64)> = d
            .categories
            .iter()
            .map(|c| (c.id.as_str(), c.p_yes))
            .collect();
        assert_eq!(
            got,
            [
                ("hate", 0.1),
                ("indirect_injection", 0.2),
                ("injection", 0.7)
            ]
        );
        assert_eq!(d.disposition, Disposition::Flag);
        let blocked = scores(&[("indirect_injection", 0.6)]);
        let d = Decision::from_scores(Direction::Input, p, &[tool, blocked]);
        assert_eq!(d.disposition, Disposition::Block);
        assert_eq!(d.parts_blocked, [false, true]);
        let d = Decision::from_scores(Direction::Output, p, &[scores(&[("hate", 0.9)])]);
        let ids: Vec<&str> = d.categories.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["hate"]);
    }

    #[test]
    fn a_failed_check_follows_the_fail_mode() {
        let p = profile();
        let open = Decision::failed(Direction::Input, &p, Unchecked::QueueFull, FailMode::Open);
        assert_eq!(open.disposition, Disposition::Pass);
        assert_eq!(open.evaluation_error, Some(Unchecked::QueueFull));
        let closed = Decision::failed(Direction::Input, &p, Unchecked::QueueFull, FailMode::Closed);
        assert_eq!(closed.disposition, Disposition::Unavailable);
    }
}
