//! Errors of envelope decoding and validation: every problem carries a stable code and the
//! location (a JSON pointer or a header name) where it was found.

use std::fmt;

/// A stable, machine-readable error code. The string forms are part of Canon's public
/// contract: they appear in CLI output and HTTP problem documents and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The input is not well-formed JSON. Fix the syntax at the given location.
    InvalidJson,
    /// A single event must be a JSON object. Send an object, or use batch mode for arrays.
    NotAnObject,
    /// A batch must be a JSON array of events.
    NotAnArray,
    /// A required attribute (`specversion`, `id`, `source`, `type`, or a dialect's own) is
    /// missing or null.
    MissingAttribute,
    /// `specversion` is not `"1.0"`, the only version Canon reads.
    UnsupportedSpecVersion,
    /// An attribute has the wrong JSON type (e.g. a number where a string is required, or an
    /// object or array as an attribute value).
    InvalidAttributeType,
    /// An attribute that must be non-empty is empty.
    EmptyAttribute,
    /// An attribute or extension name is not `[a-z0-9]+`, or is the reserved name `data`.
    InvalidAttributeName,
    /// A string holds a control character or a Unicode noncharacter.
    InvalidString,
    /// An integer attribute is outside the signed 32-bit range, or a number has a fraction.
    IntegerOutOfRange,
    /// A timestamp is not RFC 3339 (`2024-05-01T10:00:00Z`).
    InvalidTimestamp,
    /// A URI or URI-reference attribute is not one.
    InvalidUri,
    /// Both `data` and `data_base64` are present.
    DataConflict,
    /// `data_base64` does not hold valid (padded, canonical) base64.
    InvalidBase64,
    /// The payload is not what its content type says (e.g. invalid JSON under
    /// `application/json`).
    InvalidData,
    /// The same member appears twice in one JSON object; the meaning would be ambiguous.
    DuplicateMember,
    /// An `application/cloudevents+<format>` other than `+json`.
    UnsupportedFormat,
    /// A binary-mode header value is not valid after unquoting and percent-decoding.
    InvalidHeaderValue,
    /// `traceparent` is not a W3C Trace Context value.
    InvalidTraceParent,
    /// `tracestate` is not a W3C `key=value` list.
    InvalidTraceState,
    /// A dialect envelope member is invalid (wrong type or format for that dialect).
    InvalidDialectMember,
    /// The event cannot be written in the target dialect (e.g. binary data in a JSON-only
    /// dialect). Convert to `cloudevents` instead.
    Unrepresentable,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::NotAnArray,
        ErrorCode::MissingAttribute,
        ErrorCode::UnsupportedSpecVersion,
        ErrorCode::InvalidAttributeType,
        ErrorCode::EmptyAttribute,
        ErrorCode::InvalidAttributeName,
        ErrorCode::InvalidString,
        ErrorCode::IntegerOutOfRange,
        ErrorCode::InvalidTimestamp,
        ErrorCode::InvalidUri,
        ErrorCode::DataConflict,
        ErrorCode::InvalidBase64,
        ErrorCode::InvalidData,
        ErrorCode::DuplicateMember,
        ErrorCode::UnsupportedFormat,
        ErrorCode::InvalidHeaderValue,
        ErrorCode::InvalidTraceParent,
        ErrorCode::InvalidTraceState,
        ErrorCode::InvalidDialectMember,
        ErrorCode::Unrepresentable,
    ];

    /// The stable string form, e.g. `missing-attribute`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid-json",
            ErrorCode::NotAnObject => "not-an-object",
            ErrorCode::NotAnArray => "not-an-array",
            ErrorCode::MissingAttribute => "missing-attribute",
            ErrorCode::UnsupportedSpecVersion => "unsupported-specversion",
            ErrorCode::InvalidAttributeType => "invalid-attribute-type",
            ErrorCode::EmptyAttribute => "empty-attribute",
            ErrorCode::InvalidAttributeName => "invalid-attribute-name",
            ErrorCode::InvalidString => "invalid-string",
            ErrorCode::IntegerOutOfRange => "integer-out-of-range",
            ErrorCode::InvalidTimestamp => "invalid-timestamp",
            ErrorCode::InvalidUri => "invalid-uri",
            ErrorCode::DataConflict => "data-conflict",
            ErrorCode::InvalidBase64 => "invalid-base64",
            ErrorCode::InvalidData => "invalid-data",
            ErrorCode::DuplicateMember => "duplicate-member",
            ErrorCode::UnsupportedFormat => "unsupported-format",
            ErrorCode::InvalidHeaderValue => "invalid-header-value",
            ErrorCode::InvalidTraceParent => "invalid-traceparent",
            ErrorCode::InvalidTraceState => "invalid-tracestate",
            ErrorCode::InvalidDialectMember => "invalid-dialect-member",
            ErrorCode::Unrepresentable => "unrepresentable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    /// What kind of problem this is.
    pub code: ErrorCode,
    /// Where: a JSON pointer into the document (`/id`, `/metadata/timestamp`, `/3/type` in a
    /// batch) or, in HTTP binary mode, the header name (`ce-id`).
    pub location: String,
    /// A human-readable explanation.
    pub message: String,
}

impl EnvelopeError {
    pub(crate) fn new(
        code: ErrorCode,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EnvelopeError {
            code,
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{} at {}: {}", self.code, self.location, self.message)
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// Every problem found in one envelope (or batch). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeErrors(pub Vec<EnvelopeError>);

impl EnvelopeErrors {
    pub(crate) fn one(
        code: ErrorCode,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EnvelopeErrors(vec![EnvelopeError::new(code, location, message)])
    }

    /// The individual problems, in document order.
    pub fn iter(&self) -> std::slice::Iter<'_, EnvelopeError> {
        self.0.iter()
    }

    /// Moves every location under `prefix` (used for batch members: `/3` + `/id`).
    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        for e in &mut self.0 {
            e.location.insert_str(0, prefix);
        }
        self
    }
}

impl fmt::Display for EnvelopeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EnvelopeErrors {}

impl From<EnvelopeError> for EnvelopeErrors {
    fn from(e: EnvelopeError) -> Self {
        EnvelopeErrors(vec![e])
    }
}

/// Collects problems while a decoder keeps going, so a caller sees all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<EnvelopeError>);

impl Problems {
    pub(crate) fn push(
        &mut self,
        code: ErrorCode,
        location: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(EnvelopeError::new(code, location, message));
    }

    pub(crate) fn extend(&mut self, errors: EnvelopeErrors) {
        self.0.extend(errors.0);
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, EnvelopeErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(EnvelopeErrors(self.0))
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the problems of a validation, moved to where the decoder found each attribute
    /// (`locate` maps `/name` to that place), skipping places already reported.
    pub(crate) fn absorb(
        &mut self,
        result: Result<(), EnvelopeErrors>,
        locate: impl Fn(&str) -> String,
    ) {
        let Err(errors) = result else { return };
        for e in errors.0 {
            let location = locate(&e.location);
            if !self.0.iter().any(|known| known.location == location) {
                self.0.push(EnvelopeError { location, ..e });
            }
        }
    }
}
