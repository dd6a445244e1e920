//! Lossless codecs between the canonical CloudEvent and the envelope dialects the seed
//! applications speak. docs/dialects.md has the mapping table; this module implements it.
//!
//! Each JSON dialect is described by a table of explicit member mappings (`Spec`). Members
//! with no explicit mapping follow one general rule: a `metadata` member whose name is a valid
//! CloudEvents attribute name and whose value fits the CloudEvents type system becomes that
//! attribute; anything else is kept verbatim in the `canonextra` extension, keyed by dialect
//! and JSON pointer, and put back when the event is written in the same dialect again.

mod extra;
mod fast;
mod spec;

use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;

use crate::error::{EnvelopeErrors, ErrorCode, Problems};
use crate::event::{CloudEvent, Data, ExtValue, ext};
use crate::raw::{self, Members, Scalar, pointer_token};
use crate::rules;
use extra::Extra;
use spec::{Slot, Spec, Target};

/// An envelope dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// CloudEvents 1.0 JSON format: the canonical form (seed 004).
    CloudEvents,
    /// Seed 001's envelope: `{eventId, type, payload, metadata{userId, timestamp, ...}}`.
    Bme,
    /// Seed 002's envelope: `{event_id, event_name, event_version, occurred_at, producer,
    /// payload, metadata{...}}`.
    Go4u,
    /// Seed 003's `BaseEvent`: a flat object of `event_id` (a UUID v4 by convention),
    /// `event_type`, `timestamp`, `version` and the payload fields.
    LifeOs,
}

impl Dialect {
    /// Every dialect, canonical first.
    pub const ALL: [Dialect; 4] = [
        Dialect::CloudEvents,
        Dialect::Bme,
        Dialect::Go4u,
        Dialect::LifeOs,
    ];

