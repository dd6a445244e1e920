//! The canonical event: a CloudEvents 1.0 event whose payload stays as raw bytes.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::error::{EnvelopeErrors, ErrorCode, Problems};
use crate::rules;

/// A CloudEvents 1.0 event, Canon's canonical form.
///
/// `specversion` is implied: Canon reads and writes only `1.0`.
///
/// Invariant: an event returned by any decoder of this crate has passed [`CloudEvent::validate`].
/// An event built by hand should be validated before it is handed on; encoders do not
/// re-check.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `id`: with `source`, identifies the event. Non-empty.
    pub id: String,
    /// `source`: a URI-reference naming the context the event happened in. Non-empty.
    pub source: String,
    /// `type`: the event type, e.g. `com.todo.task.created.v1`. Non-empty.
    pub ty: String,
    /// `datacontenttype`: the media type of `data`; absent means `application/json`.
    pub datacontenttype: Option<String>,
    /// `dataschema`: an absolute URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// `subject`: the subject of the event within `source`.
    pub subject: Option<String>,
    /// `time`: an RFC 3339 timestamp, kept exactly as written.
    pub time: Option<String>,
    /// Extension attributes, by name.
    pub extensions: BTreeMap<String, ExtValue>,
    /// The payload; `None` when the event has no `data` at all.
    pub data: Option<Data>,
}

/// The payload of an event, kept as it arrived so that passing it on costs no
/// re-serialisation.
#[derive(Debug, Clone)]
pub enum Data {
    /// A JSON value (the `data` member under a JSON content type), byte for byte as received.
    Json(Box<RawValue>),
    /// Text under a non-JSON content type (the `data` member as a JSON string).
    Text(String),
    /// Opaque bytes (`data_base64`, or a binary-mode body under a non-JSON content type).
    Binary(Vec<u8>),
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            (Data::Text(a), Data::Text(b)) => a == b,
            (Data::Binary(a), Data::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl Data {
    /// The payload as bytes: the JSON text, the text, or the binary.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::Json(raw) => raw.get().as_bytes(),
            Data::Text(text) => text.as_bytes(),
            Data::Binary(bytes) => bytes,
        }
    }

    /// Wraps an already-serialised JSON value. Fails if `json` is not valid JSON.
    pub fn json(json: impl Into<String>) -> Result<Data, serde_json::Error> {
        RawValue::from_string(json.into()).map(Data::Json)
    }
}

/// The value of an extension attribute, in the CloudEvents type system as it can appear in
/// JSON: Boolean, Integer (signed 32-bit) or String (which also carries the URI, Timestamp and
/// Binary types in their canonical string form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtValue {
    /// A Boolean.
    Bool(bool),
    /// A signed 32-bit Integer.
    Integer(i32),
    /// A String (or a type whose canonical form is a string).
    String(String),
}

impl ExtValue {
    /// The canonical string form, as used in HTTP and Kafka headers.
    pub fn to_canonical_string(&self) -> String {
        match self {
            ExtValue::Bool(b) => b.to_string(),
            ExtValue::Integer(i) => i.to_string(),
            ExtValue::String(s) => s.clone(),
        }
    }

    /// The value if it is a String.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ExtValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl serde::Serialize for ExtValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExtValue::Bool(b) => s.serialize_bool(*b),
            ExtValue::Integer(i) => s.serialize_i32(*i),
            ExtValue::String(v) => s.serialize_str(v),
        }
    }
}

impl From<&str> for ExtValue {
    fn from(s: &str) -> Self {
        ExtValue::String(s.to_owned())
    }
}

impl From<String> for ExtValue {
    fn from(s: String) -> Self {
        ExtValue::String(s)
    }
}

/// Names of the extension attributes Canon gives typed access to.
pub mod ext {
    /// The id of the request or workflow this event belongs to (seeds 001, 002).
    pub const CORRELATION_ID: &str = "correlationid";
    /// The id of the event that caused this one.
    pub const CAUSATION_ID: &str = "causationid";
    /// The CloudEvents Sequence extension: order within the source, compared as strings.
    pub const SEQUENCE: &str = "sequence";
    /// The CloudEvents Partitioning extension: the ordering and sharding key.
    pub const PARTITION_KEY: &str = "partitionkey";
    /// W3C Trace Context `traceparent` of the first hop.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C Trace Context `tracestate` of the first hop.
    pub const TRACESTATE: &str = "tracestate";
    /// When the event stops being worth delivering (RFC 3339), as Dapr's `expiration`.
    pub const EXPIRATION: &str = "expiration";
    /// Canon: deliver no earlier than this time (RFC 3339), for scheduled events.
    pub const NOT_BEFORE: &str = "notbefore";
    /// Canon: the version of the payload schema (`1`, `1.2`, `1.0.0`).
    pub const DATA_VERSION: &str = "dataversion";
    /// Canon: the user on whose behalf the event was produced.
    pub const ACTOR: &str = "actor";
    /// Canon: dialect members that have no CloudEvents counterpart, kept for a lossless
    /// return trip (a JSON document; see docs/dialects.md).
    pub const DIALECT_EXTRA: &str = "canonextra";
}

