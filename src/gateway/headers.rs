//! Decision headers on every moderated response, so flag and shadow modes can be observed
//! without reading bodies. What they reveal follows `[proxy] reveal`.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Action, Reveal};

use super::decision::Decision;
use super::error::Unchecked;

/// The overall action.
pub const ACTION: HeaderName = HeaderName::from_static("x-shieldgate-action");
/// Violated `block` and `flag` categories.
pub const CATEGORIES: HeaderName = HeaderName::from_static("x-shieldgate-categories");
/// Violated `shadow` categories (would have been blocked).
pub const SHADOW: HeaderName = HeaderName::from_static("x-shieldgate-shadow");
/// Scores of every category (reveal = scores).
pub const SCORES: HeaderName = HeaderName::from_static("x-shieldgate-scores");
/// Why a check could not be made.
pub const EVALUATION_ERROR: HeaderName = HeaderName::from_static("x-shieldgate-evaluation-error");
/// How many parts could not be scanned.
pub const UNSCANNED: HeaderName = HeaderName::from_static("x-shieldgate-unscanned");
/// Personal data and secrets found: `direction:kind=action:count`, comma-separated.
pub const PII: HeaderName = HeaderName::from_static("x-shieldgate-pii");
/// The policy-set version.
pub const POLICY_VERSION: HeaderName = HeaderName::from_static("x-shieldgate-policy-version");
/// The profile applied.
pub const PROFILE: HeaderName = HeaderName::from_static("x-shieldgate-profile");
/// The request id (also in the decision log).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-shieldgate-request-id");

/// What the headers describe.
pub struct Annotation<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The policy-set version.
    pub policy_version: &'a str,
    /// The checks made (input, then output when there was one).
    pub decisions: &'a [&'a Decision],
    /// What may be revealed.
    pub reveal: Reveal,
}

/// Sets the decision headers.
pub fn annotate(headers: &mut HeaderMap, a: &Annotation<'_>) {
    // Room for the usual four at once, instead of growing the map one header at a time.
    headers.reserve(4);
    if let Some(action) = a.decisions.iter().map(|d| d.disposition).max() {
        headers.insert(ACTION, HeaderValue::from_static(action.as_str()));
    }
    let mut set = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    set(REQUEST_ID, a.request_id.to_string());
    set(POLICY_VERSION, a.policy_version.to_string());
    let Some(first) = a.decisions.first() else {
        return;
    };
    set(PROFILE, first.profile.clone());
    let errors: Vec<&str> = a
        .decisions
        .iter()
        .filter_map(|d| d.evaluation_error.map(Unchecked::error_type))
        .collect();
    if !errors.is_empty() {
        set(EVALUATION_ERROR, errors.join(","));
    }
    let unscanned: usize = a.decisions.iter().map(|d| d.unscanned.len()).sum();
    if unscanned > 0 {
        set(UNSCANNED, unscanned.to_string());
    }
    if a.reveal == Reveal::None {
        return;
    }
    let pii: Vec<String> = a
        .decisions
        .iter()
        .flat_map(|d| d.pii.iter().map(move |(kind, f)| (d.direction, kind, f)))
        .map(|(direction, kind, f)| {
            let (kind, action) = (kind.name(), f.action.as_str());
            format!("{}:{kind}={action}:{}", direction.as_str(), f.count)
        })
        .collect();
    if !pii.is_empty() {
        set(PII, pii.join(","));
    }
    let list = |action: Action| {
        let mut ids: Vec<&str> = a
            .decisions
            .iter()
            .flat_map(|d| d.violated(action))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.join(",")
    };
    let mut categories = list(Action::Block);
    let flagged = list(Action::Flag);
    if !flagged.is_empty() {
        if !categories.is_empty() {
            categories.push(',');
        }
        categories.push_str(&flagged);
    }
    if !categories.is_empty() {
        set(CATEGORIES, categories);
    }
    let shadow = list(Action::Shadow);
    if !shadow.is_empty() {
        set(SHADOW, shadow);
    }
    if a.reveal == Reveal::Scores {
        let scores: Vec<String> = a
            .decisions
            .iter()
            .flat_map(|d| {
                d.categories
                    .iter()
                    .map(move |c| format!("{}:{}={:.4}", d.direction.as_str(), c.id, c.p_yes))
            })
            .collect();
        set(SCORES, scores.join(","));
    }
}
