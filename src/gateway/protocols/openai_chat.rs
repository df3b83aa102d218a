//! OpenAI Chat Completions (`POST /v1/chat/completions`, also Azure's deployment paths), JSON
//! and SSE. A withheld choice gets the replacement text and `finish_reason: "content_filter"`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;

use super::usual_shape::{Choices, Content, MessagesRequest, Object, Text};
use super::{
    add_user_turns, choices, chunk_meta, content_text, cut_choices, data_frame, filter_results,
    indexed_outputs, messages, no_role, push_part, set, start, withhold_choices, Adapter, Block,
    Conversation, Place, StreamCollector,
};
use crate::gateway::protocols::sse::Event;

/// The Chat Completions adapter.
pub struct OpenAiChat;

impl Adapter for OpenAiChat {
    fn protocol(&self) -> &'static str {
        "openai_chat"
    }

    fn conversation(&self, body: &Value, scan: &[Scan]) -> Result<Conversation, String> {
        chat_conversation(start(body), messages(body)?, scan)
    }

    fn usual_conversation(&self, body: &[u8], scan: &[Scan]) -> Option<Conversation> {
        let request = MessagesRequest::<RequestMessage<'_>>::read(body)?;
        chat_conversation(request.start(), &request.messages, scan).ok()
    }

    fn outputs(&self, body: &Value) -> Vec<String> {
        choices(body)
            .iter()
            .map(|c| {
                let m = c.get("message").unwrap_or(&Value::Null);
                let text = m.get("content").and_then(Value::as_str).unwrap_or("");
                join(text, &tool_arguments(m))
            })
            .collect()
    }

    fn usual_outputs(&self, body: &[u8]) -> Option<Vec<String>> {
        let Object(completion) =
            serde_json::from_slice::<Object<Choices<Choice<'_>>>>(body).ok()?;
        let texts = completion.choices.iter().map(|c| {
            let Some(Object(m)) = &c.0.message else {
                return String::new();
            };
            let tools = call_arguments(m.tool_calls.as_deref());
            join(m.content.as_deref().unwrap_or(""), &tools)
        });
        Some(texts.collect())
    }

    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>) {
        let results = filter_results(block);
        withhold_choices(body, blocked, |choice| {
            set(
                choice,
                "message",
                json!({"role": "assistant", "content": block.replacement}),
            );
            set(choice, "finish_reason", json!("content_filter"));
            set(choice, "content_filter_results", results.clone());
        });
    }

    fn collector(&self) -> Box<dyn StreamCollector> {
        Box::new(ChatStream::default())
    }
}

/// The conversation in a request's messages, whichever way they were read: the roles the
/// scan names give parts, the user turns the prompt.
fn chat_conversation<M: ChatMessage>(
    mut conv: Conversation,
    messages: &[M],
    scan: &[Scan],
) -> Result<Conversation, String> {
    let mut users = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.role().ok_or_else(|| no_role(i))?;
        let place = Place("messages", i);
        match role {
            "user" => users.push(m.content_text(&place, &mut conv.unscanned)),
            "system" | "developer" if scan.contains(&Scan::System) => {
                let text = m.content_text(&place, &mut conv.unscanned);
                push_part(&mut conv.parts, text);
            }
            "tool" if scan.contains(&Scan::ToolResults) => {
                let text = m.content_text(&place, &mut conv.unscanned);
                push_part(&mut conv.parts, text);
            }
            "assistant" if scan.contains(&Scan::ToolCalls) => {
                push_part(&mut conv.parts, m.tool_arguments());
            }
            _ => {}
        }
    }
    add_user_turns(&mut conv, users, scan);
    Ok(conv)
}

/// A request message as the input check reads it.
trait ChatMessage {
    /// Its role, if it has one.
    fn role(&self) -> Option<&str>;
    /// The text of its `content`; parts that cannot be scanned are noted in `unscanned`.
    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String;
    /// The arguments of its tool calls, one per line.
    fn tool_arguments(&self) -> String;
}

impl ChatMessage for Value {
    fn role(&self) -> Option<&str> {
        self.get("role").and_then(Value::as_str)
    }

    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        content_text(self.get("content"), place, unscanned)
    }

    fn tool_arguments(&self) -> String {
        tool_arguments(self)
    }
}

impl ChatMessage for Object<RequestMessage<'_>> {
    fn role(&self) -> Option<&str> {
        Some(&self.0.role)
    }

    fn content_text(&self, place: &Place, unscanned: &mut Vec<String>) -> String {
        Content::text_of(self.0.content.as_ref(), place, unscanned)
    }

    fn tool_arguments(&self) -> String {
        call_arguments(self.0.tool_calls.as_deref())
    }
}

