//! Log readers: one JSON line becomes a conversation's turns, whatever the shape (OpenAI or
//! Anthropic `messages`, ShareGPT `conversations`, or flat records with named text fields); a
//! line that cannot be read becomes an error with its reason, never a silent skip.

use serde_json::Value;

use crate::prompt::ContextTurn;
/// Who spoke: a user turn is scored with the prompt-only template, an assistant turn with the
/// prompt-response template after the user turn before it.
pub use crate::prompt::Role;

/// One turn to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Index of the turn in the conversation as stored.
    pub index: usize,
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// For an assistant turn: the user turn before it.
    pub prompt: Option<String>,
}

/// A conversation read from one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The line's `id` field, or `FILE:LINE`.
    pub id: String,
    /// The turns to score, in order.
    pub turns: Vec<Turn>,
    /// Turns that are not scored (system, tool, empty, non-text), with the reason.
    pub skipped: Vec<(usize, String)>,
}

/// Why a `messages` record gives nothing to judge.
pub const NO_TURN: &str = "\"messages\" has no user or assistant turn with text";

/// A turn as it is judged: the user turn, the answer when the turn is one, and the turns
/// before.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The user turn (the one answered, for an assistant turn).
    pub prompt: String,
    /// The assistant turn.
    pub response: Option<String>,
    /// The turns before, oldest first.
    pub context: Vec<ContextTurn>,
}

impl Conversation {
    /// The last turn as it is judged, after up to `n` turns before it; `None` without turns.
    pub fn last_judged(&self, n: usize) -> Option<Judged> {
        let last = self.turns.len().checked_sub(1)?;
        let turn = &self.turns[last];
        let (prompt, response) = match turn.role {
            Role::User => (turn.text.clone(), None),
            Role::Assistant => (
                turn.prompt.clone().unwrap_or_default(),
                Some(turn.text.clone()),
            ),
        };
        Some(Judged {
            prompt,
            response,
            context: self.context_of(last, n),
        })
    }

    /// The context of `turns[k]`: up to `n` turns before it (before the user turn it answers,
    /// for an assistant turn).
    pub fn context_of(&self, k: usize, n: usize) -> Vec<ContextTurn> {
        let before = &self.turns[..k.min(self.turns.len())];
        let before = match self.turns.get(k).map(|t| t.role) {
            Some(Role::Assistant) => before
                .iter()
                .rposition(|t| t.role == Role::User)
                .map_or(before, |prompt| &before[..prompt]),
            _ => before,
        };
        before[before.len().saturating_sub(n)..]
            .iter()
            .map(|t| ContextTurn::new(t.role, t.text.clone()))
            .collect()
    }
}

/// How flat records name their fields.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// The user text's field, for flat records.
    pub text: Option<String>,
    /// The response's field, for flat records.
    pub response: Option<String>,
}

/// A line without the UTF-8 byte-order mark that some Windows tools write at the start of a
/// file (and that concatenated files carry in their middle).
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// Parses one JSON line into a value (a record to give [`read_record`]).
pub fn parse_json_line(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(without_bom(bytes))
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Reads one record (a JSON line, or a CSV row as an object keyed by the header); `origin`
/// (`FILE:LINE`) is the id when the record has none.
pub fn read_record(value: &Value, origin: &str, fields: &Fields) -> Result<Conversation, String> {
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    let id = match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => origin.to_string(),
    };
    let mut conv = Conversation {
        id,
        turns: Vec::new(),
        skipped: Vec::new(),
    };
    if let Some(messages) = value.get("messages").and_then(Value::as_array) {
        let said = messages.iter().map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            (role, content_text(m.get("content").unwrap_or(&Value::Null)))
        });
        push_turns(&mut conv, said, |r| match r {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        });
    } else if let Some(turns) = value.get("conversations").and_then(Value::as_array) {
        let said = turns.iter().map(|t| {
            let from = t.get("from").and_then(Value::as_str).unwrap_or("");
            let text = t.get("value").and_then(Value::as_str).map(str::to_string);
            (from, text)
        });
        push_turns(&mut conv, said, |r| match r {
            "human" | "user" => Some(Role::User),
            "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => Some(Role::Assistant),
            _ => None,
        });
    } else if let Some(field) = &fields.text {
        let user = value
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no string field {field:?}"))?;
        let said = std::iter::once(("user", Some(user.to_string()))).chain(
            fields
                .response
                .as_ref()
                .and_then(|f| value.get(f).and_then(Value::as_str))
                .map(|r| ("assistant", Some(r.to_string()))),
        );
        push_turns(&mut conv, said, |r| match r {
            "user" => Some(Role::User),
            _ => Some(Role::Assistant),
        });
    } else {
        return Err(
            "unknown shape: expected \"messages\" (OpenAI/Anthropic), \"conversations\" (ShareGPT), \
             or name the text field with --text-field"
                .into(),
        );
    }
    Ok(conv)
}

