//! Topics and reading: creating a topic, listing and describing topics, lookups by id,
//! correlation and causation (L3, L4), reading from a sequence (L5) and translating positions.

use std::time::{Duration, Instant};

use canon_backend::{BackendError, StartPosition, StoredEvent, TopicConfig, TopicInfo, codec};
use canon_envelope::CloudEvent;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::wake::{POLL, Wakers};
use crate::{Db, db_err, ms_i64, seq_i64, seq_u64};

/// The columns of an event, in the order [`stored`] reads them.
pub(crate) const EVENT_COLUMNS: &str =
    "e.seq, floor(extract(epoch from e.stored_at) * 1000)::int8, e.ordering_key, e.event";

/// An event row (`EVENT_COLUMNS` from index `at` on) as the port's value.
pub(crate) fn stored(row: &Row, at: usize) -> Result<StoredEvent, BackendError> {
    let seq: i64 = row.get(at);
    let json: &[u8] = row.get(at + 3);
    let event = CloudEvent::from_json(json)
        .map_err(|e| BackendError::storage(format!("event {seq} does not decode: {e}")))?;
    Ok(StoredEvent {
        seq: seq_u64(seq),
        published_at: codec::from_millis(u64::try_from(row.get::<_, i64>(at + 1)).unwrap_or(0)),
        ordering_key: row.get(at + 2),
        event,
    })
}

pub(crate) fn valid_name(kind: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(BackendError::InvalidConfig(format!(
            "{kind} names are 1 to 255 bytes without NUL, got {name:?}"
        )));
    }
    Ok(())
}

pub(crate) async fn create_topic(db: &Db, config: &TopicConfig) -> Result<(), BackendError> {
    valid_name("topic", &config.name)?;
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(&db.sql(
            "INSERT INTO {s}.topics (name, dedup_window_ms, max_age_ms, max_bytes)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET dedup_window_ms = excluded.dedup_window_ms,
                 max_age_ms = excluded.max_age_ms, max_bytes = excluded.max_bytes",
        ))
        .await
        .map_err(db_err)?;
    let max_bytes = config
        .max_bytes
        .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    client
        .execute(
            &stmt,
            &[
                &config.name,
                &ms_i64(config.dedup_window),
                &config.max_age.map(ms_i64),
                &max_bytes,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Fails with `UnknownTopic` unless the topic exists.
pub(crate) async fn require_topic(
    db: &Db,
    client: &impl GenericClient,
    topic: &str,
) -> Result<(), BackendError> {
    let found = client
        .query_opt(
            &db.sql("SELECT 1 FROM {s}.topics WHERE name = $1"),
            &[&topic],
        )
        .await
        .map_err(db_err)?;
    match found {
        Some(_) => Ok(()),
        None => Err(BackendError::UnknownTopic(topic.to_owned())),
    }
}

pub(crate) async fn topics(db: &Db) -> Result<Vec<String>, BackendError> {
    let client = db.client().await?;
    let rows = client
        .query(&db.sql("SELECT name FROM {s}.topics ORDER BY name"), &[])
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) async fn topic_info(db: &Db, topic: &str) -> Result<TopicInfo, BackendError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &db.sql(
                "SELECT t.dedup_window_ms, t.max_age_ms, t.max_bytes, t.last_seq, t.bytes,
                        (SELECT min(seq) FROM {s}.events e WHERE e.topic = t.name)
                 FROM {s}.topics t WHERE t.name = $1",
            ),
            &[&topic],
        )
        .await
        .map_err(db_err)?
        .ok_or_else(|| BackendError::UnknownTopic(topic.to_owned()))?;
    let ms = |v: Option<i64>| v.map(|m| Duration::from_millis(u64::try_from(m).unwrap_or(0)));
    let last = seq_u64(row.get(3));
    Ok(TopicInfo {
        config: TopicConfig {
            name: topic.to_owned(),
            dedup_window: ms(Some(row.get(0))).unwrap_or_default(),
            max_age: ms(row.get(1)),
            max_bytes: row
                .get::<_, Option<i64>>(2)
                .map(|b| u64::try_from(b).unwrap_or(0)),
        },
        first: row.get::<_, Option<i64>>(5).map_or(last + 1, seq_u64),
        last,
        bytes: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
    })
}

/// The indexed columns events are looked up by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Column {
    Id,
    Correlation,
    Causation,
}

