//! OpenAI Responses (`POST /v1/responses`), JSON and SSE. A withheld answer is
//! `status: "incomplete"` with `incomplete_details.reason: "content_filter"` and the
//! replacement text as its only output; a withheld stream ends with `response.incomplete`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::gateway::protocols::sse::{frame, Event};
use crate::prompt::Role;

use super::json::{
    content_text, items, read_body, read_with_texts, text, Content, Items, Lenient, Object, Text,
};
use super::{
    add_tool_result, add_user_turns, push_part, set, start, Adapter, Answer, Block, Conversation,
    EventTexts, Place, StreamCollector,
};

/// The Responses adapter.
pub struct OpenAiResponses;

impl Adapter for OpenAiResponses {
    fn protocol(&self) -> &'static str {
        "openai_responses"
    }

    fn request_conversation(&self, body: &[u8], scan: &[Scan]) -> Result<Conversation, String> {
        let (request, texts) = read_with_texts::<Request<'_>>(body)?;
        let input = request
            .input
            .get()
            .ok_or("the request has no \"input\" (a string or a list of items)")?;
        let mut conv = start(&request.stream, texts);
        if scan.contains(&Scan::System) {
            push_part(&mut conv.parts, text(&request.instructions).to_string());
        }
        match input {
            Content::Text(s) => conv.add_turn(Role::User, s.to_string()),
            Content::Parts(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Some(Object(item)) = item.get() else {
                        continue;
                    };
                    let place = Place("input", i);
                    let kind = item.kind.get().map_or("message", |k| k);
                    match (kind, text(&item.role)) {
                        ("message", "user") => {
                            let text = content_text(&item.content, &place, &mut conv.unscanned);
                            conv.add_turn(Role::User, text);
                        }
                        ("message", "system" | "developer") if scan.contains(&Scan::System) => {
                            let text = content_text(&item.content, &place, &mut conv.unscanned);
                            push_part(&mut conv.parts, text);
                        }
                        ("function_call", _) if scan.contains(&Scan::ToolCalls) => {
                            push_part(&mut conv.parts, text(&item.arguments).to_string());
                        }
                        ("function_call_output", _) => {
                            add_tool_result(&mut conv, scan, |unscanned| {
                                content_text(&item.output, &place, unscanned)
                            })
                        }
                        ("message", "assistant") => {
                            conv.indirect.clear();
                            let text = content_text(&item.content, &place, &mut Vec::new());
                            conv.add_turn(Role::Assistant, text);
                        }
                        _ => {}
                    }
                }
            }
        }
        add_user_turns(&mut conv, scan);
        Ok(conv)
    }

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        let (response, spans) = read_with_texts::<Response<'_>>(body).ok()?;
        let mut texts: Vec<&str> = Vec::new();
        for item in items(&response.output).flatten() {
            match item.kind.get().map(|k| &**k) {
                Some("message") => texts.extend(
                    items(&item.content)
                        .flatten()
                        .filter_map(|p| p.text.get())
                        .map(|t| &**t),
                ),
                Some("function_call") => texts.extend(item.arguments.get().map(|a| &**a)),
                _ => {}
            }
        }
        Some(Answer {
            outputs: vec![texts.join("\n")],
            texts: spans,
        })
    }

    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>) {
        if blocked.first().copied().unwrap_or(false) {
            withhold(body, block.replacement);
        }
    }

    fn collector(&self) -> Box<dyn StreamCollector> {
        Box::new(ResponseStream::default())
    }

    /// Every `*.delta` event's `delta` (audio aside) is a piece of text `(output_index,
    /// content_index or summary_index)`; a `*.done` event ends its text (the whole output item
    /// without a content index); an event with the `response` ends every text. The texts
    /// `*.done` events, items, parts and responses carry are whole texts.
    fn stream_texts(&self, event: &Event) -> EventTexts {
        let data = event.data.as_str();
        let Ok((read, spans)) = read_with_texts::<StreamTexts<'_>>(data.as_bytes()) else {
            return EventTexts::default();
        };
        let kind = text(&read.kind);
        let key = (
            read.output_index.get().copied().unwrap_or(0),
            read.content_index
                .get()
                .or(read.summary_index.get())
                .copied()
                .unwrap_or(0),
        );
        let delta = read
            .delta
            .get()
            .filter(|_| kind.ends_with(".delta") && kind != "response.audio.delta")
            .and_then(|d| d.span_in(data));
        let kind_span = read.kind.get().and_then(|k| k.span_in(data));
        let mut texts = EventTexts::read(spans, delta.map(|span| (key, span)), kind_span);
        if read.response.get().is_some() || kind == "error" {
            return EventTexts {
                ends: EventTexts::ending_all().ends,
                ..texts
            };
        }
        if kind.ends_with(".done") {
            if read
                .content_index
                .get()
                .or(read.summary_index.get())
                .is_some()
            {
                texts.ends.push(key..=key);
            } else {
                texts.end_all_of(key.0);
            }
        }
        texts
    }
}

/// What the input check reads of a request: `input` is a string or a list of items.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Request<'a> {
    #[serde(borrow)]
    input: Lenient<Content<'a, RequestItem<'a>>>,
    #[serde(borrow)]
    instructions: Lenient<Text<'a>>,
    stream: Lenient<bool>,
}

