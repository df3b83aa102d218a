//! Anthropic Messages (`POST /v1/messages`), JSON and SSE. A blocked prompt is a 400 in
//! Anthropic's error envelope; a withheld answer has the replacement text and
//! `stop_reason: "refusal"`.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::gateway::protocols::sse::{frame, Event};
use crate::prompt::Role;

use super::json::{
    content_text, items, part_text, read_body, read_with_texts, Content, Items, Json, Lenient,
    Object, Text,
};
use super::{
    add_tool_result, add_user_turns, block_message, filter_results, push_part, set, start,
    with_roles, Adapter, Answer, Block, Conversation, EventTexts, Place, StreamCollector,
};

/// The Messages adapter.
pub struct AnthropicMessages;

impl Adapter for AnthropicMessages {
    fn protocol(&self) -> &'static str {
        "anthropic_messages"
    }

    fn request_conversation(&self, body: &[u8], scan: &[Scan]) -> Result<Conversation, String> {
        let (request, texts) = read_with_texts::<Request<'_>>(body)?;
        let messages = with_roles(&request.messages, |m| m.role.get().map(|r| &**r))?;
        let mut conv = start(&request.stream, texts);
        if scan.contains(&Scan::System) {
            let text = content_text(&request.system, &"system", &mut conv.unscanned);
            push_part(&mut conv.parts, text);
        }
        for (i, (m, role)) in messages.into_iter().enumerate() {
            let place = Place("messages", i);
            if role == "assistant" {
                conv.indirect.clear();
            }
            let blocks: Vec<Option<&RequestBlock<'_>>> = match m.content.get() {
                Some(Content::Parts(blocks)) => {
                    blocks.iter().map(|b| b.get().map(|Object(b)| b)).collect()
                }
                _ => Vec::new(),
            };
            for block in blocks.iter().flatten() {
                let text = match block.kind.get().map(|k| &**k) {
                    Some("tool_use") if scan.contains(&Scan::ToolCalls) => block
                        .input
                        .get()
                        .map(|Json(v)| v.to_string())
                        .unwrap_or_default(),
                    Some("tool_result") => {
                        add_tool_result(&mut conv, scan, |unscanned| {
                            content_text(&block.content, &place, unscanned)
                        });
                        continue;
                    }
                    Some("document") => {
                        push_part(&mut conv.indirect, block.document_text());
                        continue;
                    }
                    _ => continue,
                };
                push_part(&mut conv.parts, text);
            }
            // What an assistant turn cannot show is not the input check's concern.
            let mut ignored = Vec::new();
            let (role, notes) = match role {
                "user" => (Role::User, &mut conv.unscanned),
                "assistant" => (Role::Assistant, &mut ignored),
                _ => continue,
            };
            let text = match m.content.get() {
                Some(Content::Text(text)) => text.to_string(),
                _ => {
                    let texts: Vec<&str> = blocks
                        .iter()
                        .filter(|b| !b.is_some_and(RequestBlock::is_tool))
                        .filter_map(|b| {
                            let kind = b.and_then(|b| b.kind.get()).map(|k| &**k);
                            let text = b.and_then(|b| b.text.get()).map(|t| &**t);
                            part_text(kind, text, &place, notes)
                        })
                        .collect();
                    texts.join("\n")
                }
            };
            if !text.is_empty() {
                conv.add_turn(role, text);
            }
        }
        add_user_turns(&mut conv, scan);
        Ok(conv)
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

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        let (message, spans) = read_with_texts::<Message<'_>>(body).ok()?;
        let texts: Vec<String> = items(&message.content)
            .flatten()
            .filter_map(|b| {
                let kind = b.kind.get().map(|k| &**k);
                block_text(
                    kind,
                    b.text.get().map(|t| &**t),
                    b.input.get().map(|Json(v)| v),
                )
            })
            .collect();
        Some(Answer {
            outputs: vec![texts.join("\n")],
            texts: spans,
        })
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

    /// A `content_block_delta`'s text or partial JSON is a piece of text `(index, 0)`, ended by
    /// its `content_block_stop`; `message_delta` and `message_stop` end every text. A block's
    /// start gives its text and input whole.
    fn stream_texts(&self, event: &Event) -> EventTexts {
        let data = event.data.as_str();
        let Ok((read, spans)) = read_with_texts::<StreamEvent<'_>>(data.as_bytes()) else {
            return EventTexts::default();
        };
        let index = read.index.get().copied().unwrap_or(0);
        let piece = read
            .delta
            .get()
            .and_then(|Object(d)| d.text.get().or(d.partial_json.get()))
            .and_then(|t| t.span_in(data));
        let kind_span = read.kind.get().and_then(|k| k.span_in(data));
        let mut texts = EventTexts::read(spans, piece.map(|span| ((index, 0), span)), kind_span);
        match read.kind.get().map(|k| &**k) {
            Some("content_block_stop") => texts.end_all_of(index),
            Some("message_delta" | "message_stop") => return EventTexts::ending_all(),
            _ => {}
        }
        texts
    }
}

