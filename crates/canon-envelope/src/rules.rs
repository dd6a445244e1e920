//! The CloudEvents 1.0 type-system and naming rules, and the syntax of Canon's typed
//! extensions. Pure functions shared by every decoder.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ErrorCode, Problems};
use crate::event::{ExtValue, TraceParent, ext};

/// Attribute names are `[a-z0-9]+`, and `data` is reserved.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name != "data"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The CloudEvents String type: no C0/C1 control characters and no Unicode noncharacters.
/// (Lone surrogates cannot occur in a Rust string; the JSON parser refuses them.)
pub fn is_valid_string(s: &str) -> bool {
    // Printable ASCII, the common case, needs no decoding.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return true;
    }
    s.chars().all(|c| {
        let u = c as u32;
        !(u <= 0x1F
            || (0x7F..=0x9F).contains(&u)
            || (0xFDD0..=0xFDEF).contains(&u)
            || (u & 0xFFFE) == 0xFFFE)
    })
}

/// Media types `*/json` and `*/*+json`, parameters ignored, case-insensitive.
pub fn is_json_media_type(media: &str) -> bool {
    let essence = media.split(';').next().unwrap_or("").trim();
    let ends_with = |suffix: &str| {
        essence.len() >= suffix.len()
            && essence.as_bytes()[essence.len() - suffix.len()..]
                .eq_ignore_ascii_case(suffix.as_bytes())
    };
    essence.contains('/') && (ends_with("/json") || ends_with("+json"))
}

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// The unreserved and reserved characters of RFC 3986, as a lookup table.
const URI_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let others = b"-._~:/?#[]@!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Characters RFC 3986 allows in a URI (reserved, unreserved, and `%` escapes).
fn has_uri_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !URI_CHAR[usize::from(c)] {
            return false;
        }
        i += 1;
    }
    true
}

/// An absolute URI: `scheme:rest`.
pub fn is_absolute_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, _)) => is_scheme(scheme) && has_uri_chars(s),
        None => false,
    }
}

/// A URI-reference: an absolute URI or a relative reference.
pub fn is_uri_reference(s: &str) -> bool {
    if !has_uri_chars(s) {
        return false;
    }
    // A relative reference must not have a first path segment containing ':' (it would read
    // as a scheme). If what precedes the first ':' is not a valid scheme, that is the case.
    match s.find(':') {
        Some(colon) => {
            let before = &s[..colon];
            is_scheme(before) || before.contains(['/', '?', '#'])
        }
        None => true,
    }
}

/// Parses a W3C `traceparent`: `VV-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not all zero.
pub fn parse_traceparent(s: &str) -> Option<TraceParent<'_>> {
    let mut parts = s.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace_id, 32)
        && lower_hex(parent_id, 16)
        && lower_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0')
        // Version 00 has exactly four fields; later versions may append more.
        && (version != "00" || parts.next().is_none());
    ok.then_some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// A W3C `tracestate`: comma-separated `key=value` members (empty members allowed), at most 32.
pub fn is_valid_tracestate(s: &str) -> bool {
    let mut keys: Vec<&str> = Vec::new();
    for member in s.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value
                .bytes()
                .all(|b| (0x20..=0x7E).contains(&b) && b != b',' && b != b'=')
            && !value.ends_with(' ');
        if !(is_tracestate_key(key) && value_ok) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
    }
    keys.len() <= 32
}

/// `simple-key = lcalpha 0*255(keychar)`, or `tenant@system` with a tenant of 1 to 241
/// characters starting with a letter or digit and a system of 1 to 14 starting with a letter.
fn is_tracestate_key(key: &str) -> bool {
    let keychar = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b);
    let part = |s: &str, max: usize, first: fn(u8) -> bool| {
        let b = s.as_bytes();
        !b.is_empty() && b.len() <= max && first(b[0]) && b[1..].iter().all(|&c| keychar(c))
    };
    match key.split_once('@') {
        None => part(key, 256, |b| b.is_ascii_lowercase()),
        Some((tenant, system)) => {
            part(tenant, 241, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit()
            }) && part(system, 14, |b| b.is_ascii_lowercase())
        }
    }
}

