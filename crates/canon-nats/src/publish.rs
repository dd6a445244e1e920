//! Publishing onto a topic's stream.
//!
//! - One event is one JetStream publish; a batch of several is one atomic batch (ADR-50), so
//!   it is stored whole or not at all, at consecutive sequences (P2, P3).
//! - `Nats-Msg-Id` is the event's (`source`, `id`) (P4): a single publish of a duplicate is
//!   answered with the original's sequence by JetStream itself. An atomic batch holding a
//!   duplicate is refused whole by JetStream; Canon then finds which events are already stored
//!   (the lookup index), answers those `duplicate`, and publishes the rest.
//! - An expected sequence is `Nats-Expected-Last-Subject-Sequence` on the key's subject (P6).
//! - An idempotency key (P5) is claimed before the event is published: a message on the key's
//!   claim subject, written only if the subject is empty (`Nats-Expected-Last-Subject-Sequence:
//!   0`), naming the event, and expiring with the dedup window (`Nats-TTL`). A claim by another
//!   event means `duplicate` of that event. A claim whose event never got stored (its publisher
//!   crashed in between) is taken over once it is older than [`CLAIM_TIMEOUT`]; until then a
//!   publish with that key is answered "retry later".

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use bytes::Bytes;
use canon_backend::{BackendError, PublishOutcome, PublishRequest, codec};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};

use crate::js::{JsError, code};
use crate::names::msg_id;
use crate::{NatsBackend, Topic, index};

/// How long a claim of an idempotency key waits for its event before another event may take it.
pub(crate) const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Header: the event's ordering key, percent-encoded.
pub(crate) const KEY_HEADER: &str = "Canon-Key";
/// Header of a redriven copy: the original's sequence.
pub(crate) const SEQ_HEADER: &str = "Canon-Seq";

const KEY_CHARS: &AsciiSet = &CONTROLS.add(b'%');

pub(crate) fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_CHARS).to_string()
}

pub(crate) fn decode_key(v: &str) -> String {
    percent_decode_str(v).decode_utf8_lossy().into_owned()
}

/// One event ready to go.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    msg_id: String,
    source: String,
    id: String,
    key: Option<String>,
    expected: Option<u64>,
}

fn outgoing(t: &Topic, r: PublishRequest) -> Outgoing {
    let e = r.event;
    let mid = msg_id(&e.source, &e.id);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", mid.as_str());
    if let Some(k) = &r.ordering_key {
        headers.insert(KEY_HEADER, encode_key(k).as_str());
    }
    if let Some(s) = r.expected_sequence {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            s.to_string().as_str(),
        );
    }
    Outgoing {
        subject: t.names.event_subject(r.ordering_key.as_deref()),
        headers,
        payload: e.to_json().into(),
        msg_id: mid,
        source: e.source,
        id: e.id,
        key: r.ordering_key,
        expected: r.expected_sequence,
    }
}

/// What became of one event while the batch is worked out.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// To be stored.
    Store,
    /// Stored now at this sequence.
    Stored(u64),
    /// Stored before at this sequence.
    Duplicate(u64),
    /// The same as an earlier event of this batch.
    SameAs(usize),
}