/// What the input check reads of a request.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Request<'a> {
    #[serde(borrow)]
    messages: Lenient<Vec<Lenient<Object<RequestMessage<'a>>>>>,
    #[serde(borrow)]
    system: Lenient<Content<'a>>,
    stream: Lenient<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestMessage<'a> {
    #[serde(borrow)]
    role: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Lenient<Content<'a, RequestBlock<'a>>>,
}

/// A content block of a request: text, a tool call (`input`, any JSON, scanned as written
/// out compactly), a tool's result (`content`) or a document (`source`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    #[serde(borrow)]
    text: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Lenient<Content<'a>>,
    input: Lenient<Json>,
    #[serde(borrow)]
    source: Lenient<Object<DocumentSource<'a>>>,
}

/// A document's source: plain text (`data`) or content blocks (`content`); files and images
/// give no text.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DocumentSource<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    #[serde(borrow)]
    data: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Lenient<Content<'a>>,
}

impl RequestBlock<'_> {
    /// A document block's text (empty for files and images, which stay reported unscanned).
    fn document_text(&self) -> String {
        let Some(Object(source)) = self.source.get() else {
            return String::new();
        };
        match source.kind.get().map(|k| &**k) {
            Some("text") => source
                .data
                .get()
                .map_or_else(String::new, |t| t.to_string()),
            Some("content") => content_text(&source.content, &"document", &mut Vec::new()),
            _ => String::new(),
        }
    }

    fn is_tool(&self) -> bool {
        matches!(
            self.kind.get().map(|k| &**k),
            Some("tool_use" | "tool_result")
        )
    }
}

/// The text an answer's content block gives the output check: a text block's text, a tool
/// call's input written out as JSON; nothing from other blocks.
fn block_text(kind: Option<&str>, text: Option<&str>, input: Option<&Value>) -> Option<String> {
    match kind {
        Some("text") => text.map(str::to_string),
        Some("tool_use") => input.map(Value::to_string),
        _ => None,
    }
}

/// What the output check reads of an answer: its text blocks and tool calls' inputs.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow)]
    content: Items<AnswerBlock<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnswerBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    #[serde(borrow)]
    text: Lenient<Text<'a>>,
    input: Lenient<Json>,
}

/// What the output check reads of a streamed event; `message` and `usage` are kept as sent,
/// for the events a block writes.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    index: Lenient<u64>,
    #[serde(borrow)]
    content_block: Lenient<Object<AnswerBlock<'a>>>,
    #[serde(borrow)]
    delta: Lenient<Object<Delta<'a>>>,
    message: Option<Value>,
    usage: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Delta<'a> {
    #[serde(borrow)]
    text: Lenient<Text<'a>>,
    #[serde(borrow)]
    partial_json: Lenient<Text<'a>>,
}

/// The state of a streamed message.
#[derive(Default)]
struct MessageStream {
    start: Option<Value>,
    /// Each block's text by its index (any number the upstream sends: a map, not a vector).
    blocks: BTreeMap<u64, String>,
    usage: Option<Value>,
    open: Option<u64>,
}

