//! Protocol adapters, one file per wire protocol: what the input check scans in a request,
//! the text of a response (whole or streamed), and how a block looks in that protocol.

pub mod anthropic_messages;
pub mod json;
pub mod openai_chat;
pub mod openai_completions;
pub mod openai_responses;
pub mod sse;

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use crate::config::{Action, Reveal, Scan};
use crate::prompt::{ContextTurn, Role};

use self::sse::Event;
use crate::gateway::decision::Decision;

/// What a request asks the model, as the checks see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// Texts the input check scores, each on its own.
    pub parts: Vec<String>,
    /// `parts[users_from..]` are user turns (scored for injection too).
    pub users_from: usize,
    /// Tool results and text documents sent since the model's last turn, scanned or not: where
    /// indirect injection is looked for.
    pub indirect: Vec<String>,
    /// The user turn the output check pairs with the response.
    pub prompt: String,
    /// The user and assistant text turns, in order: what context is taken from.
    pub turns: Vec<ContextTurn>,
    /// For each user turn among the parts (`parts[users_from..]`), its place in `turns`.
    pub user_turns: Vec<usize>,
    /// The place of the output check's prompt in `turns`.
    pub prompt_at: Option<usize>,
    /// Parts that cannot be scanned (images, audio, files), with where they are.
    pub unscanned: Vec<String>,
    /// The client asked for a stream.
    pub stream: bool,
    /// Where every text of the request sits in its body (string tokens with their quotes),
    /// whatever the scan settings: what masking rewrites.
    pub texts: Vec<std::ops::Range<usize>>,
}

/// A whole answer as the output check reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The text of each choice.
    pub outputs: Vec<String>,
    /// Where every text of the answer sits in its body (string tokens with their quotes): what
    /// masking rewrites.
    pub texts: Vec<std::ops::Range<usize>>,
}

/// Which streamed text a piece continues: the choice, output item or content block, and the
/// text within it (a choice's content, one of its tool calls' arguments).
pub type TextKey = (u64, u64);

/// Where the texts of one streamed event sit in its data (JSON string tokens with their
/// quotes).
#[derive(Debug, Default, PartialEq)]
pub struct EventTexts {
    /// Pieces of texts that stream across events, each with the text it continues.
    pub pieces: Vec<(TextKey, std::ops::Range<usize>)>,
    /// Texts the event gives whole (a done event's text, a final snapshot of the answer).
    pub whole: Vec<std::ops::Range<usize>>,
    /// The streamed texts this event ends.
    pub ends: Vec<std::ops::RangeInclusive<TextKey>>,
}

impl EventTexts {
    /// The texts of an event whose reading listed them all (`spans`): `piece` streams, the
    /// event's `type` token is no text, the others are whole.
    pub fn read(
        spans: Vec<std::ops::Range<usize>>,
        piece: Option<(TextKey, std::ops::Range<usize>)>,
        kind: Option<std::ops::Range<usize>>,
    ) -> Self {
        let is_piece = |s: &std::ops::Range<usize>| piece.as_ref().is_some_and(|(_, p)| p == s);
        Self {
            whole: spans
                .into_iter()
                .filter(|s| !is_piece(s) && Some(s) != kind.as_ref())
                .collect(),
            pieces: piece.into_iter().collect(),
            ends: Vec::new(),
        }
    }

    /// An event that ends every streamed text (the stream's last).
    pub fn ending_all() -> Self {
        Self {
            ends: vec![(0, 0)..=(u64::MAX, u64::MAX)],
            ..Self::default()
        }
    }

    /// Ends every text of choice, item or block `index`.
    pub fn end_all_of(&mut self, index: u64) {
        self.ends.push((index, 0)..=(index, u64::MAX));
    }

    /// Whether the event ends the text `key`.
    pub fn ends(&self, key: &TextKey) -> bool {
        self.ends.iter().any(|r| r.contains(key))
    }
}

/// How a block is shown.
pub struct Block<'a> {
    /// The decision behind it.
    pub decision: &'a Decision,
    /// What may be revealed.
    pub reveal: Reveal,
    /// The text put in place of a withheld response.
    pub replacement: &'a str,
}

