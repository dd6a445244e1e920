//! Inboxes: exactly-once effects over at-least-once delivery. A handler claims the event's key
//! (its idempotency key, else its id: `cx.inbox_key()`) before doing its work; a key already
//! processed within the inbox's time-to-live is reported as a duplicate and the handler skips
//! the work. The claim becomes permanent only when the work commits.
//!
//! - [`MemoryInbox`]: in process memory; for a single process whose effects are in memory too.
//! - `PgInbox` (feature `postgres`): the processed key is written in the same PostgreSQL
//!   transaction as the handler's own writes, so the effect and the record commit together or
//!   not at all (seed 002's "processed table with TTL").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{PgInbox, PgInboxTx};

/// Why an inbox could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// Another delivery of the same key is being processed right now. Retry later (a remote
    /// consumer nacks): if that one fails, this one must still do the work.
    #[error("event {key} is being processed by another delivery")]
    Busy {
        /// The key.
        key: String,
    },
    /// The database failed; nothing was recorded. Retry.
    #[cfg(feature = "postgres")]
    #[error("inbox database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool. Retry.
    #[cfg(feature = "postgres")]
    #[error("inbox connection pool: {0}")]
    Pool(String),
    /// The events stored with a processed key could not be read back.
    #[cfg(feature = "postgres")]
    #[error("events stored in the inbox are unreadable: {0}")]
    Stored(String),
}

/// An inbox in memory.
#[derive(Debug, Clone)]
pub struct MemoryInbox {
    ttl: Duration,
    slots: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    claims: u64,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    InProgress,
    Done(Instant),
}

impl MemoryInbox {
    /// An inbox that remembers processed keys for `ttl`.
    pub fn new(ttl: Duration) -> MemoryInbox {
        MemoryInbox {
            ttl,
            slots: Arc::default(),
        }
    }

    /// Claims `key`: `Ok(None)` if it was processed within the time-to-live (skip the work),
    /// `Err(Busy)` if another delivery holds it, else a claim to commit after the work.
    pub fn claim(&self, key: &str) -> Result<Option<Claim>, InboxError> {
        let now = Instant::now();
        let mut state = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        state.claims += 1;
        if state.claims.is_multiple_of(1024) {
            state
                .slots
                .retain(|_, s| !matches!(s, Slot::Done(until) if *until <= now));
        }
        match state.slots.get(key) {
            Some(Slot::Done(until)) if *until > now => return Ok(None),
            Some(Slot::InProgress) => {
                return Err(InboxError::Busy {
                    key: key.to_owned(),
                });
            }
            _ => {}
        }
        state.slots.insert(key.to_owned(), Slot::InProgress);
        Ok(Some(Claim {
            inbox: self.clone(),
            key: Some(key.to_owned()),
        }))
    }

    /// Whether `key` is recorded as processed.
    pub fn processed(&self, key: &str) -> bool {
        let state = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(state.slots.get(key), Some(Slot::Done(until)) if *until > Instant::now())
    }
}

/// A claimed key. [`Claim::commit`] after the work records it as processed; dropping the
/// claim instead (the work failed) releases it for the next delivery.
#[derive(Debug)]
pub struct Claim {
    inbox: MemoryInbox,
    key: Option<String>,
}

impl Claim {
    /// Records the key as processed.
    pub fn commit(mut self) {
        if let Some(key) = self.key.take() {
            let until = Instant::now() + self.inbox.ttl;
            self.inbox
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .slots
                .insert(key, Slot::Done(until));
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inbox
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .slots
                .remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_key_is_a_duplicate_and_a_dropped_claim_is_released() {
        let inbox = MemoryInbox::new(Duration::from_secs(60));
        let claim = inbox.claim("k").expect("claim").expect("fresh");
        assert!(matches!(inbox.claim("k"), Err(InboxError::Busy { .. })));
        drop(claim);
        let claim = inbox.claim("k").expect("claim").expect("released");
        claim.commit();
        assert!(inbox.processed("k"));
        assert!(inbox.claim("k").expect("claim").is_none());
    }

    #[test]
    fn a_key_is_forgotten_after_its_time_to_live() {
        let inbox = MemoryInbox::new(Duration::ZERO);
        inbox.claim("k").expect("claim").expect("fresh").commit();
        assert!(!inbox.processed("k"));
        assert!(inbox.claim("k").expect("claim").is_some());
    }
}
