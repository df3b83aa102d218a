//! Explanations: which spans of the judged text (the prompt, or the response when there is one)
//! move P(Yes) most. The text is cut into sentences (long ones into clauses, at most a budget of
//! spans), the text is scored once with each span removed — the variants in one batch — and a
//! span's effect on a policy is P(Yes) with it minus P(Yes) without it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use serde::Serialize;

use super::{RequestScores, Score, ScoreError, ScoreRequest};

/// Spans scored when no budget is given.
pub const DEFAULT_SPANS: usize = 16;

/// A sentence longer than this (in characters) is cut into clauses.
const LONG_SENTENCE: usize = 200;

/// One span and what it does to each policy's P(Yes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanEffect {
    /// Byte offsets in the judged text (UTF-8 boundaries).
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// The span's text, where content may be shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// By policy id: P(Yes) of the whole text minus P(Yes) without this span (positive: the
    /// span raises it).
    pub effect: BTreeMap<String, f64>,
}

impl SpanEffect {
    /// Its largest effect over the policies.
    pub fn strongest(&self) -> f64 {
        self.effect
            .values()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The spans of one verdict, strongest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// Which text the spans are in: `prompt` or `response`.
    pub judged: &'static str,
    /// Every span, by its largest effect, strongest first.
    pub spans: Vec<SpanEffect>,
    /// Texts scored for it (one per span).
    pub spans_scored: usize,
    /// Time it took, in seconds.
    pub seconds: f64,
}

/// Cuts `text` into at most `budget` spans that together cover it: sentences (a run of `.`,
/// `!` or `?`, or a line break, with the spaces after it), long sentences cut again at `,`, `;`
/// and `:`, and the shortest neighbours merged while there are more than `budget`.
pub fn spans(text: &str, budget: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for sentence in cut(text, 0..text.len(), &['.', '!', '?', '\n']) {
        if text[sentence.clone()].chars().count() > LONG_SENTENCE {
            out.extend(cut(text, sentence, &[',', ';', ':']));
        } else {
            out.push(sentence);
        }
    }
    // A span of spaces alone joins the one before it.
    let mut merged: Vec<Range<usize>> = Vec::new();
    for span in out {
        match merged.last_mut() {
            Some(last) if text[span.clone()].trim().is_empty() => last.end = span.end,
            _ => merged.push(span),
        }
    }
    while merged.len() > budget.max(1) {
        let i = (0..merged.len() - 1)
            .min_by_key(|&i| merged[i + 1].end - merged[i].start)
            .unwrap_or(0);
        merged[i].end = merged[i + 1].end;
        merged.remove(i + 1);
    }
    merged
}

/// `range` of `text` cut after each run of `ends` and the whitespace that follows it.
fn cut(text: &str, range: Range<usize>, ends: &[char]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = range.start;
    let mut chars = text[range.clone()].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !ends.contains(&c) {
            continue;
        }
        let mut end = range.start + i + c.len_utf8();
        while let Some(&(j, next)) = chars.peek() {
            if ends.contains(&next) || next.is_whitespace() {
                end = range.start + j + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        // A mark inside a word (3.14, e.g.x) does not end a sentence.
        let at_break = end == range.end || text[..end].ends_with(char::is_whitespace);
        if at_break {
            out.push(start..end);
            start = end;
        }
    }
    if start < range.end {
        out.push(start..range.end);
    }
    out
}

/// What explaining one request scores: the text with each span removed, one request each.
pub struct Plan {
    judged: &'static str,
    text: String,
    cuts: Vec<Range<usize>>,
    /// The variants to score, one per span.
    pub variants: Vec<ScoreRequest>,
    started: Instant,
}

impl Plan {
    /// The spans of `request`'s judged text (at most `budget`) and the variants without each.
    pub fn new(request: &ScoreRequest, budget: usize) -> Self {
        let started = Instant::now();
        let (judged, text) = match &request.response {
            Some(response) => ("response", response.clone()),
            None => ("prompt", request.user.clone()),
        };
        let cuts = spans(&text, budget);
        let variants = cuts
            .iter()
            .map(|span| {
                let without = format!("{}{}", &text[..span.start], &text[span.end..]);
                match &request.response {
                    Some(_) => ScoreRequest {
                        response: Some(without),
                        ..request.clone()
                    },
                    None => ScoreRequest {
                        user: without,
                        ..request.clone()
                    },
                }
            })
            .collect();
        Self {
            judged,
            text,
            cuts,
            variants,
            started,
        }
    }

    /// The explanation of `base` (the request's scores) from the variants' scores, in order.
    /// `with_text` puts each span's text in it.
    pub fn finish(
        self,
        base: &RequestScores,
        scored: &[RequestScores],
        with_text: bool,
    ) -> Result<Explanation, ScoreError> {
        if scored.len() != self.variants.len() {
            return Err(ScoreError::MissingResult);
        }
        let text = &self.text;
        let mut spans: Vec<SpanEffect> = self
            .cuts
            .into_iter()
            .zip(scored)
            .map(|(span, without)| SpanEffect {
                text: with_text.then(|| text[span.clone()].to_string()),
                start: span.start,
                end: span.end,
                effect: base
                    .scores
                    .iter()
                    .zip(&without.scores)
                    .map(|(all, rest)| (all.id.clone(), all.p_yes - rest.p_yes))
                    .collect(),
            })
            .collect();
        spans.sort_by(|a, b| b.strongest().total_cmp(&a.strongest()));
        Ok(Explanation {
            judged: self.judged,
            spans_scored: scored.len(),
            spans,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Explains `base` (the scores of `request`): each span of the judged text removed in turn,
/// the variants scored together. `with_text` puts each span's text in the result.
pub fn explain(
    scorer: &dyn Score,
    request: &ScoreRequest,
    base: &RequestScores,
    budget: usize,
    with_text: bool,
) -> Result<Explanation, ScoreError> {
    let plan = Plan::new(request, budget);
    let scored = match plan.variants.is_empty() {
        true => Vec::new(),
        false => scorer.score(&plan.variants)?,
    };
    plan.finish(base, &scored, with_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::testing::{request, uniform};

    /// P(Yes) = 0.1 + 0.2 per "bad" in the judged text, at most 0.9.
    struct Counting;

    impl Score for Counting {
        fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
            Ok(requests
                .iter()
                .map(|r| {
                    let judged = r.response.as_deref().unwrap_or(&r.user);
                    uniform(
                        r,
                        (0.1 + 0.2 * judged.matches("bad").count() as f64).min(0.9),
                    )
                })
                .collect())
        }
    }

    #[test]
    fn sentences_cover_the_text_and_long_ones_are_cut_into_clauses() {
        let text = "First one. Second?! Third\nFourth, pi is 3.14 e.g.x  ";
        let cut = spans(text, 16);
        let parts: Vec<&str> = cut.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            parts,
            [
                "First one. ",
                "Second?! ",
                "Third\n",
                "Fourth, pi is 3.14 e.g.x  "
            ]
        );
        let long = format!("{}, and then {}", "word ".repeat(30), "more ".repeat(20));
        let cut = spans(&long, 16);
        assert_eq!(cut.len(), 2, "{cut:?}");
        assert_eq!(spans(text, 2).len(), 2);
        assert!(spans("", 4).is_empty());
        assert_eq!(spans("   ", 4), vec![Range { start: 0, end: 3 }]);
    }

    #[test]
    fn spans_fall_on_character_boundaries_and_cover_any_text() {
        let alphabet = [
            'a', ' ', '.', '!', '\n', 'é', '語', '😀', ',', '？', '\u{3000}',
        ];
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut text = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) % 300;
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push(alphabet[((seed >> 33) % alphabet.len() as u64) as usize]);
            }
            let budget = 1 + (seed >> 40) as usize % 20;
            let cut = spans(&text, budget);
            assert!(cut.len() <= budget, "{text:?}");
            let joined: String = cut.iter().map(|r| &text[r.clone()]).collect();
            assert_eq!(joined, text, "the spans cover the text in order");
            assert!(cut.iter().all(|r| r.start < r.end));
        }
    }

    #[test]
    fn each_effect_is_the_drop_without_the_span_and_the_strongest_comes_first() {
        let r = request("A calm start. Then something bad and bad. A calm end.");
        let base = Counting.score(std::slice::from_ref(&r)).expect("scored");
        let e = explain(&Counting, &r, &base[0], 16, true).expect("explained");
        assert_eq!((e.judged, e.spans_scored), ("prompt", 3));
        let top = &e.spans[0];
        assert_eq!(top.text.as_deref(), Some("Then something bad and bad. "));
        assert!((top.effect["hate"] - 0.4).abs() < 1e-12, "{top:?}");
        // Each effect equals the whole text's score minus a direct score of the text without it.
        for span in &e.spans {
            let without = format!("{}{}", &r.user[..span.start], &r.user[span.end..]);
            let direct = Counting
                .score(&[ScoreRequest {
                    user: without,
                    ..r.clone()
                }])
                .expect("scored");
            let expected = base[0].scores[0].p_yes - direct[0].scores[0].p_yes;
            assert!((span.effect["dangerous"] - expected).abs() < 1e-12);
        }
        let answer = ScoreRequest {
            response: Some("Fine. Really bad.".into()),
            ..request("q")
        };
        let base = Counting
            .score(std::slice::from_ref(&answer))
            .expect("scored");
        let e = explain(&Counting, &answer, &base[0], 16, false).expect("explained");
        assert_eq!(e.judged, "response");
        assert_eq!((e.spans[0].start, e.spans[0].end), (6, 17));
        assert!(e.spans[0].text.is_none());
    }
}
