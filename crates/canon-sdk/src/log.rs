//! A record of what a dispatcher dispatched, for tests and debugging.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::event::Event;
use crate::id::Meta;

/// The events a dispatcher dispatched, in order, with what happened to each. Cloning shares
/// the log.
#[derive(Debug, Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<LogEntry>>>);

/// One dispatched event.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its envelope facts.
    pub meta: Meta,
    /// Its type.
    pub ty: Cow<'static, str>,
    /// Its payload version.
    pub version: Cow<'static, str>,
    /// Its payload.
    pub payload: Value,
    /// What happened.
    pub outcome: LogOutcome,
}

/// What happened to a logged event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOutcome {
    /// Handlers that succeeded.
    pub handled_by: Vec<Arc<str>>,
    /// Handlers that failed, with their error.
    pub failed: Vec<(Arc<str>, String)>,
    /// No handler's version range accepted the event.
    pub unhandled: bool,
    /// Skipped for want of consent to this purpose.
    pub skipped: Option<String>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog::default()
    }

    pub(crate) fn push(&self, entry: LogEntry) {
        self.lock().push(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogEntry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().clone()
    }

    /// The types dispatched, in order.
    pub fn types(&self) -> Vec<String> {
        self.lock().iter().map(|e| e.ty.to_string()).collect()
    }

    /// The dispatched events of type `E`, decoded.
    pub fn of_type<E: Event>(&self) -> Vec<E> {
        self.lock()
            .iter()
            .filter(|e| e.ty == E::TYPE)
            .filter_map(|e| serde_json::from_value(e.payload.clone()).ok())
            .collect()
    }

    /// How many events were dispatched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was dispatched.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}
