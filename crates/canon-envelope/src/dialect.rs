//! Lossless codecs between the canonical CloudEvent and the envelope dialects the seed
//! applications speak. docs/dialects.md has the mapping table; this module implements it.
//!
//! Each JSON dialect is described by a table of explicit member mappings (`Spec`). Members
//! with no explicit mapping follow one general rule: a `metadata` member whose name is a valid
//! CloudEvents attribute name and whose value fits the CloudEvents type system becomes that
//! attribute; anything else is kept verbatim in the `canonextra` extension, keyed by dialect
//! and JSON pointer, and put back when the event is written in the same dialect again.

mod extra;
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
    pub fn decode(self, input: &[u8]) -> Result<CloudEvent, EnvelopeErrors> {
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

fn decode_with(
    dialect: Dialect,
    spec: &Spec,
    members: &Members<'_>,
) -> Result<CloudEvent, EnvelopeErrors> {
    let mut p = Problems::default();
    let mut ev = CloudEvent::new(
        String::new(),
        spec.implied_source.unwrap_or(""),
        String::new(),
    );
    let mut extra = Extra::default();
    let mut own = Vec::new();
    let mut seen_required: Vec<&'static str> = Vec::new();
    let mut payload_members: Vec<(&str, &RawValue)> = Vec::new();
    let mut seen_top: Vec<&str> = Vec::new();
    let mut metadata: Option<&RawValue> = None;

    for (name, value) in &members.0 {
        let (name, value): (&str, &RawValue) = (name, value);
        if seen_top.contains(&name) {
            p.push(
                ErrorCode::DuplicateMember,
                pointer(Slot::Top, name),
                format!("member {name:?} appears more than once"),
            );
            continue;
        }
        seen_top.push(name);
        if let Some(field) = spec.field(Slot::Top, name) {
            apply_field(&mut p, &mut ev, &mut own, &mut seen_required, field, value);
        } else if name == "metadata" {
            metadata = Some(value);
        } else if spec.flat_payload {
            payload_members.push((name, value));
        } else {
            own.push((pointer(Slot::Top, name), value.to_owned()));
        }
    }
    // Metadata after the top level, so an explicit member always wins over a same-named
    // metadata member (which is then kept in canonextra).
    if let Some(value) = metadata {
        {
            let meta = match Scalar::of(value) {
                Scalar::Object => match serde_json::from_str::<Members<'_>>(value.get()) {
                    Ok(m) => m,
                    Err(e) => {
                        p.push(ErrorCode::InvalidJson, "/metadata", e.to_string());
                        Members(Vec::new())
                    }
                },
                Scalar::Null if !spec.metadata_required => {
                    own.push(("/metadata".to_owned(), value.to_owned()));
                    Members(Vec::new())
                }
                other => {
                    p.push(
                        ErrorCode::InvalidDialectMember,
                        "/metadata",
                        format!("metadata must be an object, got {}", other.type_name()),
                    );
                    Members(Vec::new())
                }
            };
            if meta.0.is_empty() && value.get().starts_with('{') {
                own.push(("/metadata".to_owned(), value.to_owned()));
            }
            if value.get().starts_with('{') {
                seen_required.push("metadata");
            }
            let mut seen_meta: Vec<&str> = Vec::new();
            for (mname, mvalue) in &meta.0 {
                let (mname, mvalue): (&str, &RawValue) = (mname, mvalue);
                if seen_meta.contains(&mname) {
                    p.push(
                        ErrorCode::DuplicateMember,
                        pointer(Slot::Meta, mname),
                        format!("member {mname:?} appears more than once"),
                    );
                    continue;
                }
                seen_meta.push(mname);
                if let Some(field) = spec.field(Slot::Meta, mname) {
                    apply_field(&mut p, &mut ev, &mut own, &mut seen_required, field, mvalue);
                } else {
                    general_rule(&mut p, spec, &mut ev, &mut extra, &mut own, mname, mvalue);
                }
            }
        }
    }
    if spec.flat_payload {
        let mut text = String::with_capacity(
            2 + payload_members
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        text.push('{');
        for (i, (k, v)) in payload_members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(k).unwrap_or_default());
            text.push(':');
            text.push_str(v.get());
        }
        text.push('}');
        match RawValue::from_string(text) {
            Ok(raw) => ev.data = Some(Data::Json(raw)),
            Err(e) => p.push(ErrorCode::InvalidJson, "", e.to_string()),
        }
    }
    for required in spec.required {
        if !seen_required.contains(required) {
            p.push(
                ErrorCode::MissingAttribute,
                required_pointer(spec, required),
                format!("{} requires member {required}", dialect.name()),
            );
        }
    }
    if !own.is_empty() {
        extra.set(dialect, own);
    }
    if let Some(text) = extra.to_extension() {
        ev.extensions
            .insert(ext::DIALECT_EXTRA.to_owned(), ExtValue::String(text));
    }
    if p.is_empty()
        && let Err(errors) = ev.validate()
    {
        // Report type-system problems at the dialect member that carried the attribute.
        for e in errors.0 {
            let attr = e.location.trim_start_matches('/');
            let location = spec
                .member_for_attribute(attr)
                .unwrap_or_else(|| pointer(Slot::Meta, attr));
            p.push(e.code, location, e.message);
        }
    }
    p.finish(ev)
}

