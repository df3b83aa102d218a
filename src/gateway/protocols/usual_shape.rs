//! What the typed readings of usual response shapes ([`super::Adapter::usual_outputs`])
//! need to read exactly what the `Value` reading reads.
//!
//! - [`skipping_is_exact`]: a typed reading skips the fields it does not name, and serde_json
//!   skips more laxly than it parses (invalid UTF-8, a lone surrogate escape, a number out of
//!   an f64's range, nesting past its depth limit all pass unread). One cheap pass finds out
//!   whether a body holds anything of the kind; if it may, the `Value` reading decides.
//! - [`Object`]: serde's derived structs also take a JSON array, field by position, where the
//!   `Value` reading sees no fields at all; `Object<T>` takes `T` from an object only.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Nesting deeper than this goes to the `Value` reading (serde_json stops at 128).
const MAX_DEPTH: usize = 100;
/// A run of this many digits, or an exponent of this many, may overflow an f64.
const LONG_NUMBER: usize = 300;
const LONG_EXPONENT: usize = 3;

/// Whether nothing in `body` is skipped more laxly than it is parsed: it is UTF-8, no string
/// holds a `\u` escape of a surrogate, no number may overflow an f64 and nesting stays
/// shallow. Conservative (a false answer only costs the `Value` reading); it does not check
/// that `body` is JSON, which the typed reading itself does.
pub fn skipping_is_exact(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok() && (nothing_suspect(body) || careful_scan(body))
}

/// A quick look at the whole body, strings included: too few digits for a long number, too
/// few brackets for deep nesting, no digit followed by an `e` (no exponent at all), no escape
/// that could be a surrogate's. A suspect is no verdict: [`careful_scan`] then decides.
fn nothing_suspect(body: &[u8]) -> bool {
    let digit = |b: u8| b.wrapping_sub(b'0') < 10;
    let next = body.get(1..).unwrap_or_default();
    count(body, digit) < LONG_NUMBER
        && count(body, |b| b == b'[' || b == b'{') <= MAX_DEPTH
        && count_pairs(body, next, |a, b| digit(a) && (b | 0x20) == b'e') == 0
        && !memchr::memchr_iter(b'\\', body)
            .any(|i| surrogate_escape(body.get(i + 1..).unwrap_or_default()))
}

/// How many bytes pass `test`; counted 255 at a time in byte lanes, which the compiler turns
/// into wide vector code (a `usize` count would widen every byte first).
fn count(body: &[u8], test: impl Fn(u8) -> bool) -> usize {
    body.chunks(255)
        .map(|chunk| chunk.iter().fold(0u8, |n, &b| n + u8::from(test(b))))
        .map(usize::from)
        .sum()
}

/// How many pairs `(first[i], second[i])` pass `test`, counted as [`count`] counts.
fn count_pairs(first: &[u8], second: &[u8], test: impl Fn(u8, u8) -> bool) -> usize {
    first
        .chunks(255)
        .zip(second.chunks(255))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .fold(0u8, |n, (&x, &y)| n + u8::from(test(x, y)))
        })
        .map(usize::from)
        .sum()
}