/// Whether `name` is one of the extensions Canon types as String (correlationid, sequence,
/// traceparent, ...).
pub fn is_string_extension(name: &str) -> bool {
    matches!(
        name,
        ext::NOT_BEFORE
            | ext::CORRELATION_ID
            | ext::CAUSATION_ID
            | ext::SEQUENCE
            | ext::PARTITION_KEY
            | ext::TRACEPARENT
            | ext::TRACESTATE
            | ext::EXPIRATION
            | ext::DATA_VERSION
            | ext::ACTOR
            | ext::DIALECT_EXTRA
    )
}

/// A non-empty CloudEvents String (the rule for every present string attribute).
pub(crate) fn check_required_string(p: &mut Problems, name: &str, value: &str) {
    if value.is_empty() {
        p.push(
            ErrorCode::EmptyAttribute,
            format!("/{name}"),
            format!("{name} must not be empty"),
        );
    } else if !is_valid_string(value) {
        p.push(
            ErrorCode::InvalidString,
            format!("/{name}"),
            format!("{name} holds a control character or noncharacter"),
        );
    }
}

pub(crate) fn check_timestamp(p: &mut Problems, name: &str, value: &str) {
    if parse_rfc3339(value).is_none() {
        p.push(
            ErrorCode::InvalidTimestamp,
            format!("/{name}"),
            format!(
                "{name} must be an RFC 3339 timestamp such as 2024-05-01T10:00:00Z, got {value:?}"
            ),
        );
    }
}

/// Checks an extension's name, its value's type and, for the extensions Canon knows, the
/// value's syntax.
pub(crate) fn check_extension(p: &mut Problems, name: &str, value: &ExtValue) {
    let loc = || format!("/{name}");
    if !is_valid_attribute_name(name) {
        p.push(
            ErrorCode::InvalidAttributeName,
            loc(),
            format!("attribute name {name:?} must match [a-z0-9]+ and not be `data`"),
        );
        return;
    }
    match value {
        ExtValue::String(s) => {
            if !is_valid_string(s) {
                p.push(
                    ErrorCode::InvalidString,
                    loc(),
                    format!("{name} holds a control character or noncharacter"),
                );
                return;
            }
            if is_string_extension(name) && s.is_empty() && name != ext::TRACESTATE {
                p.push(
                    ErrorCode::EmptyAttribute,
                    loc(),
                    format!("{name} must not be empty"),
                );
                return;
            }
            match name {
                ext::TRACEPARENT if parse_traceparent(s).is_none() => p.push(
                    ErrorCode::InvalidTraceParent,
                    loc(),
                    "traceparent must be `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case, ids not all zero",
                ),
                ext::TRACESTATE if !is_valid_tracestate(s) => {
                    p.push(ErrorCode::InvalidTraceState, loc(), "tracestate must be a comma-separated list of key=value");
                }
                ext::EXPIRATION | ext::NOT_BEFORE => check_timestamp(p, name, s),
                _ => {}
            }
        }
        ExtValue::Bool(_) | ExtValue::Integer(_) => {
            if is_string_extension(name) {
                p.push(
                    ErrorCode::InvalidAttributeType,
                    loc(),
                    format!("{name} must be a string"),
                );
            }
        }
    }
}

/// Whether JSON text holds a `\u` escape that is not valid Unicode: a lone or misordered
/// surrogate. JSON's grammar allows them, but they are not text (I-JSON, RFC 7493, forbids
/// them) and most readers refuse them, so Canon does too.
pub fn has_invalid_unicode_escape(json: &str) -> bool {
    if !json.contains("\\u") {
        return false;
    }
    let b = json.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        std::str::from_utf8(b.get(at..at + 4)?)
            .ok()
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex(i + 2) else { return true };
        i += 6;
        match unit {
            0xD800..=0xDBFF => {
                let low = (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
                    .then(|| hex(i + 2))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return true;
                }
                i += 6;
            }
            0xDC00..=0xDFFF => return true,
            _ => {}
        }
    }
    false
}
