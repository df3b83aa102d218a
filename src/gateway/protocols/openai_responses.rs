//! OpenAI Responses (`POST /v1/responses`), JSON and SSE. A withheld answer is
//! `status: "incomplete"` with `incomplete_details.reason: "content_filter"` and the
//! replacement text as its only output; a withheld stream ends with `response.incomplete`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::gateway::protocols::sse::{frame, Event};

use super::usual_shape::{Content, Object, Text};
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
        let input = match body.get("input") {
            Some(Value::String(s)) => Input::Text(s),
            Some(Value::Array(items)) => Input::Items(items),
            _ => return Err("the request has no \"input\" (a string or a list of items)".into()),
        };
        let instructions = body.get("instructions").and_then(Value::as_str);
        Ok(input_conversation(start(body), instructions, input, scan))
    }

    fn usual_conversation(&self, body: &[u8], scan: &[Scan]) -> Option<Conversation> {
        let Object(request) = serde_json::from_slice::<Object<Request<'_>>>(body).ok()?;
        let input = match &request.input {
            Content::Text(text) => Input::Text(text),
            Content::Parts(items) => Input::Items(items),
        };
        let conv = Conversation {
            stream: request.stream.unwrap_or(false),
            ..Conversation::default()
        };
        let instructions = request.instructions.as_deref();
        Some(input_conversation(conv, instructions, input, scan))
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

/// A request's `input`, whichever way it was read.
enum Input<'a, I> {
    /// One user turn.
    Text(&'a str),
    /// Items: messages, function calls and their outputs.
    Items(&'a [I]),
}

/// The conversation in a request's `instructions` and `input`, whichever way they were read:
/// the user messages are the user turns; instructions, system and developer messages,
/// function calls and their outputs become parts as the scan names them.
fn input_conversation<I: InputItem>(
    mut conv: Conversation,
    instructions: Option<&str>,
    input: Input<'_, I>,
    scan: &[Scan],
) -> Conversation {
    if let (Some(s), true) = (instructions, scan.contains(&Scan::System)) {
        push_part(&mut conv.parts, s.to_string());
    }
    let mut users = Vec::new();
    match input {
        Input::Text(s) => users.push(s.to_string()),
        Input::Items(items) => {
            for (i, item) in items.iter().enumerate() {
                let place = Place("input", i);
                match (item.kind(), item.role()) {
                    ("message", "user") => {
                        users.push(item.content_text(&place, &mut conv.unscanned))
                    }
                    ("message", "system" | "developer") if scan.contains(&Scan::System) => {
                        let text = item.content_text(&place, &mut conv.unscanned);
                        push_part(&mut conv.parts, text);
                    }
                    ("function_call", _) if scan.contains(&Scan::ToolCalls) => {
                        push_part(&mut conv.parts, item.arguments().to_string());
                    }
                    ("function_call_output", _) if scan.contains(&Scan::ToolResults) => {
                        let text = item.output_text(&place, &mut conv.unscanned);
                        push_part(&mut conv.parts, text);
                    }
                    _ => {}
                }
            }
        }
    }
    add_user_turns(&mut conv, users, scan);
    conv
}

/// An item of a request's `input` as the input check reads it.
trait InputItem {
    /// Its `type`; "message" when it has none.
    fn kind(&self) -> &str;
    /// Its `role`; empty when it has none.
    fn role(&self) -> &str;
    /// The text of its `content`; parts that cannot be scanned are noted in `unscanned`.
    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String;
    /// Its `arguments` (a function call's); empty when it has none.
    fn arguments(&self) -> &str;
    /// The text of its `output` (a function call's result), read like a `content`.
    fn output_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String;
}

impl InputItem for Value {
    fn kind(&self) -> &str {
        self.get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
    }

    fn role(&self) -> &str {
        self.get("role").and_then(Value::as_str).unwrap_or("")
    }

    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        content_text(self.get("content"), place, unscanned)
    }

    fn arguments(&self) -> &str {
        self.get("arguments").and_then(Value::as_str).unwrap_or("")
    }

    fn output_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        content_text(self.get("output"), place, unscanned)
    }
}