fn required_pointer(spec: &Spec, member: &str) -> String {
    spec.fields
        .iter()
        .find(|f| f.name == member)
        .map_or_else(|| pointer(Slot::Top, member), |f| pointer(f.slot, f.name))
}

/// Applies one explicitly mapped member.
fn apply_field(
    p: &mut Problems,
    ev: &mut CloudEvent,
    own: &mut Vec<(String, Box<RawValue>)>,
    seen_required: &mut Vec<&'static str>,
    field: &spec::Field,
    value: &RawValue,
) {
    let loc = pointer(field.slot, field.name);
    let scalar = Scalar::of(value);
    if field.target == Target::Data {
        // `"payload": null` is an explicit null payload, as `"data": null` is.
        seen_required.push(field.name);
        ev.data = Some(Data::Json(value.to_owned()));
        return;
    }
    if let Scalar::Null = scalar {
        // An explicit null is kept as written; the attribute stays absent.
        own.push((loc, value.to_owned()));
        return;
    }
    seen_required.push(field.name);
    let wrong = |p: &mut Problems, expected: &str, got: &Scalar<'_>| {
        p.push(
            ErrorCode::InvalidDialectMember,
            loc.clone(),
            format!("{} must be {expected}, got {}", field.name, got.type_name()),
        );
    };
    match field.target {
        Target::Data => {}
        Target::Id => match scalar {
            Scalar::Str(s) => ev.id = s.into_owned(),
            other => wrong(p, "a string", &other),
        },
        Target::Type => match scalar {
            Scalar::Str(s) => ev.ty = s.into_owned(),
            other => wrong(p, "a string", &other),
        },
        Target::Source => match scalar {
            Scalar::Str(s) => ev.source = s.into_owned(),
            other => wrong(p, "a string", &other),
        },
        Target::Time => match scalar {
            Scalar::Str(s) => {
                if rules::parse_rfc3339(&s).is_some() {
                    ev.time = Some(s.into_owned());
                } else if rules::parse_rfc3339(&format!("{s}Z")).is_some() {
                    // An ISO 8601 date-time without offset (Python's utcnow().isoformat()) is
                    // read as UTC; the original spelling is kept for the return trip.
                    ev.time = Some(format!("{s}Z"));
                    own.push((loc, value.to_owned()));
                } else {
                    p.push(
                        ErrorCode::InvalidTimestamp,
                        loc.clone(),
                        format!(
                            "{} must be an ISO 8601 / RFC 3339 date-time, got {s:?}",
                            field.name
                        ),
                    );
                }
            }
            other => wrong(p, "a string", &other),
        },
        Target::Ext(name) => match scalar {
            Scalar::Str(s) => {
                ev.extensions
                    .insert(name.to_owned(), ExtValue::String(s.into_owned()));
            }
            other => wrong(p, "a string", &other),
        },
        Target::IntExt(name) => match scalar {
            Scalar::Int(i) => {
                ev.extensions
                    .insert(name.to_owned(), ExtValue::String(i.to_string()));
            }
            Scalar::Str(s) if !s.is_empty() => {
                // A string where the dialect writes integers (a zero-padded sequence such as
                // "0001") is kept as the string; if it reads as a plain integer, the original
                // spelling is kept too, or it would come back as a number.
                if is_plain_integer(&s) {
                    own.push((loc, value.to_owned()));
                }
                ev.extensions
                    .insert(name.to_owned(), ExtValue::String(s.into_owned()));
            }
            other => wrong(p, "an integer or a string", &other),
        },
    }
}

