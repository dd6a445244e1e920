//! The fast path of decoding: one pass of the JSON parser straight into the canonical event,
//! for documents in the common form.
//!
//! Most events that reach Canon are valid and written plainly: each member once, no nulls,
//! nothing that has to travel in `canonextra`. For those, this reader builds the event while
//! it parses, with no intermediate list of members and no second parse of `metadata`. On
//! anything else (any error, and any valid but unusual form) it gives up and the full decoder
//! runs from the start: that one reports every problem with its location, and decides every
//! case this one leaves out.
//!
//! Architecture Invariant: when the fast path returns an event, the full decoder accepts the
//! same document and returns an equal event. The `dialects` fuzz target checks this for any
//! input, and a test checks that every shipped example event takes the fast path.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::Dialect;
use super::spec::{Slot, Spec, Target};
use crate::event::{CloudEvent, Data, ExtValue, ext};
use crate::raw::Str;
use crate::rules;

/// Decodes `input` in `dialect` if it is in the common form; `None` sends the caller to the full
/// decoder.
pub(super) fn decode(dialect: Dialect, input: &[u8]) -> Option<CloudEvent> {
    let text = std::str::from_utf8(input).ok()?;
    // The payload is kept verbatim, so escapes that are not valid Unicode are looked for in the
    // input, as the full decoder does.
    if rules::has_invalid_unicode_escape(text) {
        return None;
    }
    let spec = dialect.spec();
    let mut reader = Reader {
        spec,
        ev: CloudEvent::new(
            String::new(),
            spec.and_then(|s| s.implied_source).unwrap_or_default(),
            String::new(),
        ),
        extensions: Vec::with_capacity(8),
        present: 0,
        data: None,
        flat: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Top(&mut reader)).ok()?;
    de.end().ok()?;
    reader.finish()
}

/// Leaves the fast path. The message is never shown: the full decoder runs and reports.
fn bail<E: de::Error>() -> E {
    E::custom("")
}

/// Bits of `Reader::present`: the members read so far, so that a repeated one leaves the fast
/// path and a missing required one is noticed. Extensions are checked for repeats apart.
const SPECVERSION: u32 = 1;
const ID: u32 = 1 << 1;
const SOURCE: u32 = 1 << 2;
const TYPE: u32 = 1 << 3;
const DATA: u32 = 1 << 4;
const DATACONTENTTYPE: u32 = 1 << 5;
const DATASCHEMA: u32 = 1 << 6;
const SUBJECT: u32 = 1 << 7;
const TIME: u32 = 1 << 8;
/// For dialects: `metadata` present as an object.
const METADATA: u32 = 1 << 9;
/// For dialects: bit `FIELD << i` for the spec's field `i`.
const FIELD: u32 = 1 << 10;

struct Reader<'de> {
    /// `None` for CloudEvents.
    spec: Option<&'static Spec>,
    ev: CloudEvent,
    /// Extensions in document order; put into the event's map at the end, at once.
    extensions: Vec<(String, ExtValue)>,
    present: u32,
    data: Option<&'de RawValue>,
    /// Payload members of a flat-payload dialect (lifeos), in document order.
    flat: Vec<(&'de str, &'de RawValue)>,
}

impl<'de> Reader<'de> {
    /// Notes a member as read; a repeated one leaves the fast path.
    fn first_time<E: de::Error>(&mut self, bit: u32) -> Result<(), E> {
        if self.present & bit != 0 {
            return Err(bail());
        }
        self.present |= bit;
        Ok(())
    }

