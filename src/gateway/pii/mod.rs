//! Personal data and secrets in a request, before it goes upstream, and in an answer, whole
//! or streamed ([`StreamRewriter`]), before it goes to the client: counted, masked with typed
//! placeholders, or refused (withheld), per kind as the profile says; and the request's
//! placeholders restored in the answer where the profile asks. Only the texts the protocol's
//! reading found are touched; every other byte of a body is sent as it came.

mod stream;

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::{PiiAction, Scan};
use crate::pii::{
    count, count_json_strings, mask_json_strings, rewrite_json_strings, Kind, Masker,
};
use crate::policy::profiles::Profile;

use super::decision::{Decision, Direction, PiiFound};
use super::error::RequestError;
use super::protocols::{Adapter, Conversation};
use super::Gateway;

pub use stream::StreamRewriter;

/// A request after the profile's rules: the body to send, what to check in it, and what was
/// found.
pub struct Protected {
    /// The body, masked where a kind is masked.
    pub bytes: Bytes,
    /// What the checks read, from the body as sent.
    pub conversation: Conversation,
    /// What was found, per kind.
    pub found: BTreeMap<Kind, PiiFound>,
    /// The request's placeholders (restorable when the profile restores), numbering on into
    /// the answer.
    pub masker: Masker,
}

/// Applies the profile's input rules; a kind found that is blocked refuses the request (and is
/// recorded as a block).
pub fn protect_input(
    gw: &Gateway,
    profile: &Profile,
    adapter: &dyn Adapter,
    scan: &[Scan],
    bytes: Bytes,
    conversation: Conversation,
    request_id: &str,
) -> Result<Protected, RequestError> {
    let found = found_in(
        gw,
        &profile.pii_input,
        Direction::Input,
        &bytes,
        &conversation.texts,
    );
    let blocked: Vec<&str> = found
        .iter()
        .filter(|(_, f)| f.action == PiiAction::Block)
        .map(|(kind, _)| kind.name())
        .collect();
    if !blocked.is_empty() {
        let decision = Decision::pii_only(Direction::Input, profile, found.clone());
        super::check::record(gw, &decision, request_id, adapter.protocol(), &[]);
        return Err(RequestError::PiiBlocked(blocked.join(", ")));
    }
    let mut masker = Masker::new(&with_action(&found, &[PiiAction::Mask]));
    let rewritten = match masker.kinds() {
        [] => None,
        _ => mask_json_strings(&bytes, &conversation.texts, &mut masker),
    };
    if profile.pii_restore {
        masker.keep_for_restore();
    }
    let Some(rewritten) = rewritten else {
        return Ok(Protected {
            bytes,
            conversation,
            found,
            masker,
        });
    };
    // The checks read what goes upstream, so no masked value reaches a remote scorer or the
    // decision log's content.
    let conversation = adapter
        .request_conversation(&rewritten, scan)
        .map_err(RequestError::invalid)?;
    Ok(Protected {
        bytes: Bytes::from(rewritten),
        conversation,
        found,
        masker,
    })
}

/// A whole answer after the profile's output rules: the body (masked where a kind is masked,
/// and where it is blocked when `withheld` is false: the output mode withholds nothing) and
/// what was found. Bodies that are not JSON pass as they are (the output check reports them).
pub fn protect_output(
    gw: &Gateway,
    profile: &Profile,
    adapter: &dyn Adapter,
    bytes: Bytes,
    masker: &mut Masker,
    withheld: bool,
) -> (Bytes, BTreeMap<Kind, PiiFound>) {
    if profile.pii_output.is_empty() {
        return (bytes, BTreeMap::new());
    }
    let Some(answer) = adapter.read_answer(&bytes) else {
        return (bytes, BTreeMap::new());
    };
    let found = found_in(
        gw,
        &profile.pii_output,
        Direction::Output,
        &bytes,
        &answer.texts,
    );
    let masked: &[PiiAction] = match withheld {
        true => &[PiiAction::Mask],
        false => &[PiiAction::Mask, PiiAction::Block],
    };
    masker.set_kinds(&with_action(&found, masked));
    let masked = match masker.kinds() {
        [] => None,
        _ => mask_json_strings(&bytes, &answer.texts, masker),
    };
    (masked.map_or(bytes, Bytes::from), found)
}