/// Publishes a batch atomically (P2).
pub(crate) async fn publish(
    b: &NatsBackend,
    t: &Topic,
    batch: Vec<PublishRequest>,
) -> Result<Vec<PublishOutcome>, BackendError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    if batch
        .iter()
        .any(|r| r.expected_sequence.is_some() && r.ordering_key.is_none())
    {
        return Err(BackendError::ExpectedSequenceWithoutKey);
    }
    let idempotency: Vec<Option<String>> =
        batch.iter().map(|r| r.idempotency_key.clone()).collect();
    let events: Vec<Outgoing> = batch.into_iter().map(|r| outgoing(t, r)).collect();
    let mut fate = vec![Fate::Store; events.len()];
    // Duplicates within the batch, by id and by idempotency key; and JetStream's rule that
    // an expected sequence may not follow an earlier write of its subject in one batch.
    let mut first_id: HashMap<&str, usize> = HashMap::new();
    let mut first_key: HashMap<&str, usize> = HashMap::new();
    let mut subjects: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(&j) = first_id.get(e.msg_id.as_str()) {
            fate[i] = Fate::SameAs(j);
            continue;
        }
        if let Some(k) = &idempotency[i]
            && let Some(&j) = first_key.get(k.as_str())
        {
            fate[i] = Fate::SameAs(j);
            continue;
        }
        first_id.insert(&e.msg_id, i);
        if let Some(k) = &idempotency[i] {
            first_key.insert(k, i);
        }
        if e.expected.is_some() && subjects.contains_key(e.subject.as_str()) {
            return Err(BackendError::InvalidConfig(
                "on JetStream an expected sequence can only be stated for the first event of \
                 its aggregate in a batch"
                    .into(),
            ));
        }
        subjects.insert(&e.subject, i);
    }
    // Claim the idempotency keys (P5).
    let mut claims = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !matches!(fate[i], Fate::Store) {
            continue;
        }
        if let Some(k) = &idempotency[i] {
            match claim(b, t, k, e).await {
                Ok(Claim::Ours(seq)) => claims.push(seq),
                Ok(Claim::Stored(seq)) => fate[i] = Fate::Duplicate(seq),
                Err(err) => {
                    release(b, t, &claims).await;
                    return Err(err);
                }
            }
        }
    }
    let result = store(b, t, &events, &mut fate).await;
    if result.is_err() {
        release(b, t, &claims).await;
    }
    result?;
    Ok(fate
        .iter()
        .map(|f| match *f {
            Fate::Stored(seq) => PublishOutcome::Stored { seq },
            Fate::Duplicate(seq) => PublishOutcome::Duplicate { seq },
            Fate::SameAs(j) => match fate[j] {
                Fate::Stored(seq) | Fate::Duplicate(seq) => PublishOutcome::Duplicate { seq },
                // An earlier event always ends stored or a duplicate.
                Fate::Store | Fate::SameAs(_) => PublishOutcome::Duplicate { seq: 0 },
            },
            // `store` settles every event it was given.
            Fate::Store => PublishOutcome::Duplicate { seq: 0 },
        })
        .collect())
}

/// Stores every event whose fate is `Store`, in one publish or one atomic batch; afterwards
/// each is `Stored` or `Duplicate`.
async fn store(
    b: &NatsBackend,
    t: &Topic,
    events: &[Outgoing],
    fate: &mut [Fate],
) -> Result<(), BackendError> {
    for _round in 0..4 {
        let todo: Vec<usize> = (0..events.len())
            .filter(|i| matches!(fate[*i], Fate::Store))
            .collect();
        match todo.as_slice() {
            [] => return Ok(()),
            [i] => {
                let e = &events[*i];
                match b
                    .js()
                    .publish(e.subject.clone(), e.headers.clone(), e.payload.clone())
                    .await
                {
                    Ok(ack) if ack.duplicate => fate[*i] = Fate::Duplicate(ack.seq),
                    Ok(ack) => fate[*i] = Fate::Stored(ack.seq),
                    Err(err) => return Err(refusal(b, t, events, &todo, err).await),
                }
                return Ok(());
            }
            _ => {
                if todo.len() > 1000 {
                    return Err(BackendError::InvalidConfig(format!(
                        "a batch of {} events: JetStream's atomic batches hold at most 1,000",
                        todo.len()
                    )));
                }
                let _permit = t.batches.acquire().await.map_err(crate::nats_err)?;
                let messages = todo
                    .iter()
                    .map(|i| {
                        let e = &events[*i];
                        (e.subject.clone(), e.headers.clone(), e.payload.clone())
                    })
                    .collect();
                match b.js().publish_atomic(messages).await {
                    Ok(first) => {
                        for (k, i) in todo.iter().enumerate() {
                            fate[*i] = Fate::Stored(first + u64::try_from(k).unwrap_or(0));
                        }
                        return Ok(());
                    }
                    Err(err) if err.code() == Some(code::BATCH_DUPLICATE) => {
                        // Find the events stored before and publish the others.
                        let mut found = false;
                        for i in &todo {
                            let e = &events[*i];
                            if let Some(seq) = index::find(b, t, &e.source, &e.id).await? {
                                fate[*i] = Fate::Duplicate(seq);
                                found = true;
                            }
                        }
                        if !found {
                            return Err(BackendError::storage(
                                "JetStream reports a duplicate whose original is no longer \
                                 retained",
                            ));
                        }
                    }
                    Err(err) => return Err(refusal(b, t, events, &todo, err).await),
                }
            }
        }
    }
    Err(BackendError::storage(
        "the batch kept meeting duplicates stored meanwhile",
    ))
}

