//! Anthropic Messages (`POST /v1/messages`), JSON and SSE. A blocked prompt is a 400 in
//! Anthropic's error envelope; a withheld answer has the replacement text and
//! `stop_reason: "refusal"`.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::gateway::protocols::sse::{frame, Event};

use super::usual_shape::{Content, MessagesRequest, Object, Text};
use super::{
    add_user_turns, block_message, content_text, filter_results, messages, no_role, part_text,
    push_part, set, start, Adapter, Block, Conversation, Place, StreamCollector,
};

/// The Messages adapter.
pub struct AnthropicMessages;

impl Adapter for AnthropicMessages {
    fn protocol(&self) -> &'static str {
        "anthropic_messages"
    }

    fn conversation(&self, body: &Value, scan: &[Scan]) -> Result<Conversation, String> {
        let messages = messages(body)?;
        let system =
            |unscanned: &mut Vec<String>| content_text(body.get("system"), &"system", unscanned);
        // The `Value` reading has every part, so there is always a conversation.
        Ok(messages_conversation(start(body), system, messages, scan)?.unwrap_or_default())
    }

    fn usual_conversation(&self, body: &[u8], scan: &[Scan]) -> Option<Conversation> {
        let request = MessagesRequest::<RequestMessage<'_>>::read(body)?;
        let system = |unscanned: &mut Vec<String>| {
            Content::text_of(request.system.as_ref(), &"system", unscanned)
        };
        messages_conversation(request.start(), system, &request.messages, scan)
            .ok()
            .flatten()
    }

    fn error(&self, status: StatusCode, _code: &str, message: &str) -> Value {
        let kind = match status.as_u16() {
            400 | 415 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }

    fn input_blocked(&self, block: &Block<'_>) -> Value {
        let mut body = self.error(
            StatusCode::BAD_REQUEST,
            "content_filter",
            &block_message("prompt", block),
        );
        body["error"]["content_filter"] = filter_results(block);
        body
    }

    fn outputs(&self, body: &Value) -> Vec<String> {
        vec![message_text(body.get("content").unwrap_or(&Value::Null))]
    }

    fn usual_outputs(&self, body: &[u8]) -> Option<Vec<String>> {
        let Object(message) = serde_json::from_slice::<Object<Message<'_>>>(body).ok()?;
        let mut texts: Vec<&str> = Vec::new();
        for Object(block) in &message.content {
            match block.kind.as_deref() {
                Some("text") => texts.extend(block.text.as_deref()),
                // A tool's input is scored as the `Value` reading writes it out.
                Some("tool_use") => return None,
                _ => {}
            }
        }
        Some(vec![texts.join("\n")])
    }

    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>) {
        if blocked.first().copied().unwrap_or(false) {
            set(
                body,
                "content",
                json!([{"type": "text", "text": block.replacement}]),
            );
            set(body, "stop_reason", json!("refusal"));
            set(body, "stop_sequence", Value::Null);
        }
    }

    fn collector(&self) -> Box<dyn StreamCollector> {
        Box::new(MessageStream::default())
    }
}

