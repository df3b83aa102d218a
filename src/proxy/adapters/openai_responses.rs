//! OpenAI Responses (`POST /v1/responses`), JSON and SSE. A withheld answer is
//! `status: "incomplete"` with `incomplete_details.reason: "content_filter"` and the
//! replacement text as its only output; a withheld stream ends with `response.incomplete`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::proxy::sse::{frame, Event};

use super::usual_shape::{Object, Text};
use super::{
    add_user_turns, content_text, push_part, set, start, Adapter, Block, Conversation, Place,
    StreamCollector,
};

/// The Responses adapter.
pub struct OpenAiResponses;

impl Adapter for OpenAiResponses {
    fn protocol(&self) -> &'static str {
        "openai_responses"
    }

    fn conversation(&self, body: &Value, scan: &[Scan]) -> Result<Conversation, String> {
        let mut conv = start(body);
        if scan.contains(&Scan::System) {
            if let Some(Value::String(s)) = body.get("instructions") {
                push_part(&mut conv.parts, s.clone());
            }
        }
        let mut users = Vec::new();
        match body.get("input") {
            Some(Value::String(s)) => users.push(s.clone()),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let place = Place("input", i);
                    let kind = item
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("message");
                    let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                    let content = item.get("content").unwrap_or(&Value::Null);
                    match (kind, role) {
                        ("message", "user") => {
                            users.push(content_text(content, &place, &mut conv.unscanned))
                        }
                        ("message", "system" | "developer") if scan.contains(&Scan::System) => {
                            let text = content_text(content, &place, &mut conv.unscanned);
                            push_part(&mut conv.parts, text);
                        }
                        ("function_call", _) if scan.contains(&Scan::ToolCalls) => {
                            let args = item.get("arguments").and_then(Value::as_str);
                            push_part(&mut conv.parts, args.unwrap_or("").to_string());
                        }
                        ("function_call_output", _) if scan.contains(&Scan::ToolResults) => {
                            let out = item.get("output").unwrap_or(&Value::Null);
                            let text = content_text(out, &place, &mut conv.unscanned);
                            push_part(&mut conv.parts, text);
                        }
                        _ => {}
                    }
                }
            }
            _ => return Err("the request has no \"input\" (a string or a list of items)".into()),
        }
        add_user_turns(&mut conv, users, scan);
        Ok(conv)
    }

    fn outputs(&self, body: &Value) -> Vec<String> {
        vec![output_text(body)]
    }

    fn usual_outputs(&self, body: &[u8]) -> Option<Vec<String>> {
        let Object(response) = serde_json::from_slice::<Object<Response<'_>>>(body).ok()?;
        let mut texts: Vec<&str> = Vec::new();
        for Object(item) in &response.output {
            match item.kind.as_deref() {
                Some("message") => texts.extend(
                    item.content
                        .iter()
                        .flatten()
                        .filter_map(|Object(part)| part.text.as_deref()),
                ),
                Some("function_call") => texts.extend(item.arguments.as_deref()),
                _ => {}
            }
        }
        Some(vec![texts.join("\n")])
    }

    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>) {
        if blocked.first().copied().unwrap_or(false) {
            withhold(body, block.replacement);
        }
    }

    fn collector(&self) -> Box<dyn StreamCollector> {
        Box::new(ResponseStream::default())
    }
}

/// The text and function-call arguments of a response's output items.
fn output_text(response: &Value) -> String {
    let mut texts = Vec::new();
    for item in response
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        texts.push(t.to_string());
                    }
                }
            }
            Some("function_call") => {
                if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                    texts.push(a.to_string());
                }
            }
            _ => {}
        }
    }
    texts.join("\n")
}

/// What [`output_text`] reads of a response, in its usual shape (see
/// [`Adapter::usual_outputs`]); other fields are skipped unread.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    output: Vec<Object<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<Object<Part<'a>>>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

/// Marks a response incomplete for content filtering, with the replacement as its output.
fn withhold(response: &mut Value, replacement: &str) {
    set(response, "status", json!("incomplete"));
    set(
        response,
        "incomplete_details",
        json!({"reason": "content_filter"}),
    );
    set(
        response,
        "output",
        json!([{
            "type": "message",
            "id": "msg_withheld",
            "status": "incomplete",
            "role": "assistant",
            "content": [{"type": "output_text", "text": replacement, "annotations": []}],
        }]),
    );
}

