//! Consent before processing, and an audit trail of every processing of personal data.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::id::{EventId, Meta};
use crate::raw::Dyn;

/// Decides whether the handlers of an event whose type declares a consent purpose may run.
/// When it says no, none of them runs and the dispatch report names the event as skipped.
pub trait ConsentProvider: Send + Sync + 'static {
    /// Whether processing `event` for `purpose` is allowed.
    fn allows(&self, purpose: &str, event: &EventView<'_>) -> bool;
}

impl<F> ConsentProvider for F
where
    F: Fn(&str, &EventView<'_>) -> bool + Send + Sync + 'static,
{
    fn allows(&self, purpose: &str, event: &EventView<'_>) -> bool {
        self(purpose, event)
    }
}

/// Records every processing of an event whose type holds personal data.
pub trait AuditSink: Send + Sync + 'static {
    /// Called once per handler run (or once per skipped event).
    fn record(&self, record: AuditRecord);
}

impl<F> AuditSink for F
where
    F: Fn(AuditRecord) + Send + Sync + 'static,
{
    fn record(&self, record: AuditRecord) {
        self(record);
    }
}

/// One processing of an event with personal data.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The handler that processed it (who).
    pub handler: Arc<str>,
    /// The acting user of the event, if it names one.
    pub actor: Option<Arc<str>>,
    /// The event.
    pub event_id: EventId,
    /// Its type.
    pub ty: Cow<'static, str>,
    /// Its payload version.
    pub version: Cow<'static, str>,
    /// When it was processed.
    pub at: SystemTime,
    /// What happened.
    pub outcome: AuditOutcome,
}

/// What happened to an audited event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The handler ran and succeeded.
    Processed,
    /// The handler ran and failed (or panicked), with the error.
    Failed(String),
    /// No handler ran: consent for the purpose was not given.
    Skipped {
        /// The consent purpose.
        purpose: String,
    },
}

/// An audit sink that keeps records in memory (tests, or a buffer drained elsewhere).
#[derive(Debug, Clone, Default)]
pub struct MemoryAudit(Arc<Mutex<Vec<AuditRecord>>>);

impl MemoryAudit {
    /// An empty sink.
    pub fn new() -> MemoryAudit {
        MemoryAudit::default()
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, record: AuditRecord) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

/// An event as a consent provider sees it.
pub struct EventView<'a> {
    pub(crate) meta: &'a Meta,
    pub(crate) event: &'a dyn Dyn,
}

impl std::fmt::Debug for EventView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventView")
            .field("type", &self.event.ty_str())
            .field("meta", self.meta)
            .finish()
    }
}

impl EventView<'_> {
    /// The envelope facts.
    pub fn meta(&self) -> &Meta {
        self.meta
    }

    /// The type name.
    pub fn ty(&self) -> &str {
        self.event.ty_str()
    }

    /// The aggregate key (usually the user the data is about).
    pub fn aggregate_key(&self) -> Option<String> {
        self.event.aggregate_key()
    }

    /// The payload as JSON.
    pub fn payload(&self) -> serde_json::Value {
        self.event
            .payload_json()
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }
}
