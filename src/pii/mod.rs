//! Personal data and secrets in text: recognizers that validate what they match (checksums,
//! number plans, token structure), and masking with typed placeholders, for whole texts and
//! for text that arrives in pieces (a streamed answer).
//!
//! A leaf like `policy`: the gateway, `score`, `audit` and `/v1/moderations` use it; it knows
//! nothing about protocols.

mod mask;
mod recognizers;
mod stream;

use std::collections::BTreeMap;
use std::ops::Range;

pub use mask::Masker;
pub use stream::StreamMasker;

/// What a recognizer finds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// A private-key block (`-----BEGIN … PRIVATE KEY-----` to its `END` line).
    PrivateKey,
    /// A JSON Web Token (three base64url parts, the first a JSON header with `alg`).
    Jwt,
    /// A cloud access-key id (AWS `AKIA…`/`ASIA…`, Google `AIza…`).
    CloudKey,
    /// An API key with a well-known prefix (OpenAI, Anthropic, GitHub, GitLab, Slack, Stripe,
    /// Hugging Face).
    ApiKey,
    /// The token after `Bearer` (as in an `Authorization` header).
    BearerToken,
    /// An IBAN: the country's length and a valid mod-97 check.
    Iban,
    /// A payment card number: 13–19 digits, Luhn-valid, with a card network's prefix.
    Card,
    /// A US social security number written `AAA-GG-SSSS` (or with spaces), in an issued range.
    Ssn,
    /// A phone number: E.164 (`+` and 8–15 digits) or a national form with separators.
    Phone,
    /// An e-mail address.
    Email,
    /// An IPv4 or IPv6 address.
    Ip,
}

impl Kind {
    /// Its name in config, metrics and reports (`private_key`, `email`, …).
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// One match: what it is and where, as byte offsets into the text (on character boundaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Where.
    pub range: Range<usize>,
}

/// The matches of the `kinds` asked for in `text`, in order, none overlapping (where two would
/// overlap, the one found by the earlier kind in [`Kind`]'s order wins: a card number inside a
/// private key is part of the key).
pub fn find(text: &str, kinds: &[Kind]) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    let mut ordered = kinds.to_vec();
    ordered.sort();
    ordered.dedup();
    for kind in ordered {
        for range in recognizers::matches(kind, text) {
            let overlaps = found
                .iter()
                .any(|f| f.range.start < range.end && range.start < f.range.end);
            if !overlaps {
                found.push(Finding { kind, range });
            }
        }
    }
    found.sort_by_key(|f| f.range.start);
    found
}

/// How often each of `kinds` occurs in `texts`.
pub fn count<'t>(
    texts: impl IntoIterator<Item = &'t str>,
    kinds: &[Kind],
) -> BTreeMap<Kind, usize> {
    let mut counts = BTreeMap::new();
    for text in texts {
        for f in find(text, kinds) {
            *counts.entry(f.kind).or_default() += 1;
        }
    }
    counts
}

/// How often each of `kinds` occurs in the JSON strings at `spans` of `body`.
pub fn count_json_strings(
    body: &[u8],
    spans: &[Range<usize>],
    kinds: &[Kind],
) -> BTreeMap<Kind, usize> {
    let texts: Vec<String> = spans
        .iter()
        .filter_map(|span| body.get(span.clone()))
        .filter_map(|token| serde_json::from_slice::<String>(token).ok())
        .collect();
    count(texts.iter().map(String::as_str), kinds)
}

/// `body` (JSON) with the string tokens at `spans` (in order, not overlapping, each a whole
/// string with its quotes) rewritten by `rewrite` (which gives `None` to keep a text), every
/// other byte as it was; `None` when nothing changed. A span that is not a JSON string is
/// left as it is.
pub fn rewrite_json_strings(
    body: &[u8],
    spans: &[Range<usize>],
    mut rewrite: impl FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for span in spans {
        let Some(token) = body.get(span.clone()) else {
            continue;
        };
        let Ok(text) = serde_json::from_slice::<String>(token) else {
            continue;
        };
        if let Some(new) = rewrite(&text) {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(serde_json::Value::String(new).to_string().as_bytes());
            at = span.end;
        }
    }
    (at > 0).then(|| {
        out.extend_from_slice(&body[at..]);
        out
    })
}

/// [`rewrite_json_strings`] with the masker's kinds masked.
pub fn mask_json_strings(
    body: &[u8],
    spans: &[Range<usize>],
    masker: &mut Masker,
) -> Option<Vec<u8>> {
    rewrite_json_strings(body, spans, |text| masker.mask(text))
}

/// Every kind, in precedence order.
pub fn every_kind() -> Vec<Kind> {
    use strum::IntoEnumIterator;
    Kind::iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_in(text: &str) -> Vec<(Kind, &str)> {
        find(text, &every_kind())
            .into_iter()
            .map(|f| (f.kind, &text[f.range]))
            .collect()
    }

    #[test]
    fn each_kind_is_found_where_it_is() {
        let text =
            "Mail jane.doe@example.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111, \
                    IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, host 192.168.1.20, \
                    key AKIAIOSFODNN7EXAMPLE, token sk-proj-abc123def456ghi789jkl0mn.";
        assert_eq!(
            kinds_in(text),
            [
                (Kind::Email, "jane.doe@example.co.uk"),
                (Kind::Phone, "+44 20 7946 0958"),
                (Kind::Card, "4111 1111 1111 1111"),
                (Kind::Iban, "GB82 WEST 1234 5698 7654 32"),
                (Kind::Ssn, "123-45-6789"),
                (Kind::Ip, "192.168.1.20"),
                (Kind::CloudKey, "AKIAIOSFODNN7EXAMPLE"),
                (Kind::ApiKey, "sk-proj-abc123def456ghi789jkl0mn"),
            ]
        );
    }

    #[test]
    fn only_the_kinds_asked_for_are_found() {
        let text = "a@b.example and 4111111111111111";
        let found = find(text, &[Kind::Card]);
        assert_eq!(found.len(), 1);
        assert_eq!(&text[found[0].range.clone()], "4111111111111111");
    }

    #[test]
    fn a_match_inside_a_secret_is_part_of_the_secret() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n4111111111111111\n-----END RSA PRIVATE KEY-----";
        let text = format!("here: {key} done");
        assert_eq!(kinds_in(&text), [(Kind::PrivateKey, key)]);
    }

    #[test]
    fn offsets_are_character_boundaries_in_any_text() {
        let samples = [
            "联系我jane@example.com谢谢",
            "Kártya: ４１１１ １１１１ １１１１ １１１１ — köszönöm",
            "📞+1 (415) 555-0100📞",
            "IP::1 and fe80::1ff:fe23:4567:890a%eth0 ✓",
            "\u{0}\u{7f}é\u{10ffff}",
        ];
        for text in samples {
            for f in find(text, &every_kind()) {
                assert!(text.is_char_boundary(f.range.start), "{text}");
                assert!(text.is_char_boundary(f.range.end), "{text}");
            }
        }
    }
}