/// Turns `(role, text)` pairs into scored and skipped turns, pairing each assistant turn with
/// the user turn before it.
fn push_turns<'a>(
    conv: &mut Conversation,
    said: impl Iterator<Item = (&'a str, Option<String>)>,
    role: impl Fn(&str) -> Option<Role>,
) {
    let mut last_user: Option<String> = None;
    for (index, (name, text)) in said.enumerate() {
        let Some(role) = role(name) else {
            conv.skipped
                .push((index, format!("role {name:?} is not scored")));
            continue;
        };
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            conv.skipped.push((index, "no text".into()));
            continue;
        };
        let prompt = match role {
            Role::User => {
                last_user = Some(text.clone());
                None
            }
            Role::Assistant => Some(last_user.clone().unwrap_or_default()),
        };
        conv.turns.push(Turn {
            index,
            role,
            text,
            prompt,
        });
    }
}

/// The text of a `content`: a string, or the text of its blocks (`None` when it has none).
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_line(bytes: &[u8], origin: &str, fields: &Fields) -> Result<Conversation, String> {
        read_record(&parse_json_line(bytes)?, origin, fields)
    }

    fn read(line: &str) -> Result<Conversation, String> {
        read_line(line.as_bytes(), "f:1", &Fields::default())
    }

    #[test]
    fn openai_anthropic_and_sharegpt_shapes_give_the_same_turns() {
        let openai = read(r#"{"id": 7, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#).expect("ok");
        let anthropic = read(r#"{"id": "7", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]}"#).expect("ok");
        let sharegpt = read(r#"{"id": "7", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}"#).expect("ok");
        assert_eq!(openai.id, "7");
        let turns = |c: &Conversation| -> Vec<(Role, String, Option<String>)> {
            c.turns
                .iter()
                .map(|t| (t.role, t.text.clone(), t.prompt.clone()))
                .collect()
        };
        let expected = vec![
            (Role::User, "hi".to_string(), None),
            (Role::Assistant, "yo".to_string(), Some("hi".to_string())),
        ];
        assert_eq!(turns(&openai), expected);
        assert_eq!(turns(&anthropic), expected);
        assert_eq!(turns(&sharegpt), expected);
        assert_eq!(
            openai.skipped,
            [(0, "role \"system\" is not scored".to_string())]
        );
    }

    #[test]
    fn flat_records_use_the_named_fields() {
        let fields = Fields {
            text: Some("prompt".into()),
            response: Some("answer".into()),
        };
        let c = read_line(br#"{"prompt": "q", "answer": "a"}"#, "f:3", &fields).expect("ok");
        assert_eq!(c.id, "f:3");
        assert_eq!(c.turns.len(), 2);
        assert_eq!(c.turns[1].prompt.as_deref(), Some("q"));
        let e = read_line(br#"{"other": 1}"#, "f:4", &fields).expect_err("no field");
        assert!(e.contains("\"prompt\""), "{e}");
    }

    #[test]
    fn unreadable_lines_say_why() {
        assert!(read("{not json")
            .expect_err("bad")
            .starts_with("not valid JSON"));
        assert!(
            read_line(b"{\"messages\": \"caf\xe9\"}", "f:1", &Fields::default())
                .expect_err("bad")
                .starts_with("invalid UTF-8")
        );
        assert!(read("[1]").expect_err("bad").contains("object"));
        assert!(read(r#"{"x": 1}"#)
            .expect_err("bad")
            .starts_with("unknown shape"));
        let c = read(r#"{"messages": [{"role": "user", "content": "  "}, {"role": "user", "content": [{"type": "image"}]}]}"#).expect("ok");
        assert!(c.turns.is_empty());
        assert_eq!(c.skipped.len(), 2);
    }
}