/// The general rule for a `metadata` member with no explicit mapping.
fn general_rule(
    p: &mut Problems,
    spec: &Spec,
    ev: &mut CloudEvent,
    extra: &mut Extra,
    own: &mut Vec<(String, Box<RawValue>)>,
    name: &str,
    value: &RawValue,
) {
    let loc = pointer(Slot::Meta, name);
    if name == ext::DIALECT_EXTRA
        && let Scalar::Str(s) = Scalar::of(value)
    {
        match Extra::parse(&s) {
            Ok(parsed) => {
                extra.merge(parsed);
                return;
            }
            Err(msg) => {
                p.push(ErrorCode::InvalidDialectMember, loc, msg);
                return;
            }
        }
    }
    let mappable = rules::is_valid_attribute_name(name)
        && !matches!(name, "id" | "type" | "specversion" | "data_base64")
        && !spec.maps_attribute(name)
        && !ev.extensions.contains_key(name);
    if mappable {
        let attr = match Scalar::of(value) {
            Scalar::Str(s) => Some(ExtValue::String(s.into_owned())),
            // Canon's typed extensions are strings; a number under their name stays verbatim.
            _ if rules::is_string_extension(name) => None,
            Scalar::Bool(b) => Some(ExtValue::Bool(b)),
            Scalar::Int(i) => i32::try_from(i).ok().map(ExtValue::Integer),
            _ => None,
        };
        if let Some(attr) = attr {
            match (name, attr) {
                ("source", ExtValue::String(s)) => ev.source = s,
                ("datacontenttype", ExtValue::String(s)) => ev.datacontenttype = Some(s),
                ("dataschema", ExtValue::String(s)) => ev.dataschema = Some(s),
                ("subject", ExtValue::String(s)) => ev.subject = Some(s),
                ("time", ExtValue::String(s)) => ev.time = Some(s),
                ("source" | "datacontenttype" | "dataschema" | "subject" | "time", _) => {
                    own.push((loc, value.to_owned()));
                }
                (_, attr) => {
                    ev.extensions.insert(name.to_owned(), attr);
                }
            }
            return;
        }
    }
    own.push((loc, value.to_owned()));
}

