//! Masking text that arrives in pieces (a streamed answer): each piece gives back what can no
//! longer be part of a match, masked; the rest waits for the next piece. What waits is as
//! little as a match can span: the last [`HOLD`] bytes (spaced numbers, placeholders), the
//! trailing run without whitespace (addresses, tokens, keys; up to [`MAX_RUN`] bytes) and an
//! unterminated private-key block (up to [`MAX_BLOCK`] bytes).

use super::{find, Finding, Masker};

/// Bytes always held back: longer than any spaced match (a 19-digit card in full-width
/// digits with separators is 75 bytes) and any placeholder.
pub const HOLD: usize = 96;
/// The longest run without whitespace held back whole; a longer one is passed on, masked as
/// far as it was recognized.
pub const MAX_RUN: usize = 4096;
/// The longest private-key block held back waiting for its `END` line.
pub const MAX_BLOCK: usize = 16 * 1024;
/// Bytes of text already passed on kept as context, so that a match's surroundings (the
/// `Bearer` before a token, the digit before a number) are seen.
const CONTEXT: usize = 64;

/// One stream of text (one choice of an answer). The [`Masker`] is passed in so that one
/// request's placeholders stay consistent across its input, its choices and its pieces.
#[derive(Debug, Default)]
pub struct StreamMasker {
    context: String,
    pending: String,
}

impl StreamMasker {
    /// Takes the next piece; gives back the masked text that is now final (may be empty).
    pub fn push(&mut self, masker: &mut Masker, piece: &str) -> String {
        self.pending.push_str(piece);
        self.step(masker, false)
    }

    /// The end of the stream: everything still held back, masked.
    pub fn finish(&mut self, masker: &mut Masker) -> String {
        self.step(masker, true)
    }

    /// Passes on the final part of `pending` (all of it at the end), masked and with the
    /// request's placeholders restored.
    fn step(&mut self, masker: &mut Masker, end: bool) -> String {
        let offset = self.context.len();
        let text = [self.context.as_str(), &self.pending].concat();
        // Matches are found with the context before them; one that began in text already
        // passed on is masked for the part still here.
        let findings: Vec<Finding> = find(&text, masker.kinds())
            .into_iter()
            .filter(|f| f.range.end > offset)
            .map(|f| Finding {
                kind: f.kind,
                range: f.range.start.max(offset) - offset..f.range.end - offset,
            })
            .collect();
        let cut = if end {
            self.pending.len()
        } else {
            self.cut(&findings)
        };
        if cut == 0 {
            return String::new();
        }
        let done: Vec<Finding> = findings
            .into_iter()
            .filter(|f| f.range.end <= cut)
            .collect();
        let out = masker.replace(&self.pending[..cut], &done);
        let passed = &text[..offset + cut];
        let mut keep = passed.len().saturating_sub(CONTEXT);
        while !passed.is_char_boundary(keep) {
            keep += 1;
        }
        self.context = passed[keep..].to_string();
        self.pending.drain(..cut);
        masker.restore(&out).unwrap_or(out)
    }

    /// Where the final part of `pending` ends, given the matches in it.
    fn cut(&self, findings: &[Finding]) -> usize {
        let pending = &self.pending;
        let len = pending.len();
        let mut cut = len.saturating_sub(HOLD);
        let run = pending
            .char_indices()
            .rfind(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        if len - run <= MAX_RUN {
            cut = cut.min(run);
        }
        if let Some(begin) = pending.rfind("-----BEGIN") {
            if !pending[begin..].contains("-----END") && len - begin <= MAX_BLOCK {
                cut = cut.min(begin);
            }
        }
        while !pending.is_char_boundary(cut) {
            cut -= 1;
        }
        for f in findings {
            if f.range.start < cut && cut < f.range.end {
                cut = f.range.start;
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::{every_kind, Kind};

    /// Streams `text` in pieces of `size` characters; returns what came out.
    fn stream(text: &str, size: usize) -> String {
        let mut masker = Masker::new(&every_kind());
        let mut s = StreamMasker::default();
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        for piece in chars.chunks(size) {
            out += &s.push(&mut masker, &piece.iter().collect::<String>());
        }
        out + &s.finish(&mut masker)
    }

    #[test]
    fn pieces_of_any_size_mask_as_the_whole_text_does() {
        let text = "Card ４１１１ １１１１ １１１１ １１１１ and 5555-5555-5555-4444, mail jane.doe@example.com, \
                    Authorization: Bearer 4f9a0c2b7d1e8f3a6b5c9d8e, call +44 20 7946 0958.\n\
                    -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n\
                    IBAN DE89 3704 0044 0532 0130 00 — 谢谢 a@b.io";
        let whole = Masker::new(&every_kind()).mask(text).expect("masked");
        assert!(!whole.contains("1111") && !whole.contains("jane") && !whole.contains("MIIE"));
        for size in [1, 2, 3, 5, 7, 16, 64, 1000] {
            assert_eq!(stream(text, size), whole, "pieces of {size}");
        }
    }

    #[test]
    fn text_without_matches_passes_with_little_delay() {
        let mut masker = Masker::new(&every_kind());
        let mut s = StreamMasker::default();
        let sentence = "The quick brown fox jumps over the lazy dog. ".repeat(10);
        let out = s.push(&mut masker, &sentence);
        assert!(
            out.len() >= sentence.len() - HOLD,
            "held {}",
            sentence.len() - out.len()
        );
        assert_eq!(out + &s.finish(&mut masker), sentence);
        assert_eq!(
            s.finish(&mut masker),
            "",
            "nothing is held back after the end"
        );
    }

    #[test]
    fn placeholders_split_across_pieces_are_restored() {
        let mut masker = Masker::new(&[Kind::Email]);
        masker.mask("me: ana@example.com");
        masker.keep_for_restore();
        let mut s = StreamMasker::default();
        let mut out = String::new();
        for piece in ["Dear [EMA", "IL_", "1], thanks"] {
            out += &s.push(&mut masker, piece);
        }
        out += &s.finish(&mut masker);
        assert_eq!(out, "Dear ana@example.com, thanks");
    }
}