    /// One member of a CloudEvents document.
    fn cloudevents_member<A: MapAccess<'de>>(
        &mut self,
        name: &'de str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let bit = match name {
            "data" => DATA,
            "specversion" => SPECVERSION,
            "id" => ID,
            "source" => SOURCE,
            "type" => TYPE,
            "datacontenttype" => DATACONTENTTYPE,
            "dataschema" => DATASCHEMA,
            "subject" => SUBJECT,
            "time" => TIME,
            // Binary data: the full decoder's case.
            "data_base64" => return Err(bail()),
            _ => {
                if !rules::is_valid_attribute_name(name) {
                    return Err(bail());
                }
                let value = map.next_value_seed(Extension)?;
                self.extensions.push((name.to_owned(), value));
                return Ok(());
            }
        };
        self.first_time(bit)?;
        let ev = &mut self.ev;
        match bit {
            DATA => self.data = Some(map.next_value()?),
            SPECVERSION => {
                if map.next_value::<Str<'de>>()?.0 != "1.0" {
                    return Err(bail());
                }
            }
            ID => ev.id = string(map)?,
            SOURCE => ev.source = string(map)?,
            TYPE => ev.ty = string(map)?,
            DATACONTENTTYPE => ev.datacontenttype = Some(string(map)?),
            DATASCHEMA => ev.dataschema = Some(string(map)?),
            SUBJECT => ev.subject = Some(string(map)?),
            _ => ev.time = Some(string(map)?),
        }
        Ok(())
    }

    /// One member of a dialect document, at the top level or in `metadata`.
    fn dialect_member<A: MapAccess<'de>>(
        &mut self,
        spec: &'static Spec,
        slot: Slot,
        name: &'de str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        if let Some(i) = spec
            .fields
            .iter()
            .position(|f| f.slot == slot && f.name == name)
        {
            self.first_time(FIELD << i)?;
            let ev = &mut self.ev;
            match spec.fields[i].target {
                Target::Data => self.data = Some(map.next_value()?),
                Target::Id => ev.id = string(map)?,
                Target::Type => ev.ty = string(map)?,
                Target::Source => ev.source = string(map)?,
                Target::Time => {
                    let time = string(map)?;
                    // A date-time without an offset is read as UTC by the full decoder, which
                    // keeps the original spelling: not the common form.
                    if rules::parse_rfc3339(&time).is_none() {
                        return Err(bail());
                    }
                    ev.time = Some(time);
                }
                Target::Ext(attr) => {
                    let value = ExtValue::String(string(map)?);
                    self.extensions.push((attr.to_owned(), value));
                }
                Target::IntExt(attr) => {
                    let value = ExtValue::String(map.next_value_seed(IntegerOrText)?);
                    self.extensions.push((attr.to_owned(), value));
                }
            }
            return Ok(());
        }
        match slot {
            Slot::Top if name == "metadata" => {
                self.first_time(METADATA)?;
                map.next_value_seed(Metadata(self))
            }
            Slot::Top if spec.flat_payload => {
                if self.flat.iter().any(|(seen, _)| *seen == name) {
                    return Err(bail());
                }
                self.flat.push((name, map.next_value()?));
                Ok(())
            }
            // A member without a counterpart travels in `canonextra`.
            Slot::Top => Err(bail()),
            Slot::Meta => self.general_rule(spec, name, map),
        }
    }

    /// A `metadata` member without an explicit mapping: a valid attribute name with a value in
    /// the CloudEvents type system becomes that attribute.
    fn general_rule<A: MapAccess<'de>>(
        &mut self,
        spec: &Spec,
        name: &'de str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let mappable = rules::is_valid_attribute_name(name)
            && !matches!(
                name,
                "id" | "type" | "specversion" | "data_base64" | ext::DIALECT_EXTRA
            )
            && !spec.maps_attribute(name);
        if !mappable {
            return Err(bail());
        }
        let value = map.next_value_seed(Extension)?;
        // Canon's typed extensions are strings; another value under their name is kept verbatim
        // by the full decoder.
        if rules::is_string_extension(name) && !matches!(value, ExtValue::String(_)) {
            return Err(bail());
        }
        let bit = match name {
            "source" => SOURCE,
            "datacontenttype" => DATACONTENTTYPE,
            "dataschema" => DATASCHEMA,
            "subject" => SUBJECT,
            "time" => TIME,
            _ => {
                self.extensions.push((name.to_owned(), value));
                return Ok(());
            }
        };
        self.first_time(bit)?;
        let ExtValue::String(s) = value else {
            return Err(bail());
        };
        let ev = &mut self.ev;
        match bit {
            SOURCE => ev.source = s,
            DATACONTENTTYPE => ev.datacontenttype = Some(s),
            DATASCHEMA => ev.dataschema = Some(s),
            SUBJECT => ev.subject = Some(s),
            _ => ev.time = Some(s),
        }
        Ok(())
    }

    fn finish(mut self) -> Option<CloudEvent> {
        match self.spec {
            None => {
                let required = SPECVERSION | ID | SOURCE | TYPE;
                if self.present & required != required {
                    return None;
                }
                if let Some(data) = self.data {
                    // Text data under a non-JSON content type: the full decoder's case.
                    if let Some(media) = &self.ev.datacontenttype
                        && !rules::is_json_media_type(media)
                    {
                        return None;
                    }
                    self.ev.data = Some(Data::Json(data.to_owned()));
                }
            }
            Some(spec) => {
                for required in spec.required {
                    let bit = match spec.fields.iter().position(|f| f.name == *required) {
                        Some(i) => FIELD << i,
                        None => METADATA,
                    };
                    if self.present & bit == 0 {
                        return None;
                    }
                }
                if spec.flat_payload {
                    self.ev.data = Some(Data::Json(super::write_object(self.flat)));
                } else if let Some(data) = self.data {
                    self.ev.data = Some(Data::Json(data.to_owned()));
                }
            }
        }
        // A repeated extension leaves the fast path; the map is then built from sorted entries
        // at once, which costs less than inserting them one by one.
        self.extensions.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        if self.extensions.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        self.ev.extensions = self.extensions.into_iter().collect();
        self.ev.validate().ok()?;
        Some(self.ev)
    }
}

