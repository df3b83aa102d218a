//! Personal data in a streamed answer: each event's texts masked (and the request's
//! placeholders restored) as the event passes, holding back of a streamed text only what a
//! match can span ([`StreamMasker`]). What is held back goes out in the event that ends its
//! text, or, when that event has no room for it, in an event like the text's last one sent
//! just before. Events without texts, and events whose texts do not change, pass byte for
//! byte, and so do the comments between events; a rewritten event is written anew.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::gateway::protocols::sse::{frame, Event, Parser};
use crate::gateway::protocols::{Adapter, EventTexts, TextKey};
use crate::pii::{Masker, StreamMasker};

/// Rewrites one streamed answer.
pub struct StreamRewriter {
    adapter: &'static dyn Adapter,
    parser: Parser,
    /// Bytes read and not yet passed on; the first is at stream offset `at`.
    raw: Vec<u8>,
    at: u64,
    open: BTreeMap<TextKey, Open>,
}

/// A streamed text not yet ended.
#[derive(Default)]
struct Open {
    masker: StreamMasker,
    /// The last event that carried a piece of it, as its data before and after that piece
    /// (other pieces empty): what its rest is sent in when the text ends in an event with
    /// no piece of it.
    template: Option<(Option<String>, String, String)>,
}

impl StreamRewriter {
    /// A rewriter for a stream in `adapter`'s protocol.
    pub fn new(adapter: &'static dyn Adapter) -> Self {
        Self {
            adapter,
            parser: Parser::new(),
            raw: Vec::new(),
            at: 0,
            open: BTreeMap::new(),
        }
    }

    /// Takes the next piece of the stream; gives back what can be passed on now.
    pub fn feed(&mut self, masker: &mut Masker, bytes: &[u8]) -> Vec<u8> {
        self.raw.extend_from_slice(bytes);
        let mut out = Vec::new();
        for (event, lines) in self.parser.feed_with_spans(bytes) {
            // What came before the event's lines (comments, lines that made no event) passes.
            out.extend(self.take(lines.start));
            let raw = self.take(lines.end);
            match self.event(masker, &event) {
                Some(frames) => out.extend_from_slice(frames.as_bytes()),
                None => out.extend_from_slice(&raw),
            }
        }
        let complete = self.parser.complete_through();
        out.extend(self.take(complete));
        out
    }

    /// The end of the stream: its last event when it was not closed, and the rest of every
    /// text still open (a stream that stopped without its closing events).
    pub fn finish(&mut self, masker: &mut Masker) -> Vec<u8> {
        let last = self.parser.finish();
        let raw = std::mem::take(&mut self.raw);
        let frames = last.and_then(|event| self.event(masker, &event));
        let keys: Vec<TextKey> = self.open.keys().copied().collect();
        let mut rest = String::new();
        for key in keys {
            rest += &self.flush(masker, key);
        }
        match frames {
            Some(frames) => [frames.into_bytes(), rest.into_bytes()].concat(),
            // An unclosed last event passes as it came, so nothing may follow it: it would
            // become part of it.
            None => [rest.into_bytes(), raw].concat(),
        }
    }

    /// The raw bytes up to stream offset `end`.
    fn take(&mut self, end: u64) -> Vec<u8> {
        let n = usize::try_from(end.saturating_sub(self.at))
            .unwrap_or(usize::MAX)
            .min(self.raw.len());
        self.at += n as u64;
        self.raw.drain(..n).collect()
    }

