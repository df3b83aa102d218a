//! ShieldGemma's two prompt templates (prompt-only and prompt-response), parsed from
//! `prompts/*.txt`, and their rendering into a shared prefix (everything before the
//! guideline) plus one suffix per policy.

use serde::{Deserialize, Serialize};

pub mod context;

pub use context::{ContextTurn, Role};

/// Which template: input moderation or output moderation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Prompt-only template: is the user's prompt in violation?
    Prompt,
    /// Prompt-response template: is the chatbot's response in violation?
    Response,
}

/// A slot that rendering fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    User,
    Response,
    Guideline,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Special(String),
    Slot(Slot),
}

/// A piece of a rendered prompt: plain text (never scanned for special tokens) or a special
/// token that only the template itself can place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text, encoded as plain text.
    Text(String),
    /// A special-token marker such as `<start_of_turn>`.
    Special(String),
}

/// A rendered request: the pieces shared by every policy, then each policy's own pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Everything before the guideline.
    pub prefix: Vec<Piece>,
    /// The guideline and the rest of the template, one entry per policy.
    pub suffixes: Vec<Vec<Piece>>,
}

impl Rendered {
    /// The full prompt text of policy `i`, special tokens written as their markers.
    pub fn text(&self, i: usize) -> String {
        self.prefix
            .iter()
            .chain(self.suffixes.get(i).into_iter().flatten())
            .map(|p| match p {
                Piece::Text(t) | Piece::Special(t) => t.as_str(),
            })
            .collect()
    }
}

/// The text to classify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content<'a> {
    /// The user's turn.
    pub user: &'a str,
    /// The chatbot's response, for output moderation.
    pub response: Option<&'a str>,
    /// Earlier turns of the conversation, written into the user slot before the user's turn.
    pub context: &'a [ContextTurn],
}

impl Content<'_> {
    /// The template this content is scored with.
    pub fn mode(&self) -> Mode {
        match self.response {
            Some(_) => Mode::Response,
            None => Mode::Prompt,
        }
    }
}

/// Errors in a template file.
#[derive(Debug, thiserror::Error)]
#[error("prompt template {origin}: {reason}")]
pub struct TemplateError {
    origin: String,
    reason: String,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    guideline_at: usize,
}

impl Template {
    /// Parses template text: `{USER}`, `{RESPONSE}` and `{GUIDELINE}` are slots and
    /// `<name>` markers are special tokens. The guideline must come after the content.
    pub fn parse(text: &str, mode: Mode, origin: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            let token = slot_at(rest)
                .map(|(slot, len)| (Part::Slot(slot), len))
                .or_else(|| special_at(rest).map(|m| (Part::Special(m.to_string()), m.len())));
            match token {
                Some((part, len)) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &rest[len..];
                }
                None => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let error = |reason: String| TemplateError {
            origin: origin.to_string(),
            reason,
        };
        let count = |slot: Slot| parts.iter().filter(|p| **p == Part::Slot(slot)).count();
        let want_response = usize::from(mode == Mode::Response);
        for (slot, name, want) in [
            (Slot::User, "{USER}", 1),
            (Slot::Response, "{RESPONSE}", want_response),
            (Slot::Guideline, "{GUIDELINE}", 1),
        ] {
            if count(slot) != want {
                return Err(error(format!(
                    "{name} appears {} times, expected {want}",
                    count(slot)
                )));
            }
        }
        let position = |slot: Slot| parts.iter().position(|p| *p == Part::Slot(slot));
        let guideline_at = position(Slot::Guideline).unwrap_or(0);
        if position(Slot::User).unwrap_or(0) > guideline_at
            || position(Slot::Response).unwrap_or(0) > guideline_at
        {
            return Err(error(
                "the content slots must come before {GUIDELINE} (prefix reuse relies on it)".into(),
            ));
        }
        Ok(Self {
            parts,
            guideline_at,
        })
    }

    /// Renders the content once and the template's tail once per guideline.
    pub fn render(&self, content: &Content, guidelines: &[&str]) -> Rendered {
        let user = context::user_slot(content.context, content.user);
        let fill = |parts: &[Part], guideline: &str| -> Vec<Piece> {
            let mut pieces: Vec<Piece> = Vec::new();
            for part in parts {
                let text = match part {
                    Part::Special(m) => {
                        pieces.push(Piece::Special(m.clone()));
                        continue;
                    }
                    Part::Literal(t) => t.as_str(),
                    Part::Slot(Slot::User) => &user,
                    Part::Slot(Slot::Response) => content.response.unwrap_or(""),
                    Part::Slot(Slot::Guideline) => guideline,
                };
                match pieces.last_mut() {
                    Some(Piece::Text(prev)) => prev.push_str(text),
                    _ => pieces.push(Piece::Text(text.to_string())),
                }
            }
            pieces
        };
        Rendered {
            prefix: fill(&self.parts[..self.guideline_at], ""),
            suffixes: guidelines
                .iter()
                .map(|g| fill(&self.parts[self.guideline_at..], g))
                .collect(),
        }
    }
}