/// A parsed W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// Two hex digits; `00` today.
    pub version: &'a str,
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: &'a str,
    /// 16 lower-case hex digits, not all zero.
    pub parent_id: &'a str,
    /// Two hex digits of flags (`01` = sampled).
    pub flags: &'a str,
}

impl CloudEvent {
    /// A new event with the three required attributes and nothing else.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        CloudEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    fn ext_str(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(ExtValue::as_str)
    }

    /// The `correlationid` extension.
    pub fn correlation_id(&self) -> Option<&str> {
        self.ext_str(ext::CORRELATION_ID)
    }

    /// The `causationid` extension.
    pub fn causation_id(&self) -> Option<&str> {
        self.ext_str(ext::CAUSATION_ID)
    }

    /// The `sequence` extension.
    pub fn sequence(&self) -> Option<&str> {
        self.ext_str(ext::SEQUENCE)
    }

    /// The `partitionkey` extension.
    pub fn partition_key(&self) -> Option<&str> {
        self.ext_str(ext::PARTITION_KEY)
    }

    /// The `traceparent` extension, parsed. `None` if absent (a decoded event never holds an
    /// invalid one).
    pub fn traceparent(&self) -> Option<TraceParent<'_>> {
        self.ext_str(ext::TRACEPARENT)
            .and_then(rules::parse_traceparent)
    }

    /// The `tracestate` extension.
    pub fn tracestate(&self) -> Option<&str> {
        self.ext_str(ext::TRACESTATE)
    }

    /// The `expiration` extension as written (RFC 3339).
    pub fn expiration(&self) -> Option<&str> {
        self.ext_str(ext::EXPIRATION)
    }

    /// The `expiration` extension as a point in time.
    pub fn expiration_time(&self) -> Option<time::OffsetDateTime> {
        self.expiration().and_then(rules::parse_rfc3339)
    }

    /// Canon's `notbefore` extension as a point in time: the event is not delivered earlier.
    pub fn not_before_time(&self) -> Option<time::OffsetDateTime> {
        self.ext_str(ext::NOT_BEFORE).and_then(rules::parse_rfc3339)
    }

    /// The `time` attribute as a point in time.
    pub fn time_value(&self) -> Option<time::OffsetDateTime> {
        self.time.as_deref().and_then(rules::parse_rfc3339)
    }

    /// Canon's `dataversion` extension: the payload schema version.
    pub fn data_version(&self) -> Option<&str> {
        self.ext_str(ext::DATA_VERSION)
    }

    /// Canon's `actor` extension: the acting user.
    pub fn actor(&self) -> Option<&str> {
        self.ext_str(ext::ACTOR)
    }

    /// Sets a String extension (no validation; see [`CloudEvent::validate`]).
    pub fn set_extension(&mut self, name: &str, value: impl Into<ExtValue>) {
        self.extensions.insert(name.to_owned(), value.into());
    }

    /// The effective media type of `data`: `datacontenttype`, or `application/json`.
    pub fn effective_content_type(&self) -> &str {
        self.datacontenttype
            .as_deref()
            .unwrap_or("application/json")
    }

    /// Checks every rule of the CloudEvents type system and Canon's typed extensions, and
    /// returns every problem found.
    pub fn validate(&self) -> Result<(), EnvelopeErrors> {
        let mut p = Problems::default();
        rules::check_required_string(&mut p, "id", &self.id);
        rules::check_required_string(&mut p, "source", &self.source);
        if !self.source.is_empty() && !rules::is_uri_reference(&self.source) {
            p.push(
                ErrorCode::InvalidUri,
                "/source",
                "source must be a URI-reference",
            );
        }
        rules::check_required_string(&mut p, "type", &self.ty);
        if let Some(v) = &self.datacontenttype {
            rules::check_required_string(&mut p, "datacontenttype", v);
        }
        if let Some(v) = &self.dataschema {
            rules::check_required_string(&mut p, "dataschema", v);
            if !v.is_empty() && !rules::is_absolute_uri(v) {
                p.push(
                    ErrorCode::InvalidUri,
                    "/dataschema",
                    "dataschema must be an absolute URI",
                );
            }
        }
        if let Some(v) = &self.subject {
            rules::check_required_string(&mut p, "subject", v);
        }
        if let Some(v) = &self.time {
            rules::check_timestamp(&mut p, "time", v);
        }
        for (name, value) in &self.extensions {
            rules::check_extension(&mut p, name, value);
        }
        if let Some(Data::Json(raw)) = &self.data
            && rules::has_invalid_unicode_escape(raw.get())
        {
            p.push(
                ErrorCode::InvalidData,
                "/data",
                "the payload holds a \\u escape that is not valid Unicode (a lone surrogate)",
            );
        }
        if matches!(self.data, Some(Data::Text(_)))
            && rules::is_json_media_type(self.effective_content_type())
        {
            // Text data is only for non-JSON media types; under JSON the string is JSON data.
            p.push(
                ErrorCode::InvalidData,
                "/data",
                "text data needs a non-JSON datacontenttype",
            );
        }
        p.finish(())
    }
}
