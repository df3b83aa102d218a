//! Masking: each finding replaced by a typed placeholder (`[EMAIL_1]`), the same value by the
//! same placeholder for as long as one [`Masker`] lives (one request and its answer), and the
//! placeholders restorable to what they hid.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use super::{find, Finding, Kind};

static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[[A-Z_]+_[0-9]+\]").expect("the placeholder pattern is valid"));

/// Masks the kinds it was made for, numbering values per kind.
#[derive(Debug, Default, Clone)]
pub struct Masker {
    kinds: Vec<Kind>,
    numbers: HashMap<(Kind, String), String>,
    next: BTreeMap<Kind, usize>,
    originals: HashMap<String, String>,
    restorable: HashMap<String, String>,
    counts: BTreeMap<Kind, usize>,
}

impl Masker {
    /// A masker for `kinds` (the others are left as they are).
    pub fn new(kinds: &[Kind]) -> Self {
        Self {
            kinds: kinds.to_vec(),
            ..Self::default()
        }
    }

    /// The kinds it masks.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Masks `kinds` from now on (an answer's own kinds after its request's), numbering on.
    pub fn set_kinds(&mut self, kinds: &[Kind]) {
        self.kinds = kinds.to_vec();
    }

    /// `text` with every finding masked; `None` when there was nothing to mask.
    pub fn mask(&mut self, text: &str) -> Option<String> {
        let findings = find(text, &self.kinds);
        (!findings.is_empty()).then(|| self.replace(text, &findings))
    }

    /// `text` with `findings` (in order, not overlapping, within `text`) replaced by their
    /// placeholders.
    pub(super) fn replace(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            out.push_str(&text[at..f.range.start]);
            out.push_str(&self.placeholder(f.kind, &text[f.range.clone()]));
            at = f.range.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// The placeholder for one value, the same for the same value (cards, IBANs and numbers
    /// compared without their spacing, e-mail addresses without case).
    fn placeholder(&mut self, kind: Kind, value: &str) -> String {
        *self.counts.entry(kind).or_default() += 1;
        let key = (kind, normalized(kind, value));
        if let Some(p) = self.numbers.get(&key) {
            return p.clone();
        }
        let n = self.next.entry(kind).or_default();
        *n += 1;
        let placeholder = format!("[{}_{n}]", kind.name().to_ascii_uppercase());
        self.numbers.insert(key, placeholder.clone());
        self.originals
            .insert(placeholder.clone(), value.to_string());
        placeholder
    }

    /// Makes the placeholders given so far (a request's) restorable by [`Masker::restore`];
    /// those given later (an answer's own) never are.
    pub fn keep_for_restore(&mut self) {
        self.restorable = self.originals.clone();
    }

    /// Whether any placeholder is restorable.
    pub fn restores(&self) -> bool {
        !self.restorable.is_empty()
    }

    /// `text` with the restorable placeholders put back to the values they hid (others, and
    /// bracketed words that only look like one, are left as they are); `None` when there was
    /// none.
    pub fn restore(&self, text: &str) -> Option<String> {
        let restorable = |m: &regex::Match<'_>| self.restorable.contains_key(m.as_str());
        if self.restorable.is_empty() || !PLACEHOLDER.find_iter(text).any(|m| restorable(&m)) {
            return None;
        }
        let restored = PLACEHOLDER.replace_all(text, |c: &regex::Captures<'_>| {
            let p = &c[0];
            self.restorable
                .get(p)
                .cloned()
                .unwrap_or_else(|| p.to_string())
        });
        Some(restored.into_owned())
    }

    /// How many values of each kind were masked (each occurrence counts).
    pub fn counts(&self) -> &BTreeMap<Kind, usize> {
        &self.counts
    }
}

fn normalized(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Card | Kind::Iban | Kind::Phone | Kind::Ssn => value
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '+')
            .collect(),
        Kind::Email => value.to_lowercase(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::every_kind;

    #[test]
    fn the_same_value_gets_the_same_placeholder_and_counts_each_time() {
        let mut masker = Masker::new(&every_kind());
        let first = masker
            .mask("Write to Jane@Example.com or jane@example.com; card 4111 1111 1111 1111.")
            .expect("masked");
        assert_eq!(first, "Write to [EMAIL_1] or [EMAIL_1]; card [CARD_1].");
        let second = masker
            .mask("Also bob@example.org, and 4111111111111111 again.")
            .expect("masked");
        assert_eq!(second, "Also [EMAIL_2], and [CARD_1] again.");
        assert_eq!(masker.counts()[&Kind::Email], 3);
        assert_eq!(masker.counts()[&Kind::Card], 2);
        assert_eq!(masker.mask("nothing here"), None);
    }

    #[test]
    fn only_the_requests_placeholders_are_restored() {
        let mut masker = Masker::new(&[Kind::Email]);
        let masked = masker.mask("from ana@example.com").expect("masked");
        let answer = format!("I will write to {} and [EMAIL_9] and [NOT_A]", &masked[5..]);
        assert_eq!(
            masker.restore(&answer),
            None,
            "nothing kept for restoring yet"
        );
        masker.keep_for_restore();
        let own = masker.mask("and bo@example.com").expect("masked");
        assert_eq!(
            masker.restore(&format!("{answer} {own}")).as_deref(),
            Some("I will write to ana@example.com and [EMAIL_9] and [NOT_A] and [EMAIL_2]")
        );
        assert_eq!(
            masker.restore("no placeholder [EMAIL_2] of the request's"),
            None
        );
    }

    #[test]
    fn kinds_not_asked_for_stay() {
        let mut masker = Masker::new(&[Kind::Card]);
        assert_eq!(
            masker.mask("a@b.example 4111111111111111").as_deref(),
            Some("a@b.example [CARD_1]")
        );
    }

    #[test]
    fn masked_json_string_stays_valid_json() {
        let mut masker = Masker::new(&every_kind());
        let arguments = r#"{"to":"jane@example.com","card":"4111-1111-1111-1111","note":"ok"}"#;
        let masked = masker.mask(arguments).expect("masked");
        let value: serde_json::Value = serde_json::from_str(&masked).expect("still JSON");
        assert_eq!(value["to"], "[EMAIL_1]");
        assert_eq!(value["card"], "[CARD_1]");
    }
}
