//! OpenAI legacy Completions (`POST /v1/completions`), JSON and SSE: the prompt is the user
//! turn; a withheld choice gets the replacement text and `finish_reason: "content_filter"`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::Scan;

use super::json::{is_type_error, items, read_body, read_with_texts, text, Items, Lenient, Text};
use super::{
    chunk_meta, cut_choices, data_frame, filter_results, indexed_outputs, push_part, set, start,
    withhold_choices, Adapter, Answer, Block, Conversation, EventTexts, StreamCollector,
};
use crate::gateway::protocols::sse::Event;

/// The Completions adapter.
pub struct OpenAiCompletions;

impl Adapter for OpenAiCompletions {
    fn protocol(&self) -> &'static str {
        "openai_completions"
    }

    fn request_conversation(&self, body: &[u8], _scan: &[Scan]) -> Result<Conversation, String> {
        let (request, texts) = read_with_texts::<Request<'_>>(body)?;
        let mut conv = start(&request.stream, texts);
        let prompts: Vec<String> = match request.prompt.get() {
            Some(Prompt::One(text)) => vec![text.to_string()],
            Some(Prompt::Many(texts)) => texts.iter().map(|t| t.to_string()).collect(),
            Some(Prompt::Tokens) => {
                conv.unscanned.push("token ids in prompt".into());
                Vec::new()
            }
            None => return Err("the request has no \"prompt\" string".into()),
        };
        conv.prompt = prompts.join("\n");
        prompts
            .into_iter()
            .for_each(|p| push_part(&mut conv.parts, p));
        Ok(conv)
    }

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        let (completion, texts) = read_with_texts::<Completion<'_>>(body).ok()?;
        let outputs = items(&completion.choices).map(|c| c.map_or("", |c| text(&c.text)));
        Some(Answer {
            outputs: outputs.map(str::to_string).collect(),
            texts,
        })
    }

    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>) {
        let results = filter_results(block);
        withhold_choices(body, blocked, |choice| {
            set(choice, "text", json!(block.replacement));
            set(choice, "finish_reason", json!("content_filter"));
            set(choice, "content_filter_results", results.clone());
        });
    }

    fn collector(&self) -> Box<dyn StreamCollector> {
        Box::new(CompletionStream::default())
    }

    /// A choice's text is text `(choice, 0)`, ended by its `finish_reason`; `[DONE]` ends
    /// every text.
    fn stream_texts(&self, event: &Event) -> EventTexts {
        if event.data.trim() == "[DONE]" {
            return EventTexts::ending_all();
        }
        let data = event.data.as_str();
        let mut texts = EventTexts::default();
        let Ok(chunk) = read_body::<Completion<'_>>(data.as_bytes()) else {
            return texts;
        };
        for c in items(&chunk.choices).flatten() {
            let index = c.index.get().copied().unwrap_or(0);
            let span = c.text.get().and_then(|t| t.span_in(data));
            texts.pieces.extend(span.map(|span| ((index, 0), span)));
            if c.finish_reason.as_ref().is_some_and(|f| !f.is_null()) {
                texts.end_all_of(index);
            }
        }
        texts
    }
}

/// What the input check reads of a request.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Request<'a> {
    #[serde(borrow)]
    prompt: Lenient<Prompt<'a>>,
    stream: Lenient<bool>,
}

/// A `prompt`: one string, a list of strings, or token ids (not scanned).
enum Prompt<'a> {
    One(Text<'a>),
    Many(Vec<Text<'a>>),
    Tokens,
}

impl<'de: 'a, 'a> Deserialize<'de> for Prompt<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = <&'de RawValue>::deserialize(deserializer)?.get();
        let read = if raw.starts_with('"') {
            serde_json::from_str(raw).map(Prompt::One)
        } else {
            // Strings, or else (token ids) anything but what cannot be decoded.
            match serde_json::from_str(raw) {
                Err(e) if is_type_error(&e) && raw.starts_with('[') => Ok(Prompt::Tokens),
                read => read.map(Prompt::Many),
            }
        };
        read.map_err(D::Error::custom)
    }
}

/// What the output check reads of an answer, and of each chunk of a streamed one.
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
    text: Lenient<Text<'a>>,
    index: Lenient<u64>,
    finish_reason: Option<Value>,
}

/// The state of a streamed completion.
#[derive(Default)]
struct CompletionStream {
    meta: Option<Value>,
    choices: BTreeMap<u64, (String, Value)>,
}

