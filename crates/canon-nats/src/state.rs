//! What Canon keeps beside JetStream's consumer state, in the topic's key-value bucket
//! (`canonst_<topic>`), shared by every process:
//!
//! | key | value |
//! |---|---|
//! | `a.<group>.<seq>` | an event's failed attempts, its holds, and whether it is being dead-lettered |
//! | `o.<group>.<key>` | the last sequence of an ordering key that the group finished (ordered groups) |
//! | `ix` | the last sequence the lookup index covers |
//!
//! An `a.` entry exists only for events that failed or waited before; the first delivery of an
//! event reads nothing (JetStream's delivery count says it is the first).

use canon_backend::{AttemptRecord, BackendError, codec};
use serde_json::{Value, json};

use crate::names::enc;
use crate::{NatsBackend, Topic, nats_err};

/// One event's state beyond JetStream's delivery count.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Attempts {
    /// Deliveries Canon gave back unseen (the event's time had not come): not attempts.
    pub(crate) holds: u32,
    /// Failed attempts so far.
    pub(crate) history: Vec<AttemptRecord>,
    /// Its DLQ entry is being written: a redelivery finishes the move instead of delivering.
    pub(crate) dead: bool,
}

impl Attempts {
    /// Whether there is anything to keep.
    pub(crate) fn is_empty(&self) -> bool {
        self.holds == 0 && self.history.is_empty() && !self.dead
    }
}

fn attempts_key(group: &str, seq: u64) -> String {
    format!("a.{}.{seq}", enc(group))
}

fn done_key(group: &str, key_token: &str) -> String {
    format!("o.{}.{key_token}", enc(group))
}

pub(crate) async fn load(t: &Topic, group: &str, seq: u64) -> Result<Attempts, BackendError> {
    let Some(v) = t
        .state
        .get(attempts_key(group, seq))
        .await
        .map_err(nats_err)?
    else {
        return Ok(Attempts::default());
    };
    let j: Value = serde_json::from_slice(&v).unwrap_or_default();
    Ok(Attempts {
        holds: j
            .get("holds")
            .and_then(Value::as_u64)
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(0),
        history: j
            .get("history")
            .and_then(codec::history_from_json)
            .unwrap_or_default(),
        dead: j.get("dead").and_then(Value::as_bool).unwrap_or(false),
    })
}

pub(crate) async fn save(
    t: &Topic,
    group: &str,
    seq: u64,
    a: &Attempts,
) -> Result<(), BackendError> {
    let v = json!({"holds": a.holds, "history": codec::history_json(&a.history), "dead": a.dead});
    t.state
        .put(attempts_key(group, seq), v.to_string().into())
        .await
        .map_err(nats_err)?;
    Ok(())
}

/// Forgets an event's state (it is done). Purged, not deleted, so no marker stays behind.
pub(crate) async fn clear(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    seq: u64,
) -> Result<(), BackendError> {
    purge_subject(b, t, &attempts_key(group, seq)).await
}

pub(crate) async fn done_through(
    t: &Topic,
    group: &str,
    key_token: &str,
) -> Result<u64, BackendError> {
    Ok(t.state
        .get(done_key(group, key_token))
        .await
        .map_err(nats_err)?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0))
}

pub(crate) async fn set_done(
    t: &Topic,
    group: &str,
    key_token: &str,
    seq: u64,
) -> Result<(), BackendError> {
    t.state
        .put(done_key(group, key_token), seq.to_string().into())
        .await
        .map_err(nats_err)?;
    Ok(())
}

pub(crate) async fn index_floor(t: &Topic) -> Result<u64, BackendError> {
    Ok(t.state
        .get("ix")
        .await
        .map_err(nats_err)?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0))
}

pub(crate) async fn set_index_floor(t: &Topic, seq: u64) -> Result<(), BackendError> {
    t.state
        .put("ix", seq.to_string().into())
        .await
        .map_err(nats_err)?;
    Ok(())
}

/// Forgets everything of a group (reset, deletion).
pub(crate) async fn forget_group(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
) -> Result<(), BackendError> {
    let g = enc(group);
    purge_subject(b, t, &format!("a.{g}.>")).await?;
    purge_subject(b, t, &format!("o.{g}.>")).await
}

async fn purge_subject(b: &NatsBackend, t: &Topic, key: &str) -> Result<(), BackendError> {
    b.js()
        .api(
            &format!("STREAM.PURGE.KV_{}", t.names.state),
            &json!({ "filter": format!("$KV.{}.{key}", t.names.state) }),
        )
        .await?;
    Ok(())
}
