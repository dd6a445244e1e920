//! The CloudEvents JSON event format: one event (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`), decoded strictly and encoded canonically.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::error::{EnvelopeErrors, ErrorCode, Problems};
use crate::event::{CloudEvent, Data, ExtValue};
use crate::raw::{self, Members, Scalar, pointer_token};
use crate::rules;

/// Media type of one event in the JSON format.
pub const MEDIA_TYPE: &str = "application/cloudevents+json";
/// Media type of a batch in the JSON format.
pub const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";

impl CloudEvent {
    /// Decodes one event in the JSON format, checking every rule; returns all problems found.
    pub fn from_json(input: &[u8]) -> Result<CloudEvent, EnvelopeErrors> {
        crate::Dialect::CloudEvents.decode(input)
    }

    /// Decodes a batch (a JSON array of events). Any invalid member fails the whole batch;
    /// error locations start with the member's index (`/3/id`).
    pub fn batch_from_json(input: &[u8]) -> Result<Vec<CloudEvent>, EnvelopeErrors> {
        let elements = raw::parse_array(input)?;
        let mut events = Vec::with_capacity(elements.len());
        let mut problems = Problems::default();
        for (i, element) in elements.iter().enumerate() {
            match CloudEvent::from_json(element.get().as_bytes()) {
                Ok(ev) => events.push(ev),
                Err(e) => problems.extend(e.prefixed(&format!("/{i}"))),
            }
        }
        problems.finish(events)
    }

    /// Encodes the event in the JSON format.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising into a Vec cannot fail: every value is a string, bool, integer or an
        // already-valid raw JSON value.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Encodes a batch in the JSON format.
    pub fn batch_to_json(events: &[CloudEvent]) -> Vec<u8> {
        serde_json::to_vec(events).unwrap_or_default()
    }
}

/// Builds an event from the members of a JSON-format object.
pub(crate) fn from_members(members: &Members<'_>) -> Result<CloudEvent, EnvelopeErrors> {
    let mut p = Problems::default();
    let mut seen: Vec<&str> = Vec::with_capacity(members.0.len());
    let mut ev = CloudEvent::new(String::new(), String::new(), String::new());
    let (mut has_specversion, mut has_id, mut has_source, mut has_type) =
        (false, false, false, false);
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<String> = None;

    for (name, value) in &members.0 {
        let name: &str = name;
        // The location is only formatted when a problem is reported.
        let loc = || format!("/{}", pointer_token(name));
        if seen.contains(&name) {
            p.push(
                ErrorCode::DuplicateMember,
                loc(),
                format!("member {name:?} appears more than once"),
            );
            continue;
        }
        seen.push(name);
        match name {
            "data" => data = Some(value),
            "data_base64" => match Scalar::of(value) {
                Scalar::Null => {}
                Scalar::Str(s) => data_base64 = Some(s.into_owned()),
                other => p.push(
                    ErrorCode::InvalidAttributeType,
                    loc(),
                    format!("data_base64 must be a string, got {}", other.type_name()),
                ),
            },
            "specversion" | "id" | "source" | "type" | "datacontenttype" | "dataschema"
            | "subject" | "time" => {
                let s = match Scalar::of(value) {
                    Scalar::Null => continue,
                    Scalar::Str(s) => s.into_owned(),
                    other => {
                        p.push(
                            ErrorCode::InvalidAttributeType,
                            loc(),
                            format!("{name} must be a string, got {}", other.type_name()),
                        );
                        // Count it as present so it is not also reported missing.
                        match name {
                            "specversion" => has_specversion = true,
                            "id" => has_id = true,
                            "source" => has_source = true,
                            "type" => has_type = true,
                            _ => {}
                        }
                        continue;
                    }
                };
                match name {
                    "specversion" => {
                        has_specversion = true;
                        if s != "1.0" {
                            p.push(
                                ErrorCode::UnsupportedSpecVersion,
                                loc(),
                                format!("specversion must be \"1.0\", got {s:?}"),
                            );
                        }
                    }
                    "id" => (has_id, ev.id) = (true, s),
                    "source" => (has_source, ev.source) = (true, s),
                    "type" => (has_type, ev.ty) = (true, s),
                    "datacontenttype" => ev.datacontenttype = Some(s),
                    "dataschema" => ev.dataschema = Some(s),
                    "subject" => ev.subject = Some(s),
                    _ => ev.time = Some(s),
                }
            }
            _ => {
                if !rules::is_valid_attribute_name(name) {
                    p.push(
                        ErrorCode::InvalidAttributeName,
                        loc(),
                        format!("attribute name {name:?} must match [a-z0-9]+"),
                    );
                    continue;
                }
                if let Some(v) = ext_value(&mut p, name, value) {
                    ev.extensions.insert(name.to_owned(), v);
                }
            }
        }
    }
    for (present, name) in [
        (has_specversion, "specversion"),
        (has_id, "id"),
        (has_source, "source"),
        (has_type, "type"),
    ] {
        if !present {
            p.push(
                ErrorCode::MissingAttribute,
                format!("/{name}"),
                format!("required attribute {name} is missing"),
            );
        }
    }
    ev.data = match (data, data_base64) {
        (Some(d), Some(_)) if d.get() != "null" => {
            p.push(
                ErrorCode::DataConflict,
                "/data_base64",
                "data and data_base64 must not both be present",
            );
            None
        }
        (_, Some(b64)) => match BASE64.decode(b64.as_bytes()) {
            Ok(bytes) => Some(Data::Binary(bytes)),
            Err(e) => {
                p.push(
                    ErrorCode::InvalidBase64,
                    "/data_base64",
                    format!("data_base64 is not valid base64: {e}"),
                );
                None
            }
        },
        (Some(d), None) => Some(data_from_member(&ev, d)),
        (None, None) => None,
    };
    // The type-system rules (strings, URIs, timestamps, extension syntax).
    p.absorb(ev.validate(), str::to_owned);
    p.finish(ev)
}

