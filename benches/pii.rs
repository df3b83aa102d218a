//! Personal data and secrets: what finding and masking every kind costs per KiB of text, for
//! prose without any, prose with a few, and text dense with them; and the same text masked as
//! a stream in pieces of 16 characters (an answer's SSE deltas). Prints a table; compare with
//! one check's time (seconds on CPU, milliseconds on a GPU).
//!
//! Run: `cargo bench --bench pii` (SHIELDGATE_BENCH_KIB: text size, default 64).

mod common;

use std::time::Instant;

use shieldgate::pii::{every_kind, Masker, StreamMasker};

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
    println!("| text | found | whole text (µs/KiB) | stream of 16-char pieces (µs/KiB) |");
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
        let chars: Vec<char> = text.chars().collect();
        let started = Instant::now();
        let mut masker = Masker::new(&every_kind());
        let mut stream = StreamMasker::default();
        let mut out = 0;
        for piece in chars.chunks(16) {
            out += stream
                .push(&mut masker, &piece.iter().collect::<String>())
                .len();
        }
        out += stream.finish(&mut masker).len();
        let streamed = started.elapsed().as_secs_f64() * 1e6 / text.len() as f64 * 1024.0;
        assert!(out > 0);
        println!("| {name} | {found} | {whole:.1} | {streamed:.1} |");
    }
}
