//! The one reading of the protocols' JSON: typed structs with the fields the checks read, each
//! of the type the protocol documents. A field of another type reads as absent
//! ([`Lenient`]): what a client or server sends beside the protocol is not ours to refuse, and
//! an absent text is an empty one. A struct is read from a JSON object only ([`Object`]). What
//! cannot be decoded in a field that is read (an escape that is no character) or a body that is
//! not JSON at all is an error, never an empty text.
//!
//! The reading also knows where each text it read sits in the body ([`read_with_texts`]), so
//! that masking can rewrite exactly those strings and leave every other byte as it was.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    Deserialize, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde_json::error::Category;
use serde_json::value::RawValue;

/// Reads a whole body as a `T` (absent fields, and a body that is JSON of another shape, read
/// as `T::default()`); an error says why the body is not JSON.
pub fn read_body<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, String> {
    match serde_json::from_slice::<Lenient<Object<T>>>(body) {
        Ok(Lenient(read)) => Ok(read.map(|Object(t)| t).unwrap_or_default()),
        Err(e) => {
            // The positions nested readings add are within their own values: keep the cause.
            let message = e.to_string();
            let cause = message.trim_start_matches(UNDECODABLE);
            let cause = cause.split(" at line ").next().unwrap_or(cause);
            Err(format!("the body is not valid JSON: {cause}"))
        }
    }
}

thread_local! {
    /// The string tokens read by [`Text`] and [`Json`] during a [`read_with_texts`], as
    /// (address, length).
    static TEXTS: RefCell<Option<Vec<(usize, usize)>>> = const { RefCell::new(None) };
}

/// Notes a string token read from the body (when a [`read_with_texts`] is listening).
fn note(token: &str) {
    TEXTS.with_borrow_mut(|texts| {
        if let Some(texts) = texts {
            texts.push((token.as_ptr() as usize, token.len()));
        }
    });
}

/// [`read_body`], and where in `body` each string token it read as text sits (with its
/// quotes), in order, each once. Every text field the reading decodes is listed, so the list
/// covers whatever the checks read, whichever parts the scan settings choose.
pub fn read_with_texts<'a, T: Deserialize<'a> + Default>(
    body: &'a [u8],
) -> Result<(T, Vec<Range<usize>>), String> {
    /// Stops the listening however the reading ends (a panic included), so that no later
    /// reading on this thread notes into a list nobody takes.
    struct Listening;
    impl Drop for Listening {
        fn drop(&mut self) {
            TEXTS.with_borrow_mut(|texts| *texts = None);
        }
    }
    TEXTS.with_borrow_mut(|texts| *texts = Some(Vec::new()));
    let listening = Listening;
    let read = read_body(body);
    let noted = TEXTS.with_borrow_mut(Option::take).unwrap_or_default();
    drop(listening);
    let read = read?;
    let base = body.as_ptr() as usize;
    let mut spans = noted
        .into_iter()
        .map(|(at, len)| {
            at.checked_sub(base)
                .filter(|start| start + len <= body.len())
                .map(|start| start..start + len)
                .ok_or_else(|| "a text was read from outside the body".to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    spans.sort_by_key(|r| r.start);
    spans.dedup();
    Ok((read, spans))
}

/// A `T`, or `None` when the JSON there is of another type. Errors that are not about the type
/// (a string that cannot be decoded) still fail the reading.
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Lenient<T> {
    /// The value, if it had the type.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

/// Starts the message of an error that is not about a field's type. Passed up through the
/// enclosing [`Lenient`]s (each of which reads its value on its own, so would otherwise see only
/// a "custom" error), it fails the whole reading.
const UNDECODABLE: &str = "undecodable: ";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        match serde_json::from_str::<T>(raw.get()) {
            Ok(value) => Ok(Self(Some(value))),
            Err(e) if is_type_error(&e) => Ok(Self(None)),
            Err(e) => {
                let message = e.to_string();
                if message.starts_with(UNDECODABLE) {
                    Err(D::Error::custom(message))
                } else {
                    Err(D::Error::custom(format!("{UNDECODABLE}{message}")))
                }
            }
        }
    }
}

/// Whether a reading failed only because the JSON there is of another type (not because
/// something in it cannot be decoded).
pub fn is_type_error(e: &serde_json::Error) -> bool {
    e.classify() == Category::Data && !e.to_string().starts_with(UNDECODABLE)
}

/// A JSON string, borrowed from the body unless it has escapes, and the token it was read from.
pub struct Text<'a> {
    text: Cow<'a, str>,
    token: &'a str,
}

impl Text<'_> {
    /// Where its token (with the quotes) sits in `data`, the JSON it was read from.
    pub fn span_in(&self, data: &str) -> Option<Range<usize>> {
        let start = (self.token.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let end = start + self.token.len();
        (end <= data.len()).then_some(start..end)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = <&'de RawValue>::deserialize(deserializer)?.get();
        let Some(inner) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return Err(D::Error::invalid_type(
                Unexpected::Other("another type"),
                &"a string",
            ));
        };
        let text = if inner.contains('\\') {
            serde_json::from_str::<String>(token)
                .map(Cow::Owned)
                .map_err(|e| D::Error::custom(format!("{UNDECODABLE}{e}")))?
        } else {
            Cow::Borrowed(inner)
        };
        note(token);
        Ok(Text { text, token })
    }
}

