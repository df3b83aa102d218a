//! Personal data and secrets in a request, before it goes upstream: counted, masked with
//! typed placeholders, or refused, per kind as the profile says. Only the texts the protocol's
//! reading found are touched; every other byte of the body is sent as it came.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::{PiiAction, Scan};
use crate::pii::{count_json_strings, mask_json_strings, Kind, Masker};
use crate::policy::profiles::Profile;

use super::decision::{Decision, Direction, PiiFound};
use super::error::RequestError;
use super::protocols::{Adapter, Conversation};
use super::Gateway;

/// A request after the profile's rules: the body to send, what to check in it, and what was
/// found.
pub struct Protected {
    /// The body, masked where a kind is masked.
    pub bytes: Bytes,
    /// What the checks read, from the body as sent.
    pub conversation: Conversation,
    /// What was found, per kind.
    pub found: BTreeMap<Kind, PiiFound>,
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
    let rules = &profile.pii_input;
    let kinds: Vec<Kind> = rules.keys().copied().collect();
    let found: BTreeMap<Kind, PiiFound> = count_json_strings(&bytes, &conversation.texts, &kinds)
        .into_iter()
        .map(|(kind, count)| {
            let action = rules.get(&kind).copied().unwrap_or(PiiAction::Off);
            (kind, PiiFound { count, action })
        })
        .collect();
    for (kind, f) in &found {
        gw.metrics
            .pii_found
            .with_label_values(&[Direction::Input.as_str(), kind.name(), f.action.as_str()])
            .inc_by(f.count as u64);
    }
    let blocked: Vec<&str> = found
        .iter()
        .filter(|(_, f)| f.action == PiiAction::Block)
        .map(|(kind, _)| kind.name())
        .collect();
    if !blocked.is_empty() {
        let decision = Decision::pii_only(profile, found.clone());
        super::check::record(gw, &decision, request_id, adapter.protocol(), &[]);
        return Err(RequestError::PiiBlocked(blocked.join(", ")));
    }
    let masked: Vec<Kind> = found
        .iter()
        .filter(|(_, f)| f.action == PiiAction::Mask)
        .map(|(kind, _)| *kind)
        .collect();
    let rewritten = (!masked.is_empty())
        .then(|| mask_json_strings(&bytes, &conversation.texts, &mut Masker::new(&masked)))
        .flatten();
    let Some(rewritten) = rewritten else {
        return Ok(Protected {
            bytes,
            conversation,
            found,
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
    })
}