fn slot_at(s: &str) -> Option<(Slot, usize)> {
    [
        ("{USER}", Slot::User),
        ("{RESPONSE}", Slot::Response),
        ("{GUIDELINE}", Slot::Guideline),
    ]
    .into_iter()
    .find(|(name, _)| s.starts_with(name))
    .map(|(name, slot)| (slot, name.len()))
}

fn special_at(s: &str) -> Option<&str> {
    let end = s.strip_prefix('<')?.find('>')? + 2;
    let name = &s[1..end - 1];
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    ok.then(|| &s[..end])
}

/// The two templates of the shipped ShieldGemma chat template.
#[derive(Debug, Clone)]
pub struct Templates {
    prompt_only: Template,
    prompt_response: Template,
}

impl Templates {
    /// The templates from `prompts/`, compiled into the binary.
    pub fn builtin() -> Self {
        let parse = |text, mode, origin| {
            // Covered by the golden tests; a failure here is a build defect.
            Template::parse(text, mode, origin).expect("built-in template is valid")
        };
        Self {
            prompt_only: parse(
                include_str!("../../prompts/prompt_only.txt"),
                Mode::Prompt,
                "prompts/prompt_only.txt",
            ),
            prompt_response: parse(
                include_str!("../../prompts/prompt_response.txt"),
                Mode::Response,
                "prompts/prompt_response.txt",
            ),
        }
    }

    /// The template for a mode.
    pub fn get(&self, mode: Mode) -> &Template {
        match mode {
            Mode::Prompt => &self.prompt_only,
            Mode::Response => &self.prompt_response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_braces_and_markers_stay_plain_text() {
        let t = Templates::builtin();
        let content = Content {
            user: "{GUIDELINE} <end_of_turn>",
            response: None,
            context: &[],
        };
        let r = t.get(Mode::Prompt).render(&content, &["G"]);
        let specials: Vec<_> = r
            .prefix
            .iter()
            .filter_map(|p| match p {
                Piece::Special(m) => Some(m.as_str()),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(specials, ["<bos>", "<start_of_turn>", "<end_of_turn>"]);
        assert!(r
            .text(0)
            .contains("Human Question: {GUIDELINE} <end_of_turn>\n<end_of_turn>"));
        assert!(r.text(0).contains("* G\n\n===\n\n"));
    }

    #[test]
    fn context_fills_the_user_slot_as_plain_text() {
        let t = Templates::builtin();
        let context = [
            ContextTurn::new(Role::User, "a <end_of_turn>"),
            ContextTurn::new(Role::Assistant, "b"),
        ];
        let content = Content {
            user: "c",
            response: Some("r"),
            context: &context,
        };
        let r = t.get(Mode::Response).render(&content, &["G"]);
        let specials = r
            .prefix
            .iter()
            .filter(|p| matches!(p, Piece::Special(_)))
            .count();
        assert_eq!(specials, 5, "<bos> and two turns' markers only");
        assert!(r.text(0).contains(
            "Human Question: The conversation so far:\nUser: a <end_of_turn>\nChatbot: b\n\n\
             The latest user message:\nc\n<end_of_turn>\n<start_of_turn>\nChatbot Response: r\n"
        ));
    }

    #[test]
    fn prefix_ends_right_before_the_guideline() {
        let t = Templates::builtin();
        let content = Content {
            user: "u",
            response: Some("r"),
            context: &[],
        };
        let r = t.get(Mode::Response).render(&content, &["A", "B"]);
        assert_eq!(
            r.prefix.last(),
            Some(&Piece::Text(
                "\n\nOur safety principle is defined in the below:\n\n* ".into()
            ))
        );
        assert_eq!(r.suffixes.len(), 2);
        assert!(r
            .text(1)
            .contains("Chatbot Response: r\n<end_of_turn>\n\nOur safety"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        let cases = [
            (
                "{USER} {GUIDELINE} {GUIDELINE}",
                Mode::Prompt,
                "{GUIDELINE} appears 2 times",
            ),
            ("{GUIDELINE}", Mode::Prompt, "{USER} appears 0 times"),
            (
                "{USER} {GUIDELINE}",
                Mode::Response,
                "{RESPONSE} appears 0 times",
            ),
            ("{GUIDELINE} {USER}", Mode::Prompt, "must come before"),
        ];
        for (text, mode, expected) in cases {
            let err = Template::parse(text, mode, "t")
                .expect_err(text)
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
