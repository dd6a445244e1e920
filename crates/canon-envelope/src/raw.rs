//! Zero-copy reading of a JSON object's members: each member value stays a borrowed
//! `RawValue` until the decoder knows what it needs from it. Payloads are never parsed into a
//! tree and never re-serialised.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{EnvelopeErrors, ErrorCode};

/// A JSON object's members in document order, values unparsed.
#[derive(Debug)]
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

/// A string that borrows from the input when it has no escapes.
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some((Str(k), v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a raw JSON value is, with scalars decoded.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A number with a fraction or exponent, or an integer beyond i64.
    OtherNumber,
    Str(Cow<'a, str>),
    Object,
    Array,
}

impl<'a> Scalar<'a> {
    pub(crate) fn of(raw: &'a RawValue) -> Scalar<'a> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'n') => Scalar::Null,
            Some(b't') => Scalar::Bool(true),
            Some(b'f') => Scalar::Bool(false),
            Some(b'{') => Scalar::Object,
            Some(b'[') => Scalar::Array,
            // The parser already checked the string: without a backslash, its text between the
            // quotes is its value.
            Some(b'"') if !text.contains('\\') => {
                Scalar::Str(Cow::Borrowed(&text[1..text.len() - 1]))
            }
            Some(b'"') => match serde_json::from_str::<Str<'a>>(text) {
                Ok(Str(s)) => Scalar::Str(s),
                // RawValue already checked the syntax; a failure here is impossible, but an
                // unreadable string is best reported as a non-string.
                Err(_) => Scalar::OtherNumber,
            },
            // Only the plain spelling is an integer: `-0` (which JSON readers take as the float
            // negative zero) or `1e3` must come back written as they were.
            _ => match text.parse::<i64>() {
                Ok(i) if i.to_string() == text => Scalar::Int(i),
                _ => Scalar::OtherNumber,
            },
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::OtherNumber => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Object => "an object",
            Scalar::Array => "an array",
        }
    }
}

/// Reads JSON from bytes checked as UTF-8 once, as a whole: read from bytes, serde_json would
/// check every borrowed string and raw value again. Invalid UTF-8 takes the byte path, which
/// reports where it is.
fn from_bytes<'a, T: Deserialize<'a>>(input: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(input) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(input),
    }
}

/// Parses the members of one JSON object, reporting syntax errors and non-objects with a
/// location.
pub(crate) fn parse_object(input: &[u8]) -> Result<Members<'_>, EnvelopeErrors> {
    refuse_bad_escapes(input)?;
    match first_byte(input) {
        Some(b'{') => from_bytes::<Members<'_>>(input).map_err(json_error),
        Some(_) => match serde_json::from_slice::<&RawValue>(input) {
            Ok(_) => Err(EnvelopeErrors::one(
                ErrorCode::NotAnObject,
                "",
                "an event must be a JSON object",
            )),
            Err(e) => Err(json_error(e)),
        },
        None => Err(EnvelopeErrors::one(
            ErrorCode::InvalidJson,
            "",
            "empty input: expected a JSON object",
        )),
    }
}

/// Parses a JSON array's elements, unparsed.
pub(crate) fn parse_array(input: &[u8]) -> Result<Vec<&RawValue>, EnvelopeErrors> {
    refuse_bad_escapes(input)?;
    match first_byte(input) {
        Some(b'[') => from_bytes::<Vec<&RawValue>>(input).map_err(json_error),
        Some(_) => match serde_json::from_slice::<&RawValue>(input) {
            Ok(_) => Err(EnvelopeErrors::one(
                ErrorCode::NotAnArray,
                "",
                "a batch must be a JSON array of events",
            )),
            Err(e) => Err(json_error(e)),
        },
        None => Err(EnvelopeErrors::one(
            ErrorCode::InvalidJson,
            "",
            "empty input: expected a JSON array",
        )),
    }
}

/// The values Canon keeps verbatim (payloads, dialect members without a counterpart) are never
/// parsed as a whole, so escapes that are not valid Unicode are looked for once, in the input.
fn refuse_bad_escapes(input: &[u8]) -> Result<(), EnvelopeErrors> {
    match std::str::from_utf8(input) {
        Ok(text) if crate::rules::has_invalid_unicode_escape(text) => Err(EnvelopeErrors::one(
            ErrorCode::InvalidJson,
            "",
            "the document holds a \\u escape that is not valid Unicode (a lone surrogate)",
        )),
        _ => Ok(()),
    }
}

fn first_byte(input: &[u8]) -> Option<u8> {
    input.iter().copied().find(|b| !b.is_ascii_whitespace())
}

pub(crate) fn json_error(e: serde_json::Error) -> EnvelopeErrors {
    let location = format!("line {}, column {}", e.line(), e.column());
    let msg = e.to_string();
    // serde_json appends " at line L column C"; the location already says it.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    EnvelopeErrors::one(ErrorCode::InvalidJson, location, msg)
}

/// Escapes a member name for use as one token of a JSON pointer (RFC 6901): `~` becomes `~0`
/// and `/` becomes `~1`.
pub fn pointer_token(name: &str) -> Cow<'_, str> {
    if name.contains(['~', '/']) {
        Cow::Owned(name.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(name)
    }
}