    /// The frames that replace `event`; `None` when it passes as it came.
    fn event(&mut self, masker: &mut Masker, event: &Event) -> Option<String> {
        let texts = self.adapter.stream_texts(event);
        let data = event.data.as_str();
        let mut out = String::new();
        let ended: Vec<TextKey> = self
            .open
            .keys()
            .filter(|k| texts.ends(k) && !texts.pieces.iter().any(|(p, _)| p == *k))
            .copied()
            .collect();
        for key in ended {
            out += &self.flush(masker, key);
        }
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        let mut changed = false;
        for (key, span) in &texts.pieces {
            let Some(piece) = decode(data, span) else {
                continue;
            };
            let open = self.open.entry(*key).or_default();
            let mut text = open.masker.push(masker, &piece);
            if texts.ends(key) {
                text += &open.masker.finish(masker);
                self.open.remove(key);
            }
            changed |= text != piece;
            edits.push((span.clone(), text));
        }
        for span in &texts.whole {
            let Some(text) = decode(data, span) else {
                continue;
            };
            let masked = masker.mask(&text);
            let shown = masker
                .restore(masked.as_deref().unwrap_or(&text))
                .or(masked);
            changed |= shown.is_some();
            edits.extend(shown.map(|shown| (span.clone(), shown)));
        }
        edits.sort_by_key(|(span, _)| span.start);
        self.keep_templates(event, &texts, &edits);
        if out.is_empty() && !changed {
            return None;
        }
        out += &frame(event.name.as_deref(), &apply(data, &edits, None));
        Some(out)
    }

    /// Keeps, for each text still open that has a piece in `event`, the event with that piece
    /// cut out and the others empty.
    fn keep_templates(
        &mut self,
        event: &Event,
        texts: &EventTexts,
        edits: &[(Range<usize>, String)],
    ) {
        for (key, span) in &texts.pieces {
            let Some(open) = self.open.get_mut(key) else {
                continue;
            };
            let emptied: Vec<(Range<usize>, String)> = edits
                .iter()
                .map(|(s, text)| {
                    let is_piece = texts.pieces.iter().any(|(_, p)| p == s);
                    (
                        s.clone(),
                        if is_piece {
                            String::new()
                        } else {
                            text.clone()
                        },
                    )
                })
                .collect();
            let data = apply(&event.data, &emptied, Some(span));
            if let Some((before, after)) = data.split_once(CUT) {
                open.template = Some((event.name.clone(), before.to_string(), after.to_string()));
            }
        }
    }

    /// The rest of text `key`, in an event like its last (nothing when nothing is left).
    fn flush(&mut self, masker: &mut Masker, key: TextKey) -> String {
        let Some(mut open) = self.open.remove(&key) else {
            return String::new();
        };
        let rest = open.masker.finish(masker);
        match open.template {
            Some((name, before, after)) if !rest.is_empty() => frame(
                name.as_deref(),
                &format!("{before}{}{after}", encode(&rest)),
            ),
            _ => String::new(),
        }
    }
}

/// Where a template's piece goes (a control character no JSON text holds raw).
const CUT: char = '\u{0}';

/// The text of the JSON string token at `span` of `data`.
fn decode(data: &str, span: &Range<usize>) -> Option<String> {
    serde_json::from_str(data.get(span.clone())?).ok()
}

