//! The one reading of the protocols' JSON: typed structs with the fields the checks read, each
//! of the type the protocol documents. A field of another type reads as absent
//! ([`Lenient`]): what a client or server sends beside the protocol is not ours to refuse, and
//! an absent text is an empty one. A struct is read from a JSON object only ([`Object`]). What
//! cannot be decoded in a field that is read (an escape that is no character) or a body that is
//! not JSON at all is an error, never an empty text.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
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
            Err(e) => {
                let message = e.to_string();
                if message.starts_with(UNDECODABLE) {
                    Err(D::Error::custom(message))
                } else if e.classify() == Category::Data {
                    Ok(Self(None))
                } else {
                    Err(D::Error::custom(format!("{UNDECODABLE}{message}")))
                }
            }
        }
    }
}

/// A JSON string, borrowed from the body unless it has escapes.
#[derive(serde::Deserialize)]
pub struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
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
            self.0.fmt(f)
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