/// The exact check, in one pass: strings are skipped to their end with only their escapes
/// looked at; numbers, exponents and nesting are followed outside them.
fn careful_scan(body: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut digits = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b'"' => {
                while let Some(k) = memchr::memchr2(b'"', b'\\', body.get(i..).unwrap_or_default())
                {
                    i += k + 1;
                    if body.get(i - 1) == Some(&b'"') {
                        break;
                    }
                    if surrogate_escape(body.get(i..).unwrap_or_default()) {
                        return false;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'0'..=b'9' => {
                digits += 1;
                if digits >= LONG_NUMBER {
                    return false;
                }
                continue;
            }
            b'e' | b'E' if digits > 0 && long_exponent(body.get(i..).unwrap_or_default()) => {
                return false;
            }
            _ => {}
        }
        digits = 0;
    }
    true
}

/// Whether `escaped`, what follows a backslash, is a `\u` escape of a surrogate.
fn surrogate_escape(escaped: &[u8]) -> bool {
    matches!(
        escaped.get(..3),
        Some([b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'])
    )
}

/// Whether what follows an exponent's `e` (a sign, then digits) has a long run of digits.
fn long_exponent(rest: &[u8]) -> bool {
    let rest = rest
        .strip_prefix(b"+")
        .or(rest.strip_prefix(b"-"))
        .unwrap_or(rest);
    rest.iter().take_while(|c| c.is_ascii_digit()).count() >= LONG_EXPONENT
}

/// A body's `choices`, each a `C` (OpenAI's Chat Completions and Completions); other fields
/// are skipped unread.
#[derive(serde::Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de>"))]
pub struct Choices<C> {
    /// The choices, in order.
    pub choices: Vec<Object<C>>,
}

/// A JSON string, borrowed from the body unless it has escapes. (serde borrows a `Cow` only
/// where it is a field's own type, not inside an `Option`: this newtype is that field.)
#[derive(serde::Deserialize)]
pub struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    /// The string, owned.
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// A request's `messages`, each an `M`, with its `stream` flag and `system` prompt, as OpenAI's
/// Chat Completions and Anthropic's Messages send them; other fields are skipped unread. Only
/// Anthropic has a top-level `system` (chat sends it as a message): chat reads none, and one
/// that is neither a string nor a list of parts sends a request the `Value` way.
#[derive(serde::Deserialize)]
#[serde(bound(deserialize = "M: Deserialize<'de>, 'de: 'a"))]
pub struct MessagesRequest<'a, M> {
    /// The messages, in order.
    pub messages: Vec<Object<M>>,
    /// Whether the client asked for a stream.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The system prompt (Anthropic).
    #[serde(borrow, default)]
    pub system: Option<Content<'a>>,
}

impl<'a, M: Deserialize<'a>> MessagesRequest<'a, M> {
    /// The request in `body`, when it has the usual shape.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        serde_json::from_slice::<Object<Self>>(body)
            .ok()
            .map(|Object(request)| request)
    }

    /// An empty conversation with the request's `stream` flag.
    pub fn start(&self) -> super::Conversation {
        super::Conversation {
            stream: self.stream.unwrap_or(false),
            ..super::Conversation::default()
        }
    }
}

/// A message's `content` (OpenAI's and Anthropic's shape): a string, or a list of parts, each
/// a `P` (by default a [`Part`]). Anything else is not the usual shape.
pub enum Content<'a, P = Part<'a>> {
    /// Plain text.
    Text(Text<'a>),
    /// Parts, each an object.
    Parts(Vec<Object<P>>),
}

/// One part of a `content` list; other fields are skipped unread.
#[derive(serde::Deserialize)]
pub struct Part<'a> {
    /// Its `type`.
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Text<'a>>,
    /// Its `text`.
    #[serde(borrow, default)]
    pub text: Option<Text<'a>>,
}

impl Content<'_> {
    /// [`Content::text`] of a content that may be absent: empty when it is, as the `Value`
    /// reading reads a missing or `null` content.
    pub fn text_of(
        content: Option<&Self>,
        place: &dyn fmt::Display,
        unscanned: &mut Vec<String>,
    ) -> String {
        content.map_or_else(String::new, |c| c.text(place, unscanned))
    }

    /// The text, as [`super::content_text`] reads the same content from a `Value`.
    pub fn text(&self, place: &dyn fmt::Display, unscanned: &mut Vec<String>) -> String {
        match self {
            Content::Text(text) => text.to_string(),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|Object(p)| {
                        let (kind, text) = (p.kind.as_deref(), p.text.as_deref());
                        super::part_text(kind, text, place, unscanned)
                    })
                    .collect();
                texts.join("\n")
            }
        }
    }
}

impl<'de: 'a, 'a, P: Deserialize<'de>> Deserialize<'de> for Content<'a, P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor(PhantomData))
    }
}

struct ContentVisitor<'a, P>(PhantomData<(&'a (), P)>);

impl<'de: 'a, 'a, P: Deserialize<'de>> Visitor<'de> for ContentVisitor<'a, P> {
    type Value = Content<'a, P>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of parts")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Text(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Text(Cow::Owned(v.to_string()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Content::Text(Text(Cow::Owned(v))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(part) = seq.next_element()? {
            parts.push(part);
        }
        Ok(Content::Parts(parts))
    }
}

