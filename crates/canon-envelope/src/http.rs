//! The CloudEvents HTTP protocol binding: choosing the mode from `Content-Type`, and the
//! binary mode's `ce-` header mapping in both directions with its percent-encoding rules.
//! Sans-I/O: headers are name/value pairs, the body is bytes.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::error::{EnvelopeErrors, ErrorCode, Problems};
use crate::event::{CloudEvent, Data, ExtValue};
use crate::rules;

/// How an HTTP request carries CloudEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// One event in the body, JSON format (`application/cloudevents+json`).
    Structured,
    /// A JSON array of events (`application/cloudevents-batch+json`).
    Batched,
    /// Attributes in `ce-` headers, the body is the data.
    Binary,
    /// No CloudEvent: neither a CloudEvents content type nor any `ce-` header.
    NotCloudEvent,
}

impl HttpMode {
    /// Picks the mode from the `Content-Type` header and whether any `ce-` header is present.
    /// An `application/cloudevents+<format>` other than JSON is refused with
    /// [`ErrorCode::UnsupportedFormat`] (HTTP 415).
    pub fn detect(
        content_type: Option<&str>,
        has_ce_headers: bool,
    ) -> Result<HttpMode, EnvelopeErrors> {
        let ct = content_type.unwrap_or("").trim().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if let Some(format) = essence.strip_prefix("application/cloudevents-batch") {
            return if format == "+json" {
                Ok(HttpMode::Batched)
            } else {
                Err(EnvelopeErrors::one(
                    ErrorCode::UnsupportedFormat,
                    "content-type",
                    format!("unsupported batch format {essence:?}; only +json is supported"),
                ))
            };
        }
        if let Some(format) = essence.strip_prefix("application/cloudevents") {
            return if format == "+json" {
                Ok(HttpMode::Structured)
            } else {
                Err(EnvelopeErrors::one(
                    ErrorCode::UnsupportedFormat,
                    "content-type",
                    format!("unsupported event format {essence:?}; only +json is supported"),
                ))
            };
        }
        Ok(if has_ce_headers {
            HttpMode::Binary
        } else {
            HttpMode::NotCloudEvent
        })
    }
}

/// Characters percent-encoded in binary-mode header values: everything outside printable ASCII
/// U+0021..U+007E (non-ASCII is always encoded), plus space, `"` and `%`.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Encodes an attribute value for a `ce-` header.
pub fn encode_header_value(value: &str) -> String {
    utf8_percent_encode(value, HEADER_VALUE).to_string()
}

/// Decodes a `ce-` header value: an RFC 7230 quoted string is unquoted first, then one round
/// of percent-decoding; the result must be valid UTF-8.
pub fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let text =
        std::str::from_utf8(raw).map_err(|_| "header value is not ASCII/UTF-8".to_owned())?;
    let unquoted;
    let text = if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        let mut out = String::with_capacity(text.len());
        let mut chars = text[1..text.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(escaped) => out.push(escaped),
                    None => return Err("quoted header value ends in a lone backslash".to_owned()),
                }
            } else {
                out.push(c);
            }
        }
        unquoted = out;
        unquoted.as_str()
    } else {
        text
    };
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "percent-decoding gives invalid UTF-8".to_owned())
}

/// A CloudEvent in HTTP binary mode, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// `ce-` headers, lower-case names, encoded values.
    pub headers: Vec<(String, String)>,
    /// The `Content-Type` header: `datacontenttype`, or `application/json` for JSON data
    /// without one.
    pub content_type: Option<String>,
    /// The data bytes.
    pub body: Vec<u8>,
}

