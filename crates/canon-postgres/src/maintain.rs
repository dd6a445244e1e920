//! Background upkeep, once a second in every process (each pass is idempotent, so processes
//! need not agree who does it): retention by age (L2), pruning of dedup entries older than
//! their topic's window, and fresh planner statistics for the fast-changing tables. Retention
//! by size runs in the publish that goes over the limit.
//!
//! Retention deletes only events: pending rows of groups whose event is gone are finished when
//! they come due, and dead letters keep their own copy of the event.

use std::time::Duration;

use canon_backend::BackendError;
use deadpool_postgres::Transaction;

use crate::{Db, db_err};

/// At most this many rows are deleted per topic and pass.
const BATCH: i64 = 10_000;

pub(crate) async fn run(db: Db) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = pass(&db).await {
            tracing::warn!(error = %e, schema = %db.schema, "retention pass failed");
        }
    }
}

async fn pass(db: &Db) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let aged: Vec<(String, i64)> = client
        .query(
            &db.sql("SELECT name, max_age_ms FROM {s}.topics WHERE max_age_ms IS NOT NULL"),
            &[],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (topic, max_age) in aged {
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            &db.sql("SELECT 1 FROM {s}.topics WHERE name = $1 FOR UPDATE"),
            &[&topic],
        )
        .await
        .map_err(db_err)?;
        let freed: i64 = tx
            .query_one(
                &db.sql(
                    "WITH doomed AS (
                       DELETE FROM {s}.events WHERE topic = $1 AND seq IN (
                         SELECT seq FROM {s}.events WHERE topic = $1
                           AND stored_at < now() - $2::int8 * interval '1 millisecond'
                         ORDER BY seq LIMIT $3)
                       RETURNING size)
                     SELECT coalesce(sum(size), 0)::int8 FROM doomed",
                ),
                &[&topic, &max_age, &BATCH],
            )
            .await
            .map_err(db_err)?
            .get(0);
        if freed > 0 {
            tx.execute(
                &db.sql("UPDATE {s}.topics SET bytes = bytes - $2 WHERE name = $1"),
                &[&topic, &freed],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
    }
    // Per topic, a range of its time index (nothing to read when nothing is old enough).
    client
        .execute(
            &db.sql(
                "DELETE FROM {s}.dedup WHERE ctid = ANY (ARRAY(
                   SELECT x.ctid FROM {s}.topics t
                   CROSS JOIN LATERAL (
                     SELECT d.ctid FROM {s}.dedup d
                     WHERE d.topic = t.name
                       AND d.stored_at < now() - t.dedup_window_ms * interval '1 millisecond'
                     LIMIT $1) x
                   LIMIT $1))",
            ),
            &[&BATCH],
        )
        .await
        .map_err(db_err)?;
    analyze_if_stale(db, &mut client).await
}

/// Refreshes the planner's statistics of the tables that grow or churn fast once they have
/// changed by more than a fifth (and at least 5,000 rows) since they were last gathered.
/// Autovacuum would do it too, but it looks at most once a minute: in between, statistics of
/// an empty `events` table make the planner read a whole topic to find the next thousand
/// events. One process at a time (an advisory lock), the others skip.
async fn analyze_if_stale(
    db: &Db,
    client: &mut deadpool_postgres::Object,
) -> Result<(), BackendError> {
    let tx = client.transaction().await.map_err(db_err)?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext('canon-analyze'), hashtext($1))",
            &[&&*db.schema],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if !locked {
        return Ok(());
    }
    let stale: Vec<String> = tx
        .query(
            "SELECT relname::text FROM pg_stat_user_tables
             WHERE schemaname = $1 AND relname IN ('events', 'deliveries', 'dedup')
               AND n_mod_since_analyze > greatest(5000, n_live_tup / 5)",
            &[&&*db.schema],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in stale {
        tx.batch_execute(&format!("ANALYZE {}.{table}", db.schema))
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Deletes a topic's oldest events until it holds at most `max` bytes (given that it holds
/// `bytes` now), at most `BATCH` of them; returns the bytes freed. Runs in the publishing
/// transaction, which holds the topic's row.
pub(crate) async fn trim_to_size(
    db: &Db,
    tx: &Transaction<'_>,
    topic: &str,
    bytes: i64,
    max: i64,
) -> Result<i64, BackendError> {
    let stmt = tx
        .prepare_cached(&db.sql(
            "WITH c AS (
               SELECT seq, size, sum(size) OVER (ORDER BY seq) AS run
               FROM (SELECT seq, size FROM {s}.events WHERE topic = $1 ORDER BY seq LIMIT $4) t),
             doomed AS (
               DELETE FROM {s}.events e USING c
               WHERE e.topic = $1 AND e.seq = c.seq AND $2::int8 - (c.run - c.size) > $3::int8
               RETURNING e.size)
             SELECT coalesce(sum(size), 0)::int8 FROM doomed",
        ))
        .await
        .map_err(db_err)?;
    Ok(tx
        .query_one(&stmt, &[&topic, &bytes, &max, &BATCH])
        .await
        .map_err(db_err)?
        .get(0))
}