pub(crate) async fn by_column(
    db: &Db,
    topic: &str,
    column: Column,
    value: &str,
) -> Result<Vec<StoredEvent>, BackendError> {
    let client = db.client().await?;
    require_topic(db, &client, topic).await?;
    let name = match column {
        Column::Id => "id",
        Column::Correlation => "correlation_id",
        Column::Causation => "causation_id",
    };
    let stmt = client
        .prepare_cached(&db.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM {{s}}.events e
             WHERE e.topic = $1 AND e.{name} = $2 ORDER BY e.seq"
        )))
        .await
        .map_err(db_err)?;
    let rows = client
        .query(&stmt, &[&topic, &value])
        .await
        .map_err(db_err)?;
    rows.iter().map(|r| stored(r, 0)).collect()
}

pub(crate) async fn read(
    db: &Db,
    wakers: &Wakers,
    topic: &str,
    from: u64,
    max: usize,
    wait: Duration,
) -> Result<Vec<StoredEvent>, BackendError> {
    let deadline = Instant::now() + wait;
    let notify = wakers.get(topic);
    let client = db.client().await?;
    require_topic(db, &client, topic).await?;
    let stmt = client
        .prepare_cached(&db.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM {{s}}.events e
             WHERE e.topic = $1 AND e.seq >= $2 ORDER BY e.seq LIMIT $3"
        )))
        .await
        .map_err(db_err)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rows = client
            .query(&stmt, &[&topic, &seq_i64(from.max(1)), &limit])
            .await
            .map_err(db_err)?;
        let now = Instant::now();
        if !rows.is_empty() || max == 0 || now >= deadline {
            return rows.iter().map(|r| stored(r, 0)).collect();
        }
        let until = deadline.min(now + POLL);
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// The first sequence at or after a position (L5).
pub(crate) async fn locate(
    db: &Db,
    topic: &str,
    position: &StartPosition,
) -> Result<u64, BackendError> {
    let client = db.client().await?;
    locate_with(db, &client, topic, position).await
}

pub(crate) async fn locate_with(
    db: &Db,
    client: &impl GenericClient,
    topic: &str,
    position: &StartPosition,
) -> Result<u64, BackendError> {
    let last: i64 = client
        .query_opt(
            &db.sql("SELECT last_seq FROM {s}.topics WHERE name = $1"),
            &[&topic],
        )
        .await
        .map_err(db_err)?
        .ok_or_else(|| BackendError::UnknownTopic(topic.to_owned()))?
        .get(0);
    let after = seq_u64(last) + 1;
    let first: Option<i64> = match position {
        StartPosition::Latest => return Ok(after),
        StartPosition::Earliest => client
            .query_one(
                &db.sql("SELECT min(seq) FROM {s}.events WHERE topic = $1"),
                &[&topic],
            )
            .await
            .map_err(db_err)?
            .get(0),
        StartPosition::Time(t) => client
            .query_one(
                &db.sql(
                    "SELECT min(seq) FROM {s}.events WHERE topic = $1
                     AND stored_at >= to_timestamp($2::float8 / 1000)",
                ),
                &[&topic, &(codec::millis(*t) as f64)],
            )
            .await
            .map_err(db_err)?
            .get(0),
        StartPosition::EventId(id) => {
            let found: Option<i64> = client
                .query_one(
                    &db.sql("SELECT min(seq) FROM {s}.events WHERE topic = $1 AND id = $2"),
                    &[&topic, id],
                )
                .await
                .map_err(db_err)?
                .get(0);
            return found.map(seq_u64).ok_or_else(|| {
                BackendError::InvalidConfig(format!("no retained event has id {id}"))
            });
        }
    };
    Ok(first.map_or(after, seq_u64))
}