/// One wire protocol.
pub trait Adapter: Send + Sync {
    /// The protocol's name in logs, metrics and headers.
    fn protocol(&self) -> &'static str;
    /// What to scan in a request body; an error says what is wrong with it.
    fn request_conversation(&self, body: &[u8], scan: &[Scan]) -> Result<Conversation, String>;
    /// An error body in the protocol's envelope.
    fn error(&self, status: StatusCode, code: &str, message: &str) -> Value {
        openai_error(status, code, message, None)
    }
    /// The body of the 400 answered when the input is blocked (Azure's shape by default).
    fn input_blocked(&self, block: &Block<'_>) -> Value {
        azure_input_blocked(block)
    }
    /// What the output check reads of a whole response body; `None` when it is not JSON.
    fn read_answer(&self, body: &[u8]) -> Option<Answer>;
    /// The texts of a whole response body, one per choice; `None` when it is not JSON.
    fn response_outputs(&self, body: &[u8]) -> Option<Vec<String>> {
        self.read_answer(body).map(|a| a.outputs)
    }
    /// Withholds the choices marked in `blocked`.
    fn block_outputs(&self, body: &mut Value, blocked: &[bool], block: &Block<'_>);
    /// A collector for a streamed response.
    fn collector(&self) -> Box<dyn StreamCollector>;
    /// Where the texts of one streamed event are (what masking rewrites), and which streamed
    /// texts it ends.
    fn stream_texts(&self, event: &Event) -> EventTexts;
}

/// Follows a streamed response, event by event.
pub trait StreamCollector: Send {
    /// Takes the next event.
    fn event(&mut self, event: &Event);
    /// The texts so far, one per choice.
    fn outputs(&self) -> Vec<String>;
    /// A complete, valid stream that withholds the choices marked in `blocked`.
    fn blocked_stream(&self, blocked: &[bool], block: &Block<'_>) -> String;
    /// The frames that end, for content filtering, a stream of which the client has seen
    /// exactly the events this collector was given.
    fn terminate(&self, block: &Block<'_>) -> String;
}

/// The adapter for a POST to `path`, if one applies.
pub fn for_path(path: &str) -> Option<&'static dyn Adapter> {
    if path.ends_with("/chat/completions") {
        Some(&openai_chat::OpenAiChat)
    } else if path.ends_with("/v1/responses") {
        Some(&openai_responses::OpenAiResponses)
    } else if path.ends_with("/completions") {
        Some(&openai_completions::OpenAiCompletions)
    } else if path.ends_with("/v1/messages") {
        Some(&anthropic_messages::AnthropicMessages)
    } else {
        None
    }
}

/// Sets `key` on `value`, turning it into an object first when it is not one: upstream JSON
/// may have any shape, and rewriting it must never panic.
pub fn set(value: &mut Value, key: &str, field: Value) {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    if let Value::Object(map) = value {
        map.insert(key.to_string(), field);
    }
}

/// OpenAI's error envelope.
pub fn openai_error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Value {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    json!({"error": {"message": message, "type": kind, "code": code, "param": param}})
}

/// Where a part sits in a request, as notes of unscanned parts name it: `messages[2]`
/// (written out only when a note is made).
pub struct Place(pub &'static str, pub usize);

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

/// An empty conversation with the request's `stream` flag (false unless `true`) and where its
/// texts are.
pub fn start(stream: &json::Lenient<bool>, texts: Vec<std::ops::Range<usize>>) -> Conversation {
    Conversation {
        stream: stream.get().copied().unwrap_or(false),
        texts,
        ..Conversation::default()
    }
}

/// A request's `messages` (OpenAI Chat, Anthropic), each with its `role`; an error says which
/// is missing.
pub fn with_roles<'m, M>(
    messages: &'m json::Lenient<Vec<json::Lenient<json::Object<M>>>>,
    role: impl Fn(&'m M) -> Option<&'m str>,
) -> Result<Vec<(&'m M, &'m str)>, String> {
    let messages = messages
        .get()
        .ok_or("the request has no \"messages\" array")?;
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.get()
                .and_then(|json::Object(m)| Some((m, role(m)?)))
                .ok_or_else(|| format!("messages[{i}] has no \"role\""))
        })
        .collect()
}

impl Conversation {
    /// Adds a turn of the conversation (an assistant turn only when it has text).
    pub fn add_turn(&mut self, role: Role, text: String) {
        if role == Role::User || !text.trim().is_empty() {
            self.turns.push(ContextTurn::new(role, text));
        }
    }