/// The state of a streamed response.
#[derive(Default)]
struct ResponseStream {
    response: Option<Value>,
    text: String,
    item: Option<String>,
    sequence: u64,
}

impl StreamCollector for ResponseStream {
    fn event(&mut self, event: &Event) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        if let Some(n) = data.get("sequence_number").and_then(Value::as_u64) {
            self.sequence = self.sequence.max(n);
        }
        match data.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta" | "response.function_call_arguments.delta") => {
                let item = data
                    .get("item_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if !self.text.is_empty() && item != self.item {
                    self.text.push('\n');
                }
                self.item = item;
                self.text
                    .push_str(data.get("delta").and_then(Value::as_str).unwrap_or(""));
            }
            Some(_) => {
                if let Some(r) = data.get("response") {
                    self.response = Some(r.clone());
                }
            }
            None => {}
        }
    }

    fn outputs(&self) -> Vec<String> {
        vec![self.text.clone()]
    }

    fn blocked_stream(&self, _blocked: &[bool], block: &Block<'_>) -> String {
        let mut response = self
            .response
            .clone()
            .unwrap_or_else(|| json!({"object": "response", "output": []}));
        let mut created = response.clone();
        set(&mut created, "status", json!("in_progress"));
        set(&mut created, "output", json!([]));
        withhold(&mut response, block.replacement);
        event("response.created", 0, &created) + &event("response.incomplete", 1, &response)
    }

    fn terminate(&self, block: &Block<'_>) -> String {
        let Some(response) = &self.response else {
            return self.blocked_stream(&[true], block);
        };
        let mut response = response.clone();
        withhold(&mut response, block.replacement);
        event("response.incomplete", self.sequence + 1, &response)
    }
}

/// A lifecycle event carrying the whole response.
fn event(name: &str, sequence: u64, response: &Value) -> String {
    frame(
        Some(name),
        &json!({"type": name, "sequence_number": sequence, "response": response}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::adapters::{assert_usual_outputs_agree, EVERY_SCAN};

    #[test]
    fn the_usual_shape_is_read_without_a_value_and_with_the_same_texts() {
        let usual = [
            r#"{"id":"r","object":"response","status":"completed","output":[{"type":"reasoning","summary":[]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi\nthere","annotations":[]},{"type":"refusal","refusal":"no"}]},{"type":"function_call","name":"f","arguments":"{\"q\":1}"}]}"#,
            r#"{"output":[{"type":"message"},{"type":"function_call"},{}]}"#,
            r#"{"object":"response"}"#,
        ];
        let unusual = [
            r#"{"output":null}"#,
            r#"{"output":[{"type":"message","content":[{"text":{"value":"x"}}]}]}"#,
            r#"{"output":[{"type":"function_call","arguments":{"q":1}}]}"#,
            r#"{"output":[{"type":7}]}"#,
            r#"{"output":[],"output":[]}"#,
        ];
        assert_usual_outputs_agree(&OpenAiResponses, &usual, &unusual);
    }

    #[test]
    fn items_and_instructions_follow_the_scan_settings() {
        let body = json!({"model": "m", "instructions": "be nice", "input": [
            {"role": "user", "content": "first"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}, {"type": "input_image", "image_url": "x"}]},
        ]});
        let conv = OpenAiResponses
            .conversation(&body, &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.parts, ["second"]);
        assert_eq!(conv.unscanned, ["input_image in input[3]"]);
        let conv = OpenAiResponses
            .conversation(&body, &EVERY_SCAN)
            .expect("ok");
        assert_eq!(
            conv.parts,
            ["be nice", "{\"a\":1}", "42", "first", "second"]
        );
        let conv = OpenAiResponses
            .conversation(&json!({"input": "hi"}), &EVERY_SCAN)
            .expect("ok");
        assert_eq!(conv.parts, ["hi"]);
    }

    #[test]
    fn output_text_joins_messages_and_calls() {
        let body = json!({"output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hello"}]},
            {"type": "function_call", "arguments": "{}"},
        ]});
        assert_eq!(OpenAiResponses.outputs(&body), ["Hello\n{}"]);
    }
}