/// Any JSON value (a tool call's input), whose strings, at any depth, are texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Json(pub serde_json::Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?.get();
        note_strings(raw);
        serde_json::from_str(raw)
            .map(Json)
            .map_err(D::Error::custom)
    }
}

/// Notes every string value (not the keys) in a JSON text that is part of the body.
fn note_strings(raw: &str) {
    struct Strings;

    impl<'de> Visitor<'de> for Strings {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key::<IgnoredAny>()?.is_some() {
                note_strings(map.next_value::<&RawValue>()?.get());
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<&RawValue>()? {
                note_strings(item.get());
            }
            Ok(())
        }

        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }

        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }

        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }

        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }

        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    if raw.starts_with('"') {
        note(raw);
    } else if raw.starts_with(['{', '[']) {
        let mut de = serde_json::Deserializer::from_str(raw);
        // `raw` was read as JSON already: nothing here can fail.
        let _ = de.deserialize_any(Strings);
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// The text of an optional string field; empty when absent or of another type.
pub fn text<'t>(field: &'t Lenient<Text<'_>>) -> &'t str {
    field.get().map_or("", |t| t)
}

/// A `T` read from a JSON object only (a derived struct alone would also take an array, field
/// by position).
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

/// A list whose items are objects of type `T`; an item of another type reads as absent.
pub type Items<T> = Lenient<Vec<Lenient<Object<T>>>>;

/// The items of a list field, absent ones as `None` (empty when the field is absent).
pub fn items<T>(field: &Items<T>) -> impl Iterator<Item = Option<&T>> {
    field
        .get()
        .into_iter()
        .flatten()
        .map(|item| item.get().map(|Object(t)| t))
}

/// A `content` (OpenAI's and Anthropic's shape): a string, or a list of parts, each a `P`.
pub enum Content<'a, P = Part<'a>> {
    /// Plain text.
    Text(Text<'a>),
    /// Parts; one that is not an object reads as absent.
    Parts(Vec<Lenient<Object<P>>>),
}

/// One part of a `content` list.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Part<'a> {
    /// Its `type`.
    #[serde(borrow, rename = "type")]
    pub kind: Lenient<Text<'a>>,
    /// Its `text`.
    #[serde(borrow)]
    pub text: Lenient<Text<'a>>,
}

/// The text of a `content`: the string, or the text parts joined by newlines; parts of other
/// types are noted in `unscanned` with `place`. Empty when the content is absent or of another
/// type.
pub fn content_text(
    content: &Lenient<Content<'_>>,
    place: &dyn fmt::Display,
    unscanned: &mut Vec<String>,
) -> String {
    match content.get() {
        None => String::new(),
        Some(Content::Text(text)) => text.to_string(),
        Some(Content::Parts(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| {
                    let part = part.get().map(|Object(p)| p);
                    let kind = part.and_then(|p| p.kind.get()).map(|k| &**k);
                    let text = part.and_then(|p| p.text.get()).map(|t| &**t);
                    part_text(kind, text, place, unscanned)
                })
                .collect();
            texts.join("\n")
        }
    }
}

/// The text of one part of a `content` list, from its `type` and `text`; a part of any other
/// type than text or refusal is noted in `unscanned` with `place`.
pub fn part_text<'a>(
    kind: Option<&str>,
    text: Option<&'a str>,
    place: &dyn fmt::Display,
    unscanned: &mut Vec<String>,
) -> Option<&'a str> {
    let kind = kind.unwrap_or("unknown");
    match (kind, text) {
        ("text" | "input_text" | "output_text", Some(t)) => Some(t),
        ("refusal", _) => None,
        _ => {
            unscanned.push(format!("{kind} in {place}"));
            None
        }
    }
}

