//! Each protocol adapter on any body and any SSE stream: a body that is JSON is never refused
//! as not JSON (other shapes read as absent fields), scanned parts are never blank; a blocked
//! response, blocked stream or cut stream is well-formed JSON / SSE of which every frame but
//! `[DONE]` is JSON. Every text a request or answer lists for masking is a whole JSON string
//! of the body, and masking them all leaves JSON that reads the same way. A stream masked as
//! it passes gives the same bytes however it is cut into reads, and its events that were JSON
//! still are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shieldgate::config::{Reveal, Scan};
use shieldgate::gateway::protocols::{for_path, Adapter, Block};
use shieldgate::gateway::decision::{Decision, Direction};
use shieldgate::gateway::pii::StreamRewriter;
use shieldgate::gateway::protocols::sse::Parser;
use shieldgate::pii::{every_kind, mask_json_strings, rewrite_json_strings, Masker};

const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",
];

fn assert_stream(text: &str) {
    let mut parser = Parser::new();
    let mut events = parser.feed(text.as_bytes());
    events.extend(parser.finish());
    assert!(text.ends_with("\n\n"), "stream not closed: {text:?}");
    for event in events {
        if event.data != "[DONE]" {
            serde_json::from_str::<Value>(&event.data)
                .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", event.data));
        }
    }
}

/// Each span is a JSON string of `body`, in order, apart; masked (every kind, and any text
/// replaced) a body that was JSON a `Value` takes still is.
fn assert_maskable(body: &[u8], spans: &[std::ops::Range<usize>], is_value: bool) {
    for pair in spans.windows(2) {
        assert!(pair[0].end <= pair[1].start, "texts overlap: {spans:?}");
    }
    for span in spans {
        let token = &body[span.clone()];
        serde_json::from_slice::<String>(token).expect("a listed text is a JSON string");
    }
    if !is_value {
        return;
    }
    let mut masker = Masker::new(&every_kind());
    if let Some(masked) = mask_json_strings(body, spans, &mut masker) {
        serde_json::from_slice::<Value>(&masked).expect("a masked body is JSON");
    }
    if let Some(rewritten) = rewrite_json_strings(body, spans, |t| Some(format!("<{t}\"\\>"))) {
        serde_json::from_slice::<Value>(&rewritten).expect("a rewritten body is JSON");
    }
}

/// `stream` masked by a rewriter fed reads of `step` bytes.
fn rewrite(adapter: &'static dyn Adapter, stream: &[u8], step: usize) -> Vec<u8> {
    let mut masker = Masker::new(&every_kind());
    let mut rewriter = StreamRewriter::new(adapter);
    let mut out = Vec::new();
    for piece in stream.chunks(step) {
        out.extend(rewriter.feed(&mut masker, piece));
    }
    out.extend(rewriter.finish(&mut masker));
    out
}

fn assert_rewritable(adapter: &'static dyn Adapter, stream: &[u8]) {
    let whole = rewrite(adapter, stream, stream.len().max(1));
    assert_eq!(rewrite(adapter, stream, 3), whole, "reads of 3 rewrite differently");
    let mut before = Parser::new();
    let mut originals = before.feed(stream);
    originals.extend(before.finish());
    let mut after = Parser::new();
    let mut events = after.feed(&whole);
    events.extend(after.finish());
    let json = |data: &str| serde_json::from_str::<Value>(data).is_ok();
    if originals.iter().all(|e| json(&e.data) || e.data == "[DONE]") {
        for event in &events {
            assert!(json(&event.data) || event.data == "[DONE]", "{:?}", event.data);
        }
    }
}

fn exercise(
    adapter: &'static dyn Adapter,
    body: Option<&Value>,
    stream: &[u8],
    block: &Block<'_>,
) {
    assert_rewritable(adapter, stream);
    if let Some(answer) = adapter.read_answer(stream) {
        assert_maskable(stream, &answer.texts, body.is_some());
    }
    let outputs = adapter.response_outputs(stream);
    if body.is_some() {
        assert!(outputs.is_some(), "a JSON answer was taken for no JSON");
    }
    for scan in [
        vec![Scan::LastUser],
        vec![
            Scan::AllUser,
            Scan::System,
            Scan::ToolCalls,
            Scan::ToolResults,
        ],
    ] {
        match adapter.request_conversation(stream, &scan) {
            Ok(conversation) => {
                for part in &conversation.parts {
                    assert!(!part.trim().is_empty(), "a blank part is scanned");
                }
                assert_maskable(stream, &conversation.texts, body.is_some());
            }
            Err(e) => assert!(
                body.is_none() || !e.starts_with("the body is not valid JSON"),
                "a JSON request was taken for no JSON: {e}"
            ),
        }
    }
    if let Some(body) = body {
        let count = outputs.map_or(1, |o| o.len());
        let mut blocked = body.clone();
        adapter.block_outputs(&mut blocked, &vec![true; count], block);
        serde_json::to_string(&blocked).expect("a blocked body serializes");
        let _ = adapter.input_blocked(block);
    }
    let mut collector = adapter.collector();
    let mut parser = Parser::new();
    let mut events = parser.feed(stream);
    events.extend(parser.finish());
    for event in &events {
        collector.event(event);
    }
    let outputs = collector.outputs();
    assert_stream(&collector.blocked_stream(&vec![true; outputs.len().max(1)], block));
    assert_stream(&collector.terminate(block));
}

fuzz_target!(|data: &[u8]| {
    let body = serde_json::from_slice::<Value>(data).ok();
    let decision = Decision::bare_block(Direction::Output);
    let block = Block {
        decision: &decision,
        reveal: Reveal::Scores,
        replacement: "withheld",
    };
    for path in PATHS {
        let adapter = for_path(path).expect("an adapter for each protocol path");
        exercise(adapter, body.as_ref(), data, &block);
    }
});