    /// The last `n` turns with text before `turns[at]`: the context of that turn.
    pub fn context_before(&self, at: usize, n: usize) -> Vec<ContextTurn> {
        let mut context: Vec<ContextTurn> = self.turns[..at.min(self.turns.len())]
            .iter()
            .rev()
            .filter(|t| !t.text.trim().is_empty())
            .take(n)
            .cloned()
            .collect();
        context.reverse();
        context
    }

    /// The context of the output check's prompt.
    pub fn prompt_context(&self, n: usize) -> Vec<ContextTurn> {
        self.prompt_at
            .map_or_else(Vec::new, |at| self.context_before(at, n))
    }
}

/// Makes the last user turn the output check's prompt and adds the user turns the scan asks
/// for to the scanned parts.
pub fn add_user_turns(conv: &mut Conversation, scan: &[Scan]) {
    let users: Vec<usize> = (0..conv.turns.len())
        .filter(|&i| conv.turns[i].role == Role::User)
        .collect();
    conv.prompt_at = users.last().copied();
    conv.prompt = conv
        .prompt_at
        .map_or_else(String::new, |at| conv.turns[at].text.clone());
    conv.users_from = conv.parts.len();
    let scanned = if scan.contains(&Scan::AllUser) {
        &users[..]
    } else if scan.contains(&Scan::LastUser) {
        &users[users.len().saturating_sub(1)..]
    } else {
        &[]
    };
    for &at in scanned {
        let text = &conv.turns[at].text;
        if !text.trim().is_empty() {
            conv.parts.push(text.clone());
            conv.user_turns.push(at);
        }
    }
}

/// Adds a tool result, read by `read` (which notes what it cannot scan): to the scanned parts
/// when the scan asks for tool results, and to the texts looked at for indirect injection.
pub fn add_tool_result(
    conv: &mut Conversation,
    scan: &[Scan],
    read: impl FnOnce(&mut Vec<String>) -> String,
) {
    if scan.contains(&Scan::ToolResults) {
        let text = read(&mut conv.unscanned);
        push_part(&mut conv.parts, text.clone());
        push_part(&mut conv.indirect, text);
    } else {
        push_part(&mut conv.indirect, read(&mut Vec::new()));
    }
}

/// Applies `withhold` to each choice marked in `blocked`.
pub fn withhold_choices(body: &mut Value, blocked: &[bool], withhold: impl Fn(&mut Value)) {
    if let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) {
        for (choice, _) in choices.iter_mut().zip(blocked).filter(|(_, b)| **b) {
            withhold(choice);
        }
    }
}

/// The fields `keys` of a stream's first chunk (its event data), which every chunk a block
/// writes repeats as the upstream sent them.
pub fn chunk_meta(data: &str, keys: &[&str]) -> Value {
    let mut meta = serde_json::from_str(data).unwrap_or(Value::Null);
    if let Some(m) = meta.as_object_mut() {
        m.retain(|k, _| keys.contains(&k.as_str()));
    }
    meta
}

/// One text per choice seen, in index order (a part's position, not its index, pairs it with
/// its verdict: an index is whatever number the upstream sends).
pub fn indexed_outputs<T>(
    choices: &std::collections::BTreeMap<u64, T>,
    text: impl Fn(&T) -> String,
) -> Vec<String> {
    choices.values().map(text).collect()
}

/// Adds `text` to the scanned parts unless it is blank.
pub fn push_part(parts: &mut Vec<String>, text: String) {
    if !text.trim().is_empty() {
        parts.push(text);
    }
}