impl<'de: 'a, 'a, P: Deserialize<'de>> Deserialize<'de> for Content<'a, P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?.get();
        let read = if raw.starts_with('"') {
            serde_json::from_str(raw).map(Content::Text)
        } else if raw.starts_with('[') {
            serde_json::from_str(raw).map(Content::Parts)
        } else {
            return Err(D::Error::invalid_type(
                Unexpected::Other("another type"),
                &"a string or a list of parts",
            ));
        };
        read.map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default)]
    struct Message<'a> {
        #[serde(borrow)]
        role: Lenient<Text<'a>>,
        #[serde(borrow)]
        content: Lenient<Content<'a>>,
    }

    impl fmt::Debug for Text<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.text.fmt(f)
        }
    }

    impl<T: fmt::Debug> fmt::Debug for Lenient<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt(f)
        }
    }

    impl fmt::Debug for Content<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("content")
        }
    }

    fn read(body: &str) -> Result<(String, String, Vec<String>), String> {
        let m: Message<'_> = read_body(body.as_bytes())?;
        let mut unscanned = Vec::new();
        let content = content_text(&m.content, &"m", &mut unscanned);
        Ok((text(&m.role).to_string(), content, unscanned))
    }

    #[test]
    fn fields_of_another_type_read_as_absent() {
        let ok = |r: &str, c: &str| Ok((r.to_string(), c.to_string(), Vec::new()));
        assert_eq!(read(r#"{"role":"user","content":"hi"}"#), ok("user", "hi"));
        assert_eq!(read(r#"{"role":1,"content":"hi"}"#), ok("", "hi"));
        assert_eq!(read(r#"{"role":"user","content":42}"#), ok("user", ""));
        assert_eq!(
            read(r#"{"role":"user","content":{"text":"x"}}"#),
            ok("user", "")
        );
        assert_eq!(
            read(r#"[["user","hi"]]"#),
            ok("", ""),
            "no struct from an array"
        );
        assert_eq!(read(r#""just a string""#), ok("", ""));
        assert_eq!(
            read(
                r#"{"role":"user","content":[{"type":"text","text":"a"},["text","b"],{"type":"image_url"},{"text":"c"}]}"#
            ),
            Ok((
                "user".into(),
                "a".into(),
                vec![
                    "unknown in m".into(),
                    "image_url in m".into(),
                    "unknown in m".into()
                ]
            ))
        );
    }

    #[test]
    fn what_cannot_be_decoded_is_an_error_not_an_empty_text() {
        for body in [
            r#"{"role":"user","content":"\ud800"}"#,
            r#"{"role":"user","content":[{"type":"text","text":"\udc00 x"}]}"#,
            r#"{"role":"user","content":"a"} trailing"#,
            "not json",
            "",
        ] {
            assert!(read(body).is_err(), "{body}");
        }
        assert!(read_body::<Message<'_>>(b"{\"content\":\"caf\xc3\"}").is_err());
        assert_eq!(
            read(r#"{"content":[{"text":"\ud800"}]}"#),
            Err("the body is not valid JSON: unexpected end of hex escape".into())
        );
        // Escapes decode; strings without them are borrowed.
        assert_eq!(
            read(r#"{"content":"a\nb \u00e9"}"#).map(|r| r.1),
            Ok("a\nb é".to_string())
        );
    }
}
