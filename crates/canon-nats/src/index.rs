//! Reading a topic, and finding events by id, correlation id and causation id (L3, L4, L5).
//!
//! JetStream finds messages by sequence, time and subject, not by header, so Canon keeps an
//! index stream per topic (`CANONIX_<topic>`): for each event one small message per value it
//! can be found by, on a subject named by a 12-bit bucket of the value's hash, holding the
//! event's sequence and the whole hash. A lookup reads one bucket subject and then the events
//! it names. The index is brought up to date when a lookup needs it (the events after the
//! sequence it covers are indexed first), so publishing pays nothing for it; catching up runs
//! once at a time per process, and entries written twice by two processes are deduplicated by
//! their `Nats-Msg-Id`.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use canon_backend::{BackendError, StartPosition, StoredEvent, TopicConfig, TopicInfo};
use canon_envelope::CloudEvent;
use serde_json::{Value, json};

use crate::js::Stored;
use crate::publish::{KEY_HEADER, decode_key};
use crate::{NatsBackend, Topic, nats_err, state};

/// What events are looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Id,
    Correlation,
    Causation,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Id => 'i',
            Kind::Correlation => 'c',
            Kind::Causation => 'k',
        }
    }

    fn of(self, e: &CloudEvent) -> Option<&str> {
        match self {
            Kind::Id => Some(&e.id),
            Kind::Correlation => e.correlation_id(),
            Kind::Causation => e.causation_id(),
        }
    }
}

/// A stream message holding an event, as the port's value (`None` if it holds none).
pub(crate) fn event_of(m: &Stored) -> Option<StoredEvent> {
    let event = CloudEvent::from_json(&m.payload).ok()?;
    Some(StoredEvent {
        seq: m.seq,
        published_at: m.time,
        ordering_key: m.headers.get(KEY_HEADER).map(|v| decode_key(v.as_str())),
        event,
    })
}

/// The stream's `STREAM.INFO`: its configuration and state.
pub(crate) async fn stream_state(b: &NatsBackend, t: &Topic) -> Result<Value, BackendError> {
    Ok(b.js()
        .api(&format!("STREAM.INFO.{}", t.names.stream), &json!({}))
        .await?)
}

fn last_seq(info: &Value) -> u64 {
    info.pointer("/state/last_seq")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Indexes every event after the sequence the index covers.
async fn catch_up(b: &NatsBackend, t: &Topic) -> Result<(), BackendError> {
    let _one = t.indexing.lock().await;
    let last = last_seq(&stream_state(b, t).await?);
    let mut floor = state::index_floor(t).await?;
    while floor < last {
        let events = b
            .js()
            .read(&t.names.stream, floor + 1, &t.names.events(), 2000)
            .await?;
        let Some(end) = events.last().map(|m| m.seq) else {
            break;
        };
        let mut acks = Vec::new();
        for m in &events {
            let Ok(e) = CloudEvent::from_json(&m.payload) else {
                continue;
            };
            for kind in [Kind::Id, Kind::Correlation, Kind::Causation] {
                let Some(value) = kind.of(&e) else { continue };
                let (subject, hash) = t.names.index_subject(kind.letter(), value);
                let mut headers = HeaderMap::new();
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}.{}", m.seq, kind.letter()).as_str(),
                );
                acks.push(
                    b.js()
                        .ctx
                        .publish_with_headers(subject, headers, format!("{} {hash}", m.seq).into())
                        .await
                        .map_err(nats_err)?,
                );
            }
        }
        for a in acks {
            a.await.map_err(nats_err)?;
        }
        floor = end;
        state::set_index_floor(t, floor).await?;
    }
    Ok(())
}