/// A sentence naming the blocked categories, when they may be revealed.
pub fn block_message(what: &str, block: &Block<'_>) -> String {
    let blocked = block.decision.violated(Action::Block);
    if block.reveal == Reveal::None || blocked.is_empty() {
        format!("The {what} was filtered by the content policy.")
    } else {
        format!(
            "The {what} was filtered by the content policy ({}).",
            blocked.join(", ")
        )
    }
}

/// Azure's `content_filter_result(s)` map: per category `filtered` and `severity`, plus the
/// score and threshold when scores may be revealed; empty when nothing may be revealed.
pub fn filter_results(block: &Block<'_>) -> Value {
    let mut map = Map::new();
    if block.reveal == Reveal::None {
        return Value::Object(map);
    }
    for c in &block.decision.categories {
        let filtered = c.violated && c.action == Action::Block;
        let mut entry = json!({
            "filtered": filtered,
            "severity": if c.violated { "high" } else { "safe" },
        });
        if block.reveal == Reveal::Scores {
            set(&mut entry, "score", json!(c.p_yes));
            set(&mut entry, "threshold", json!(c.threshold));
        }
        map.insert(c.id.clone(), entry);
    }
    Value::Object(map)
}

/// The Azure-style 400 for a blocked prompt, shared by the OpenAI surfaces.
pub fn azure_input_blocked(block: &Block<'_>) -> Value {
    let mut body = openai_error(
        StatusCode::BAD_REQUEST,
        "content_filter",
        &block_message("prompt", block),
        Some("prompt"),
    );
    body["error"]["type"] = Value::Null;
    body["error"]["status"] = json!(400);
    body["error"]["innererror"] = json!({
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": filter_results(block),
    });
    body
}

/// The end of a choice-based stream cut for content filtering: one chunk per still-open choice
/// (`finished` tells, per index seen, whether its finish_reason was relayed; choice 0 when none
/// was seen), built by `choice`, each repeating `meta`, then `[DONE]`.
pub fn cut_choices(
    meta: &Value,
    finished: &std::collections::BTreeMap<u64, bool>,
    choice: impl Fn(u64) -> Value,
) -> String {
    let open: Vec<u64> = if finished.is_empty() {
        vec![0]
    } else {
        finished
            .iter()
            .filter(|(_, done)| !**done)
            .map(|(i, _)| *i)
            .collect()
    };
    let mut out = String::new();
    for index in open {
        let mut chunk = meta.clone();
        set(&mut chunk, "choices", json!([choice(index)]));
        out += &data_frame(&chunk);
    }
    out + "data: [DONE]\n\n"
}

/// `data: {json}` followed by a blank line.
pub fn data_frame(value: &Value) -> String {
    self::sse::frame(None, &value.to_string())
}