/// The conversation in a Messages request, whichever way it was read: the system prompt and
/// the tool blocks the scan names give parts, the user turns (text blocks) the prompt. `None`
/// when the reading cannot give a part the scan asks for (a typed reading has no tool input
/// written out as JSON).
fn messages_conversation<M: MessageView>(
    mut conv: Conversation,
    system: impl FnOnce(&mut Vec<String>) -> String,
    messages: &[M],
    scan: &[Scan],
) -> Result<Option<Conversation>, String> {
    if scan.contains(&Scan::System) {
        let text = system(&mut conv.unscanned);
        push_part(&mut conv.parts, text);
    }
    let is_tool = |kind: Option<&str>| matches!(kind, Some("tool_use" | "tool_result"));
    let mut users = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.role().ok_or_else(|| no_role(i))?;
        let place = Place("messages", i);
        for block in m.blocks().iter().filter(|b| is_tool(b.kind())) {
            let text = match block.kind() {
                Some("tool_use") if scan.contains(&Scan::ToolCalls) => match block.input() {
                    Some(input) => input,
                    None => return Ok(None),
                },
                Some("tool_result") if scan.contains(&Scan::ToolResults) => {
                    block.result_text(&place, &mut conv.unscanned)
                }
                _ => String::new(),
            };
            push_part(&mut conv.parts, text);
        }
        if role == "user" {
            let text = match m.content_str() {
                Some(text) => text.to_string(),
                None => {
                    let texts: Vec<&str> = m
                        .blocks()
                        .iter()
                        .filter(|b| !is_tool(b.kind()))
                        .filter_map(|b| part_text(b.kind(), b.text(), &place, &mut conv.unscanned))
                        .collect();
                    texts.join("\n")
                }
            };
            if !text.is_empty() {
                users.push(text);
            }
        }
    }
    add_user_turns(&mut conv, users, scan);
    Ok(Some(conv))
}

/// A request message as the input check reads it.
trait MessageView {
    /// Its content blocks.
    type Block: BlockView;
    /// Its role, if it has one.
    fn role(&self) -> Option<&str>;
    /// Its content, when that is a string.
    fn content_str(&self) -> Option<&str>;
    /// Its content's blocks (none unless the content is a list).
    fn blocks(&self) -> &[Self::Block];
}

/// A content block as the input check reads it.
trait BlockView {
    /// Its `type`.
    fn kind(&self) -> Option<&str>;
    /// Its `text`.
    fn text(&self) -> Option<&str>;
    /// A tool call's input written out as JSON, when this reading has it.
    fn input(&self) -> Option<String>;
    /// The text of a tool result's `content`; parts that cannot be scanned are noted.
    fn result_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String;
}

impl MessageView for Value {
    type Block = Value;

    fn role(&self) -> Option<&str> {
        self.get("role").and_then(Value::as_str)
    }

    fn content_str(&self) -> Option<&str> {
        self.get("content").and_then(Value::as_str)
    }

    fn blocks(&self) -> &[Value] {
        let blocks = self.get("content").and_then(Value::as_array);
        blocks.map_or(&[], Vec::as_slice)
    }
}

impl BlockView for Value {
    fn kind(&self) -> Option<&str> {
        self.get("type").and_then(Value::as_str)
    }

    fn text(&self) -> Option<&str> {
        self.get("text").and_then(Value::as_str)
    }

    fn input(&self) -> Option<String> {
        Some(self.get("input").map(Value::to_string).unwrap_or_default())
    }

    fn result_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        content_text(self.get("content"), place, unscanned)
    }
}

impl<'a> MessageView for Object<RequestMessage<'a>> {
    type Block = Object<RequestBlock<'a>>;

    fn role(&self) -> Option<&str> {
        Some(&self.0.role)
    }

    fn content_str(&self) -> Option<&str> {
        match &self.0.content {
            Some(Content::Text(text)) => Some(text),
            _ => None,
        }
    }

    fn blocks(&self) -> &[Self::Block] {
        match &self.0.content {
            Some(Content::Parts(blocks)) => blocks,
            _ => &[],
        }
    }
}

impl BlockView for Object<RequestBlock<'_>> {
    fn kind(&self) -> Option<&str> {
        self.0.kind.as_deref()
    }

    fn text(&self) -> Option<&str> {
        self.0.text.as_deref()
    }

    fn input(&self) -> Option<String> {
        None
    }

    fn result_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        Content::text_of(self.0.content.as_ref(), place, unscanned)
    }
}

/// A request message as [`AnthropicMessages::conversation`] reads it, in the usual shape (see
/// [`Adapter::usual_conversation`]); other fields are skipped unread.
#[derive(Deserialize)]
struct RequestMessage<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow, default)]
    content: Option<Content<'a, RequestBlock<'a>>>,
}

