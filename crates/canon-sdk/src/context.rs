//! What a handler gets besides its event: the envelope facts and `emit`, which carries
//! causation and correlation and enforces the catalog's side-effect rules.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::dispatch::Inner;
use crate::event::{Event, Invalid};
use crate::id::{EventId, Meta};
use crate::raw::Dyn;

/// An event emitted by a handler, held until the handler succeeds.
pub(crate) struct Pending {
    pub(crate) event: Arc<dyn Dyn>,
    pub(crate) meta: Meta,
}

/// The context of a synchronous handler.
pub struct Context<'a> {
    pub(crate) meta: &'a Meta,
    pub(crate) handled: &'a dyn Dyn,
    pub(crate) handler: &'a str,
    pub(crate) inner: &'a Inner,
    pub(crate) emitted: &'a mut Vec<Pending>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("meta", self.meta)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// The envelope facts of the event being handled.
    pub fn meta(&self) -> &Meta {
        self.meta
    }

    /// The name the handler was registered under.
    pub fn handler(&self) -> &str {
        self.handler
    }

    /// The key an inbox should record for this event and this handler: the handler's name and
    /// the event's idempotency key when its type declares one (so a re-published duplicate
    /// with a new id is caught too), else its id. Each handler of an event has its own key.
    pub fn inbox_key(&self) -> String {
        inbox_key(self.handled, self.meta, self.handler)
    }

    /// Emits an event caused by the one being handled: it gets `causationid` = the handled
    /// event's id and the same `correlationid`, and an id derived from the handled event's id,
    /// the handler's name and the emit's position (the same on every redelivery). Refused if
    /// the handled type's rules forbid emitting this type. Emitted events are released only if
    /// the handler succeeds.
    pub fn emit<E: Event>(&mut self, event: E) -> Result<EventId, EmitError> {
        let n = self.emitted.len();
        let pending = check::<E>(self.inner, self.handled, self.meta, self.handler, n, event)?;
        let id = pending.meta.id.clone();
        self.emitted.push(pending);
        Ok(id)
    }
}

/// The context of an asynchronous handler: owned, so it can live across `.await`.
#[derive(Clone)]
pub struct AsyncContext {
    pub(crate) meta: Meta,
    pub(crate) handled: Arc<dyn Dyn>,
    pub(crate) handler: Arc<str>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) emitted: Arc<Mutex<Vec<Pending>>>,
}

impl fmt::Debug for AsyncContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncContext")
            .field("meta", &self.meta)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl AsyncContext {
    /// The envelope facts of the event being handled.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The name the handler was registered under.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// See [`Context::inbox_key`].
    pub fn inbox_key(&self) -> String {
        inbox_key(self.handled.as_ref(), &self.meta, &self.handler)
    }

    /// See [`Context::emit`].
    pub fn emit<E: Event>(&self, event: E) -> Result<EventId, EmitError> {
        let mut emitted = self.emitted.lock().unwrap_or_else(PoisonError::into_inner);
        let n = emitted.len();
        let pending = check::<E>(
            &self.inner,
            self.handled.as_ref(),
            &self.meta,
            &self.handler,
            n,
            event,
        )?;
        let id = pending.meta.id.clone();
        emitted.push(pending);
        Ok(id)
    }
}

impl AsyncContext {
    /// What the handler emitted so far, as CloudEvents (the source is a placeholder: a
    /// consumer publishes them under its own).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn pending_events(&self) -> Vec<canon_envelope::CloudEvent> {
        self.emitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| crate::dispatch::to_cloud_event(p.event.as_ref(), &p.meta, "canon-sdk"))
            .collect()
    }

    /// Emits again an event emitted by an earlier run of this handler, with its id and
    /// envelope facts; no rule check (it passed when it was first emitted).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn re_emit(&self, event: canon_envelope::CloudEvent) {
        let meta = crate::dispatch::meta_of(&event);
        let raw = crate::raw::RawEvent::new(event, &self.inner.catalogs);
        self.emitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Pending {
                event: Arc::new(raw),
                meta,
            });
    }
}

fn inbox_key(handled: &dyn Dyn, meta: &Meta, handler: &str) -> String {
    let key = handled
        .idempotency_key()
        .unwrap_or_else(|| meta.id.to_string());
    format!("{handler} {key}")
}

fn check<E: Event>(
    inner: &Inner,
    handled: &dyn Dyn,
    meta: &Meta,
    handler: &str,
    n: usize,
    event: E,
) -> Result<Pending, EmitError> {
    handled
        .may_emit(E::TYPE, &inner.catalogs)
        .map_err(EmitError::Forbidden)?;
    if inner.validate {
        // The catalogs first (they also know derived types), else the type's own check.
        match crate::dispatch::validate_dyn(&inner.catalogs, &event) {
            Some(invalid) => return Err(EmitError::Invalid(invalid)),
            None => event.validate().map_err(EmitError::Invalid)?,
        }
    }
    Ok(Pending {
        event: Arc::new(event),
        meta: meta.child(handler, n),
    })
}

/// Why an emit was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The handled type's side-effect rules forbid emitting this type. Fix the handler: the
    /// catalog says this effect belongs elsewhere.
    #[error(transparent)]
    Forbidden(RuleBreach),
    /// The emitted payload does not satisfy its catalog (the dispatcher validates).
    #[error(transparent)]
    Invalid(Invalid),
}

/// Which rule an emit broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The type is in the handled type's `handlers.must_not_emit`.
    MustNotEmit,
    /// The handled type has `handlers.may_emit` and the type is not in it.
    MayEmit,
}

/// A handler tried to emit a type its event's rules forbid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleBreach {
    /// The type being handled.
    pub handled: String,
    /// The type the handler tried to emit.
    pub emitted: String,
    /// The rule.
    pub rule: Rule,
    /// The catalog's words for the rule.
    pub note: Option<String>,
}

impl std::error::Error for RuleBreach {}

impl fmt::Display for RuleBreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Rule::MustNotEmit => write!(
                f,
                "a handler of {} must not emit {} (rule handlers.must_not_emit of {})",
                self.handled, self.emitted, self.handled
            )?,
            Rule::MayEmit => write!(
                f,
                "a handler of {} may not emit {}: it is not in handlers.may_emit of {}",
                self.handled, self.emitted, self.handled
            )?,
        }
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}