    /// The dialect's name as used in catalogs, the CLI and HTTP (`cloudevents`, `bme`, `go4u`,
    /// `lifeos`).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::CloudEvents => "cloudevents",
            Dialect::Bme => "bme",
            Dialect::Go4u => "go4u",
            Dialect::LifeOs => "lifeos",
        }
    }

    fn spec(self) -> Option<&'static Spec> {
        match self {
            Dialect::CloudEvents => None,
            Dialect::Bme => Some(&spec::BME),
            Dialect::Go4u => Some(&spec::GO4U),
            Dialect::LifeOs => Some(&spec::LIFEOS),
        }
    }

    /// Decodes one event written in this dialect into the canonical form.
    ///
    /// A document in the common form (each member once, no nulls, nothing that has to travel in
    /// `canonextra`) is read in one pass ([`Dialect::decode_fast`]); any other goes through the
    /// full decoder ([`Dialect::decode_full`]), which reports every problem. Both give the same
    /// event for a document both accept.
    pub fn decode(self, input: &[u8]) -> Result<CloudEvent, EnvelopeErrors> {
        match fast::decode(self, input) {
            Some(event) => Ok(event),
            None => self.decode_full(input),
        }
    }

    /// The one-pass reader of [`Dialect::decode`] alone: the event if the document is valid and
    /// in the common form, `None` otherwise. Exposed so that tests and fuzz targets can compare
    /// it with [`Dialect::decode_full`].
    pub fn decode_fast(self, input: &[u8]) -> Option<CloudEvent> {
        fast::decode(self, input)
    }

    /// The full decoder of [`Dialect::decode`] alone: every document, every problem reported
    /// with its location.
    pub fn decode_full(self, input: &[u8]) -> Result<CloudEvent, EnvelopeErrors> {
        let members = raw::parse_object(input)?;
        match self.spec() {
            None => crate::json::from_members(&members),
            Some(spec) => decode_with(self, spec, &members),
        }
    }

    /// Writes the canonical event in this dialect.
    pub fn encode(self, ev: &CloudEvent) -> Result<Vec<u8>, EnvelopeErrors> {
        match self.spec() {
            None => Ok(ev.to_json()),
            Some(spec) => encode_with(self, spec, ev),
        }
    }

    /// Guesses the dialect of a JSON object from its members: `specversion` means CloudEvents,
    /// `eventId` bme, `event_name` go4u, `event_type` lifeos.
    pub fn detect(input: &[u8]) -> Option<Dialect> {
        let members = raw::parse_object(input).ok()?;
        let has = |n: &str| members.0.iter().any(|(k, _)| k == n);
        if has("specversion") {
            Some(Dialect::CloudEvents)
        } else if has("eventId") {
            Some(Dialect::Bme)
        } else if has("event_name") {
            Some(Dialect::Go4u)
        } else if has("event_type") {
            Some(Dialect::LifeOs)
        } else {
            None
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of `cloudevents`, `bme`, `go4u`, `lifeos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDialect(pub String);

impl fmt::Display for UnknownDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown dialect {:?}; expected one of cloudevents, bme, go4u, lifeos",
            self.0
        )
    }
}

impl std::error::Error for UnknownDialect {}

impl FromStr for Dialect {
    type Err = UnknownDialect;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDialect(s.to_owned()))
    }
}

fn pointer(slot: Slot, name: &str) -> String {
    match slot {
        Slot::Top => format!("/{}", pointer_token(name)),
        Slot::Meta => format!("/metadata/{}", pointer_token(name)),
    }
}

/// The members of an object, each name once; a repeated name is reported and skipped.
fn unique_members<'a>(
    p: &mut Problems,
    slot: Slot,
    members: &'a Members<'a>,
) -> impl Iterator<Item = (&'a str, &'a RawValue)> + use<'a> {
    let mut duplicates = Vec::new();
    for (i, (name, _)) in members.0.iter().enumerate() {
        if members.0[..i].iter().any(|(seen, _)| seen == name) {
            p.push(
                ErrorCode::DuplicateMember,
                pointer(slot, name),
                format!("member {name:?} appears more than once"),
            );
            duplicates.push(i);
        }
    }
    members
        .0
        .iter()
        .enumerate()
        .filter(move |(i, _)| !duplicates.contains(i))
        .map(|(_, (name, value))| (&**name, *value))
}

/// The state of one dialect document being read into a canonical event.
struct Decoding<'s> {
    dialect: Dialect,
    spec: &'s Spec,
    p: Problems,
    ev: CloudEvent,
    /// What other dialects kept in `canonextra`, merged with what this one keeps.
    extra: Extra,
    /// Members of this document kept verbatim, by JSON pointer.
    own: Vec<(String, Box<RawValue>)>,
    /// Required members seen (present, whatever their value's validity).
    present: Vec<&'static str>,
}

fn decode_with(
    dialect: Dialect,
    spec: &Spec,
    members: &Members<'_>,
) -> Result<CloudEvent, EnvelopeErrors> {
    let mut d = Decoding {
        dialect,
        spec,
        p: Problems::default(),
        ev: CloudEvent::new(
            String::new(),
            spec.implied_source.unwrap_or(""),
            String::new(),
        ),
        extra: Extra::default(),
        own: Vec::new(),
        present: Vec::new(),
    };
    let mut payload: Vec<(&str, &RawValue)> = Vec::new();
    let mut metadata = None;
    for (name, value) in unique_members(&mut d.p, Slot::Top, members) {
        if let Some(field) = spec.field(Slot::Top, name) {
            d.field(field, value);
        } else if name == "metadata" {
            metadata = Some(value);
        } else if spec.flat_payload {
            payload.push((name, value));
        } else {
            d.keep(pointer(Slot::Top, name), value);
        }
    }
    if let Some(value) = metadata {
        d.metadata(value);
    }
    if spec.flat_payload {
        d.ev.data = Some(Data::Json(write_object(payload)));
    }
    d.finish()
}

impl Decoding<'_> {
    fn keep(&mut self, pointer: String, value: &RawValue) {
        self.own.push((pointer, value.to_owned()));
    }

    fn metadata(&mut self, value: &RawValue) {
        let required = self.spec.required.contains(&"metadata");
        match Scalar::of(value) {
            Scalar::Object => {
                self.present.push("metadata");
                // The value is a valid JSON object already; reading its members cannot fail.
                let Ok(meta) = serde_json::from_str::<Members<'_>>(value.get()) else {
                    return;
                };
                if meta.0.is_empty() {
                    self.keep("/metadata".to_owned(), value);
                }
                for (name, member) in unique_members(&mut self.p, Slot::Meta, &meta) {
                    match self.spec.field(Slot::Meta, name) {
                        Some(field) => self.field(field, member),
                        None => self.general_rule(name, member),
                    }
                }
            }
            Scalar::Null if !required => self.keep("/metadata".to_owned(), value),
            other => {
                // Present, so not also reported missing.
                self.present.push("metadata");
                let message = format!("metadata must be an object, got {}", other.type_name());
                self.p
                    .push(ErrorCode::InvalidDialectMember, "/metadata", message);
            }
        }
    }

    /// Applies one explicitly mapped member.
    fn field(&mut self, field: &spec::Field, value: &RawValue) {
        // Formatted only when needed: most members are fine and not kept verbatim.
        let loc = || pointer(field.slot, field.name);
        let scalar = Scalar::of(value);
        if field.target == Target::Data {
            // `"payload": null` is an explicit null payload, as `"data": null` is.
            self.present.push(field.name);
            self.ev.data = Some(Data::Json(value.to_owned()));
            return;
        }
        if let Scalar::Null = scalar {
            // An explicit null is kept as written; the attribute stays absent.
            self.keep(loc(), value);
            return;
        }
        self.present.push(field.name);
        let expected = match field.target {
            Target::IntExt(_) => "an integer or a string",
            _ => "a string",
        };
        let s = match scalar {
            Scalar::Str(s) if !(matches!(field.target, Target::IntExt(_)) && s.is_empty()) => s,
            Scalar::Int(i) if matches!(field.target, Target::IntExt(_)) => i.to_string().into(),
            other => {
                let message = format!(
                    "{} must be {expected}, got {}",
                    field.name,
                    other.type_name()
                );
                self.p.push(ErrorCode::InvalidDialectMember, loc(), message);
                return;
            }
        };
        match field.target {
            Target::Id => self.ev.id = s.into_owned(),
            Target::Type => self.ev.ty = s.into_owned(),
            Target::Source => self.ev.source = s.into_owned(),
            Target::Time => {
                if rules::parse_rfc3339(&s).is_some() {
                    self.ev.time = Some(s.into_owned());
                } else if rules::parse_rfc3339(&format!("{s}Z")).is_some() {
                    // An ISO 8601 date-time without offset (Python's utcnow().isoformat()) is
                    // read as UTC; the original spelling is kept for the return trip.
                    self.ev.time = Some(format!("{s}Z"));
                    self.keep(loc(), value);
                } else {
                    let message = format!(
                        "{} must be an ISO 8601 / RFC 3339 date-time, got {s:?}",
                        field.name
                    );
                    self.p.push(ErrorCode::InvalidTimestamp, loc(), message);
                }
            }
            Target::Ext(name) => {
                self.ev
                    .extensions
                    .insert(name.to_owned(), ExtValue::String(s.into_owned()));
            }
            Target::IntExt(name) => {
                // A string where the dialect writes integers (a zero-padded sequence such as
                // "0001", a version "1.0.0") is carried as is. One that reads as a plain integer
                // would be written back as a number, so its spelling is kept too.
                if matches!(scalar_kind(value), Kind::String) && is_plain_integer(&s) {
                    self.keep(loc(), value);
                }
                self.ev
                    .extensions
                    .insert(name.to_owned(), ExtValue::String(s.into_owned()));
            }
            Target::Data => {}
        }
    }

    /// The general rule for a `metadata` member with no explicit mapping.
    fn general_rule(&mut self, name: &str, value: &RawValue) {
        let loc = || pointer(Slot::Meta, name);
        if name == ext::DIALECT_EXTRA
            && let Scalar::Str(s) = Scalar::of(value)
        {
            match Extra::parse(&s) {
                Ok(parsed) => self.extra.merge(parsed),
                Err(msg) => self.p.push(ErrorCode::InvalidDialectMember, loc(), msg),
            }
            return;
        }
        let mappable = rules::is_valid_attribute_name(name)
            && !matches!(name, "id" | "type" | "specversion" | "data_base64")
            && !self.spec.maps_attribute(name);
        let attr = match Scalar::of(value) {
            _ if !mappable => None,
            Scalar::Str(s) => Some(ExtValue::String(s.into_owned())),
            // Canon's typed extensions are strings; another value under their name stays verbatim.
            _ if rules::is_string_extension(name) => None,
            Scalar::Bool(b) => Some(ExtValue::Bool(b)),
            Scalar::Int(i) => i32::try_from(i).ok().map(ExtValue::Integer),
            _ => None,
        };
        let ev = &mut self.ev;
        match (name, attr) {
            ("source", Some(ExtValue::String(s))) => ev.source = s,
            ("datacontenttype", Some(ExtValue::String(s))) => ev.datacontenttype = Some(s),
            ("dataschema", Some(ExtValue::String(s))) => ev.dataschema = Some(s),
            ("subject", Some(ExtValue::String(s))) => ev.subject = Some(s),
            ("time", Some(ExtValue::String(s))) => ev.time = Some(s),
            ("source" | "datacontenttype" | "dataschema" | "subject" | "time", _) | (_, None) => {
                self.keep(loc(), value);
            }
            (_, Some(attr)) => {
                ev.extensions.insert(name.to_owned(), attr);
            }
        }
    }

    fn finish(mut self) -> Result<CloudEvent, EnvelopeErrors> {
        let spec = self.spec;
        for required in spec.required {
            if !self.present.contains(required) {
                let location = spec
                    .fields
                    .iter()
                    .find(|f| f.name == *required)
                    .map_or_else(|| pointer(Slot::Top, required), |f| pointer(f.slot, f.name));
                self.p.push(
                    ErrorCode::MissingAttribute,
                    location,
                    format!("{} requires member {required}", self.dialect.name()),
                );
            }
        }
        if !self.own.is_empty() {
            self.extra.set(self.dialect, self.own);
        }
        if let Some(text) = self.extra.to_extension() {
            self.ev
                .extensions
                .insert(ext::DIALECT_EXTRA.to_owned(), ExtValue::String(text));
        }
        // Type-system problems are reported at the dialect member that carried the attribute.
        self.p.absorb(self.ev.validate(), |location| {
            let attr = location.trim_start_matches('/');
            spec.member_for_attribute(attr)
                .unwrap_or_else(|| pointer(Slot::Meta, attr))
        });
        self.p.finish(self.ev)
    }
}

enum Kind {
    String,
    Other,
}

fn scalar_kind(value: &RawValue) -> Kind {
    if value.get().starts_with('"') {
        Kind::String
    } else {
        Kind::Other
    }
}

fn raw<T: serde::Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    // Strings, booleans and integers always serialise.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn encode_with(dialect: Dialect, spec: &Spec, ev: &CloudEvent) -> Result<Vec<u8>, EnvelopeErrors> {
    let mut p = Problems::default();
    let mut top: Vec<(String, Box<RawValue>)> = Vec::new();
    let mut meta: Vec<(String, Box<RawValue>)> = Vec::new();
    // Attributes written by an explicit member (or implied), so not written again in metadata.
    let mut consumed: Vec<&str> = vec![ext::DIALECT_EXTRA];
    let mut extra = match ev
        .extensions
        .get(ext::DIALECT_EXTRA)
        .and_then(ExtValue::as_str)
    {
        Some(text) => Extra::parse(text).map_err(|msg| {
            EnvelopeErrors::one(ErrorCode::InvalidDialectMember, "/canonextra", msg)
        })?,
        None => Extra::default(),
    };
    let own = extra.take(dialect);
    let string_ext = |name: &str| ev.extensions.get(name).and_then(ExtValue::as_str);

    for field in spec.fields {
        let value: Option<Box<RawValue>> = match field.target {
            Target::Id => Some(raw(&ev.id)),
            Target::Type => Some(raw(&ev.ty)),
            Target::Source => Some(raw(&ev.source)),
            Target::Time => ev.time.as_deref().map(raw),
            Target::Ext(name) => string_ext(name).map(raw),
            Target::IntExt(name) => string_ext(name).map(|s| match s.parse::<i64>() {
                Ok(i) if is_plain_integer(s) => raw(&i),
                _ => raw(s),
            }),
            Target::Data => match &ev.data {
                Some(Data::Json(json)) => Some(json.clone()),
                Some(Data::Text(text)) => Some(raw(text)),
                Some(Data::Binary(_)) => {
                    let message = format!(
                        "{} carries JSON payloads only; this event's data is binary",
                        dialect.name()
                    );
                    p.push(ErrorCode::Unrepresentable, "/data", message);
                    None
                }
                None => None,
            },
        };
        let at = pointer(field.slot, field.name);
        match value {
            Some(v) => {
                consumed.extend(spec::attribute_of(field.target));
                match field.slot {
                    Slot::Top => top.push((field.name.to_owned(), v)),
                    Slot::Meta => meta.push((field.name.to_owned(), v)),
                }
            }
            None if spec.required.contains(&field.name)
                && !own.iter().any(|(ptr, _)| *ptr == at) =>
            {
                let message = format!(
                    "{} requires {} but the event has none",
                    dialect.name(),
                    field.name
                );
                p.push(ErrorCode::Unrepresentable, at, message);
            }
            None => {}
        }
    }
    if spec.implied_source == Some(ev.source.as_str()) {
        consumed.push("source");
    }
    if spec.flat_payload {
        let not_object = || {
            format!(
                "{} events carry their payload as top-level fields; the data must be a JSON object",
                dialect.name()
            )
        };
        match &ev.data {
            Some(Data::Json(json)) if json.get().starts_with('{') => {
                // A valid JSON object; reading its members cannot fail.
                let members =
                    serde_json::from_str::<Members<'_>>(json.get()).unwrap_or(Members(Vec::new()));
                for (k, v) in members.0 {
                    if spec.field(Slot::Top, &k).is_some() || k == "metadata" {
                        let message = format!(
                            "payload field {k:?} collides with a {} envelope member",
                            dialect.name()
                        );
                        p.push(
                            ErrorCode::Unrepresentable,
                            format!("/data/{}", pointer_token(&k)),
                            message,
                        );
                    } else {
                        top.push((k.into_owned(), v.to_owned()));
                    }
                }
            }
            Some(_) => p.push(ErrorCode::Unrepresentable, "/data", not_object()),
            None => {}
        }
    }
    // Every attribute without an explicit mapping travels in metadata under its own name.
    let core = [
        ("source", Some(&ev.source)),
        ("datacontenttype", ev.datacontenttype.as_ref()),
        ("dataschema", ev.dataschema.as_ref()),
        ("subject", ev.subject.as_ref()),
        ("time", ev.time.as_ref()),
    ];
    let core = core
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, raw(v))));
    let extensions = ev
        .extensions
        .iter()
        .map(|(name, v)| (name.as_str(), raw(v)));
    for (name, value) in core.chain(extensions) {
        if consumed.contains(&name) {
            continue;
        }
        if spec.field(Slot::Meta, name).is_some() {
            let message = format!(
                "attribute {name} collides with the {} metadata member of that name",
                dialect.name()
            );
            p.push(ErrorCode::Unrepresentable, format!("/{name}"), message);
            continue;
        }
        meta.push((name.to_owned(), value));
    }
    if let Some(text) = extra.to_extension() {
        meta.push((ext::DIALECT_EXTRA.to_owned(), raw(&text)));
    }
    // Members this dialect's own documents had with no canonical counterpart go back where they
    // were, overriding what the mapping produced (e.g. a timestamp's original spelling).
    let mut meta_override: Option<Box<RawValue>> = None;
    for (ptr, value) in own {
        if ptr == "/metadata" {
            meta_override = Some(value);
        } else if let Some(name) = ptr.strip_prefix("/metadata/") {
            upsert(&mut meta, unescape(name), value);
        } else if let Some(name) = ptr.strip_prefix('/') {
            upsert(&mut top, unescape(name), value);
        }
    }
    if !p.is_empty() {
        return p.finish(Vec::new());
    }
    match meta_override {
        Some(v) if meta.is_empty() => top.push(("metadata".to_owned(), v)),
        _ if meta.is_empty() => {}
        _ => {
            let object = write_object(meta.iter().map(|(k, v)| (k.as_str(), &**v)));
            top.push(("metadata".to_owned(), object));
        }
    }
    Ok(write_object(top.iter().map(|(k, v)| (k.as_str(), &**v)))
        .get()
        .as_bytes()
        .to_vec())
}

fn is_plain_integer(s: &str) -> bool {
    s.parse::<i64>().is_ok_and(|i| i.to_string() == s)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn upsert(members: &mut Vec<(String, Box<RawValue>)>, name: String, value: Box<RawValue>) {
    match members.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => members.push((name, value)),
    }
}

/// Writes a JSON object from member names and raw values, without re-serialising the values.
fn write_object<'a>(members: impl IntoIterator<Item = (&'a str, &'a RawValue)>) -> Box<RawValue> {
    /// The members, serialised as one JSON object.
    struct Object<'a>(Vec<(&'a str, &'a RawValue)>);
    impl serde::Serialize for Object<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }
    // `to_raw_value` writes the JSON once and does not parse it again.
    raw(&Object(members.into_iter().collect()))
}