#[derive(Deserialize)]
struct RequestBlock<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// What [`message_text`] reads of an answer without tool calls, in its usual shape (see
/// [`Adapter::usual_outputs`]); other fields are skipped unread.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Vec<Object<ContentBlock<'a>>>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

/// The text and tool inputs of an answer's content blocks.
fn message_text(content: &Value) -> String {
    content
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => b.get("text").and_then(Value::as_str).map(str::to_string),
                    Some("tool_use") => b.get("input").map(Value::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The state of a streamed message.
#[derive(Default)]
struct MessageStream {
    start: Option<Value>,
    blocks: Vec<String>,
    usage: Option<Value>,
    open: Option<usize>,
}

impl StreamCollector for MessageStream {
    fn event(&mut self, event: &Event) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, String::new());
        }
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => self.start = data.get("message").cloned(),
            Some("content_block_stop") => self.open = None,
            Some("content_block_start") => {
                self.open = Some(index);
                let text = message_text(&json!([data.get("content_block")]));
                self.blocks[index].push_str(&text);
            }
            Some("content_block_delta") => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let piece = delta
                    .get("text")
                    .or_else(|| delta.get("partial_json"))
                    .and_then(Value::as_str);
                self.blocks[index].push_str(piece.unwrap_or(""));
            }
            Some("message_delta") => self.usage = data.get("usage").cloned(),
            _ => {}
        }
    }

    fn outputs(&self) -> Vec<String> {
        let texts: Vec<&str> = self
            .blocks
            .iter()
            .map(String::as_str)
            .filter(|t| !t.is_empty())
            .collect();
        vec![texts.join("\n")]
    }

    fn blocked_stream(&self, _blocked: &[bool], block: &Block<'_>) -> String {
        let mut message = self.start.clone().unwrap_or_else(|| {
            json!({"type": "message", "role": "assistant", "model": "", "usage": {"input_tokens": 0, "output_tokens": 0}})
        });
        set(&mut message, "content", json!([]));
        set(&mut message, "stop_reason", Value::Null);
        [
            event("message_start", json!({"type": "message_start", "message": message})),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": block.replacement}}),
            ),
            event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            refusal_end(self.usage.clone()),
        ]
        .concat()
    }

    fn terminate(&self, block: &Block<'_>) -> String {
        if self.start.is_none() {
            return self.blocked_stream(&[true], block);
        }
        let mut out = String::new();
        if let Some(index) = self.open {
            out += &event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
        out += &refusal_end(self.usage.clone());
        out
    }
}

fn event(name: &str, data: Value) -> String {
    frame(Some(name), &data.to_string())
}

