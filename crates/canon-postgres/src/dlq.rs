//! Dead-letter queues: listing with filters (R6), redrive (R7) and purge (R8).
//!
//! A redrive moves one entry per transaction: the entry's deletion and the event's return to
//! the group's work commit together, so a redrive stopped at any point leaves every event in
//! exactly one place, and running it again moves only what is left.

use std::time::Duration;

use canon_backend::{
    BackendError, DeadLetter, DeadLetterFilter, DeadLetterReason, RedriveOptions, RedriveReport,
    StoredEvent, codec,
};
use canon_envelope::CloudEvent;

use crate::wake::Wakers;
use crate::{Db, db_err, groups, seq_i64, seq_u64};

fn ms_to_time(ms: i64) -> std::time::SystemTime {
    codec::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(crate) async fn list(
    db: &Db,
    topic: &str,
    group: &str,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    groups::is_ordered(db, &tx, topic, group).await?;
    let stmt = tx
        .prepare_cached(&db.sql(
            "SELECT seq, floor(extract(epoch from stored_at) * 1000)::int8, ordering_key, event,
                    reason, last_error, attempts, history::text,
                    floor(extract(epoch from at) * 1000)::int8
             FROM {s}.dead_letters
             WHERE topic = $1 AND grp = $2
               AND (cardinality($3::text[]) = 0 OR id = ANY($3))
               AND (cardinality($4::text[]) = 0 OR type = ANY($4))
               AND ($5::text IS NULL OR reason = $5)
               AND ($6::float8 IS NULL OR at >= to_timestamp($6 / 1000))
               AND ($7::float8 IS NULL OR at < to_timestamp($7 / 1000))
             ORDER BY seq
             LIMIT $8",
        ))
        .await
        .map_err(db_err)?;
    let time = |t: Option<std::time::SystemTime>| t.map(|t| codec::millis(t) as f64);
    let limit = (filter.limit > 0).then(|| i64::try_from(filter.limit).unwrap_or(i64::MAX));
    let rows = tx
        .query(
            &stmt,
            &[
                &topic,
                &group,
                &filter.ids,
                &filter.types,
                &filter.reason.map(DeadLetterReason::as_str),
                &time(filter.since),
                &time(filter.until),
                &limit,
            ],
        )
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let seq: i64 = r.get(0);
        let event = CloudEvent::from_json(r.get::<_, &[u8]>(3)).map_err(|e| {
            BackendError::storage(format!("dead letter {seq} does not decode: {e}"))
        })?;
        let reason = DeadLetterReason::parse(r.get(4))
            .ok_or_else(|| BackendError::storage(format!("dead letter {seq}: unknown reason")))?;
        let history = serde_json::from_str(r.get(7))
            .ok()
            .and_then(|j| codec::history_from_json(&j))
            .unwrap_or_default();
        let entry = DeadLetter {
            event: StoredEvent {
                seq: seq_u64(seq),
                published_at: ms_to_time(r.get(1)),
                ordering_key: r.get(2),
                event,
            },
            reason,
            last_error: r.get(5),
            attempts: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
            history,
            at: ms_to_time(r.get(8)),
        };
        if filter.matches(&entry) {
            out.push(entry);
        }
    }
    Ok(out)
}

pub(crate) async fn redrive(
    db: &Db,
    wakers: &Wakers,
    topic: &str,
    group: &str,
    filter: &DeadLetterFilter,
    options: RedriveOptions,
) -> Result<RedriveReport, BackendError> {
    let entries = list(db, topic, group, filter).await?;
    let mut report = RedriveReport {
        matched: entries.iter().map(|d| d.event.event.id.clone()).collect(),
        redriven: 0,
    };
    if options.dry_run {
        return Ok(report);
    }
    let pause = (options.per_second > 0).then(|| Duration::from_secs(1) / options.per_second);
    for entry in entries {
        if move_back(db, topic, group, seq_i64(entry.event.seq)).await? {
            report.redriven += 1;
            wakers.wake(topic);
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(report)
}

/// Moves one entry back into the group's work with a fresh attempt count, behind its key's
/// current event in an ordered group. Returns whether the entry was still there.
async fn move_back(db: &Db, topic: &str, group: &str, seq: i64) -> Result<bool, BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let ordered = groups::is_ordered(db, &tx, topic, group).await?;
    let Some(row) = tx
        .query_opt(
            &db.sql(
                "DELETE FROM {s}.dead_letters WHERE topic = $1 AND grp = $2 AND seq = $3
                 RETURNING ordering_key",
            ),
            &[&topic, &group, &seq],
        )
        .await
        .map_err(db_err)?
    else {
        return Ok(false);
    };
    let key: Option<String> = row.get(0);
    let busy = match (&key, ordered) {
        (Some(k), true) => tx
            .query_opt(
                &db.sql(
                    "SELECT 1 FROM {s}.deliveries
                     WHERE topic = $1 AND grp = $2 AND ordering_key = $3 AND state <> 2
                     LIMIT 1",
                ),
                &[&topic, &group, k],
            )
            .await
            .map_err(db_err)?
            .is_some(),
        _ => false,
    };
    tx.execute(
        &db.sql(
            "INSERT INTO {s}.deliveries (topic, grp, seq, state, due_at, ordering_key)
             VALUES ($1, $2, $3, $4, now(), $5)
             ON CONFLICT (topic, grp, seq) DO NOTHING",
        ),
        &[&topic, &group, &seq, &if busy { 2i16 } else { 0i16 }, &key],
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(true)
}

pub(crate) async fn purge(
    db: &Db,
    topic: &str,
    group: &str,
    filter: &DeadLetterFilter,
) -> Result<usize, BackendError> {
    let seqs: Vec<i64> = list(db, topic, group, filter)
        .await?
        .iter()
        .map(|d| seq_i64(d.event.seq))
        .collect();
    if seqs.is_empty() {
        return Ok(0);
    }
    let client = db.client().await?;
    let n = client
        .execute(
            &db.sql("DELETE FROM {s}.dead_letters WHERE topic = $1 AND grp = $2 AND seq = ANY($3)"),
            &[&topic, &group, &seqs],
        )
        .await
        .map_err(db_err)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}