/// An input item: a message (the default type), a function call or a function's output.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestItem<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    #[serde(borrow)]
    role: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Lenient<Content<'a>>,
    #[serde(borrow)]
    arguments: Lenient<Text<'a>>,
    #[serde(borrow)]
    output: Lenient<Content<'a>>,
}

/// What the output check reads of an answer.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Response<'a> {
    #[serde(borrow)]
    output: Items<Item<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Item<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Items<Part<'a>>,
    #[serde(borrow)]
    arguments: Lenient<Text<'a>>,
    /// A reasoning item's summary: not checked, but masked like the rest.
    #[serde(borrow)]
    summary: Items<Part<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Part<'a> {
    #[serde(borrow)]
    text: Lenient<Text<'a>>,
}

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

/// Where the texts of a streamed event are: a delta, or the whole texts of a done event, an
/// item, a part or the response.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamTexts<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    output_index: Lenient<u64>,
    content_index: Lenient<u64>,
    summary_index: Lenient<u64>,
    #[serde(borrow)]
    delta: Lenient<Text<'a>>,
    #[serde(borrow)]
    text: Lenient<Text<'a>>,
    #[serde(borrow)]
    arguments: Lenient<Text<'a>>,
    #[serde(borrow)]
    part: Lenient<Object<Part<'a>>>,
    #[serde(borrow)]
    item: Lenient<Object<Item<'a>>>,
    #[serde(borrow)]
    response: Lenient<Object<Response<'a>>>,
}

/// What the output check reads of a streamed event; `response` is kept as sent, for the events
/// a block writes.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Lenient<Text<'a>>,
    sequence_number: Lenient<u64>,
    #[serde(borrow)]
    item_id: Lenient<Text<'a>>,
    #[serde(borrow)]
    delta: Lenient<Text<'a>>,
    response: Option<Value>,
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
        let Ok(data) = read_body::<StreamEvent<'_>>(event.data.as_bytes()) else {
            return;
        };
        if let Some(&n) = data.sequence_number.get() {
            self.sequence = self.sequence.max(n);
        }
        match data.kind.get().map(|k| &**k) {
            Some("response.output_text.delta" | "response.function_call_arguments.delta") => {
                let item = data.item_id.get().map(|i| i.to_string());
                if !self.text.is_empty() && item != self.item {
                    self.text.push('\n');
                }
                self.item = item;
                self.text.push_str(text(&data.delta));
            }
            Some(_) if data.response.is_some() => self.response = data.response,
            _ => {}
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
    use crate::gateway::protocols::EVERY_SCAN;

    fn conversation(body: &str, scan: &[Scan]) -> Result<Conversation, String> {
        OpenAiResponses.request_conversation(body.as_bytes(), scan)
    }

    #[test]
    fn items_and_instructions_follow_the_scan_settings() {
        let body = r#"{"model":"m","instructions":"be nice","stream":true,"input":[{"role":"user","content":"first"},{"type":"function_call","call_id":"c","name":"f","arguments":"{\"a\":1}"},{"type":"function_call_output","call_id":"c","output":"42"},{"type":"message","role":"system","content":[{"type":"input_text","text":"sys"}]},{"type":"message","role":"developer","content":"dev"},{"type":"message","role":"user","content":[{"type":"input_text","text":"second"},{"type":"input_image","image_url":"x"}]}]}"#;
        let conv = conversation(body, &[Scan::LastUser]).expect("ok");
        assert_eq!(conv.parts, ["second"]);
        assert_eq!(conv.unscanned, ["input_image in input[5]"]);
        assert!(conv.stream);
        let conv = conversation(body, &EVERY_SCAN).expect("ok");
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
        let conv = conversation(r#"{"input": "hi"}"#, &EVERY_SCAN).expect("ok");
        assert_eq!(conv.parts, ["hi"]);
    }

    #[test]
    fn items_of_other_shapes_read_as_absent() {
        let conv = conversation(
            r#"{"input":[{"type":"reasoning","summary":[]},["text"],{"type":7,"role":"user","content":"x"},{"role":"user","content":{"text":"y"}},{"type":"function_call","arguments":{"a":1}},{"type":"function_call_output","output":{"ok":true}}],"instructions":["be nice"],"stream":"yes"}"#,
            &EVERY_SCAN,
        )
        .expect("ok");
        assert_eq!(conv.parts, ["x"]);
        assert!(!conv.stream);
        for bad in [
            r#"{"model":"m"}"#,
            r#"{"input":null}"#,
            r#"{"input":42}"#,
            r#"{"input":"\ud800"}"#,
        ] {
            assert!(conversation(bad, &EVERY_SCAN).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_text_joins_messages_and_calls() {
        let read = |body: &str| OpenAiResponses.response_outputs(body.as_bytes());
        assert_eq!(
            read(
                r#"{"output":[{"type":"reasoning","summary":[]},{"type":"message","content":[{"type":"output_text","text":"Hello"},{"type":"refusal","refusal":"no"}]},{"type":"function_call","arguments":"{}"}]}"#
            ),
            Some(vec!["Hello\n{}".to_string()])
        );
        assert_eq!(
            read(
                r#"{"output":[{"type":"message","content":[{"text":{"value":"x"}}]},{"type":"function_call","arguments":{"q":1}},{"type":7}]}"#
            ),
            Some(vec![String::new()])
        );
        assert_eq!(read(r#"{"output":null}"#), Some(vec![String::new()]));
        assert_eq!(read("not json"), None);
    }
}