impl StreamCollector for CompletionStream {
    fn event(&mut self, event: &Event) {
        let Ok(chunk) = read_body::<Completion<'_>>(event.data.as_bytes()) else {
            return;
        };
        if self.meta.is_none() {
            let keys = ["id", "object", "created", "model"];
            self.meta = Some(chunk_meta(&event.data, &keys));
        }
        for c in items(&chunk.choices).flatten() {
            let index = c.index.get().copied().unwrap_or(0);
            let state = self
                .choices
                .entry(index)
                .or_insert((String::new(), Value::Null));
            state.0.push_str(text(&c.text));
            if let Some(f) = &c.finish_reason {
                state.1 = f.clone();
            }
        }
    }

    fn outputs(&self) -> Vec<String> {
        indexed_outputs(&self.choices, |c| c.0.clone())
    }

    fn blocked_stream(&self, blocked: &[bool], block: &Block<'_>) -> String {
        let meta = self
            .meta
            .clone()
            .unwrap_or_else(|| json!({"object": "text_completion"}));
        let mut out = String::new();
        for (part, (&index, (text, finish))) in self.choices.iter().enumerate() {
            let withheld = blocked.get(part).copied().unwrap_or(false);
            let mut choice = if withheld {
                json!({"index": index, "text": block.replacement, "finish_reason": "content_filter",
                       "content_filter_results": filter_results(block)})
            } else {
                json!({"index": index, "text": text, "finish_reason": finish})
            };
            set(&mut choice, "logprobs", Value::Null);
            let mut c = meta.clone();
            set(&mut c, "choices", json!([choice]));
            out += &data_frame(&c);
        }
        out + "data: [DONE]\n\n"
    }

    fn terminate(&self, block: &Block<'_>) -> String {
        let meta = self
            .meta
            .clone()
            .unwrap_or_else(|| json!({"object": "text_completion"}));
        let finished = self
            .choices
            .iter()
            .map(|(i, c)| (*i, !c.1.is_null()))
            .collect();
        cut_choices(&meta, &finished, |index| {
            json!({"index": index, "text": "", "finish_reason": "content_filter", "logprobs": null,
                   "content_filter_results": filter_results(block)})
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(body: &str) -> Result<Conversation, String> {
        OpenAiCompletions.request_conversation(body.as_bytes(), &[Scan::LastUser])
    }

    #[test]
    fn prompts_are_the_parts() {
        let conv =
            conversation(r#"{"prompt":["a","b \"quoted\"","  "],"stream":true}"#).expect("ok");
        assert_eq!(conv.parts, ["a", "b \"quoted\""]);
        assert_eq!(conv.prompt, "a\nb \"quoted\"\n  ");
        assert!(conv.stream);
        let conv = conversation(r#"{"prompt":"caf\u00e9","stream":"yes"}"#).expect("ok");
        assert_eq!((conv.parts, conv.stream), (vec!["café".to_string()], false));
        for tokens in [
            r#"{"prompt":[1,2]}"#,
            r#"{"prompt":[[1,2]]}"#,
            r#"{"prompt":["a",2]}"#,
        ] {
            let conv = conversation(tokens).expect("ok");
            assert_eq!(conv.unscanned, ["token ids in prompt"], "{tokens}");
            assert!(conv.parts.is_empty());
        }
        for bad in [
            r#"{}"#,
            r#"{"prompt":null}"#,
            r#"{"prompt":{"text":"x"}}"#,
            "[1]",
        ] {
            assert!(conversation(bad).is_err(), "{bad}");
        }
        assert!(conversation(r#"{"prompt":"\udc00"}"#).is_err());
    }

    #[test]
    fn each_choice_gives_its_text() {
        let read = |body: &str| OpenAiCompletions.response_outputs(body.as_bytes());
        assert_eq!(
            read(
                r#"{"id":"c","choices":[{"text":"Once\nupon","index":0},{"text":null},{},7,{"text":3}]}"#
            ),
            Some(vec![
                "Once\nupon".to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new()
            ])
        );
        assert_eq!(read(r#"{"choices":{}}"#), Some(Vec::new()));
        assert_eq!(read(r#"{"error":{}}"#), Some(Vec::new()));
        assert_eq!(read("{\"choices\": ["), None);
        assert_eq!(read(r#"{"choices":[{"text":"\ud800"}]}"#), None);
    }
}