/// The answer with the request's placeholders put back (when the profile restores them).
pub fn restore(adapter: &dyn Adapter, bytes: Bytes, masker: &Masker) -> Bytes {
    if !masker.restores() {
        return bytes;
    }
    let restored = adapter
        .read_answer(&bytes)
        .and_then(|a| rewrite_json_strings(&bytes, &a.texts, |text| masker.restore(text)));
    restored.map_or(bytes, Bytes::from)
}

/// What `rules` find in the texts at `spans` of `body`, counted in the metrics.
fn found_in(
    gw: &Gateway,
    rules: &BTreeMap<Kind, PiiAction>,
    direction: Direction,
    body: &[u8],
    spans: &[std::ops::Range<usize>],
) -> BTreeMap<Kind, PiiFound> {
    if rules.is_empty() {
        return BTreeMap::new();
    }
    let kinds: Vec<Kind> = rules.keys().copied().collect();
    let found = with_rules(rules, count_json_strings(body, spans, &kinds));
    count_in_metrics(gw, direction, &found);
    found
}

/// What the profile's output rules find in a streamed answer's texts (not yet counted in the
/// metrics: a stream is checked again as it grows).
pub fn found_in_outputs(profile: &Profile, outputs: &[String]) -> BTreeMap<Kind, PiiFound> {
    let rules = &profile.pii_output;
    if rules.is_empty() {
        return BTreeMap::new();
    }
    let kinds: Vec<Kind> = rules.keys().copied().collect();
    with_rules(rules, count(outputs.iter().map(String::as_str), &kinds))
}

/// Counts `found` in the metrics.
pub fn count_in_metrics(gw: &Gateway, direction: Direction, found: &BTreeMap<Kind, PiiFound>) {
    for (kind, f) in found {
        gw.metrics
            .pii_found
            .with_label_values(&[direction.as_str(), kind.name(), f.action.as_str()])
            .inc_by(f.count as u64);
    }
}

/// Counts per kind with the action `rules` give each.
fn with_rules(
    rules: &BTreeMap<Kind, PiiAction>,
    counts: BTreeMap<Kind, usize>,
) -> BTreeMap<Kind, PiiFound> {
    counts
        .into_iter()
        .map(|(kind, count)| {
            let action = rules.get(&kind).copied().unwrap_or(PiiAction::Off);
            (kind, PiiFound { count, action })
        })
        .collect()
}

/// The kinds a streamed answer is masked for: those masked, and those blocked (so that no
/// part of a blocked value is relayed before the check that withholds the rest sees it
/// whole; where the output mode withholds nothing, masking is what a block can do).
pub fn stream_kinds(profile: &Profile) -> Vec<Kind> {
    profile
        .pii_output
        .iter()
        .filter(|(_, a)| matches!(a, PiiAction::Mask | PiiAction::Block))
        .map(|(kind, _)| *kind)
        .collect()
}

/// Whether answers are rewritten: the profile masks or blocks kinds in them, or restores the
/// request's placeholders.
pub fn rewrites_output(profile: &Profile, masker: &Masker) -> bool {
    !stream_kinds(profile).is_empty() || masker.restores()
}

/// The kinds found whose action is one of `actions`.
fn with_action(found: &BTreeMap<Kind, PiiFound>, actions: &[PiiAction]) -> Vec<Kind> {
    found
        .iter()
        .filter(|(_, f)| actions.contains(&f.action))
        .map(|(kind, _)| *kind)
        .collect()
}
