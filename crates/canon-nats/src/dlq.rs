//! Dead letters: a stream per topic (`CANONDLQ_<topic>`), one subject per group, fed on the
//! last attempt. Each entry is self-contained (the event, the reason, the last error, every
//! failed attempt), so the topic's retention never empties a DLQ (R5).
//!
//! A redrive publishes a copy of the event on the group's redrive subject (only that group's
//! consumer reads it), carrying the original sequence, then deletes the entry. The copy's
//! `Nats-Msg-Id` is the entry's, so a redrive stopped between the two steps and run again
//! neither loses the event nor delivers it twice (R7).

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use canon_backend::{
    AttemptRecord, BackendError, DeadLetter, DeadLetterFilter, DeadLetterReason, RedriveOptions,
    RedriveReport, StoredEvent, codec,
};
use canon_envelope::CloudEvent;
use serde_json::{Value, json};

use crate::names::enc;
use crate::publish::{KEY_HEADER, SEQ_HEADER, encode_key};
use crate::{NatsBackend, Topic};

/// Writes a DLQ entry for the delivered message at stream sequence `sseq`.
#[allow(clippy::too_many_arguments, reason = "the entry's parts")]
pub(crate) async fn write(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    sseq: u64,
    event: &StoredEvent,
    reason: DeadLetterReason,
    error: Option<String>,
    history: &[AttemptRecord],
) -> Result<(), BackendError> {
    let entry = json!({
        "seq": event.seq,
        "published_at": codec::millis(event.published_at),
        "key": event.ordering_key,
        "event": String::from_utf8_lossy(&event.event.to_json()),
        "reason": reason.as_str(),
        "error": error,
        "attempts": history.len(),
        "history": codec::history_json(history),
        "at": codec::millis(SystemTime::now()),
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{}.{sseq}", enc(group)).as_str());
    b.js()
        .publish(
            t.names.dlq_subject(group),
            headers,
            entry.to_string().into(),
        )
        .await?;
    Ok(())
}

fn decode(payload: &[u8]) -> Option<DeadLetter> {
    let j: Value = serde_json::from_slice(payload).ok()?;
    let event = CloudEvent::from_json(j.get("event")?.as_str()?.as_bytes()).ok()?;
    Some(DeadLetter {
        event: StoredEvent {
            seq: j.get("seq")?.as_u64()?,
            published_at: codec::from_millis(j.get("published_at")?.as_u64()?),
            ordering_key: j.get("key").and_then(Value::as_str).map(str::to_owned),
            event,
        },
        reason: DeadLetterReason::parse(j.get("reason")?.as_str()?)?,
        last_error: j.get("error").and_then(Value::as_str).map(str::to_owned),
        attempts: u32::try_from(j.get("attempts")?.as_u64()?).ok()?,
        history: codec::history_from_json(j.get("history")?)?,
        at: codec::from_millis(j.get("at")?.as_u64()?),
    })
}

/// The group's entries matching `filter`, oldest first, with their DLQ stream sequences.
pub(crate) async fn list(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    filter: &DeadLetterFilter,
) -> Result<Vec<(u64, DeadLetter)>, BackendError> {
    /// Entries read per request: a limited listing stops reading at its limit.
    const PAGE: usize = 1000;
    let subject = t.names.dlq_subject(group);
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let page = b.js().read(&t.names.dlq, next, &subject, PAGE).await?;
        let Some(last) = page.last().map(|m| m.seq) else {
            return Ok(out);
        };
        let full = page.len() == PAGE;
        for m in page {
            let Some(d) = decode(&m.payload) else {
                tracing::warn!(seq = m.seq, "a DLQ entry does not decode; skipped");
                continue;
            };
            if filter.matches(&d) {
                out.push((m.seq, d));
                if filter.limit > 0 && out.len() >= filter.limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            return Ok(out);
        }
        next = last + 1;
    }
}

pub(crate) async fn count(b: &NatsBackend, t: &Topic, group: &str) -> Result<u64, BackendError> {
    let subject = t.names.dlq_subject(group);
    let info = b
        .js()
        .api(
            &format!("STREAM.INFO.{}", t.names.dlq),
            &json!({ "subjects_filter": subject }),
        )
        .await?;
    Ok(info
        .pointer("/state/subjects")
        .and_then(|s| s.get(&subject))
        .and_then(Value::as_u64)
        .unwrap_or(0))
}

pub(crate) async fn redrive(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    filter: &DeadLetterFilter,
    options: RedriveOptions,
) -> Result<RedriveReport, BackendError> {
    let entries = list(b, t, group, filter).await?;
    let mut report = RedriveReport {
        matched: entries
            .iter()
            .map(|(_, d)| d.event.event.id.clone())
            .collect(),
        redriven: 0,
    };
    if options.dry_run {
        return Ok(report);
    }
    let pause = (options.per_second > 0).then(|| Duration::from_secs(1) / options.per_second);
    for (dlq_seq, d) in entries {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("redrive.{}.{dlq_seq}", enc(group)).as_str(),
        );
        headers.insert(SEQ_HEADER, d.event.seq.to_string().as_str());
        if let Some(k) = &d.event.ordering_key {
            headers.insert(KEY_HEADER, encode_key(k).as_str());
        }
        b.js()
            .publish(
                t.names
                    .redrive_subject(group, d.event.ordering_key.as_deref()),
                headers,
                d.event.event.to_json().into(),
            )
            .await?;
        delete(b, t, dlq_seq).await?;
        report.redriven += 1;
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(report)
}

async fn delete(b: &NatsBackend, t: &Topic, dlq_seq: u64) -> Result<(), BackendError> {
    b.js()
        .api(
            &format!("STREAM.MSG.DELETE.{}", t.names.dlq),
            &json!({ "seq": dlq_seq, "no_erase": true }),
        )
        .await?;
    Ok(())
}

pub(crate) async fn purge(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    filter: &DeadLetterFilter,
) -> Result<usize, BackendError> {
    let entries = list(b, t, group, filter).await?;
    for (seq, _) in &entries {
        delete(b, t, *seq).await?;
    }
    Ok(entries.len())
}

pub(crate) async fn purge_group(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
) -> Result<(), BackendError> {
    b.js()
        .api(
            &format!("STREAM.PURGE.{}", t.names.dlq),
            &json!({ "filter": t.names.dlq_subject(group) }),
        )
        .await?;
    Ok(())
}
