//! Consumer groups: creating, pulling with leases, settling, resetting, describing.
//!
//! A group's row holds its cursor: every sequence at or below it has been taken into the
//! group's work, and is done unless it has a row in `deliveries`. A pull locks the group's row
//! (pulls of one group are serialised, which keeps the cursor and per-key holds consistent
//! across processes), then in one transaction: fails expired leases (R2, R3), leases due
//! retries and scheduled events, and takes new events past the cursor. Rows another
//! transaction is settling are skipped (`FOR UPDATE SKIP LOCKED`), never waited for.
//!
//! Settling needs no group lock: an ack, nack or dead-letter works on its own row, matched by
//! the lease's handle and expiry, so a lease that expired or was leased again is `lease-lost`.
//! Acks are gathered per round (`AckQueue`), like publishes: one statement per group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use canon_backend::{
    AttemptRecord, BackendError, DeadLetterReason, Delivery, GroupConfig, GroupInfo, LeaseToken,
    StartPosition, StoredEvent, codec,
};
use tokio::sync::{mpsc, oneshot};

use crate::read::{self, EVENT_COLUMNS};
use crate::wake::{POLL, Wakers};
use crate::{Db, db_err, ms_i64, seq_i64, seq_u64};

/// `deliveries.state`: waiting until `due_at`.
const WAITING: i16 = 0;
/// Leased until `due_at`.
const LEASED: i16 = 1;
/// Held behind an earlier event of its ordering key.
const HELD: i16 = 2;

type Tx<'a> = deadpool_postgres::Transaction<'a>;

fn config_of(text: &str) -> Result<GroupConfig, BackendError> {
    serde_json::from_str(text)
        .ok()
        .and_then(|j| codec::group_config_from_json(&j))
        .ok_or_else(|| BackendError::storage("a group's configuration is corrupt"))
}

fn history_of(text: &str) -> Vec<AttemptRecord> {
    serde_json::from_str(text)
        .ok()
        .and_then(|j| codec::history_from_json(&j))
        .unwrap_or_default()
}

fn history_text(h: &[AttemptRecord]) -> String {
    codec::history_json(h).to_string()
}

fn unknown_group(topic: &str, group: &str) -> BackendError {
    BackendError::UnknownGroup {
        topic: topic.to_owned(),
        group: group.to_owned(),
    }
}