fn encode(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `data` with each string token at an edit's span replaced by the edit's text, and the token
/// at `cut` (if any) by [`CUT`].
fn apply(data: &str, edits: &[(Range<usize>, String)], cut: Option<&Range<usize>>) -> String {
    let mut out = String::with_capacity(data.len());
    let mut at = 0;
    for (span, text) in edits {
        out.push_str(&data[at..span.start]);
        if cut == Some(span) {
            out.push(CUT);
        } else {
            out.push_str(&encode(text));
        }
        at = span.end;
    }
    out.push_str(&data[at..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::gateway::protocols::for_path;
    use crate::pii::{every_kind, Kind};

    const TEXT: &str =
        "Card 4111 1111 1111 1111, mail jane.doe@example.com or call +44 20 7946 0958. \
                        Key sk-proj-4f9a0c2b7d1e8f3a6b5c9d8e7f. Thanks!";
    const SECRETS: [&str; 5] = ["1111", "jane", "7946", "4f9a0c", "example.com"];

    /// `text` in pieces of three characters.
    fn pieces(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(3).map(|c| c.iter().collect()).collect()
    }

    fn data(value: Value) -> String {
        frame(None, &value.to_string())
    }

    fn named(value: Value) -> String {
        let name = value["type"].as_str().unwrap_or_default().to_string();
        frame(Some(&name), &value.to_string())
    }

    /// A stream of `TEXT` (and, where the protocol has them, tool arguments holding an
    /// address) in each protocol, with comments and events without texts between.
    fn streams() -> Vec<(&'static str, String)> {
        let args = r#"{"to":"jane.doe@example.com","card":"4111111111111111"}"#;
        let mut chat = data(json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}));
        chat += ": keep-alive\n\n";
        for p in pieces(TEXT) {
            chat += &data(
                json!({"id": "c", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}),
            );
        }
        for p in pieces(args) {
            chat += &data(
                json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": p}}]}, "finish_reason": null}]}),
            );
        }
        chat += &data(
            json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        );
        chat += "data: [DONE]\n\n";

        let mut completions = String::new();
        for p in pieces(TEXT) {
            completions += &data(
                json!({"id": "t", "choices": [{"index": 0, "text": p, "finish_reason": null}]}),
            );
        }
        completions += &data(
            json!({"id": "t", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
        );
        completions += "data: [DONE]\n\n";

        let mut responses = named(json!({"type": "response.created", "sequence_number": 0,
            "response": {"id": "r", "output": []}}));
        for (n, p) in pieces(TEXT).into_iter().enumerate() {
            responses += &named(
                json!({"type": "response.output_text.delta", "sequence_number": n + 1,
                "item_id": "m", "output_index": 0, "content_index": 0, "delta": p}),
            );
        }
        responses += &named(json!({"type": "response.output_text.done", "item_id": "m",
            "output_index": 0, "content_index": 0, "text": TEXT}));
        responses += &named(
            json!({"type": "response.completed", "response": {"id": "r", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": TEXT}]}]}}),
        );

        let mut messages =
            named(json!({"type": "message_start", "message": {"id": "m", "content": []}}));
        messages += &named(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}));
        messages += "event: ping\ndata: {\"type\": \"ping\"}\n\n";
        for p in pieces(TEXT) {
            messages += &named(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": p}}));
        }
        messages += &named(json!({"type": "content_block_stop", "index": 0}));
        messages += &named(json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}));
        for p in pieces(args) {
            messages += &named(json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": p}}));
        }
        messages += &named(json!({"type": "content_block_stop", "index": 1}));
        messages += &named(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}));
        messages += &named(json!({"type": "message_stop"}));
        vec![
            ("/v1/chat/completions", chat),
            ("/v1/completions", completions),
            ("/v1/responses", responses),
            ("/v1/messages", messages),
        ]
    }

    /// The stream rewritten, fed in pieces of `size` bytes.
    fn rewrite(path: &str, stream: &str, size: usize, masker: &mut Masker) -> String {
        let adapter = for_path(path).expect("adapter");
        let mut rewriter = StreamRewriter::new(adapter);
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(size) {
            out.extend(rewriter.feed(masker, piece));
        }
        out.extend(rewriter.finish(masker));
        String::from_utf8(out).expect("UTF-8")
    }

    fn outputs(path: &str, stream: &str) -> Vec<String> {
        let mut collector = for_path(path).expect("adapter").collector();
        for event in Parser::new().feed(stream.as_bytes()) {
            collector.event(&event);
        }
        collector.outputs()
    }

    #[test]
    fn values_split_across_events_and_reads_are_masked_in_every_protocol() {
        for (path, stream) in streams() {
            let expected: Vec<String> = outputs(path, &stream)
                .iter()
                .map(|o| Masker::new(&every_kind()).mask(o).expect("masked"))
                .collect();
            for size in [1, 5, 64, 1000, stream.len()] {
                let mut masker = Masker::new(&every_kind());
                let out = rewrite(path, &stream, size, &mut masker);
                for secret in SECRETS {
                    assert!(
                        !out.contains(secret),
                        "{path}, reads of {size}: {secret} in {out}"
                    );
                }
                assert_eq!(outputs(path, &out), expected, "{path}, reads of {size}");
                let events = Parser::new().feed(out.as_bytes());
                for e in events.iter().filter(|e| e.data != "[DONE]") {
                    serde_json::from_str::<Value>(&e.data).expect("every event is JSON");
                }
                let last = events.last().expect("events");
                assert!(
                    last.data == "[DONE]"
                        || last.data.contains("stop")
                        || last.data.contains("completed"),
                    "{path}: the closing event stays last: {last:?}"
                );
                if path == "/v1/responses" {
                    let done = events
                        .iter()
                        .find(|e| e.name.as_deref() == Some("response.output_text.done"));
                    let done: Value =
                        serde_json::from_str(&done.expect("done").data).expect("JSON");
                    assert_eq!(
                        done["text"], expected[0],
                        "the done event's text, masked alike"
                    );
                    assert!(out.contains("[CARD_1]") && out.contains("[API_KEY_1]"));
                }
            }
        }
    }

    #[test]
    fn events_without_texts_and_comments_pass_byte_for_byte() {
        for (path, stream) in streams() {
            let out = rewrite(path, &stream, 7, &mut Masker::new(&every_kind()));
            for kept in [
                ": keep-alive\n\n",
                "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            ] {
                assert_eq!(stream.contains(kept), out.contains(kept), "{path}: {kept}");
            }
            let first = stream.split("\n\n").next().expect("an event");
            if path != "/v1/completions" {
                assert!(out.starts_with(first), "{path}: {first}");
            }
        }
        let plain =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n: note\n\n";
        let out = rewrite(
            "/v1/chat/completions",
            plain,
            3,
            &mut Masker::new(&every_kind()),
        );
        assert_eq!(out, plain, "empty texts change nothing");
    }

    /// Found by the `adapters` fuzz target: lines that make no event, before an event that is
    /// rewritten, pass however the stream is cut into reads.
    #[test]
    fn lines_before_a_rewritten_event_pass_whatever_the_reads() {
        let stream = "x: y\n\n: note\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n";
        let whole = rewrite(
            "/v1/messages",
            stream,
            stream.len(),
            &mut Masker::new(&every_kind()),
        );
        assert!(whole.starts_with("x: y\n\n"), "{whole}");
        for size in [1, 3, 7] {
            let out = rewrite(
                "/v1/messages",
                stream,
                size,
                &mut Masker::new(&every_kind()),
            );
            assert_eq!(out, whole, "reads of {size}");
        }
        assert_eq!(outputs("/v1/messages", &whole), ["Hi"]);
    }

    /// Found by the `adapters` fuzz target: what was held goes out before an unclosed last
    /// event that passes as it came, never after it (it would join that event).
    #[test]
    fn held_text_goes_before_an_unclosed_last_event() {
        let stream = concat!(
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"[0 ][Hi\"}\n\n",
            "event: other\ndata: {\"type\":\"response.other\"}\n",
        );
        for size in [1, 5, stream.len()] {
            let out = rewrite(
                "/v1/responses",
                stream,
                size,
                &mut Masker::new(&every_kind()),
            );
            let events = Parser::new().feed_with_spans(out.as_bytes());
            let mut parser = Parser::new();
            parser.feed(out.as_bytes());
            let last = parser.finish().expect("the unclosed event");
            assert_eq!(
                last.data, "{\"type\":\"response.other\"}",
                "reads of {size}"
            );
            for (event, _) in &events {
                serde_json::from_str::<Value>(&event.data).expect("JSON events");
            }
            assert!(
                out.ends_with("data: {\"type\":\"response.other\"}\n"),
                "{out}"
            );
            assert!(out.contains("[0 ][Hi"), "{out}");
        }
    }

    #[test]
    fn the_requests_placeholders_are_restored_across_events() {
        let mut masker = Masker::new(&[Kind::Email]);
        masker.mask("from ana@example.com");
        masker.keep_for_restore();
        let stream: String = ["Write to [EMA", "IL_1] today, ", "not bo@example.org."]
            .iter()
            .map(|p| {
                named(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": p}}))
            })
            .collect::<String>()
            + &named(json!({"type": "content_block_stop", "index": 0}));
        let out = rewrite("/v1/messages", &stream, 4, &mut masker);
        assert_eq!(
            outputs("/v1/messages", &out),
            ["Write to ana@example.com today, not [EMAIL_2]."]
        );
    }

    #[test]
    fn a_stream_cut_off_still_gives_what_it_held_masked() {
        let stream: String = pieces("Call +44 20 7946 0958")
            .into_iter()
            .map(|p| data(json!({"choices": [{"index": 0, "delta": {"content": p}}]})))
            .collect();
        let out = rewrite(
            "/v1/chat/completions",
            &stream,
            9,
            &mut Masker::new(&every_kind()),
        );
        assert_eq!(outputs("/v1/chat/completions", &out), ["Call [PHONE_1]"]);
    }
}
