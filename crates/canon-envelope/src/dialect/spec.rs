//! The member tables of the JSON dialects: which member maps to which canonical attribute.

use super::pointer;
use crate::event::ext;

/// Where a member sits: at the top of the document or inside its `metadata` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Top,
    Meta,
}

/// The canonical attribute a member maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Id,
    Type,
    Source,
    Time,
    Data,
    /// A String extension.
    Ext(&'static str),
    /// A String extension written as a JSON integer in the dialect.
    IntExt(&'static str),
}

#[derive(Debug)]
pub(super) struct Field {
    pub(super) slot: Slot,
    pub(super) name: &'static str,
    pub(super) target: Target,
}

#[derive(Debug)]
pub(super) struct Spec {
    pub(super) fields: &'static [Field],
    /// Members that must be present and non-null (`metadata` means the object itself).
    pub(super) required: &'static [&'static str],
    /// The `source` of events from a dialect that has no source member.
    pub(super) implied_source: Option<&'static str>,
    /// Payload fields sit at the top level, next to the envelope members (lifeos).
    pub(super) flat_payload: bool,
}

impl Spec {
    pub(super) fn field(&self, slot: Slot, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.slot == slot && f.name == name)
    }

    /// Whether an explicit member carries this attribute (so a same-named metadata member
    /// must not).
    pub(super) fn maps_attribute(&self, attr: &str) -> bool {
        self.fields
            .iter()
            .any(|f| attribute_of(f.target) == Some(attr))
    }

    /// The member that carries an attribute, as a JSON pointer.
    pub(super) fn member_for_attribute(&self, attr: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|f| attribute_of(f.target) == Some(attr))
            .map(|f| pointer(f.slot, f.name))
    }
}

pub(super) fn attribute_of(target: Target) -> Option<&'static str> {
    match target {
        Target::Id => Some("id"),
        Target::Type => Some("type"),
        Target::Source => Some("source"),
        Target::Time => Some("time"),
        Target::Data => Some("data"),
        Target::Ext(n) | Target::IntExt(n) => Some(n),
    }
}

const fn f(slot: Slot, name: &'static str, target: Target) -> Field {
    Field { slot, name, target }
}

/// Seed 001.
pub(super) static BME: Spec = Spec {
    fields: &[
        f(Slot::Top, "eventId", Target::Id),
        f(Slot::Top, "type", Target::Type),
        f(Slot::Top, "payload", Target::Data),
        f(Slot::Meta, "userId", Target::Ext(ext::ACTOR)),
        f(Slot::Meta, "timestamp", Target::Time),
        f(
            Slot::Meta,
            "correlationId",
            Target::Ext(ext::CORRELATION_ID),
        ),
        f(Slot::Meta, "causationId", Target::Ext(ext::CAUSATION_ID)),
    ],
    required: &["eventId", "type", "metadata", "timestamp"],
    implied_source: Some("urn:canon:bme"),
    flat_payload: false,
};

/// Seed 002.
pub(super) static GO4U: Spec = Spec {
    fields: &[
        f(Slot::Top, "event_id", Target::Id),
        f(Slot::Top, "event_name", Target::Type),
        f(
            Slot::Top,
            "event_version",
            Target::IntExt(ext::DATA_VERSION),
        ),
        f(Slot::Top, "occurred_at", Target::Time),
        f(Slot::Top, "producer", Target::Source),
        f(Slot::Top, "payload", Target::Data),
        f(Slot::Meta, "trace_id", Target::Ext(ext::CORRELATION_ID)),
        f(Slot::Meta, "sequence", Target::IntExt(ext::SEQUENCE)),
        f(Slot::Meta, "actor_user_id", Target::Ext(ext::ACTOR)),
    ],
    required: &["event_id", "event_name", "occurred_at", "producer"],
    implied_source: None,
    flat_payload: false,
};

/// Seed 003.
pub(super) static LIFEOS: Spec = Spec {
    fields: &[
        f(Slot::Top, "event_id", Target::Id),
        f(Slot::Top, "event_type", Target::Type),
        f(Slot::Top, "timestamp", Target::Time),
        f(Slot::Top, "version", Target::Ext(ext::DATA_VERSION)),
        f(
            Slot::Top,
            "correlation_id",
            Target::Ext(ext::CORRELATION_ID),
        ),
        f(Slot::Top, "causation_id", Target::Ext(ext::CAUSATION_ID)),
    ],
    required: &["event_id", "event_type", "timestamp"],
    implied_source: Some("urn:canon:lifeos"),
    flat_payload: true,
};