/// The retained events whose `kind` is `value`, in sequence order.
pub(crate) async fn lookup(
    b: &NatsBackend,
    t: &Topic,
    kind: Kind,
    value: &str,
) -> Result<Vec<StoredEvent>, BackendError> {
    catch_up(b, t).await?;
    let (subject, hash) = t.names.index_subject(kind.letter(), value);
    let mut seqs: Vec<u64> = b
        .js()
        .read(&t.names.index, 1, &subject, usize::MAX)
        .await?
        .iter()
        .filter_map(|m| {
            let text = std::str::from_utf8(&m.payload).ok()?;
            let (seq, h) = text.split_once(' ')?;
            (h == hash).then(|| seq.parse().ok()).flatten()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out = Vec::new();
    for seq in seqs {
        // Gone (retention) or another value with the same hash: skipped.
        if let Some(e) = b
            .js()
            .get(&t.names.stream, seq)
            .await?
            .as_ref()
            .and_then(event_of)
            && kind.of(&e.event) == Some(value)
        {
            out.push(e);
        }
    }
    Ok(out)
}

/// The sequence of the retained event with this (`source`, `id`).
pub(crate) async fn find(
    b: &NatsBackend,
    t: &Topic,
    source: &str,
    id: &str,
) -> Result<Option<u64>, BackendError> {
    Ok(lookup(b, t, Kind::Id, id)
        .await?
        .into_iter()
        .find(|e| e.event.source == source)
        .map(|e| e.seq))
}

/// Events from sequence `from` on, waiting up to `wait` for the first (L5).
pub(crate) async fn read(
    b: &NatsBackend,
    t: &Topic,
    from: u64,
    max: usize,
    wait: Duration,
) -> Result<Vec<StoredEvent>, BackendError> {
    let deadline = Instant::now() + wait;
    loop {
        let got: Vec<StoredEvent> = b
            .js()
            .read(&t.names.stream, from, &t.names.events(), max)
            .await?
            .iter()
            .filter_map(event_of)
            .collect();
        if !got.is_empty() || max == 0 || Instant::now() >= deadline {
            return Ok(got);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(25))).await;
    }
}

/// The first sequence at or after a position (L5, L1).
pub(crate) async fn locate(
    b: &NatsBackend,
    t: &Topic,
    position: &StartPosition,
) -> Result<u64, BackendError> {
    let after = last_seq(&stream_state(b, t).await?) + 1;
    let found = match position {
        StartPosition::Latest => return Ok(after),
        StartPosition::Earliest => b
            .js()
            .read(&t.names.stream, 1, &t.names.events(), 1)
            .await?
            .first()
            .map(|m| m.seq),
        StartPosition::Time(time) => b
            .js()
            .first_since(&t.names.stream, *time, &t.names.events())
            .await?
            .map(|m| m.seq),
        StartPosition::EventId(id) => {
            return lookup(b, t, Kind::Id, id)
                .await?
                .first()
                .map(|e| e.seq)
                .ok_or_else(|| {
                    BackendError::InvalidConfig(format!("no retained event has id {id}"))
                });
        }
    };
    Ok(found.unwrap_or(after))
}

pub(crate) async fn topic_info(b: &NatsBackend, t: &Topic) -> Result<TopicInfo, BackendError> {
    let asked = std::time::Instant::now();
    let info = stream_state(b, t).await?;
    let n = |p: &str| info.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let last = last_seq(&info);
    let messages = n("/state/messages");
    let age = n("/config/max_age");
    let bytes = n("/config/max_bytes");
    Ok(TopicInfo {
        config: TopicConfig {
            name: t.names.topic.clone(),
            dedup_window: t.window_read(asked, crate::stream_window(&info)),
            max_age: (age > 0).then(|| Duration::from_nanos(u64::try_from(age).unwrap_or(0))),
            max_bytes: (bytes > 0).then(|| u64::try_from(bytes).unwrap_or(0)),
        },
        first: if messages == 0 {
            last + 1
        } else {
            u64::try_from(n("/state/first_seq")).unwrap_or(0)
        },
        last,
        bytes: u64::try_from(n("/state/bytes")).unwrap_or(0),
    })
}