fn data_from_member(ev: &CloudEvent, d: &RawValue) -> Data {
    if !rules::is_json_media_type(ev.effective_content_type())
        && let Scalar::Str(s) = Scalar::of(d)
    {
        return Data::Text(s.into_owned());
    }
    Data::Json(d.to_owned())
}

/// Reads an extension value in the JSON format: Boolean, Integer (int32) or String; null is
/// absent.
pub(crate) fn ext_value(p: &mut Problems, name: &str, value: &RawValue) -> Option<ExtValue> {
    let loc = || format!("/{}", pointer_token(name));
    match Scalar::of(value) {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(ExtValue::Bool(b)),
        Scalar::Int(i) => match i32::try_from(i) {
            Ok(i) => Some(ExtValue::Integer(i)),
            Err(_) => {
                p.push(
                    ErrorCode::IntegerOutOfRange,
                    loc(),
                    format!("{name} is outside the signed 32-bit integer range"),
                );
                None
            }
        },
        Scalar::OtherNumber => {
            p.push(
                ErrorCode::IntegerOutOfRange,
                loc(),
                format!("{name} must be a whole number within the signed 32-bit range"),
            );
            None
        }
        Scalar::Str(s) => Some(ExtValue::String(s.into_owned())),
        other @ (Scalar::Object | Scalar::Array) => {
            p.push(
                ErrorCode::InvalidAttributeType,
                loc(),
                format!(
                    "{name} must be a string, boolean or integer, got {}",
                    other.type_name()
                ),
            );
            None
        }
    }
}

impl Serialize for CloudEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", "1.0")?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("source", &self.source)?;
        m.serialize_entry("type", &self.ty)?;
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = value {
                m.serialize_entry(name, v)?;
            }
        }
        for (name, value) in &self.extensions {
            m.serialize_entry(name, value)?;
        }
        match &self.data {
            Some(Data::Json(raw)) => m.serialize_entry("data", raw)?,
            Some(Data::Text(text)) => m.serialize_entry("data", text)?,
            Some(Data::Binary(bytes)) => m.serialize_entry("data_base64", &BASE64.encode(bytes))?,
            None => {}
        }
        m.end()
    }
}