impl CloudEvent {
    /// Decodes a binary-mode message. `headers` are all request headers (any case);
    /// `Content-Type` becomes `datacontenttype`, `ce-*` become attributes, the body the data.
    /// Extension values from headers stay strings: headers carry no type.
    pub fn from_http_binary<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        body: &[u8],
    ) -> Result<CloudEvent, EnvelopeErrors> {
        let mut p = Problems::default();
        let mut ev = CloudEvent::new(String::new(), String::new(), String::new());
        let mut seen: Vec<String> = Vec::new();
        for (name, raw) in headers {
            let lower = name.to_ascii_lowercase();
            if lower == "content-type" {
                // Content-Type is an ordinary HTTP header: its value is taken as is, not
                // percent-decoded like the ce- headers.
                match std::str::from_utf8(raw) {
                    Ok(_) if ev.datacontenttype.is_some() => p.push(
                        ErrorCode::DuplicateMember,
                        "content-type",
                        "header appears more than once",
                    ),
                    Ok(v) => ev.datacontenttype = Some(v.trim().to_owned()),
                    Err(_) => p.push(
                        ErrorCode::InvalidHeaderValue,
                        "content-type",
                        "Content-Type is not UTF-8",
                    ),
                }
                continue;
            }
            let Some(attr) = lower.strip_prefix("ce-") else {
                continue;
            };
            let header = format!("ce-{attr}");
            if seen.contains(&header) {
                p.push(
                    ErrorCode::DuplicateMember,
                    header,
                    "header appears more than once",
                );
                continue;
            }
            seen.push(header.clone());
            if !rules::is_valid_attribute_name(attr) {
                p.push(
                    ErrorCode::InvalidAttributeName,
                    header,
                    format!("attribute name {attr:?} must match [a-z0-9]+"),
                );
                continue;
            }
            let value = match decode_header_value(raw) {
                Ok(v) => v,
                Err(msg) => {
                    p.push(ErrorCode::InvalidHeaderValue, header, msg);
                    continue;
                }
            };
            match attr {
                "specversion" => {
                    if value != "1.0" {
                        p.push(
                            ErrorCode::UnsupportedSpecVersion,
                            header,
                            format!("specversion must be \"1.0\", got {value:?}"),
                        );
                    }
                }
                "id" => ev.id = value,
                "source" => ev.source = value,
                "type" => ev.ty = value,
                "dataschema" => ev.dataschema = Some(value),
                "subject" => ev.subject = Some(value),
                "time" => ev.time = Some(value),
                "datacontenttype" => {
                    p.push(ErrorCode::InvalidAttributeName, header, "datacontenttype travels as Content-Type in binary mode, not as ce-datacontenttype");
                }
                _ => {
                    ev.extensions
                        .insert(attr.to_owned(), ExtValue::String(value));
                }
            }
        }
        for header in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
            if !seen.iter().any(|h| h == header) {
                p.push(
                    ErrorCode::MissingAttribute,
                    header,
                    format!("required header {header} is missing"),
                );
            }
        }
        if !body.is_empty() {
            ev.data = Some(
                if rules::is_json_media_type(ev.effective_content_type())
                    && ev.datacontenttype.is_some()
                {
                    match serde_json::from_slice::<Box<serde_json::value::RawValue>>(body) {
                        Ok(raw) => Data::Json(raw),
                        Err(e) => {
                            p.push(
                                ErrorCode::InvalidData,
                                "body",
                                format!("body is not the JSON its content type says: {e}"),
                            );
                            Data::Binary(body.to_vec())
                        }
                    }
                } else {
                    Data::Binary(body.to_vec())
                },
            );
        }
        // The type system, reported under the header that carried each attribute.
        p.absorb(ev.validate(), |location| {
            match location.trim_start_matches('/') {
                "datacontenttype" => "content-type".to_owned(),
                "data" => "body".to_owned(),
                attr => format!("ce-{attr}"),
            }
        });
        p.finish(ev)
    }

    /// Encodes the event for HTTP binary mode.
    pub fn to_http_binary(&self) -> BinaryMessage {
        let mut headers = Vec::with_capacity(6 + self.extensions.len());
        headers.push(("ce-specversion".to_owned(), "1.0".to_owned()));
        headers.push(("ce-id".to_owned(), encode_header_value(&self.id)));
        headers.push(("ce-source".to_owned(), encode_header_value(&self.source)));
        headers.push(("ce-type".to_owned(), encode_header_value(&self.ty)));
        for (name, value) in [
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = value {
                headers.push((format!("ce-{name}"), encode_header_value(v)));
            }
        }
        for (name, value) in &self.extensions {
            headers.push((
                format!("ce-{name}"),
                encode_header_value(&value.to_canonical_string()),
            ));
        }
        let content_type = match (&self.datacontenttype, &self.data) {
            (Some(ct), _) => Some(ct.clone()),
            (None, Some(Data::Json(_))) => Some("application/json".to_owned()),
            (None, _) => None,
        };
        let body = self
            .data
            .as_ref()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        BinaryMessage {
            headers,
            content_type,
            body,
        }
    }
}