/// Every scan setting (tests).
#[cfg(test)]
pub const EVERY_SCAN: [Scan; 5] = [
    Scan::LastUser,
    Scan::AllUser,
    Scan::System,
    Scan::ToolCalls,
    Scan::ToolResults,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_their_adapter() {
        let name = |p: &str| for_path(p).map(|a| a.protocol());
        assert_eq!(name("/v1/chat/completions"), Some("openai_chat"));
        assert_eq!(
            name("/openai/deployments/gpt/chat/completions"),
            Some("openai_chat")
        );
        assert_eq!(name("/v1/completions"), Some("openai_completions"));
        assert_eq!(name("/v1/responses"), Some("openai_responses"));
        assert_eq!(name("/v1/messages"), Some("anthropic_messages"));
        assert_eq!(name("/v1/threads/t1/messages"), None);
        assert_eq!(name("/v1/models"), None);
    }

    /// The same conversation in each protocol with history gives the same turns, and each
    /// checked user turn and the output check's prompt their context.
    #[test]
    fn every_protocol_with_history_gives_its_turns_in_order() {
        let cases: [(&dyn Adapter, &str); 3] = [
            (
                &openai_chat::OpenAiChat,
                r#"{"messages":[{"role":"system","content":"sys"},
                  {"role":"user","content":"Remember the chemical?"},
                  {"role":"assistant","content":[{"type":"text","text":"Yes, X."}]},
                  {"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":"{}"}}]},
                  {"role":"tool","content":"result"},
                  {"role":"user","content":[{"type":"image_url","image_url":{}}]},
                  {"role":"user","content":"Now the quantities."}]}"#,
            ),
            (
                &openai_responses::OpenAiResponses,
                r#"{"instructions":"sys","input":[
                  {"role":"user","content":"Remember the chemical?"},
                  {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Yes, X."}]},
                  {"type":"function_call","arguments":"{}"},
                  {"type":"function_call_output","output":"result"},
                  {"role":"user","content":[{"type":"input_image","image_url":"x"}]},
                  {"role":"user","content":[{"type":"input_text","text":"Now the quantities."}]}]}"#,
            ),
            (
                &anthropic_messages::AnthropicMessages,
                r#"{"system":"sys","messages":[
                  {"role":"user","content":"Remember the chemical?"},
                  {"role":"assistant","content":[{"type":"thinking","thinking":"t"},{"type":"text","text":"Yes, X."},{"type":"tool_use","input":{}}]},
                  {"role":"user","content":[{"type":"tool_result","content":"result"},{"type":"image","source":{}}]},
                  {"role":"user","content":"Now the quantities."}]}"#,
            ),
        ];
        for (adapter, body) in cases {
            let protocol = adapter.protocol();
            let conv = adapter
                .request_conversation(body.as_bytes(), &[Scan::AllUser])
                .expect("ok");
            let texts = |turns: &[ContextTurn]| -> Vec<(Role, String)> {
                turns.iter().map(|t| (t.role, t.text.clone())).collect()
            };
            let earlier = vec![
                (Role::User, "Remember the chemical?".to_string()),
                (Role::Assistant, "Yes, X.".to_string()),
            ];
            assert_eq!(
                conv.parts,
                ["Remember the chemical?", "Now the quantities."],
                "{protocol}"
            );
            assert_eq!(conv.prompt, "Now the quantities.", "{protocol}");
            assert_eq!(texts(&conv.prompt_context(8)), earlier, "{protocol}");
            assert_eq!(texts(&conv.prompt_context(1)), earlier[1..], "{protocol}");
            assert!(conv.prompt_context(0).is_empty(), "{protocol}");
            let first = conv.user_turns[0];
            assert!(conv.context_before(first, 8).is_empty(), "{protocol}");
            assert_eq!(conv.user_turns.len(), 2, "{protocol}");
            assert_eq!(
                conv.prompt_at,
                conv.user_turns.last().copied(),
                "{protocol}"
            );
        }
    }

    /// Every text of a request, whoever wrote it and whatever the scan settings, is listed
    /// where it sits, so masking reaches it; fields that are not texts keep their bytes.
    #[test]
    fn masking_the_listed_texts_reaches_every_text_and_nothing_else() {
        use crate::pii::{every_kind, mask_json_strings, Masker};
        let cases: [(&dyn Adapter, &str); 5] = [
            (
                &openai_chat::OpenAiChat,
                r#"{"model":"m","metadata":{"owner":"ops@corp.example"},"messages":[
                  {"role":"system","content":"Agent for jane@example.com"},
                  {"role":"user","content":[{"type":"text","text":"My card is 4111 1111 1111 1111"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,AKIAIOSFODNN7EXAMPLE"}}]},
                  {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",
                    "function":{"name":"pay","arguments":"{\"iban\":\"DE89 3704 0044 0532 0130 00\"}"}}]},
                  {"role":"tool","tool_call_id":"c","content":"Paid from +44 20 7946 0958"},
                  {"role":"user","content":"Thanks, mail me at jane\u0040example.com\nor call +1 415 555 0100"}]}"#,
            ),
            (
                &anthropic_messages::AnthropicMessages,
                r#"{"model":"c","metadata":{"owner":"ops@corp.example"},
                  "system":[{"type":"text","text":"Support for jane@example.com"}],"messages":[
                  {"role":"user","content":"card 4111-1111-1111-1111"},
                  {"role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t",
                    "name":"f","input":{"to":"jane@example.com","n":[1,"+44 20 7946 0958"]}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[
                    {"type":"text","text":"IBAN DE89 3704 0044 0532 0130 00"}]},
                    {"type":"text","text":"and from +1 415 555 0100"}]}]}"#,
            ),
            (
                &openai_responses::OpenAiResponses,
                r#"{"model":"m","metadata":{"owner":"ops@corp.example"},"instructions":"Owner jane@example.com",
                  "input":[{"role":"user","content":"card 4111111111111111"},
                  {"type":"function_call","call_id":"c","name":"f","arguments":"{\"iban\":\"DE89370400440532013000\"}"},
                  {"type":"function_call_output","call_id":"c","output":"+44 20 7946 0958"},
                  {"type":"message","role":"user","content":[{"type":"input_text","text":"or +1 415 555 0100"}]}]}"#,
            ),
            (
                &openai_responses::OpenAiResponses,
                r#"{"model":"m","metadata":{"owner":"ops@corp.example"},"input":"jane@example.com 4111111111111111 DE89370400440532013000 +44 20 7946 0958 +1 415 555 0100"}"#,
            ),
            (
                &openai_completions::OpenAiCompletions,
                r#"{"model":"m","metadata":{"owner":"ops@corp.example"},"prompt":["mail jane@example.com",
                  "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00","+44 20 7946 0958 or +1 415 555 0100"]}"#,
            ),
        ];
        for (adapter, body) in cases {
            let name = adapter.protocol();
            let conv = adapter
                .request_conversation(body.as_bytes(), &[Scan::LastUser])
                .expect("read");
            let mut masker = Masker::new(&every_kind());
            let masked = mask_json_strings(body.as_bytes(), &conv.texts, &mut masker).expect(name);
            let masked = String::from_utf8(masked).expect("UTF-8");
            let value: Value = serde_json::from_str(&masked).expect("still JSON");
            for secret in ["jane", "4111", "DE89", "7946", "555 0100"] {
                assert!(!masked.contains(secret), "{name}: {secret} in {masked}");
            }
            assert_eq!(value["metadata"]["owner"], "ops@corp.example", "{name}");
            assert!(masker.counts().values().sum::<usize>() >= 5, "{name}");
            if name == "openai_chat" {
                let url = &value["messages"][1]["content"][1]["image_url"]["url"];
                assert_eq!(
                    url, "data:image/png;base64,AKIAIOSFODNN7EXAMPLE",
                    "not a text"
                );
            }
            let again = adapter
                .request_conversation(masked.as_bytes(), &EVERY_SCAN)
                .expect("the masked body reads");
            let all = again.parts.join("\n");
            for placeholder in [
                "[EMAIL_1]",
                "[CARD_1]",
                "[IBAN_1]",
                "[PHONE_1]",
                "[PHONE_2]",
            ] {
                assert!(all.contains(placeholder), "{name}: {placeholder} in {all}");
            }
        }
    }

    /// Found by the `adapters` fuzz target: upstream JSON of another shape (a number, a list,
    /// choices that are not objects, stream events that are not objects) is withheld
    /// without a panic, as valid JSON and SSE.
    #[test]
    fn any_upstream_shape_is_withheld_without_a_panic() {
        let decision = Decision::bare_block(crate::gateway::decision::Direction::Output);
        let block = Block {
            decision: &decision,
            reveal: Reveal::Scores,
            replacement: "withheld",
        };
        let bodies = [
            json!(0),
            json!([1, 2]),
            json!("text"),
            json!({"choices": [1, "x", null]}),
            json!({"content": 3}),
        ];
        for path in [
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/completions",
            "/v1/messages",
        ] {
            let adapter = for_path(path).expect("adapter");
            for body in &bodies {
                let mut blocked = body.clone();
                adapter.block_outputs(&mut blocked, &[true, true, true], &block);
                assert!(blocked.is_object() || blocked == *body, "{path}: {blocked}");
            }
            let mut collector = adapter.collector();
            for data in [
                "0",
                "[1]",
                "\"s\"",
                "{\"choices\": [7]}",
                "{\"response\": 2}",
            ] {
                collector.event(&Event {
                    name: Some("message_start".into()),
                    data: data.into(),
                });
            }
            for stream in [
                collector.blocked_stream(&[true], &block),
                collector.terminate(&block),
            ] {
                let events = super::sse::Parser::new().feed(stream.as_bytes());
                assert!(!events.is_empty(), "{path}: {stream}");
                for e in events.iter().filter(|e| e.data != "[DONE]") {
                    serde_json::from_str::<Value>(&e.data).expect("JSON frames");
                }
            }
        }
    }

    #[test]
    fn content_keeps_text_and_reports_the_rest() {
        let read = |body: &str| {
            let content: json::Lenient<json::Content<'_>> =
                serde_json::from_str(body).expect("JSON");
            let mut unscanned = Vec::new();
            let text = json::content_text(&content, &Place("messages", 3), &mut unscanned);
            (text, unscanned)
        };
        let parts = r#"[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]"#;
        assert_eq!(
            read(parts),
            (
                "a\nb".to_string(),
                vec!["image_url in messages[3]".to_string()]
            )
        );
        assert_eq!(read(r#""plain""#), ("plain".to_string(), Vec::new()));
        assert_eq!(read("null"), (String::new(), Vec::new()));
        assert_eq!(read("7"), (String::new(), Vec::new()));
    }

    #[test]
    fn tool_results_and_documents_since_the_models_last_turn_are_kept_apart_from_the_scan() {
        let chat = r#"{"messages": [{"role": "system", "content": "sys"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
            {"role": "tool", "content": "old result"},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
            {"role": "tool", "content": [{"type": "text", "text": "new A"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "tool", "content": "new B"}]}"#;
        let anthropic = r#"{"messages": [{"role": "user", "content": "u1"},
            {"role": "assistant", "content": [{"type": "tool_use", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "content": "old result"}]},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": [{"type": "tool_result", "content": "new A"},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "doc B"}},
                {"type": "document", "source": {"type": "content",
                                                "content": [{"type": "text", "text": "doc C"}]}},
                {"type": "text", "text": "u2"}]}]}"#;
        let responses = r#"{"input": [{"type": "message", "role": "user", "content": "u1"},
            {"type": "function_call", "arguments": "{}"},
            {"type": "function_call_output", "output": "old result"},
            {"type": "message", "role": "assistant", "content": "done"},
            {"type": "message", "role": "user", "content": "u2"},
            {"type": "function_call", "arguments": "{}"},
            {"type": "function_call_output", "output": "new A"}]}"#;
        let cases: [(&dyn Adapter, &str, &[&str]); 3] = [
            (&openai_chat::OpenAiChat, chat, &["new A", "new B"]),
            (
                &anthropic_messages::AnthropicMessages,
                anthropic,
                &["new A", "doc B", "doc C"],
            ),
            (&openai_responses::OpenAiResponses, responses, &["new A"]),
        ];
        for (adapter, body, new) in cases {
            let name = adapter.protocol();
            let last = adapter
                .request_conversation(body.as_bytes(), &[Scan::LastUser])
                .expect(name);
            assert_eq!(last.indirect, new, "{name}");
            assert_eq!(
                (last.parts.clone(), last.users_from),
                (vec!["u2".to_string()], 0)
            );
            // Documents stay unscanned for ShieldGemma; tool results are not reported.
            let documents = last.unscanned.iter().all(|u| u.starts_with("document"));
            assert!(documents, "{name}: {:?}", last.unscanned);
            let all = adapter
                .request_conversation(body.as_bytes(), &[Scan::AllUser, Scan::ToolResults])
                .expect(name);
            assert_eq!(all.indirect, new, "{name}");
            let users: Vec<&str> = all.parts[all.users_from..].iter().map(|s| &**s).collect();
            assert_eq!(users, ["u1", "u2"], "{name}");
            assert!(
                all.parts[..all.users_from].contains(&"old result".to_string()),
                "{name}"
            );
        }
    }
}