/// The arguments of an assistant message's tool calls, one per line.
fn tool_arguments(message: &Value) -> String {
    message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| c.pointer("/function/arguments").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The arguments of tool calls read in the usual shape, one per line.
fn call_arguments(calls: Option<&[Object<ToolCall<'_>>]>) -> String {
    let arguments: Vec<&str> = calls
        .into_iter()
        .flatten()
        .filter_map(|call| call.0.function.as_ref()?.0.arguments.as_deref())
        .collect();
    arguments.join("\n")
}

/// A request message as [`OpenAiChat::conversation`] reads it, in the usual shape (see
/// [`Adapter::usual_conversation`]); other fields are skipped unread.
#[derive(Deserialize)]
struct RequestMessage<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<Object<ToolCall<'a>>>>,
}

/// A choice as [`OpenAiChat::outputs`] reads it, in the usual shape (see
/// [`Adapter::usual_outputs`]); other fields are skipped unread.
#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Option<Object<Message<'a>>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<Object<ToolCall<'a>>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Object<Function<'a>>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        (false, false) => format!("{a}\n{b}"),
    }
}

#[derive(Default)]
struct ChoiceText {
    text: String,
    tools: BTreeMap<u64, String>,
    finish: Value,
}

/// The state of a streamed chat completion.
#[derive(Default)]
struct ChatStream {
    meta: Option<Value>,
    choices: BTreeMap<u64, ChoiceText>,
    usage: Option<Value>,
}

