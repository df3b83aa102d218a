//! OpenAI Chat Completions (`POST /v1/chat/completions`, also Azure's deployment paths), JSON
//! and SSE. A withheld choice gets the replacement text and `finish_reason: "content_filter"`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;
use crate::prompt::Role;

use super::json::{
    content_text, items, read_body, read_with_texts, text, Content, Items, Lenient, Object, Text,
};
use super::{
    add_tool_result, add_user_turns, chunk_meta, cut_choices, data_frame, filter_results,
    indexed_outputs, push_part, set, start, with_roles, withhold_choices, Adapter, Answer, Block,
    Conversation, EventTexts, Place, StreamCollector,
};
use crate::gateway::protocols::sse::Event;

/// The Chat Completions adapter.
pub struct OpenAiChat;

impl Adapter for OpenAiChat {
    fn protocol(&self) -> &'static str {
        "openai_chat"
    }

    fn request_conversation(&self, body: &[u8], scan: &[Scan]) -> Result<Conversation, String> {
        let (request, texts) = read_with_texts::<Request<'_>>(body)?;
        let messages = with_roles(&request.messages, |m| m.role.get().map(|r| &**r))?;
        let mut conv = start(&request.stream, texts);
        for (i, (m, role)) in messages.into_iter().enumerate() {
            let place = Place("messages", i);
            match role {
                "user" => {
                    let text = content_text(&m.content, &place, &mut conv.unscanned);
                    conv.add_turn(Role::User, text);
                }
                "system" | "developer" if scan.contains(&Scan::System) => {
                    let text = content_text(&m.content, &place, &mut conv.unscanned);
                    push_part(&mut conv.parts, text);
                }
                "tool" => add_tool_result(&mut conv, scan, |unscanned| {
                    content_text(&m.content, &place, unscanned)
                }),
                "assistant" => {
                    conv.indirect.clear();
                    let text = content_text(&m.content, &place, &mut Vec::new());
                    conv.add_turn(Role::Assistant, text);
                    if scan.contains(&Scan::ToolCalls) {
                        push_part(&mut conv.parts, call_arguments(&m.tool_calls));
                    }
                }
                _ => {}
            }
        }
        add_user_turns(&mut conv, scan);
        Ok(conv)
    }

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        let (completion, texts) = read_with_texts::<Completion<'_>>(body).ok()?;
        let outputs = items(&completion.choices).map(|choice| {
            let message = choice.and_then(|c| c.message.get()).map(|Object(m)| m);
            message.map_or_else(String::new, |m| {
                join(text(&m.content), &call_arguments(&m.tool_calls))
            })
        });
        Some(Answer {
            outputs: outputs.collect(),
            texts,
        })
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

    /// A choice's content is text `(choice, 0)`, its tool call `i`'s arguments `(choice, 1 + i)`;
    /// a `finish_reason` ends the choice's texts, `[DONE]` every text.
    fn stream_texts(&self, event: &Event) -> EventTexts {
        if event.data.trim() == "[DONE]" {
            return EventTexts::ending_all();
        }
        let data = event.data.as_str();
        let mut texts = EventTexts::default();
        let Ok(chunk) = read_body::<Chunk<'_>>(data.as_bytes()) else {
            return texts;
        };
        for c in items(&chunk.choices).flatten() {
            let index = c.index.get().copied().unwrap_or(0);
            if let Some(Object(delta)) = c.delta.get() {
                let content = delta.content.get().and_then(|t| t.span_in(data));
                texts.pieces.extend(content.map(|span| ((index, 0), span)));
                for call in items(&delta.tool_calls).flatten() {
                    let i = call.index.get().copied().unwrap_or(0);
                    let arguments = call
                        .function
                        .get()
                        .and_then(|Object(f)| f.arguments.get())
                        .and_then(|a| a.span_in(data));
                    texts
                        .pieces
                        .extend(arguments.map(|span| ((index, i.saturating_add(1)), span)));
                }
            }
            if c.finish_reason.as_ref().is_some_and(|f| !f.is_null()) {
                texts.end_all_of(index);
            }
        }
        texts
    }
}

