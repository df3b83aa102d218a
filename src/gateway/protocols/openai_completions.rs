//! OpenAI legacy Completions (`POST /v1/completions`), JSON and SSE: the prompt is the user
//! turn; a withheld choice gets the replacement text and `finish_reason: "content_filter"`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Scan;

use super::usual_shape::{Choices, Object, Text};
use super::{
    choices, chunk_meta, cut_choices, data_frame, filter_results, indexed_outputs, push_part, set,
    start, withhold_choices, Adapter, Block, Conversation, StreamCollector,
};
use crate::gateway::protocols::sse::Event;

/// The Completions adapter.
pub struct OpenAiCompletions;

impl Adapter for OpenAiCompletions {
    fn protocol(&self) -> &'static str {
        "openai_completions"
    }

    fn conversation(&self, body: &Value, _scan: &[Scan]) -> Result<Conversation, String> {
        let mut conv = start(body);
        let prompts: Vec<String> = match body.get("prompt") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::Array(_)) => {
                conv.unscanned.push("token ids in prompt".into());
                Vec::new()
            }
            _ => return Err("the request has no \"prompt\" string".into()),
        };
        Ok(prompt_conversation(conv, prompts))
    }

    fn usual_conversation(&self, body: &[u8], _scan: &[Scan]) -> Option<Conversation> {
        let Object(request) = serde_json::from_slice::<Object<Request<'_>>>(body).ok()?;
        let prompts = match request.prompt {
            Prompt::One(text) => vec![text.into_string()],
            Prompt::Many(texts) => texts.into_iter().map(Text::into_string).collect(),
        };
        let conv = Conversation {
            stream: request.stream.unwrap_or(false),
            ..Conversation::default()
        };
        Some(prompt_conversation(conv, prompts))
    }

    fn outputs(&self, body: &Value) -> Vec<String> {
        choices(body)
            .iter()
            .map(|c| {
                c.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    fn usual_outputs(&self, body: &[u8]) -> Option<Vec<String>> {
        let Object(completion) =
            serde_json::from_slice::<Object<Choices<Choice<'_>>>>(body).ok()?;
        let texts = completion
            .choices
            .into_iter()
            .map(|Object(c)| c.text.map_or_else(String::new, Text::into_string));
        Some(texts.collect())
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
}

/// The prompts are the output check's prompt (joined) and the input check's parts.
fn prompt_conversation(mut conv: Conversation, prompts: Vec<String>) -> Conversation {
    conv.prompt = prompts.join("\n");
    prompts
        .into_iter()
        .for_each(|p| push_part(&mut conv.parts, p));
    conv
}

/// A request as [`OpenAiCompletions::conversation`] reads it, in the usual shape (see
/// [`Adapter::usual_conversation`]): a prompt of text (token ids go the `Value` way); other
/// fields are skipped unread.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    prompt: Prompt<'a>,
    #[serde(default)]
    stream: Option<bool>,
}

/// A `prompt`: one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    One(#[serde(borrow)] Text<'a>),
    Many(#[serde(borrow)] Vec<Text<'a>>),
}

/// The state of a streamed completion.
#[derive(Default)]
struct CompletionStream {
    meta: Option<Value>,
    choices: BTreeMap<u64, (String, Value)>,
}

impl StreamCollector for CompletionStream {
    fn event(&mut self, event: &Event) {
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        if self.meta.is_none() {
            self.meta = Some(chunk_meta(&chunk, &["id", "object", "created", "model"]));
        }
        for c in choices(&chunk) {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let state = self
                .choices
                .entry(index)
                .or_insert((String::new(), Value::Null));
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                state.0.push_str(t);
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
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
        for (&index, (text, finish)) in &self.choices {
            let withheld = blocked.get(index as usize).copied().unwrap_or(false);
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

/// A choice as [`OpenAiCompletions::outputs`] reads it, in the usual shape (see
/// [`Adapter::usual_outputs`]); other fields are skipped unread.
#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::protocols::{assert_usual_conversation_agrees, assert_usual_outputs_agree};

    #[test]
    fn usual_requests_are_read_without_a_value_and_the_same_way() {
        let usual = [
            r#"{"model":"m","prompt":"Once upon a time","max_tokens":16,"stream":true}"#,
            r#"{"prompt":["a","b \"quoted\"","  "],"stream":false}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":"caf\u00e9","stream":null}"#,
        ];
        let unusual = [
            r#"{"prompt":[1,2]}"#,
            r#"{"prompt":["a",2]}"#,
            r#"{"prompt":[[1,2]]}"#,
            r#"{"prompt":null}"#,
            r#"{"prompt":{"text":"x"}}"#,
            r#"{"model":"m"}"#,
            r#"{"prompt":"a","prompt":"b"}"#,
            r#"{"prompt":"x","stream":"yes"}"#,
            r#"{"prompt":"\udc00"}"#,
        ];
        assert_usual_conversation_agrees(&OpenAiCompletions, &usual, &unusual);
        let conv = OpenAiCompletions
            .usual_conversation(usual[1].as_bytes(), &[Scan::LastUser])
            .expect("usual");
        assert_eq!(conv.parts, ["a", "b \"quoted\""]);
        assert_eq!(conv.prompt, "a\nb \"quoted\"\n  ");
    }

    #[test]
    fn the_usual_shape_is_read_without_a_value_and_with_the_same_texts() {
        let usual = [
            r#"{"id":"c","choices":[{"text":"Once\nupon","index":0,"finish_reason":"stop"},{"text":null},{}],"usage":{}}"#,
            r#"{"choices":[]}"#,
        ];
        let unusual = [
            r#"{"choices":[{"text":7}]}"#,
            r#"{"choices":[{"text":"a","text":"b"}]}"#,
            r#"{"choices":{}}"#,
            r#"{"error":{}}"#,
        ];
        assert_usual_outputs_agree(&OpenAiCompletions, &usual, &unusual);
    }

    #[test]
    fn prompts_are_the_parts() {
        let conv = OpenAiCompletions
            .conversation(
                &json!({"prompt": ["a", "b"], "stream": false}),
                &[Scan::LastUser],
            )
            .expect("ok");
        assert_eq!(conv.parts, ["a", "b"]);
        let conv = OpenAiCompletions
            .conversation(&json!({"prompt": [1, 2]}), &[Scan::LastUser])
            .expect("ok");
        assert_eq!(conv.unscanned, ["token ids in prompt"]);
        assert!(OpenAiCompletions.conversation(&json!({}), &[]).is_err());
    }
}