/// The `message_delta` with `stop_reason: "refusal"` and the `message_stop` after it.
fn refusal_end(usage: Option<Value>) -> String {
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": null},
               "usage": usage.unwrap_or_else(|| json!({"output_tokens": 0}))}),
    ) + &event("message_stop", json!({"type": "message_stop"}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::protocols::sse::Parser;
    use crate::gateway::protocols::{
        assert_usual_conversation_agrees, assert_usual_outputs_agree, EVERY_SCAN,
    };

    #[test]
    fn the_usual_shape_is_read_without_a_value_and_with_the_same_texts() {
        let usual = [
            r#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"Hi\nthere"},{"type":"thinking","thinking":"t"},{"type":"text","text":"more"}],"stop_reason":"end_turn","usage":{}}"#,
            r#"{"content":[{"type":"text"},{}]}"#,
            r#"{"type":"message"}"#,
        ];
        let unusual = [
            r#"{"content":[{"type":"tool_use","name":"f","input":{"b":1,"a":[2]}}]}"#,
            r#"{"content":[{"type":"text","text":["x"]}]}"#,
            r#"{"content":null}"#,
            r#"{"content":"text"}"#,
            r#"{"content":[],"content":[]}"#,
        ];
        assert_usual_outputs_agree(&AnthropicMessages, &usual, &unusual);
    }

    #[test]
    fn the_usual_request_is_read_without_a_value_and_gives_the_same_conversation() {
        let usual = [
            r#"{"model":"c","max_tokens":10,"messages":[{"role":"user","content":"What is a good name for a cat?"}]}"#,
            r#"{"model":"c","stream":true,"system":[{"type":"text","text":"sys"},{"type":"image"}],"messages":[{"role":"user","content":"hi \u00e9"},{"role":"assistant","content":[{"type":"text","text":"ok"}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"found"},{"type":"image"}]},{"type":"tool_result","content":"plain"},{"type":"image","source":{}},{"type":"text","text":"and now?"},{"text":"untyped"},{"type":"document"}]}]}"#,
            r#"{"system":"be brief","messages":[{"role":"user"},{"role":"user","content":null},{"role":"user","content":[]},{"role":"other","content":"x"}],"stream":null}"#,
            r#"{"system":null,"messages":[]}"#,
        ];
        let unusual = [
            r#"{"messages":[{"content":"no role"}]}"#,
            r#"{"messages":[{"role":"user","content":7}]}"#,
            r#"{"messages":[{"role":"user","content":{"type":"text"}}]}"#,
            r#"{"messages":[{"role":"user","content":["text"]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","content":{"x":1}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#,
            r#"{"messages":[{"role":"user","content":"a","content":"b"}]}"#,
            r#"{"system":3,"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"system":[["text","x"]],"messages":[]}"#,
            r#"{"messages":[],"stream":1}"#,
            r#"{"max_tokens":10}"#,
            r#"[]"#,
        ];
        assert_usual_conversation_agrees(&AnthropicMessages, &usual, &unusual);
        let conv = AnthropicMessages
            .usual_conversation(usual[1].as_bytes(), &EVERY_SCAN)
            .expect("usual");
        assert_eq!(conv.parts, ["sys", "found", "plain", "hi é", "and now?"]);
        assert_eq!(
            conv.unscanned,
            [
                "image in system",
                "image in messages[2]",
                "image in messages[2]",
                "unknown in messages[2]",
                "document in messages[2]"
            ]
        );
        // A tool input is written out by the `Value` reading only: scanning it takes that way.
        let tool = r#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"b":1,"a":[2.50]}}]}]}"#;
        let read = |scan: &[Scan]| AnthropicMessages.usual_conversation(tool.as_bytes(), scan);
        assert!(read(&[Scan::ToolCalls]).is_none());
        assert!(read(&[Scan::LastUser]).is_some());
        let value: Value = serde_json::from_str(tool).expect("json");
        let through_value = AnthropicMessages.conversation(&value, &EVERY_SCAN);
        let conv = AnthropicMessages.request_conversation(tool.as_bytes(), &EVERY_SCAN);
        assert_eq!(conv, through_value);
        assert_eq!(conv.expect("ok").parts, [r#"{"a":[2.5],"b":1}"#]);
    }

    #[test]
    fn tool_blocks_and_system_follow_the_scan_settings() {
        let body = json!({"model": "c", "max_tokens": 10, "system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "found"},
                {"type": "image", "source": {}},
                {"type": "text", "text": "and now?"}]},
        ]});
        let conv = AnthropicMessages
            .conversation(&body, &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.parts, ["and now?"]);
        assert_eq!(conv.unscanned, ["image in messages[2]"]);
        let conv = AnthropicMessages
            .conversation(&body, &EVERY_SCAN)
            .expect("ok");
        assert_eq!(conv.parts, ["sys", "{\"q\":1}", "found", "hi", "and now?"]);
    }

    #[test]
    fn a_streamed_message_is_reassembled() {
        let text = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[]}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        );
        let mut c = AnthropicMessages.collector();
        for e in Parser::new().feed(text.as_bytes()) {
            c.event(&e);
        }
        assert_eq!(c.outputs(), ["Hi there"]);
    }
}