pub(crate) async fn create(
    db: &Db,
    topic: &str,
    group: &str,
    config: &GroupConfig,
) -> Result<(), BackendError> {
    read::valid_name("group", group)?;
    if config.max_in_flight == 0 || config.retry.max_attempts == 0 || config.lease.is_zero() {
        return Err(BackendError::InvalidConfig(
            "max_in_flight, max_attempts and lease must be positive".into(),
        ));
    }
    let client = db.client().await?;
    read::require_topic(db, &client, topic).await?;
    client
        .execute(
            &db.sql(
                "INSERT INTO {s}.groups (topic, name, config) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (topic, name) DO UPDATE SET config = excluded.config",
            ),
            &[
                &topic,
                &group,
                &codec::group_config_json(config).to_string(),
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Leases up to `max` events, waiting up to `wait` for the first (C9).
pub(crate) async fn pull(
    db: &Db,
    wakers: &Wakers,
    topic: &str,
    group: &str,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BackendError> {
    let deadline = Instant::now() + wait;
    let notify = wakers.get(topic);
    loop {
        // Registered before looking, so a publish in between is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (got, next_due, changed) = pull_once(db, topic, group, consumer, max).await?;
        if changed {
            // Dead letters or freed keys may unblock other waiters of this topic.
            wakers.wake(topic);
        }
        let now = Instant::now();
        if !got.is_empty() || now >= deadline {
            return Ok(got);
        }
        let mut until = deadline.min(now + POLL);
        if let Some(d) = next_due {
            until = until.min(now + d);
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// A row to write back into `deliveries` (inserted, or updated in place).
struct RowWrite {
    seq: i64,
    state: i16,
    /// `due_at` as milliseconds from now.
    due_in_ms: i64,
    handle: i64,
    consumer: String,
    key: Option<String>,
    history: Vec<AttemptRecord>,
}

/// A dead letter to write, the event copied from the log.
struct DeadWrite {
    seq: i64,
    reason: DeadLetterReason,
    error: Option<String>,
    history: Vec<AttemptRecord>,
}

/// What one pull decides, written before it answers.
#[derive(Default)]
struct Plan {
    rows: Vec<RowWrite>,
    finished: Vec<i64>,
    dead: Vec<DeadWrite>,
    /// Ordering keys whose event is done: the next held event of each may go.
    freed: Vec<String>,
    out: Vec<Delivery>,
}

impl Plan {
    /// Leases `event`, or lets it wait (T1), or dead-letters it (T2). Returns whether the
    /// event occupies its key now (leased or waiting).
    #[allow(clippy::too_many_arguments, reason = "the lease's parts")]
    fn admit(
        &mut self,
        topic: &str,
        group: &str,
        config: &GroupConfig,
        consumer: &str,
        event: StoredEvent,
        history: Vec<AttemptRecord>,
        existed: bool,
    ) -> bool {
        let seq = seq_i64(event.seq);
        let wall = SystemTime::now();
        if event
            .event
            .expiration_time()
            .is_some_and(|t| SystemTime::from(t) <= wall)
        {
            self.dead.push(DeadWrite {
                seq,
                reason: DeadLetterReason::Expired,
                error: Some("expired before delivery".into()),
                history,
            });
            if existed {
                self.finished.push(seq);
            }
            if let Some(k) = event.ordering_key {
                self.freed.push(k);
            }
            return false;
        }
        if let Some(at) = event.event.not_before_time().map(SystemTime::from)
            && let Ok(wait) = at.duration_since(wall)
            && !wait.is_zero()
        {
            self.rows.push(RowWrite {
                seq,
                state: WAITING,
                due_in_ms: ms_i64(wait).saturating_add(1),
                handle: 0,
                consumer: String::new(),
                key: event.ordering_key,
                history,
            });
            return true;
        }
        let handle = i64::from(fastrand::u32(1..)) << 31 | i64::from(fastrand::u32(..1 << 31));
        let attempt = u32::try_from(history.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.rows.push(RowWrite {
            seq,
            state: LEASED,
            due_in_ms: ms_i64(config.lease),
            handle,
            consumer: consumer.to_owned(),
            key: event.ordering_key.clone(),
            history,
        });
        self.out.push(Delivery {
            token: LeaseToken {
                topic: topic.to_owned(),
                group: group.to_owned(),
                seq: event.seq,
                handle: u64::try_from(handle).unwrap_or(0),
            },
            event,
            attempt,
            leased_until: wall + config.lease,
        });
        true
    }
}

/// One look: (deliveries, time until something is due, whether anything changed for others).
async fn pull_once(
    db: &Db,
    topic: &str,
    group: &str,
    consumer: &str,
    max: usize,
) -> Result<(Vec<Delivery>, Option<Duration>, bool), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let lock = tx
        .prepare_cached(&db.sql(
            "SELECT config::text, cursor FROM {s}.groups WHERE topic = $1 AND name = $2
             FOR UPDATE",
        ))
        .await
        .map_err(db_err)?;
    let expired = tx
        .prepare_cached(&db.sql(
            "SELECT seq, consumer, history::text, ordering_key FROM {s}.deliveries
             WHERE topic = $1 AND grp = $2 AND state = 1 AND due_at <= now()
             FOR UPDATE SKIP LOCKED",
        ))
        .await
        .map_err(db_err)?;
    let inflight = tx
        .prepare_cached(&db.sql(
            "SELECT count(*) FROM {s}.deliveries
             WHERE topic = $1 AND grp = $2 AND state = 1 AND due_at > now()",
        ))
        .await
        .map_err(db_err)?;
    // The group's row locked first; the expired leases and the in-flight count behind it, in
    // the same round trip (the server runs them in this order).
    let (row, expired_rows, inflight) = futures_util::future::try_join3(
        tx.query_opt(&lock, &[&topic, &group]),
        tx.query(&expired, &[&topic, &group]),
        tx.query_one(&inflight, &[&topic, &group]),
    )
    .await
    .map_err(db_err)?;
    let inflight: i64 = inflight.get(0);
    let Some(row) = row else {
        read::require_topic(db, &tx, topic).await?;
        return Err(unknown_group(topic, group));
    };
    let config = config_of(row.get(0))?;
    let mut cursor: i64 = row.get(1);
    let mut plan = Plan::default();

    // Expired leases are failed attempts (C3): due again at once, or dead-lettered after the
    // last one (R2).
    for r in expired_rows {
        let seq: i64 = r.get(0);
        let mut history = history_of(r.get(2));
        history.push(AttemptRecord {
            at: SystemTime::now(),
            consumer: r.get(1),
            outcome: "lease-expired".into(),
            error: None,
        });
        let key: Option<String> = r.get(3);
        if config
            .retry
            .is_last(u32::try_from(history.len()).unwrap_or(u32::MAX))
        {
            plan.dead.push(DeadWrite {
                seq,
                reason: DeadLetterReason::MaxAttempts,
                error: Some("lease-expired".into()),
                history,
            });
            plan.finished.push(seq);
            plan.freed.extend(key);
        } else {
            plan.rows.push(RowWrite {
                seq,
                state: WAITING,
                due_in_ms: 0,
                handle: 0,
                consumer: String::new(),
                key,
                history,
            });
        }
    }
    let changed_by_expiry = !plan.dead.is_empty();

    let room = config
        .max_in_flight
        .saturating_sub(usize::try_from(inflight).unwrap_or(usize::MAX));
    let limit = max.min(room);

    // Due rows (retries, scheduled events, redriven ones, freed keys), oldest first, and the
    // first new events past the cursor, in one round trip. Rows just expired above wait for
    // the next pull: they are written below.
    let due = tx
        .prepare_cached(&db.sql(&format!(
            "SELECT d.seq, d.history::text, d.ordering_key, e.seq IS NOT NULL, {EVENT_COLUMNS}
             FROM {{s}}.deliveries d
             LEFT JOIN {{s}}.events e ON e.topic = d.topic AND e.seq = d.seq
             WHERE d.topic = $1 AND d.grp = $2 AND d.state = 0 AND d.due_at <= now()
             ORDER BY d.seq LIMIT $3
             FOR UPDATE OF d SKIP LOCKED"
        )))
        .await
        .map_err(db_err)?;
    let new = tx
        .prepare_cached(&db.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM {{s}}.events e
             WHERE e.topic = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
        )))
        .await
        .map_err(db_err)?;
    let mut first = None;
    if limit > 0 {
        let chunk = i64::try_from(limit.max(64)).unwrap_or(64);
        let (due_rows, new_rows) = futures_util::future::try_join(
            tx.query(
                &due,
                &[&topic, &group, &i64::try_from(limit).unwrap_or(i64::MAX)],
            ),
            tx.query(&new, &[&topic, &cursor, &chunk]),
        )
        .await
        .map_err(db_err)?;
        first = Some((new_rows, chunk));
        for r in due_rows {
            let seq: i64 = r.get(0);
            let history = history_of(r.get(1));
            if !r.get::<_, bool>(3) {
                // Gone from the log (retention): nothing to deliver.
                plan.finished.push(seq);
                plan.freed.extend(r.get::<_, Option<String>>(2));
                continue;
            }
            let event = read::stored(&r, 4)?;
            plan.admit(topic, group, &config, consumer, event, history, true);
        }
    }

    // New events past the cursor. In an ordered group an event whose key is busy is held.
    let busy_stmt = tx
        .prepare_cached(&db.sql(
            "SELECT DISTINCT ordering_key FROM {s}.deliveries
             WHERE topic = $1 AND grp = $2 AND ordering_key = ANY($3)",
        ))
        .await
        .map_err(db_err)?;
    let mut busy: HashSet<String> = HashSet::new();
    while plan.out.len() < limit {
        let (rows, chunk) = match first.take() {
            Some(looked) => looked,
            None => {
                let chunk = i64::try_from((limit - plan.out.len()).max(64)).unwrap_or(64);
                let rows = tx
                    .query(&new, &[&topic, &cursor, &chunk])
                    .await
                    .map_err(db_err)?;
                (rows, chunk)
            }
        };
        if rows.is_empty() {
            break;
        }
        let events: Vec<StoredEvent> = rows
            .iter()
            .map(|r| read::stored(r, 0))
            .collect::<Result<_, _>>()?;
        if config.ordered {
            let keys: Vec<&str> = events
                .iter()
                .filter_map(|e| e.ordering_key.as_deref())
                .filter(|k| !busy.contains(*k))
                .collect();
            if !keys.is_empty() {
                for r in tx
                    .query(&busy_stmt, &[&topic, &group, &keys])
                    .await
                    .map_err(db_err)?
                {
                    busy.insert(r.get(0));
                }
            }
        }
        let full = rows.len() < usize::try_from(chunk).unwrap_or(usize::MAX);
        for event in events {
            if plan.out.len() == limit {
                break;
            }
            cursor = seq_i64(event.seq);
            if config.ordered
                && let Some(k) = &event.ordering_key
                && busy.contains(k)
            {
                plan.rows.push(RowWrite {
                    seq: cursor,
                    state: HELD,
                    due_in_ms: 0,
                    handle: 0,
                    consumer: String::new(),
                    key: Some(k.clone()),
                    history: Vec::new(),
                });
                continue;
            }
            let key = event.ordering_key.clone();
            if plan.admit(topic, group, &config, consumer, event, Vec::new(), false)
                && config.ordered
                && let Some(k) = key
            {
                busy.insert(k);
            }
        }
        if full {
            break;
        }
    }
    let changed = changed_by_expiry || !plan.dead.is_empty();
    let update = tx
        .prepare_cached(&db.sql("UPDATE {s}.groups SET cursor = $3 WHERE topic = $1 AND name = $2"))
        .await
        .map_err(db_err)?;
    let next_due = tx
        .prepare_cached(&db.sql(
            // Two index lookups (the first entry of each state), not a scan of the group.
            "SELECT (extract(epoch from least(
                 (SELECT min(due_at) FROM {s}.deliveries
                  WHERE topic = $1 AND grp = $2 AND state = 0),
                 (SELECT min(due_at) FROM {s}.deliveries
                  WHERE topic = $1 AND grp = $2 AND state = 1)) - now()) * 1000)::int8",
        ))
        .await
        .map_err(db_err)?;
    // Usually the plan is one statement (the leases): then it, the cursor and the next due
    // time go in one round trip. Otherwise the plan's statements first, in order.
    let one_statement = plan.dead.is_empty() && plan.finished.is_empty() && plan.freed.is_empty();
    // Prepared (once per connection) before the round trip, so that it goes out first in it.
    tx.prepare_cached(&db.sql(UPSERT_ROWS))
        .await
        .map_err(db_err)?;
    if !one_statement {
        write_plan(db, &tx, topic, group, &plan).await?;
    }
    let (_, _, next_due) = futures_util::future::try_join3(
        async {
            if one_statement {
                write_plan(db, &tx, topic, group, &plan).await
            } else {
                Ok(())
            }
        },
        async {
            tx.execute(&update, &[&topic, &group, &cursor])
                .await
                .map_err(db_err)
        },
        async {
            tx.query_one(&next_due, &[&topic, &group])
                .await
                .map_err(db_err)
        },
    )
    .await?;
    let next_due: Option<i64> = next_due.get(0);
    tx.commit().await.map_err(db_err)?;
    let next_due = next_due.map(|ms| Duration::from_millis(u64::try_from(ms.max(1)).unwrap_or(1)));
    Ok((plan.out, next_due, changed))
}

/// Writes a plan: rows upserted, finished rows deleted, dead letters inserted, freed keys'
/// next held events made due.
async fn write_plan(
    db: &Db,
    tx: &Tx<'_>,
    topic: &str,
    group: &str,
    plan: &Plan,
) -> Result<(), BackendError> {
    if !plan.rows.is_empty() {
        let stmt = tx
            .prepare_cached(&db.sql(UPSERT_ROWS))
            .await
            .map_err(db_err)?;
        let seqs: Vec<i64> = plan.rows.iter().map(|r| r.seq).collect();
        let states: Vec<i16> = plan.rows.iter().map(|r| r.state).collect();
        let dues: Vec<i64> = plan.rows.iter().map(|r| r.due_in_ms).collect();
        let handles: Vec<i64> = plan.rows.iter().map(|r| r.handle).collect();
        let consumers: Vec<&str> = plan.rows.iter().map(|r| r.consumer.as_str()).collect();
        let keys: Vec<Option<&str>> = plan.rows.iter().map(|r| r.key.as_deref()).collect();
        let histories: Vec<String> = plan.rows.iter().map(|r| history_text(&r.history)).collect();
        tx.execute(
            &stmt,
            &[
                &topic, &group, &seqs, &states, &dues, &handles, &consumers, &keys, &histories,
            ],
        )
        .await
        .map_err(db_err)?;
    }
    dead_letters(db, tx, topic, group, &plan.dead).await?;
    finish(db, tx, topic, group, &plan.finished, &plan.freed).await
}

/// Writes rows of `deliveries`, inserted or updated in place.
const UPSERT_ROWS: &str = "INSERT INTO {s}.deliveries
       (topic, grp, seq, state, due_at, handle, consumer, ordering_key, history)
     SELECT $1, $2, u.seq, u.state, now() + u.due * interval '1 millisecond',
            u.handle, u.consumer, u.k, u.history::jsonb
     FROM unnest($3::int8[], $4::int2[], $5::int8[], $6::int8[], $7::text[],
                 $8::text[], $9::text[])
          AS u(seq, state, due, handle, consumer, k, history)
     ON CONFLICT (topic, grp, seq) DO UPDATE SET state = excluded.state,
         due_at = excluded.due_at, handle = excluded.handle,
         consumer = excluded.consumer, history = excluded.history";

/// Inserts dead letters, each with a copy of its event from the log.
async fn dead_letters(
    db: &Db,
    tx: &Tx<'_>,
    topic: &str,
    group: &str,
    dead: &[DeadWrite],
) -> Result<(), BackendError> {
    if dead.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(&db.sql(
            "INSERT INTO {s}.dead_letters
               (topic, grp, seq, stored_at, ordering_key, id, type, event, reason, last_error,
                attempts, history, at)
             SELECT e.topic, $2, e.seq, e.stored_at, e.ordering_key, e.id, e.type, e.event,
                    u.reason, u.err, u.attempts, u.history::jsonb, now()
             FROM unnest($3::int8[], $4::text[], $5::text[], $6::int4[], $7::text[])
                  AS u(seq, reason, err, attempts, history)
             JOIN {s}.events e ON e.topic = $1 AND e.seq = u.seq
             ON CONFLICT (topic, grp, seq) DO UPDATE SET reason = excluded.reason,
                 last_error = excluded.last_error, attempts = excluded.attempts,
                 history = excluded.history, at = excluded.at",
        ))
        .await
        .map_err(db_err)?;
    let seqs: Vec<i64> = dead.iter().map(|d| d.seq).collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    let errors: Vec<Option<&str>> = dead.iter().map(|d| d.error.as_deref()).collect();
    let attempts: Vec<i32> = dead
        .iter()
        .map(|d| i32::try_from(d.history.len()).unwrap_or(i32::MAX))
        .collect();
    let histories: Vec<String> = dead.iter().map(|d| history_text(&d.history)).collect();
    tx.execute(
        &stmt,
        &[
            &topic, &group, &seqs, &reasons, &errors, &attempts, &histories,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Deletes finished rows and makes the next held event of each freed key due.
async fn finish(
    db: &Db,
    tx: &Tx<'_>,
    topic: &str,
    group: &str,
    finished: &[i64],
    freed: &[String],
) -> Result<(), BackendError> {
    if !finished.is_empty() {
        let stmt = tx
            .prepare_cached(
                &db.sql(
                    "DELETE FROM {s}.deliveries WHERE topic = $1 AND grp = $2 AND seq = ANY($3)",
                ),
            )
            .await
            .map_err(db_err)?;
        tx.execute(&stmt, &[&topic, &group, &finished])
            .await
            .map_err(db_err)?;
    }
    if !freed.is_empty() {
        let stmt = tx
            .prepare_cached(&db.sql(&promote("$3::text[]")))
            .await
            .map_err(db_err)?;
        tx.execute(&stmt, &[&topic, &group, &freed])
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Makes the oldest held event of each key in `keys` (an SQL array of the group's keys) due
/// now, in group `$1`/`$2`: keys by `= ANY` on the key index, rows by `= ANY` on the primary
/// key, no join.
fn promote(keys: &str) -> String {
    format!(
        "UPDATE {{s}}.deliveries d SET state = 0, due_at = now()
         WHERE d.topic = $1 AND d.grp = $2 AND d.state = 2 AND d.seq = ANY (ARRAY(
           SELECT DISTINCT ON (h.ordering_key) h.seq FROM {{s}}.deliveries h
           WHERE h.topic = $1 AND h.grp = $2 AND h.state = 2 AND h.ordering_key = ANY ({keys})
           ORDER BY h.ordering_key, h.seq))"
    )
}

/// The lease's row, locked, if the lease is still held: (consumer, key, history, config).
async fn held_lease(
    db: &Db,
    tx: &Tx<'_>,
    token: &LeaseToken,
) -> Result<(String, Option<String>, Vec<AttemptRecord>, GroupConfig), BackendError> {
    let stmt = tx
        .prepare_cached(&db.sql(
            "SELECT d.consumer, d.ordering_key, d.history::text, g.config::text
             FROM {s}.deliveries d
             JOIN {s}.groups g ON g.topic = d.topic AND g.name = d.grp
             WHERE d.topic = $1 AND d.grp = $2 AND d.seq = $3 AND d.handle = $4
               AND d.state = 1 AND d.due_at > now()
             FOR UPDATE OF d",
        ))
        .await
        .map_err(db_err)?;
    let handle = i64::try_from(token.handle).unwrap_or(-1);
    let row = tx
        .query_opt(
            &stmt,
            &[&token.topic, &token.group, &seq_i64(token.seq), &handle],
        )
        .await
        .map_err(db_err)?
        .ok_or(BackendError::LeaseLost)?;
    Ok((
        row.get(0),
        row.get(1),
        history_of(row.get(2)),
        config_of(row.get(3))?,
    ))
}

/// A retry (C6, R1), or the DLQ after the last attempt (R2).
pub(crate) async fn nack(
    db: &Db,
    wakers: &Wakers,
    token: &LeaseToken,
    delay: Option<Duration>,
    error: Option<String>,
) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let (consumer, key, mut history, config) = held_lease(db, &tx, token).await?;
    let attempt = u32::try_from(history.len() + 1).unwrap_or(u32::MAX);
    let delay = delay.unwrap_or_else(|| config.retry.delay(attempt));
    history.push(AttemptRecord {
        at: SystemTime::now(),
        consumer,
        outcome: "retry".into(),
        error: error.clone(),
    });
    let seq = seq_i64(token.seq);
    let mut plan = Plan::default();
    if config.retry.is_last(attempt) {
        plan.dead.push(DeadWrite {
            seq,
            reason: DeadLetterReason::MaxAttempts,
            error: error.or_else(|| Some("retry".into())),
            history,
        });
        plan.finished.push(seq);
        plan.freed.extend(key);
    } else {
        plan.rows.push(RowWrite {
            seq,
            state: WAITING,
            due_in_ms: ms_i64(delay),
            handle: 0,
            consumer: String::new(),
            key,
            history,
        });
    }
    write_plan(db, &tx, &token.topic, &token.group, &plan).await?;
    tx.commit().await.map_err(db_err)?;
    wakers.wake(&token.topic);
    Ok(())
}

/// Dead-letter now (R4).
pub(crate) async fn reject(
    db: &Db,
    wakers: &Wakers,
    token: &LeaseToken,
    error: Option<String>,
) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let (consumer, key, mut history, _) = held_lease(db, &tx, token).await?;
    history.push(AttemptRecord {
        at: SystemTime::now(),
        consumer,
        outcome: "dead-letter".into(),
        error: error.clone(),
    });
    let seq = seq_i64(token.seq);
    let plan = Plan {
        dead: vec![DeadWrite {
            seq,
            reason: DeadLetterReason::Rejected,
            error,
            history,
        }],
        finished: vec![seq],
        freed: key.into_iter().collect(),
        ..Plan::default()
    };
    write_plan(db, &tx, &token.topic, &token.group, &plan).await?;
    tx.commit().await.map_err(db_err)?;
    wakers.wake(&token.topic);
    Ok(())
}

/// Extends a lease still held to now + `by` (C4).
pub(crate) async fn extend(db: &Db, token: &LeaseToken, by: Duration) -> Result<(), BackendError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(&db.sql(
            "UPDATE {s}.deliveries SET due_at = now() + $5::int8 * interval '1 millisecond'
             WHERE topic = $1 AND grp = $2 AND seq = $3 AND handle = $4
               AND state = 1 AND due_at > now()",
        ))
        .await
        .map_err(db_err)?;
    let handle = i64::try_from(token.handle).unwrap_or(-1);
    let n = client
        .execute(
            &stmt,
            &[
                &token.topic,
                &token.group,
                &seq_i64(token.seq),
                &handle,
                &ms_i64(by),
            ],
        )
        .await
        .map_err(db_err)?;
    if n == 0 {
        return Err(BackendError::LeaseLost);
    }
    Ok(())
}

type AckReply = oneshot::Sender<Result<(), BackendError>>;

/// Acks of every group of this process, gathered into one transaction per round.
pub(crate) struct AckQueue {
    tx: mpsc::Sender<(LeaseToken, AckReply)>,
}

impl AckQueue {
    pub(crate) fn start(db: Db, wakers: Arc<Wakers>) -> AckQueue {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(ack_loop(db, wakers, rx));
        AckQueue { tx }
    }

    pub(crate) async fn ack(&self, token: &LeaseToken) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((token.clone(), reply))
            .await
            .map_err(|_| BackendError::storage("the ack writer stopped"))?;
        answer
            .await
            .map_err(|_| BackendError::storage("the ack writer stopped"))?
    }
}

async fn ack_loop(db: Db, wakers: Arc<Wakers>, mut rx: mpsc::Receiver<(LeaseToken, AckReply)>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < 4096 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        match ack_all(&db, &jobs).await {
            Ok(acked) => {
                let mut topics = HashSet::new();
                for (token, reply) in jobs {
                    let ok = acked.contains(&(
                        token.topic.clone(),
                        token.group.clone(),
                        seq_i64(token.seq),
                        i64::try_from(token.handle).unwrap_or(-1),
                    ));
                    topics.insert(token.topic);
                    let _ = reply.send(if ok {
                        Ok(())
                    } else {
                        Err(BackendError::LeaseLost)
                    });
                }
                for t in topics {
                    wakers.wake(&t);
                }
            }
            Err(e) => {
                for (_, reply) in jobs {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Deletes the rows of every lease still held and makes the next held event of each freed key
/// due; returns which leases were held, by sequence and handle (a stale token beside a fresh
/// one of the same sequence is not held). One statement (its own transaction) per group, all
/// pipelined; a sequence twice in one round waits for the next statement.
async fn ack_all(
    db: &Db,
    jobs: &[(LeaseToken, AckReply)],
) -> Result<HashSet<(String, String, i64, i64)>, BackendError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(&db.sql(&ack_sql()))
        .await
        .map_err(db_err)?;
    let mut acked = HashSet::new();
    let mut left: Vec<&LeaseToken> = jobs.iter().map(|(t, _)| t).collect();
    while !left.is_empty() {
        let mut seen = HashSet::new();
        // (topic, group) → (sequences, handles), parallel arrays.
        let mut groups: HashMap<(&str, &str), Parallel> = HashMap::new();
        let mut later = Vec::new();
        for t in left {
            let seq = seq_i64(t.seq);
            if !seen.insert((t.topic.as_str(), t.group.as_str(), seq)) {
                later.push(t);
                continue;
            }
            let g = groups
                .entry((t.topic.as_str(), t.group.as_str()))
                .or_default();
            g.0.push(seq);
            g.1.push(i64::try_from(t.handle).unwrap_or(-1));
        }
        let statements = groups.iter().map(|(&(topic, group), (seqs, handles))| {
            let stmt = &stmt;
            let client = &client;
            async move {
                let rows = client
                    .query(stmt, &[&topic, &group, seqs, handles])
                    .await
                    .map_err(db_err)?;
                // Each sequence is once in a statement: its handle is the one sent with it.
                let handle: HashMap<i64, i64> =
                    seqs.iter().copied().zip(handles.iter().copied()).collect();
                Ok::<_, BackendError>(
                    rows.iter()
                        .filter_map(|r| {
                            let seq = r.get::<_, i64>(0);
                            Some((topic.to_owned(), group.to_owned(), seq, *handle.get(&seq)?))
                        })
                        .collect::<Vec<_>>(),
                )
            }
        });
        for done in futures_util::future::try_join_all(statements).await? {
            acked.extend(done);
        }
        left = later;
    }
    Ok(acked)
}

/// Sequences and their lease handles, index by index.
type Parallel = (Vec<i64>, Vec<i64>);

/// The acks of one group: the rows of leases still held (matched by sequence and handle)
/// deleted, and in ordered groups the next held event of each freed key made due. Written
/// with one table in each part (sequences by `= ANY` on the primary key, the handle read from
/// the parallel array), so no plan joins and none scans: the planner's statistics of a work
/// queue are always out of date.
fn ack_sql() -> String {
    format!(
        "WITH acked AS (
           DELETE FROM {{s}}.deliveries d
           WHERE d.topic = $1 AND d.grp = $2 AND d.seq = ANY($3::int8[])
             AND d.handle = ($4::int8[])[array_position($3::int8[], d.seq)]
             AND d.state = 1 AND d.due_at > now()
           RETURNING d.seq, d.ordering_key),
         promoted AS ({} RETURNING 1)
         SELECT seq FROM acked",
        promote("ARRAY(SELECT ordering_key FROM acked WHERE ordering_key IS NOT NULL)")
    )
}

/// Moves the group to a position (L1): its pending work is dropped (leases are lost) and its
/// cursor set just before the position.
pub(crate) async fn reset(
    db: &Db,
    wakers: &Wakers,
    topic: &str,
    group: &str,
    position: &StartPosition,
) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    if tx
        .query_opt(
            &db.sql("SELECT 1 FROM {s}.groups WHERE topic = $1 AND name = $2 FOR UPDATE"),
            &[&topic, &group],
        )
        .await
        .map_err(db_err)?
        .is_none()
    {
        read::require_topic(db, &tx, topic).await?;
        return Err(unknown_group(topic, group));
    }
    let first = read::locate_with(db, &tx, topic, position).await?;
    tx.execute(
        &db.sql("DELETE FROM {s}.deliveries WHERE topic = $1 AND grp = $2"),
        &[&topic, &group],
    )
    .await
    .map_err(db_err)?;
    tx.execute(
        &db.sql("UPDATE {s}.groups SET cursor = $3 WHERE topic = $1 AND name = $2"),
        &[&topic, &group, &(seq_i64(first) - 1)],
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    wakers.wake(topic);
    Ok(())
}

pub(crate) async fn list(db: &Db, topic: &str) -> Result<Vec<String>, BackendError> {
    let client = db.client().await?;
    read::require_topic(db, &client, topic).await?;
    let rows = client
        .query(
            &db.sql("SELECT name FROM {s}.groups WHERE topic = $1 ORDER BY name"),
            &[&topic],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) async fn info(db: &Db, topic: &str, group: &str) -> Result<GroupInfo, BackendError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &db.sql(
                "SELECT g.config::text, g.cursor, t.last_seq,
                    (SELECT min(seq) FROM {s}.deliveries d WHERE d.topic = g.topic AND d.grp = g.name),
                    (SELECT count(*) FROM {s}.deliveries d WHERE d.topic = g.topic AND d.grp = g.name),
                    (SELECT count(*) FROM {s}.deliveries d WHERE d.topic = g.topic AND d.grp = g.name
                        AND d.state = 1 AND d.due_at > now()),
                    (SELECT count(*) FROM {s}.dead_letters l WHERE l.topic = g.topic AND l.grp = g.name)
                 FROM {s}.groups g JOIN {s}.topics t ON t.name = g.topic
                 WHERE g.topic = $1 AND g.name = $2",
            ),
            &[&topic, &group],
        )
        .await
        .map_err(db_err)?;
    let Some(row) = row else {
        read::require_topic(db, &client, topic).await?;
        return Err(unknown_group(topic, group));
    };
    let cursor: i64 = row.get(1);
    let last: i64 = row.get(2);
    let oldest: Option<i64> = row.get(3);
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(GroupInfo {
        config: config_of(row.get(0))?,
        acked_through: seq_u64(oldest.map_or(cursor, |o| cursor.min(o - 1))),
        pending: seq_u64(last.saturating_sub(cursor)) + count(4),
        in_flight: count(5),
        dead_letters: count(6),
    })
}

pub(crate) async fn delete(db: &Db, topic: &str, group: &str) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let n = tx
        .execute(
            &db.sql("DELETE FROM {s}.groups WHERE topic = $1 AND name = $2"),
            &[&topic, &group],
        )
        .await
        .map_err(db_err)?;
    if n == 0 {
        read::require_topic(db, &tx, topic).await?;
        return Err(unknown_group(topic, group));
    }
    for table in ["deliveries", "dead_letters"] {
        tx.execute(
            &db.sql(&format!(
                "DELETE FROM {{s}}.{table} WHERE topic = $1 AND grp = $2"
            )),
            &[&topic, &group],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Groups of a topic whose configuration says ordered, for redrive.
pub(crate) async fn is_ordered(
    db: &Db,
    tx: &Tx<'_>,
    topic: &str,
    group: &str,
) -> Result<bool, BackendError> {
    let row = tx
        .query_opt(
            &db.sql("SELECT config::text FROM {s}.groups WHERE topic = $1 AND name = $2"),
            &[&topic, &group],
        )
        .await
        .map_err(db_err)?;
    match row {
        Some(r) => Ok(config_of(r.get(0))?.ordered),
        None => {
            read::require_topic(db, tx, topic).await?;
            Err(unknown_group(topic, group))
        }
    }
}
