//! Turns a request into token ids: the shared prefix once, one suffix per policy, and
//! over-long content truncated inside its slot so the template's end always survives.

use serde::Serialize;

use crate::model::GemmaTokenizer;
use crate::prompt::{Content, Piece, Rendered, Template};

use super::ScoreError;

/// Token ids of one request: `shared` then `suffixes[i]` is the full prompt of policy `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Ids common to every policy's prompt (the content and the template around it).
    pub shared: Vec<u32>,
    /// Each policy's remaining ids (never empty).
    pub suffixes: Vec<Vec<u32>>,
}

impl Encoded {
    /// The full ids of policy `i`.
    pub fn full(&self, i: usize) -> Vec<u32> {
        let mut ids = self.shared.clone();
        ids.extend_from_slice(&self.suffixes[i]);
        ids
    }

    /// The longest prompt's length.
    pub fn longest(&self) -> usize {
        self.shared.len() + self.suffixes.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// How a slot was shortened to fit the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cut {
    /// Tokens the slot's text had.
    pub original_tokens: usize,
    /// Tokens kept (from the start of the text).
    pub kept_tokens: usize,
}

/// Which content slots were truncated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Truncation {
    /// Earlier turns of the context left out, oldest first (each whole), before any slot
    /// text was cut.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_turns: usize,
    /// The user turn, if it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Cut>,
    /// The response, if it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Cut>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Encodes rendered pieces: text as plain text, specials as their ids.
fn encode_pieces<'a>(
    tokenizer: &GemmaTokenizer,
    pieces: impl IntoIterator<Item = &'a Piece>,
    out: &mut Vec<u32>,
) -> Result<(), ScoreError> {
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.extend(tokenizer.encode(text)?),
            Piece::Special(marker) => {
                out.push(tokenizer.special_id(marker).map_err(ScoreError::Template)?)
            }
        }
    }
    Ok(())
}

/// Encodes a rendered request, sharing as many leading ids between policies as possible.
///
/// Text between two special tokens is one BPE unit, so the prefix is encoded up to its last
/// special token once; the text after it is encoded together with each policy's suffix, and
/// the longest common run of those ids joins the shared part.
pub fn encode_rendered(
    tokenizer: &GemmaTokenizer,
    rendered: &Rendered,
) -> Result<Encoded, ScoreError> {
    let split = rendered
        .prefix
        .iter()
        .rposition(|p| matches!(p, Piece::Special(_)))
        .map_or(0, |i| i + 1);
    let (closed, open) = rendered.prefix.split_at(split);
    let mut shared = Vec::new();
    encode_pieces(tokenizer, closed, &mut shared)?;
    let mut tails = Vec::with_capacity(rendered.suffixes.len());
    for suffix in &rendered.suffixes {
        let mut merged: Vec<Piece> = open.to_vec();
        for piece in suffix {
            match (merged.last_mut(), piece) {
                (Some(Piece::Text(prev)), Piece::Text(next)) => prev.push_str(next),
                _ => merged.push(piece.clone()),
            }
        }
        let mut ids = Vec::new();
        encode_pieces(tokenizer, &merged, &mut ids)?;
        tails.push(ids);
    }
    let Some(first) = tails.first() else {
        return Err(ScoreError::NoPolicies);
    };
    let shortest = tails.iter().map(Vec::len).min().unwrap_or(0);
    if shortest == 0 {
        return Err(ScoreError::Template(
            "a policy's prompt ends before any token; the template needs text after the guideline"
                .into(),
        ));
    }
    // Every suffix keeps at least one id: its last position gives the scores.
    let common = (0..shortest - 1)
        .take_while(|&i| tails.iter().all(|t| t[i] == first[i]))
        .count();
    shared.extend_from_slice(&first[..common]);
    let suffixes = tails.into_iter().map(|t| t[common..].to_vec()).collect();
    Ok(Encoded { shared, suffixes })
}