/// An error answer as the port's error: a conflict names its aggregate and its current
/// sequence.
async fn refusal(
    b: &NatsBackend,
    t: &Topic,
    events: &[Outgoing],
    todo: &[usize],
    err: JsError,
) -> BackendError {
    if err.code() != Some(code::WRONG_LAST_SEQUENCE) {
        return err.into();
    }
    // Which expectation failed: the answer names only the current sequence.
    let expecting: Vec<&Outgoing> = todo
        .iter()
        .map(|i| &events[*i])
        .filter(|e| e.expected.is_some())
        .collect();
    for e in &expecting {
        let current = match b.js().last_on(&t.names.stream, &e.subject).await {
            Ok(m) => m.map_or(0, |m| m.seq),
            Err(e) => return e.into(),
        };
        if Some(current) != e.expected || expecting.len() == 1 {
            return BackendError::Conflict {
                key: e.key.clone().unwrap_or_default(),
                expected: e.expected.unwrap_or(0),
                current: if expecting.len() == 1 {
                    err.last_sequence().unwrap_or(current)
                } else {
                    current
                },
            };
        }
    }
    err.into()
}

enum Claim {
    /// This event holds the key (the claim's sequence).
    Ours(u64),
    /// Another event holds it and is stored at this sequence.
    Stored(u64),
}

async fn claim(b: &NatsBackend, t: &Topic, key: &str, e: &Outgoing) -> Result<Claim, BackendError> {
    let subject = t.names.claim_subject(key);
    let window = b.dedup_window(t).await;
    let payload: Bytes = json!({
        "msg": e.msg_id, "source": e.source, "id": e.id,
        "at": codec::millis(SystemTime::now()),
    })
    .to_string()
    .into();
    let mut expect = 0;
    for _ in 0..4 {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expect.to_string().as_str(),
        );
        // Whole seconds, rounded up: a claim never expires before its window ends.
        let ttl = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        headers.insert("Nats-TTL", format!("{}s", ttl.max(1)).as_str());
        match b
            .js()
            .publish(subject.clone(), headers, payload.clone())
            .await
        {
            Ok(ack) => return Ok(Claim::Ours(ack.seq)),
            Err(err) if err.code() == Some(code::WRONG_LAST_SEQUENCE) => {
                let Some(current) = err.last_sequence() else {
                    return Err(err.into());
                };
                let Some(m) = b.js().get(&t.names.stream, current).await? else {
                    // Expired meanwhile: claim the empty subject.
                    expect = 0;
                    continue;
                };
                let j: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                let field = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("");
                if field("msg") == e.msg_id {
                    return Ok(Claim::Ours(current));
                }
                if let Some(seq) = index::find(b, t, field("source"), field("id")).await? {
                    return Ok(Claim::Stored(seq));
                }
                let age = SystemTime::now().duration_since(m.time).unwrap_or_default();
                if age < CLAIM_TIMEOUT {
                    return Err(BackendError::Storage {
                        message: "another publish with this idempotency key is in progress".into(),
                        retry_after: Some(CLAIM_TIMEOUT - age),
                    });
                }
                // Its publisher never stored the event: take the claim over.
                expect = current;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(BackendError::storage(
        "the idempotency key's claim kept changing",
    ))
}

/// Gives back claims of a batch that was not stored.
async fn release(b: &NatsBackend, t: &Topic, claims: &[u64]) {
    for seq in claims {
        let _ = b
            .js()
            .api(
                &format!("STREAM.MSG.DELETE.{}", t.names.stream),
                &json!({ "seq": seq, "no_erase": true }),
            )
            .await;
    }
}

/// Publishes each event on its own, all in flight together, in order.
pub(crate) async fn publish_each(
    b: &NatsBackend,
    t: &Topic,
    batch: Vec<PublishRequest>,
) -> Vec<Result<PublishOutcome, BackendError>> {
    let singles = batch.into_iter().map(|r| async move {
        if r.idempotency_key.is_none() && r.expected_sequence.is_none() {
            return publish_plain(b, t, r).await;
        }
        Box::pin(publish(b, t, vec![r])).await.and_then(|mut o| {
            o.pop()
                .ok_or_else(|| BackendError::storage("a publish of one event answered nothing"))
        })
    });
    futures_util::future::join_all(singles).await
}

/// One event with neither an idempotency key nor an expected sequence: one JetStream publish,
/// deduplicated by its `Nats-Msg-Id` alone (what [`publish`] does for it, without the state
/// of its other cases in every in-flight future).
async fn publish_plain(
    b: &NatsBackend,
    t: &Topic,
    r: PublishRequest,
) -> Result<PublishOutcome, BackendError> {
    let e = outgoing(t, r);
    let ack = b.js().publish(e.subject, e.headers, e.payload).await?;
    Ok(if ack.duplicate {
        PublishOutcome::Duplicate { seq: ack.seq }
    } else {
        PublishOutcome::Stored { seq: ack.seq }
    })
}
