//! The SSE parser and frame writer: any bytes, cut into any pieces, parse to the same events
//! and the same relayable prefix as in one piece; every event written back by `frame` parses
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldgate::gateway::protocols::sse::{frame, Event, Parser};

fn parse(pieces: &[&[u8]]) -> (Vec<Event>, Vec<u64>) {
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut complete = Vec::new();
    for piece in pieces {
        events.extend(parser.feed(piece));
        complete.push(parser.complete_through());
    }
    events.extend(parser.finish());
    (events, complete)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, text)) = data.split_first() else {
        return;
    };
    let (whole, whole_complete) = parse(&[text]);
    let step = usize::from(cut % 16) + 1;
    let pieces: Vec<&[u8]> = text.chunks(step).collect();
    let (split, split_complete) = parse(&pieces);
    assert_eq!(whole, split, "pieces of {step} parse differently");
    let last = split_complete.last().copied().unwrap_or(0);
    assert_eq!(whole_complete.last().copied().unwrap_or(0), last);
    assert!(last <= text.len() as u64);
    assert!(split_complete.windows(2).all(|w| w[0] <= w[1]));
    for event in &whole {
        let written = frame(event.name.as_deref(), &event.data);
        let (back, _) = parse(&[written.as_bytes()]);
        assert_eq!(
            back,
            [event.clone()],
            "frame {written:?} parses differently"
        );
    }
});