/// Renders and encodes `content` for `guidelines` so that every prompt has at most
/// `max_tokens` ids: the oldest turns of the context are left out first, whole; when the
/// prompt still does not fit, the content itself is cut.
pub fn encode_request(
    tokenizer: &GemmaTokenizer,
    template: &Template,
    content: &Content,
    guidelines: &[&str],
    max_tokens: usize,
) -> Result<(Encoded, Truncation), ScoreError> {
    let mut context = content.context;
    let mut dropped_turns = 0;
    while !context.is_empty() {
        let current = Content {
            context,
            ..*content
        };
        let encoded = encode_rendered(tokenizer, &template.render(&current, guidelines))?;
        let mut excess = encoded.longest().saturating_sub(max_tokens);
        if excess == 0 {
            let truncation = Truncation {
                dropped_turns,
                ..Truncation::default()
            };
            return Ok((encoded, truncation));
        }
        // Leave out the oldest turns whose tokens cover the excess (a turn's mark and line
        // end take a few more), then measure again.
        while excess > 0 && !context.is_empty() {
            let turn_tokens = tokenizer.encode(&context[0].text)?.len() + 3;
            excess = excess.saturating_sub(turn_tokens);
            context = &context[1..];
            dropped_turns += 1;
        }
    }
    let (encoded, mut truncation) =
        cut_content(tokenizer, template, content, guidelines, max_tokens)?;
    truncation.dropped_turns = dropped_turns;
    Ok((encoded, truncation))
}

/// Encodes `content` without its context, cutting its slots until every prompt fits.
fn cut_content(
    tokenizer: &GemmaTokenizer,
    template: &Template,
    content: &Content,
    guidelines: &[&str],
    max_tokens: usize,
) -> Result<(Encoded, Truncation), ScoreError> {
    let mut user = content.user.to_string();
    let mut response = content.response.map(str::to_string);
    let mut truncation = Truncation::default();
    // Cutting text re-tokenizes its neighbourhood, so a cut may land a few ids short; a
    // widening margin makes the loop converge in one or two rounds.
    for margin in [0usize, 8, 64, 512] {
        let current = Content {
            user: &user,
            response: response.as_deref(),
            context: &[],
        };
        let encoded = encode_rendered(tokenizer, &template.render(&current, guidelines))?;
        let excess = encoded.longest().saturating_sub(max_tokens);
        if excess == 0 {
            return Ok((encoded, truncation));
        }
        if user.is_empty() && response.as_deref().unwrap_or("").is_empty() {
            return Err(ScoreError::TooLong {
                needed: encoded.longest(),
                max_tokens,
            });
        }
        let user_ids = tokenizer.encode_with_offsets(&user)?;
        let response_ids = match &response {
            Some(r) => tokenizer.encode_with_offsets(r)?,
            None => Vec::new(),
        };
        let mut to_cut = excess + margin;
        // Cut the longer slot first, then the other if that is not enough.
        let response_first = response_ids.len() >= user_ids.len();
        let order = if response_first {
            [true, false]
        } else {
            [false, true]
        };
        for is_response in order {
            if to_cut == 0 {
                break;
            }
            let (text, ids, cut) = if is_response {
                match response.as_mut() {
                    Some(r) => (r, &response_ids, &mut truncation.response),
                    None => continue,
                }
            } else {
                (&mut user, &user_ids, &mut truncation.user)
            };
            let keep = ids.len().saturating_sub(to_cut);
            to_cut -= ids.len() - keep;
            if keep < ids.len() {
                let at = ids.get(keep).map_or(text.len(), |&(_, start)| start);
                let at = (0..=at.min(text.len()))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(at);
                let original = cut.map_or(ids.len(), |c| c.original_tokens);
                *cut = Some(Cut {
                    original_tokens: original,
                    kept_tokens: keep,
                });
            }
        }
    }
    Err(ScoreError::Truncation { max_tokens })
}
