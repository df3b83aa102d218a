//! Personal data and secrets: what finding and masking every kind costs per KiB of text, for
//! prose without any, prose with a few, and text dense with them; and the same text streamed as
//! a Chat Completions answer (server-sent events of 16 characters each) masked as the gateway
//! masks it, reads of 1 KiB. Prints a table; compare with one check's time (seconds on CPU,
//! milliseconds on a GPU).
//!
//! Run: `cargo bench --bench pii` (SHIELDGATE_BENCH_KIB: text size, default 64).

mod common;

use std::time::Instant;

use shieldgate::gateway::pii::StreamRewriter;
use shieldgate::gateway::protocols::for_path;
use shieldgate::gateway::protocols::sse::frame;
use shieldgate::pii::{every_kind, Masker};

use common::{cpu_name, number};

const PROSE: &str = "The quarterly report covers revenue, costs and the outlook for the next \
    two quarters; the team met on Tuesday to review it and agreed on three follow-ups. ";
const SOME: &str = "Please send the invoice to jane.doe@example.com before Friday, and call \
    me on +44 20 7946 0958 if anything is unclear about the figures we discussed. ";
const DENSE: &str = "card 4111 1111 1111 1111 iban DE89 3704 0044 0532 0130 00 mail \
    a.b@example.org ip 10.1.2.3 key AKIAIOSFODNN7EXAMPLE ssn 536-22-1234 ";

fn main() {
    let kib = number("SHIELDGATE_BENCH_KIB", 64);
    println!(
        "shieldgate PII benchmark: {kib} KiB per text, every kind, 1 thread, {}",
        cpu_name()
    );
    println!();
    println!(
        "| text | found | whole text (µs/KiB) | SSE stream, 16-character deltas (µs/KiB of text) |"
    );
    println!("|---|---|---|---|");
    for (name, unit) in [
        ("prose, none", PROSE),
        ("prose, a few", SOME),
        ("dense", DENSE),
    ] {
        let text = unit.repeat(kib * 1024 / unit.len() + 1);
        let rounds = 5;
        let started = Instant::now();
        let mut found = 0;
        for _ in 0..rounds {
            let mut masker = Masker::new(&every_kind());
            masker.mask(&text);
            found = masker.counts().values().sum::<usize>();
        }
        let whole = started.elapsed().as_secs_f64() * 1e6 / (rounds * text.len()) as f64 * 1024.0;
        let stream = chat_stream(&text);
        let adapter = for_path("/v1/chat/completions").expect("the chat adapter");
        let started = Instant::now();
        let mut masker = Masker::new(&every_kind());
        let mut rewriter = StreamRewriter::new(adapter);
        let mut out = 0;
        for read in stream.as_bytes().chunks(1024) {
            out += rewriter.feed(&mut masker, read).len();
        }
        out += rewriter.finish(&mut masker).len();
        let streamed = started.elapsed().as_secs_f64() * 1e6 / text.len() as f64 * 1024.0;
        assert!(out > text.len());
        println!("| {name} | {found} | {whole:.1} | {streamed:.1} |");
    }
}

/// `text` as a Chat Completions stream, 16 characters a delta.
fn chat_stream(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    for piece in chars.chunks(16) {
        let piece: String = piece.iter().collect();
        let chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        out += &frame(None, &chunk.to_string());
    }
    out + "data: [DONE]\n\n"
}