/// A `T` read from a JSON object only.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Named<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
    }

    #[derive(serde::Deserialize)]
    struct Optional<'a> {
        #[serde(borrow, default)]
        text: Option<Text<'a>>,
    }

    #[test]
    fn optional_texts_are_borrowed_unless_escaped() {
        let read = |body: &'static str| {
            serde_json::from_str::<Optional<'static>>(body)
                .expect("json")
                .text
                .map(|t| (matches!(t.0, Cow::Borrowed(_)), t.into_string()))
        };
        assert_eq!(read(r#"{"text":"plain"}"#), Some((true, "plain".into())));
        assert_eq!(read(r#"{"text":"a\nb"}"#), Some((false, "a\nb".into())));
        assert_eq!(read(r#"{"text":null}"#), None);
        assert_eq!(read(r#"{}"#), None);
    }

    #[test]
    fn an_object_is_read_from_an_object_only() {
        fn read(body: &str) -> serde_json::Result<Named<'_>> {
            serde_json::from_str::<Object<Named<'_>>>(body).map(|o| o.0)
        }
        assert_eq!(
            read(r#"{"name":"a","other":[1]}"#).ok(),
            Some(Named {
                name: Some("a".into())
            })
        );
        assert_eq!(read(r#"{}"#).ok(), Some(Named { name: None }));
        assert!(read(r#"["a"]"#).is_err());
        assert!(read(r#"[]"#).is_err());
        assert!(read(r#""a""#).is_err());
        // A derived struct alone takes the array by position.
        assert!(serde_json::from_str::<Named<'_>>(r#"["a"]"#).is_ok());
    }

    #[test]
    fn counts_in_byte_lanes_match_plain_counts() {
        let body: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 128) as u8).collect();
        for len in [0, 1, 254, 255, 256, 511, 1000, 2000] {
            let b = &body[..len];
            let plain = b.iter().filter(|c| c.is_ascii_digit()).count();
            assert_eq!(count(b, |c| c.is_ascii_digit()), plain, "{len}");
            let next = b.get(1..).unwrap_or_default();
            let pairs = b.windows(2).filter(|w| w[0] < w[1]).count();
            assert_eq!(count_pairs(b, next, |x, y| x < y), pairs, "{len}");
        }
    }

    #[test]
    fn what_skipping_would_let_through_is_found_and_the_rest_parses() {
        let lax: [&[u8]; 8] = [
            br#"{"x":"\ud800"}"#,
            br#"{"x":"\udc00"}"#,
            br#"{"x":"\uDBFF\u0041"}"#,
            br#"{"x":"\ud83d\ude00"}"#,
            br#"{"x":1e400}"#,
            br#"{"x":-2.5E+999}"#,
            b"{\"x\":\"\xff\"}",
            b"{\"x\":\"caf\xc3\"}",
        ];
        for body in lax {
            assert!(
                !skipping_is_exact(body),
                "{}",
                String::from_utf8_lossy(body)
            );
            let valid = std::str::from_utf8(body).is_ok();
            assert!(!valid || !nothing_suspect(body), "{body:?} is no suspect");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!skipping_is_exact(deep.as_bytes()));
        let long = format!("[{}]", "9".repeat(LONG_NUMBER));
        assert!(!skipping_is_exact(long.as_bytes()));
        // Many brackets or digits in all, none of them too deep or too long: exact.
        let wide = format!("[{}1]", "[],".repeat(MAX_DEPTH * 2));
        let many = format!("[{}1]", "123456789,".repeat(LONG_NUMBER));
        for body in [wide, many] {
            assert!(!nothing_suspect(body.as_bytes()));
            assert!(skipping_is_exact(body.as_bytes()));
        }
        // Whatever passes the check and skips cleanly also parses as a `Value`.
        let fine: [&[u8]; 8] = [
            br#"{"x":1}"#,
            br#"{"a":[1,-2,3.5e10,1e-5,true,null,"x\n\u00e9\\ud800 \"\ud800"],"b":{"c":{}}}"#,
            br#"{"x":"1e999 in a string","y":"[[[[[["}"#,
            br#"{"a":1,"a":2}"#,
            "{\"x\":\"é ✓ 😀\"}".as_bytes(),
            br#"123456789012345678901234567890"#,
            br#"{"x":"\u0041\uE000"}"#,
            b"",
        ];
        for body in fine {
            // The careful scan alone is exact too, where the quick look only suspects.
            assert_eq!(careful_scan(body), skipping_is_exact(body));
            let skips = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            let parses = serde_json::from_slice::<Value>(body).is_ok();
            assert_eq!(
                skips && skipping_is_exact(body),
                parses,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