/// The arguments of a message's tool calls, one per line.
fn call_arguments(calls: &Items<ToolCall<'_>>) -> String {
    let arguments: Vec<&str> = items(calls)
        .flatten()
        .filter_map(|call| call.function.get())
        .filter_map(|Object(f)| f.arguments.get())
        .map(|a| &**a)
        .collect();
    arguments.join("\n")
}

/// What the input check reads of a request.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Request<'a> {
    #[serde(borrow)]
    messages: Lenient<Vec<Lenient<Object<RequestMessage<'a>>>>>,
    stream: Lenient<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestMessage<'a> {
    #[serde(borrow)]
    role: Lenient<Text<'a>>,
    #[serde(borrow)]
    content: Lenient<Content<'a>>,
    #[serde(borrow)]
    tool_calls: Items<ToolCall<'a>>,
}

/// What the output check reads of an answer.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Completion<'a> {
    #[serde(borrow)]
    choices: Items<Choice<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice<'a> {
    #[serde(borrow)]
    message: Lenient<Object<AnswerMessage<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnswerMessage<'a> {
    #[serde(borrow)]
    content: Lenient<Text<'a>>,
    #[serde(borrow)]
    tool_calls: Items<ToolCall<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Lenient<Object<Function<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Function<'a> {
    #[serde(borrow)]
    arguments: Lenient<Text<'a>>,
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