impl StreamCollector for MessageStream {
    fn event(&mut self, event: &Event) {
        let Ok(data) = read_body::<StreamEvent<'_>>(event.data.as_bytes()) else {
            return;
        };
        let index = data.index.get().copied().unwrap_or(0);
        let block = self.blocks.entry(index).or_default();
        match data.kind.get().map(|k| &**k) {
            Some("message_start") => self.start = data.message,
            Some("content_block_stop") => self.open = None,
            Some("content_block_start") => {
                self.open = Some(index);
                if let Some(Object(b)) = data.content_block.get() {
                    let kind = b.kind.get().map(|k| &**k);
                    let input = b.input.get().map(|Json(v)| v);
                    let text = block_text(kind, b.text.get().map(|t| &**t), input);
                    block.push_str(&text.unwrap_or_default());
                }
            }
            Some("content_block_delta") => {
                if let Some(Object(d)) = data.delta.get() {
                    let piece = d.text.get().or(d.partial_json.get());
                    block.push_str(piece.map_or("", |p| p));
                }
            }
            Some("message_delta") => self.usage = data.usage,
            _ => {}
        }
    }

    fn outputs(&self) -> Vec<String> {
        let texts: Vec<&str> = self
            .blocks
            .values()
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
    use crate::gateway::protocols::EVERY_SCAN;

    #[test]
    fn an_answer_gives_its_text_blocks_and_tool_inputs() {
        let read = |body: &str| AnthropicMessages.response_outputs(body.as_bytes());
        assert_eq!(
            read(
                r#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"Hi\nthere"},{"type":"thinking","thinking":"t"},{"type":"text","text":"more"}],"stop_reason":"end_turn"}"#
            ),
            Some(vec!["Hi\nthere\nmore".to_string()])
        );
        assert_eq!(
            read(
                r#"{"content":[{"type":"tool_use","name":"f","input":{"b":1,"a":[2.50]}},{"type":"text","text":["x"]},{"type":"text"},7]}"#
            ),
            Some(vec![r#"{"a":[2.5],"b":1}"#.to_string()])
        );
        for empty in [
            r#"{"content":null}"#,
            r#"{"content":"text"}"#,
            r#"{"type":"message"}"#,
        ] {
            assert_eq!(read(empty), Some(vec![String::new()]), "{empty}");
        }
        assert_eq!(
            read(r#"{"content":[{"type":"text","text":"\ud800"}]}"#),
            None
        );
    }

    #[test]
    fn requests_of_every_shape_give_their_texts_or_say_what_is_wrong() {
        let read =
            |body: &str| AnthropicMessages.request_conversation(body.as_bytes(), &EVERY_SCAN);
        let conv = read(r#"{"model":"c","stream":true,"system":[{"type":"text","text":"sys"},{"type":"image"}],"messages":[{"role":"user","content":"hi \u00e9"},{"role":"assistant","content":[{"type":"text","text":"ok"}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"found"},{"type":"image"}]},{"type":"tool_result","content":"plain"},{"type":"image","source":{}},{"type":"text","text":"and now?"},{"text":"untyped"},{"type":"document"}]}]}"#).expect("ok");
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
        assert!(conv.stream);
        let conv = read(r#"{"system":3,"messages":[{"role":"user","content":7},{"role":"user","content":{"type":"text"}},{"role":"user","content":[{"type":"tool_result","content":{"x":1}},{"type":"text","text":1}]},{"role":"user","content":"x"}],"stream":1}"#).expect("ok");
        assert_eq!(conv.parts, ["x"]);
        assert_eq!(conv.unscanned, ["text in messages[2]"]);
        assert!(!conv.stream);
        for bad in [
            r#"{"messages":[{"content":"no role"}]}"#,
            r#"{"max_tokens":10}"#,
            r#"[]"#,
            r#"{"messages":[["user"]]}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
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
        let body = body.to_string();
        let conv = AnthropicMessages
            .request_conversation(body.as_bytes(), &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.parts, ["and now?"]);
        assert_eq!(conv.unscanned, ["image in messages[2]"]);
        let conv = AnthropicMessages
            .request_conversation(body.as_bytes(), &EVERY_SCAN)
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

    #[test]
    fn a_block_index_of_any_size_takes_no_more_memory_than_its_text() {
        // Found by the adapters fuzz target: the blocks were a vector grown to the index.
        let text = concat!(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":566666600000000000,\"delta\":{\"type\":\"text_delta\",\"text\":\"late\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"early\"}}\n\n",
        );
        let mut c = AnthropicMessages.collector();
        for e in Parser::new().feed(text.as_bytes()) {
            c.event(&e);
        }
        assert_eq!(c.outputs(), ["early\nlate"], "in index order");
    }
}