/// A string member's value, escapes decoded.
fn string<'de, A: MapAccess<'de>>(map: &mut A) -> Result<String, A::Error> {
    Ok(map.next_value::<Str<'de>>()?.0.into_owned())
}

/// The top-level object.
struct Top<'r, 'de>(&'r mut Reader<'de>);

impl<'de> Visitor<'de> for Top<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let reader = self.0;
        while let Some(name) = map.next_key::<&'de str>()? {
            match reader.spec {
                None => reader.cloudevents_member(name, &mut map)?,
                Some(spec) => reader.dialect_member(spec, Slot::Top, name, &mut map)?,
            }
        }
        Ok(())
    }
}

/// A dialect's `metadata` object, read in the same pass.
struct Metadata<'r, 'de>(&'r mut Reader<'de>);

impl<'de> DeserializeSeed<'de> for Metadata<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Metadata<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a metadata object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let reader = self.0;
        let Some(spec) = reader.spec else {
            return Err(bail());
        };
        let mut empty = true;
        while let Some(name) = map.next_key::<&'de str>()? {
            empty = false;
            reader.dialect_member(spec, Slot::Meta, name, &mut map)?;
        }
        // An empty `metadata` is kept verbatim by the full decoder.
        if empty { Err(bail()) } else { Ok(()) }
    }
}

/// An extension value in the JSON format: a String, a Boolean, or an Integer written plainly
/// within the signed 32-bit range. Anything else (null, a fraction, `-0`, a larger number, an
/// object) is the full decoder's to judge.
struct Extension;

impl<'de> DeserializeSeed<'de> for Extension {
    type Value = ExtValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ExtValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Extension {
    type Value = ExtValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, boolean or integer")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ExtValue, E> {
        Ok(ExtValue::Bool(v))
    }

    // serde_json calls these only for integers written without fraction or exponent (`-0` is
    // read as a float).
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ExtValue, E> {
        i32::try_from(v).map(ExtValue::Integer).map_err(|_| bail())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExtValue, E> {
        i32::try_from(v).map(ExtValue::Integer).map_err(|_| bail())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ExtValue, E> {
        Ok(ExtValue::String(v.to_owned()))
    }
}

/// A dialect member that holds an integer, or text where the dialect writes one (a version
/// `"1.0.0"`, a zero-padded `"0001"`): the canonical extension is its text. A string that
/// reads as a plain integer keeps its spelling in `canonextra` in the full decoder, so it leaves
/// the fast path, as does an empty one.
struct IntegerOrText;

impl<'de> DeserializeSeed<'de> for IntegerOrText {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IntegerOrText {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        // The full decoder reads integers as i64.
        i64::try_from(v).map(|v| v.to_string()).map_err(|_| bail())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.is_empty() || super::is_plain_integer(v) {
            return Err(bail());
        }
        Ok(v.to_owned())
    }
}