impl InputItem for Object<RequestItem<'_>> {
    fn kind(&self) -> &str {
        self.0.kind.as_deref().unwrap_or("message")
    }

    fn role(&self) -> &str {
        self.0.role.as_deref().unwrap_or("")
    }

    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        Content::text_of(self.0.content.as_ref(), place, unscanned)
    }

    fn arguments(&self) -> &str {
        self.0.arguments.as_deref().unwrap_or("")
    }

    fn output_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        Content::text_of(self.0.output.as_ref(), place, unscanned)
    }
}

/// A request as [`OpenAiResponses::conversation`] reads it, in the usual shape (see
/// [`Adapter::usual_conversation`]): `input` is a string or a list of items, the same two
/// shapes as a message's content; other fields are skipped unread.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    input: Content<'a, RequestItem<'a>>,
    #[serde(borrow, default)]
    instructions: Option<Text<'a>>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct RequestItem<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    role: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
    #[serde(borrow, default)]
    output: Option<Content<'a>>,
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
    use crate::gateway::protocols::{
        assert_usual_conversation_agrees, assert_usual_outputs_agree, EVERY_SCAN,
    };

    #[test]
    fn usual_requests_are_read_without_a_value_and_the_same_way() {
        let usual = [
            r#"{"model":"m","instructions":"be nice","stream":true,"input":[{"role":"user","content":"first"},{"type":"function_call","call_id":"c","name":"f","arguments":"{\"a\":1}"},{"type":"function_call_output","call_id":"c","output":"42"},{"type":"message","role":"system","content":[{"type":"input_text","text":"sys"}]},{"type":"message","role":"developer","content":"dev"},{"type":"message","role":"user","content":[{"type":"input_text","text":"second"},{"type":"input_image","image_url":"x"}]}]}"#,
            r#"{"input":"What is a good name for a cat?","instructions":null,"stream":false}"#,
            r#"{"input":[{"type":"reasoning","summary":[]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi"}]},{"role":"user"},{"type":"function_call_output","output":[{"type":"input_text","text":"out"},{"type":"input_file"}]},{"type":"function_call"}]}"#,
            r#"{"input":[]}"#,
            r#"{"input":"caf\u00e9 \"quoted\""}"#,
        ];
        let unusual = [
            r#"{"model":"m"}"#,
            r#"{"input":null}"#,
            r#"{"input":42}"#,
            r#"{"input":["text"]}"#,
            r#"{"input":[{"type":7,"role":"user","content":"x"}]}"#,
            r#"{"input":[{"role":"user","content":{"text":"x"}}]}"#,
            r#"{"input":[{"role":"user","content":["part"]}]}"#,
            r#"{"input":[{"type":"function_call","arguments":{"a":1}}]}"#,
            r#"{"input":[{"type":"function_call_output","output":{"ok":true}}]}"#,
            r#"{"input":[{"role":"user","content":"a","content":"b"}]}"#,
            r#"{"input":"x","instructions":["be nice"]}"#,
            r#"{"input":"x","stream":"yes"}"#,
            r#"{"input":"a","input":"b"}"#,
            r#"{"input":"\ud800"}"#,
        ];
        assert_usual_conversation_agrees(&OpenAiResponses, &usual, &unusual);
        let conv = OpenAiResponses
            .usual_conversation(usual[0].as_bytes(), &EVERY_SCAN)
            .expect("usual");
        assert_eq!(
            conv.parts,
            [
                "be nice",
                "{\"a\":1}",
                "42",
                "sys",
                "dev",
                "first",
                "second"
            ]
        );
        assert_eq!(conv.unscanned, ["input_image in input[5]"]);
        assert!(conv.stream);
    }

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
