//! Server-sent events: an incremental parser that takes the body in whatever pieces TCP
//! delivers (events split anywhere, `\n`, `\r\n` or `\r` line ends, comments) and a frame
//! writer.

use std::ops::Range;

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field, when present.
    pub name: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Parses a byte stream into events.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    current: Event,
    has_data: bool,
    /// Stream offset of the first byte of `pending`.
    offset: u64,
    /// Stream offset just past the last blank line (the end of the last complete event).
    complete: u64,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of the stream; returns the events it completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.feed_with_spans(bytes)
            .into_iter()
            .map(|(event, _)| event)
            .collect()
    }

    /// [`Parser::feed`], each event with where its lines are in the stream: from just past the
    /// blank line before them to just past its own.
    pub fn feed_with_spans(&mut self, bytes: &[u8]) -> Vec<(Event, Range<u64>)> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            // A line ends with `\r\n`, `\n` or `\r` alone; after a `\r` that ends the piece,
            // wait: its `\n` may come in the next one.
            let next = match (self.pending[end], self.pending.get(end + 1)) {
                (b'\r', Some(b'\n')) => end + 2,
                (b'\r', None) => break,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            start = next;
            let begun = self.complete;
            if line.is_empty() {
                self.complete = self.offset + start as u64;
            }
            if let Some(event) = self.line(&line) {
                events.push((event, begun..self.complete));
            }
        }
        self.pending.drain(..start);
        self.offset += start as u64;
        events
    }

    /// How many bytes of the stream form complete events (comments included): a prefix that
    /// can be relayed without cutting an event.
    pub fn complete_through(&self) -> u64 {
        self.complete
    }

    /// Ends the stream: an event not closed by a blank line is still returned.
    pub fn finish(&mut self) -> Option<Event> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(line.trim_end_matches('\r'));
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.name = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.current);
        let had = std::mem::take(&mut self.has_data);
        (had || event.name.is_some()).then_some(event)
    }
}

/// Writes one event as SSE text.
pub fn frame(name: Option<&str>, data: &str) -> String {
    let mut out = String::new();
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.replace("\r\n", "\n").split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &[u8], piece: usize) -> Vec<Event> {
        let mut parser = Parser::new();
        let mut events: Vec<Event> = text.chunks(piece).flat_map(|c| parser.feed(c)).collect();
        events.extend(parser.finish());
        events
    }

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let text = "event: a\r\ndata: {\"x\":\r\ndata: 1}\r\n\r\n: keep-alive\n\ndata: héllo\n\ndata: [DONE]\n\n";
        let whole = parse_in_pieces(text.as_bytes(), text.len());
        assert_eq!(
            whole,
            [
                Event {
                    name: Some("a".into()),
                    data: "{\"x\":\n1}".into()
                },
                Event {
                    name: None,
                    data: "héllo".into()
                },
                Event {
                    name: None,
                    data: "[DONE]".into()
                },
            ]
        );
        for piece in 1..8 {
            assert_eq!(
                parse_in_pieces(text.as_bytes(), piece),
                whole,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn complete_through_marks_the_end_of_the_last_whole_event() {
        let mut parser = Parser::new();
        parser.feed(b"data: a\n\nda");
        assert_eq!(parser.complete_through(), 9);
        parser.feed(b"ta: b\r\n");
        assert_eq!(parser.complete_through(), 9);
        parser.feed(b"\r\n: ping\n\n");
        assert_eq!(parser.complete_through(), 28);
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        assert_eq!(
            parse_in_pieces(b"data: x", 3),
            [Event {
                name: None,
                data: "x".into()
            }]
        );
        assert!(parse_in_pieces(b": only a comment\n", 2).is_empty());
    }

    /// Found by the `sse` fuzz target: a lone `\r` ends a line (as the SSE standard says),
    /// also when it ends one piece and the next begins with `\n`.
    #[test]
    fn a_lone_carriage_return_ends_a_line() {
        let text = b"data: a\rdata: b\r\rdata: c\r\n\r\n";
        let expected = [
            Event {
                name: None,
                data: "a\nb".into(),
            },
            Event {
                name: None,
                data: "c".into(),
            },
        ];
        for piece in 1..text.len() {
            assert_eq!(parse_in_pieces(text, piece), expected, "pieces of {piece}");
        }
        let written = frame(None, "x\ry\r\nz");
        assert_eq!(written, "data: x\ndata: y\ndata: z\n\n");
    }

    #[test]
    fn frames_parse_back() {
        let text = frame(Some("message_stop"), "{\"a\":\"b\nc\"}") + &frame(None, "[DONE]");
        assert_eq!(
            parse_in_pieces(text.as_bytes(), 5),
            [
                Event {
                    name: Some("message_stop".into()),
                    data: "{\"a\":\"b\nc\"}".into()
                },
                Event {
                    name: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }
}