fn raw_string(s: &str) -> Box<RawValue> {
    // Serialising a &str cannot fail.
    serde_json::value::to_raw_value(s).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn encode_with(dialect: Dialect, spec: &Spec, ev: &CloudEvent) -> Result<Vec<u8>, EnvelopeErrors> {
    let mut p = Problems::default();
    let mut top: Vec<(String, Box<RawValue>)> = Vec::new();
    let mut meta: Vec<(String, Box<RawValue>)> = Vec::new();
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

    for field in spec.fields {
        let value: Option<Box<RawValue>> = match field.target {
            Target::Id => Some(raw_string(&ev.id)),
            Target::Type => Some(raw_string(&ev.ty)),
            Target::Source => {
                consumed.push("source");
                Some(raw_string(&ev.source))
            }
            Target::Time => {
                consumed.push("time");
                ev.time.as_deref().map(raw_string)
            }
            Target::Ext(name) => {
                consumed.push(name);
                ev.extensions
                    .get(name)
                    .and_then(ExtValue::as_str)
                    .map(raw_string)
            }
            Target::IntExt(name) => match ev.extensions.get(name).and_then(ExtValue::as_str) {
                Some(s) if is_plain_integer(s) => {
                    consumed.push(name);
                    RawValue::from_string(s.to_owned()).ok()
                }
                _ => None,
            },
            Target::Data => match &ev.data {
                Some(Data::Json(raw)) => Some(raw.clone()),
                Some(Data::Text(text)) => Some(raw_string(text)),
                Some(Data::Binary(_)) => {
                    p.push(
                        ErrorCode::Unrepresentable,
                        "/data",
                        format!(
                            "{} carries JSON payloads only; this event's data is binary",
                            dialect.name()
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        if let Some(v) = value {
            match field.slot {
                Slot::Top => top.push((field.name.to_owned(), v)),
                Slot::Meta => meta.push((field.name.to_owned(), v)),
            }
        } else if spec.required.contains(&field.name)
            && !own
                .iter()
                .any(|(ptr, _)| *ptr == pointer(field.slot, field.name))
        {
            p.push(
                ErrorCode::Unrepresentable,
                pointer(field.slot, field.name),
                format!(
                    "{} requires {} but the event has none",
                    dialect.name(),
                    field.name
                ),
            );
        }
    }
    if let Some(implied) = spec.implied_source
        && ev.source == implied
    {
        consumed.push("source");
    }
    if spec.flat_payload {
        match &ev.data {
            Some(Data::Json(raw)) => match serde_json::from_str::<Members<'_>>(raw.get()) {
                Ok(members) => {
                    for (k, v) in members.0 {
                        if spec.field(Slot::Top, &k).is_some() || k == "metadata" {
                            p.push(ErrorCode::Unrepresentable, format!("/data/{}", pointer_token(&k)), format!("payload field {k:?} collides with a lifeos envelope member"));
                        } else {
                            top.push((k.into_owned(), v.to_owned()));
                        }
                    }
                }
                Err(_) => p.push(ErrorCode::Unrepresentable, "/data", "lifeos events carry their payload as top-level fields; the data must be a JSON object"),
            },
            Some(_) => p.push(ErrorCode::Unrepresentable, "/data", "lifeos events carry JSON object payloads only"),
            None => {}
        }
    }
    // Every attribute without an explicit mapping travels in metadata under its own name.
    for (name, value) in [
        ("source", Some(&ev.source)),
        ("datacontenttype", ev.datacontenttype.as_ref()),
        ("dataschema", ev.dataschema.as_ref()),
        ("subject", ev.subject.as_ref()),
        ("time", ev.time.as_ref()),
    ] {
        if let Some(v) = value
            && !consumed.contains(&name)
        {
            meta.push((name.to_owned(), raw_string(v)));
        }
    }
    for (name, value) in &ev.extensions {
        if consumed.contains(&name.as_str()) {
            continue;
        }
        if spec
            .field(Slot::Meta, name)
            .is_some_and(|f| f.target != Target::IntExt(ext_name(name)))
        {
            p.push(
                ErrorCode::Unrepresentable,
                format!("/{name}"),
                format!(
                    "extension {name} collides with the {} metadata member of that name",
                    dialect.name()
                ),
            );
            continue;
        }
        let raw =
            match value {
                ExtValue::String(s) => raw_string(s),
                ExtValue::Bool(b) => RawValue::from_string(b.to_string())
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
                ExtValue::Integer(i) => RawValue::from_string(i.to_string())
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            };
        meta.push((name.clone(), raw));
    }
    if let Some(text) = extra.to_extension() {
        meta.push((ext::DIALECT_EXTRA.to_owned(), raw_string(&text)));
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
    match (meta.is_empty(), meta_override) {
        (true, Some(v)) => top.push(("metadata".to_owned(), v)),
        (true, None) => {}
        (false, _) => {
            let text = write_object(&meta);
            top.push((
                "metadata".to_owned(),
                RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned()),
            ));
        }
    }
    Ok(write_object(&top).into_bytes())
}

/// `name` as a `'static` extension name if it is one of Canon's, for comparing with targets.
fn ext_name(name: &str) -> &'static str {
    [ext::SEQUENCE, ext::DATA_VERSION]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("")
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

fn write_object(members: &[(String, Box<RawValue>)]) -> String {
    let mut out = String::with_capacity(
        2 + members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>(),
    );
    out.push('{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    out
}