impl StreamCollector for ChatStream {
    fn event(&mut self, event: &Event) {
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        if self.meta.is_none() {
            let keys = ["id", "object", "created", "model", "system_fingerprint"];
            self.meta = Some(chunk_meta(&chunk, &keys));
        }
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            self.usage = chunk.get("usage").cloned();
        }
        for c in choices(&chunk) {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let state = self.choices.entry(index).or_default();
            if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                state.text.push_str(t);
            }
            for call in c
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    state.tools.entry(i).or_default().push_str(a);
                }
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                state.finish = f.clone();
            }
        }
    }

    fn outputs(&self) -> Vec<String> {
        indexed_outputs(&self.choices, |c| {
            let tools: Vec<&str> = c.tools.values().map(String::as_str).collect();
            join(
                &c.text,
                &tools.join(
                    "
",
                ),
            )
        })
    }

    fn blocked_stream(&self, blocked: &[bool], block: &Block<'_>) -> String {
        let meta = self
            .meta
            .clone()
            .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
        let chunk = |choice: Value| {
            let mut c = meta.clone();
            set(&mut c, "choices", json!([choice]));
            data_frame(&c)
        };
        let mut out = String::new();
        for (&index, c) in &self.choices {
            let withheld = blocked.get(index as usize).copied().unwrap_or(false);
            let (text, finish) = if withheld {
                (block.replacement.to_string(), json!("content_filter"))
            } else {
                (c.text.clone(), c.finish.clone())
            };
            out += &chunk(
                json!({"index": index, "delta": {"role": "assistant", "content": text}, "finish_reason": null}),
            );
            let mut last = json!({"index": index, "delta": {}, "finish_reason": finish});
            if withheld {
                set(&mut last, "content_filter_results", filter_results(block));
            }
            out += &chunk(last);
        }
        if let Some(usage) = &self.usage {
            let mut c = meta.clone();
            set(&mut c, "choices", json!([]));
            set(&mut c, "usage", usage.clone());
            out += &data_frame(&c);
        }
        out + "data: [DONE]\n\n"
    }

    fn terminate(&self, block: &Block<'_>) -> String {
        let meta = self
            .meta
            .clone()
            .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
        let finished = self
            .choices
            .iter()
            .map(|(i, c)| (*i, !c.finish.is_null()))
            .collect();
        cut_choices(&meta, &finished, |index| {
            json!({"index": index, "delta": {}, "finish_reason": "content_filter",
                   "content_filter_results": filter_results(block)})
        })
    }
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
            r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"Hi\nthere \u00e9"},"finish_reason":"stop"}],"usage":{"total_tokens":3}}"#,
            r#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"q\":1}"}},{"function":{"name":"g","arguments":"2"}}]}},{"message":{"content":"b"}}]}"#,
            r#"{"choices":[{"message":{"content":"a","tool_calls":[{"type":"function"}]}},{"message":null},{}]}"#,
            r#"{"choices":[]}"#,
        ];
        let unusual = [
            r#"{"choices":[{"message":{"content":["part"]}}]}"#,
            r#"{"choices":[{"message":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"message":{"tool_calls":[{"function":{"arguments":{"q":1}}}]}}]}"#,
            r#"{"choices":null}"#,
            r#"{"object":"error"}"#,
            r#"[1, 2]"#,
        ];
        assert_usual_outputs_agree(&OpenAiChat, &usual, &unusual);
        let texts = |body: &str| OpenAiChat.usual_outputs(body.as_bytes());
        assert_eq!(texts(usual[0]), Some(vec!["Hi\nthere é".to_string()]));
        assert_eq!(
            texts(usual[1]),
            Some(vec!["{\"q\":1}\n2".to_string(), "b".to_string()])
        );
    }

    #[test]
    fn the_usual_request_is_read_without_a_value_and_gives_the_same_conversation() {
        let usual = [
            r#"{"model":"m","messages":[{"role":"user","content":"What is a good name for a cat?"}]}"#,
            r#"{"model":"m","stream":true,"temperature":0.5,"messages":[{"role":"system","content":"Be brief.\nPlease."},{"role":"user","content":"hi \u00e9"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"q\":1}"}},{"type":"function"}]},{"role":"tool","tool_call_id":"c","content":"result"},{"role":"developer","content":[{"type":"text","text":"dev"}]},{"role":"user","content":[{"type":"text","text":"last"},{"type":"image_url","image_url":{"url":"x"}},{"type":"refusal","refusal":"no"},{"text":"untyped"},{"type":"input_audio"}]}]}"#,
            r#"{"messages":[],"stream":null}"#,
            r#"{"messages":[{"role":"user"},{"role":"user","content":null},{"role":"assistant","tool_calls":null},{"role":"other","content":"x"}]}"#,
        ];
        let unusual = [
            r#"{"messages":[{"content":"no role"}]}"#,
            r#"{"messages":[{"role":1,"content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":42}]}"#,
            r#"{"messages":[{"role":"user","content":{"text":"x"}}]}"#,
            r#"{"messages":[{"role":"user","content":["part"]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":7,"text":"x"}]}]}"#,
            r#"{"messages":[{"role":"user","content":"a","content":"b"}]}"#,
            r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":{"q":1}}}]}]}"#,
            r#"{"messages":[{"role":"assistant","tool_calls":[["function"]]}]}"#,
            r#"{"messages":[["user","x"]]}"#,
            r#"{"messages":"x"}"#,
            r#"{"messages":[],"stream":"yes"}"#,
            r#"{"system":3,"messages":[]}"#,
            r#"{"model":"m"}"#,
            r#"[[{"role":"user","content":"x"}]]"#,
            r#"{"messages":[{"role":"user","content":"\ud800"}]}"#,
        ];
        assert_usual_conversation_agrees(&OpenAiChat, &usual, &unusual);
        let conv = OpenAiChat
            .usual_conversation(usual[0].as_bytes(), &[Scan::LastUser])
            .expect("usual");
        assert_eq!(conv.parts, ["What is a good name for a cat?"]);
    }

    #[test]
    fn scan_settings_choose_the_parts() {
        let body = json!({"model": "m", "stream": true, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"q\":1}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "result"},
            {"role": "user", "content": [{"type": "text", "text": "last"}, {"type": "input_audio", "input_audio": {}}]},
        ]});
        let conv = OpenAiChat
            .conversation(&body, &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.parts, ["last"]);
        assert_eq!(conv.prompt, "last");
        assert_eq!(conv.unscanned, ["input_audio in messages[4]"]);
        assert!(conv.stream);
        let conv = OpenAiChat.conversation(&body, &EVERY_SCAN).expect("ok");
        assert_eq!(conv.parts, ["sys", "{\"q\":1}", "result", "first", "last"]);
        assert!(OpenAiChat
            .conversation(&json!({"messages": "x"}), &EVERY_SCAN)
            .is_err());
        assert!(OpenAiChat
            .conversation(&json!({"messages": [{}]}), &EVERY_SCAN)
            .is_err());
    }

    #[test]
    fn streamed_choices_are_reassembled() {
        let text = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"Other\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let mut collector = OpenAiChat.collector();
        for e in Parser::new().feed(text.as_bytes()) {
            collector.event(&e);
        }
        assert_eq!(collector.outputs(), ["Hello", "Other"]);
    }

    #[test]
    fn a_cut_stream_ends_only_the_choices_still_open() {
        let text = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"},\"finish_reason\":null}]}\n\n",
        );
        let mut collector = OpenAiChat.collector();
        for e in Parser::new().feed(text.as_bytes()) {
            collector.event(&e);
        }
        let decision = crate::gateway::decision::Decision::bare_block(
            crate::gateway::decision::Direction::Output,
        );
        let block = Block {
            decision: &decision,
            reveal: crate::config::Reveal::None,
            replacement: "x",
        };
        let end = collector.terminate(&block);
        let frames: Vec<Value> = Parser::new()
            .feed(end.as_bytes())
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).expect("json"))
            .collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["choices"][0]["index"], 1);
        assert_eq!(frames[0]["choices"][0]["finish_reason"], "content_filter");
        assert!(end.ends_with("data: [DONE]\n\n"));
        let empty = OpenAiChat.collector().terminate(&block);
        assert!(
            empty.contains("\"index\":0"),
            "choice 0 when none was seen: {empty}"
        );
    }
}