/// What the output check reads of a streamed chunk.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Chunk<'a> {
    #[serde(borrow)]
    choices: Items<ChunkChoice<'a>>,
    usage: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChunkChoice<'a> {
    index: Lenient<u64>,
    #[serde(borrow)]
    delta: Lenient<Object<Delta<'a>>>,
    finish_reason: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Lenient<Text<'a>>,
    #[serde(borrow)]
    tool_calls: Items<DeltaCall<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeltaCall<'a> {
    index: Lenient<u64>,
    #[serde(borrow)]
    function: Lenient<Object<Function<'a>>>,
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
        let Ok(chunk) = read_body::<Chunk<'_>>(event.data.as_bytes()) else {
            return;
        };
        if self.meta.is_none() {
            let keys = ["id", "object", "created", "model", "system_fingerprint"];
            self.meta = Some(chunk_meta(&event.data, &keys));
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in items(&chunk.choices).flatten() {
            let index = c.index.get().copied().unwrap_or(0);
            let state = self.choices.entry(index).or_default();
            let delta = c.delta.get().map(|Object(d)| d);
            state.text.push_str(delta.map_or("", |d| text(&d.content)));
            for call in delta
                .into_iter()
                .flat_map(|d| items(&d.tool_calls).flatten())
            {
                let i = call.index.get().copied().unwrap_or(0);
                let function = call.function.get().map(|Object(f)| f);
                if let Some(arguments) = function.and_then(|f| f.arguments.get()) {
                    state.tools.entry(i).or_default().push_str(arguments);
                }
            }
            if let Some(f) = &c.finish_reason {
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
        for (part, (&index, c)) in self.choices.iter().enumerate() {
            let withheld = blocked.get(part).copied().unwrap_or(false);
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
    use crate::gateway::protocols::EVERY_SCAN;

    #[test]
    fn each_choice_gives_its_text_and_tool_arguments() {
        let read = |body: &str| OpenAiChat.response_outputs(body.as_bytes());
        assert_eq!(
            read(
                r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"Hi\nthere \u00e9"},"finish_reason":"stop"}]}"#
            ),
            Some(vec!["Hi\nthere é".to_string()])
        );
        assert_eq!(
            read(
                r#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"q\":1}"}},{"function":{"name":"g","arguments":"2"}}]}},{"message":{"content":"b"}}]}"#
            ),
            Some(vec!["{\"q\":1}\n2".to_string(), "b".to_string()])
        );
        assert_eq!(
            read(
                r#"{"choices":[{"message":{"content":["part"]}},{"message":null},{},7,{"message":{"content":"a","tool_calls":[{"function":{"arguments":{"q":1}}}]}}]}"#
            ),
            Some(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "a".to_string()
            ])
        );
        assert_eq!(read(r#"{"choices":null}"#), Some(Vec::new()));
        assert_eq!(read(r#"[1, 2]"#), Some(Vec::new()));
        assert_eq!(
            read(r#"{"choices":[{"message":{"content":"\ud800"}}]}"#),
            None
        );
    }

    #[test]
    fn requests_of_other_shapes_read_as_the_protocol_allows() {
        let read = |body: &str| OpenAiChat.request_conversation(body.as_bytes(), &EVERY_SCAN);
        let conv = read(r#"{"messages":[{"role":"user"},{"role":"user","content":null},{"role":"assistant","tool_calls":null},{"role":"other","content":"x"},{"role":"user","content":42}]}"#).expect("ok");
        assert!(conv.parts.is_empty(), "{:?}", conv.parts);
        for bad in [
            r#"{"messages":[{"content":"no role"}]}"#,
            r#"{"messages":[{"role":1,"content":"x"}]}"#,
            r#"{"messages":[["user","x"]]}"#,
            r#"{"messages":"x"}"#,
            r#"{"model":"m"}"#,
            r#"[[{"role":"user","content":"x"}]]"#,
            r#"{"messages":[{"role":"user","content":"\ud800"}]}"#,
            r#"{"messages":[]} trailing"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        let conv = read(r#"{"messages":[],"stream":"yes"}"#).expect("ok");
        assert!(!conv.stream);
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
        let body = body.to_string();
        let conv = OpenAiChat
            .request_conversation(body.as_bytes(), &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.parts, ["last"]);
        assert_eq!(conv.prompt, "last");
        assert_eq!(conv.unscanned, ["input_audio in messages[4]"]);
        assert!(conv.stream);
        let conv = OpenAiChat
            .request_conversation(body.as_bytes(), &EVERY_SCAN)
            .expect("ok");
        assert_eq!(conv.parts, ["sys", "{\"q\":1}", "result", "first", "last"]);
        assert!(OpenAiChat
            .request_conversation(br#"{"messages": "x"}"#, &EVERY_SCAN)
            .is_err());
        assert!(OpenAiChat
            .request_conversation(br#"{"messages": [{}]}"#, &EVERY_SCAN)
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
    fn a_choice_index_of_any_size_is_one_part() {
        // The same defect the adapters fuzz target found in Anthropic streams: outputs were a
        // vector from 0 to the highest index.
        let text = concat!(
            "data: {\"choices\":[{\"index\":566666600000000000,\"delta\":{\"content\":\"far\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":3,\"delta\":{\"content\":\"near\"}}]}\n\n",
        );
        for adapter in [
            &OpenAiChat as &dyn Adapter,
            &super::super::openai_completions::OpenAiCompletions,
        ] {
            let mut collector = adapter.collector();
            let completions = text
                .replace("\"delta\":{\"content\":", "\"text\":")
                .replace("}}]", "}]");
            let body = if adapter.protocol() == "openai_chat" {
                text.to_string()
            } else {
                completions
            };
            for e in Parser::new().feed(body.as_bytes()) {
                collector.event(&e);
            }
            assert_eq!(
                collector.outputs(),
                ["near", "far"],
                "{}",
                adapter.protocol()
            );
            let block = Block {
                decision: &crate::gateway::decision::Decision::bare_block(
                    crate::gateway::decision::Direction::Output,
                ),
                reveal: crate::config::Reveal::None,
                replacement: "withheld",
            };
            let stream = collector.blocked_stream(&[false, true], &block);
            assert!(
                stream.contains("near") && !stream.contains("far"),
                "{stream}"
            );
        }
    }

    #[test]
    fn streamed_fields_of_other_types_read_as_absent() {
        let text = concat!(
            "data: {\"choices\":[{\"index\":\"1\",\"delta\":{\"content\":\"a\",\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":7}},{\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[7,{\"delta\":[\"b\"]},{\"delta\":{\"content\":{\"text\":\"c\"}}},{\"index\":0,\"delta\":{\"content\":\"d\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":{\"index\":0}}\n\n",
            "data: [\"not an object\"]\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\ud800\"}}]}\n\n",
        );
        let mut collector = OpenAiChat.collector();
        for e in Parser::new().feed(text.as_bytes()) {
            collector.event(&e);
        }
        assert_eq!(collector.outputs(), ["ad\n{}"]);
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
