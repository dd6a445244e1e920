//! Event ids and the envelope facts a handler sees.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// An event id: a random UUID for events made here, the given text for events from elsewhere.
/// Cloning never allocates.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Uuid(uuid::Uuid),
    Text(Arc<str>),
}

impl EventId {
    /// A new random (version 4) UUID.
    pub fn random() -> EventId {
        let bytes = fastrand::u128(..).to_le_bytes();
        EventId(Repr::Uuid(
            uuid::Builder::from_random_bytes(bytes).into_uuid(),
        ))
    }
}

impl From<&str> for EventId {
    fn from(s: &str) -> Self {
        EventId(Repr::Text(s.into()))
    }
}

impl From<String> for EventId {
    fn from(s: String) -> Self {
        EventId(Repr::Text(s.into()))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(u) => fmt::Display::fmt(&u.hyphenated(), f),
            Repr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// The envelope facts of an event being dispatched.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The event's id.
    pub id: EventId,
    /// The workflow it belongs to: a root event's own id, inherited by every event emitted
    /// while handling it.
    pub correlation_id: EventId,
    /// The event whose handling emitted this one.
    pub causation_id: Option<EventId>,
    /// The acting user (Canon's `actor` extension), inherited by emitted events.
    pub actor: Option<Arc<str>>,
    /// When it happened, as the event states it. Events made in this process state none until
    /// they leave it (a CloudEvent made from them is stamped with the current time): reading
    /// the clock for every in-process dispatch would cost more than the dispatch.
    pub time: Option<SystemTime>,
    /// How many emits away from the event published from outside (0 for that one).
    pub depth: u32,
}

impl Meta {
    /// Facts for a new event published from outside any handler.
    pub fn root() -> Meta {
        let id = EventId::random();
        Meta {
            correlation_id: id.clone(),
            id,
            causation_id: None,
            actor: None,
            time: None,
            depth: 0,
        }
    }

    /// Facts for the `n`th event emitted by `handler` while handling the event `self`
    /// describes. Its id is derived from those three (a name-based UUID), so a handler that
    /// runs again for a redelivered event emits the same ids, and the server's dedup by id
    /// keeps one copy of each.
    pub fn child(&self, handler: &str, n: usize) -> Meta {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6d1f_2c3a_9b7e_4f0a_8c55_21d4_e0b9_7a13);
        let name = format!("{}\n{handler}\n{n}", self.id);
        Meta {
            id: EventId(Repr::Uuid(uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()))),
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.id.clone()),
            actor: self.actor.clone(),
            time: None,
            depth: self.depth + 1,
        }
    }
}
