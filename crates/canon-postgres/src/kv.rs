//! Key-value buckets (S1, S2): one row per key, revisions from one sequence, compare-and-set in
//! a single statement, so of two concurrent writes expecting one revision at most one matches.

use canon_backend::{BackendError, KvEntry};

use crate::{Db, db_err, seq_i64, seq_u64};

fn entry(value: Vec<u8>, revision: i64) -> KvEntry {
    KvEntry {
        value,
        revision: seq_u64(revision),
    }
}

async fn revision_now(db: &Db, bucket: &str, key: &str) -> Result<u64, BackendError> {
    let client = db.client().await?;
    Ok(client
        .query_opt(
            &db.sql("SELECT revision FROM {s}.kv WHERE bucket = $1 AND key = $2"),
            &[&bucket, &key],
        )
        .await
        .map_err(db_err)?
        .map_or(0, |r| seq_u64(r.get(0))))
}

pub(crate) async fn get(db: &Db, bucket: &str, key: &str) -> Result<Option<KvEntry>, BackendError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &db.sql("SELECT value, revision FROM {s}.kv WHERE bucket = $1 AND key = $2"),
            &[&bucket, &key],
        )
        .await
        .map_err(db_err)?;
    Ok(row.map(|r| entry(r.get(0), r.get(1))))
}

pub(crate) async fn put(
    db: &Db,
    bucket: &str,
    key: &str,
    value: Vec<u8>,
    expect: Option<u64>,
) -> Result<u64, BackendError> {
    let client = db.client().await?;
    let row = match expect {
        None => {
            client
                .query_opt(
                    &db.sql(
                        "INSERT INTO {s}.kv (bucket, key, value, revision)
                     VALUES ($1, $2, $3, nextval('{s}.kv_revision'))
                     ON CONFLICT (bucket, key) DO UPDATE
                     SET value = excluded.value, revision = excluded.revision
                     RETURNING revision",
                    ),
                    &[&bucket, &key, &value],
                )
                .await
        }
        Some(0) => {
            client
                .query_opt(
                    &db.sql(
                        "INSERT INTO {s}.kv (bucket, key, value, revision)
                     VALUES ($1, $2, $3, nextval('{s}.kv_revision'))
                     ON CONFLICT (bucket, key) DO NOTHING
                     RETURNING revision",
                    ),
                    &[&bucket, &key, &value],
                )
                .await
        }
        Some(rev) => {
            client
                .query_opt(
                    &db.sql(
                        "UPDATE {s}.kv SET value = $3, revision = nextval('{s}.kv_revision')
                     WHERE bucket = $1 AND key = $2 AND revision = $4
                     RETURNING revision",
                    ),
                    &[&bucket, &key, &value, &seq_i64(rev)],
                )
                .await
        }
    }
    .map_err(db_err)?;
    match row {
        Some(r) => Ok(seq_u64(r.get(0))),
        None => Err(BackendError::RevisionMismatch {
            current: revision_now(db, bucket, key).await?,
        }),
    }
}

pub(crate) async fn delete(
    db: &Db,
    bucket: &str,
    key: &str,
    expect: Option<u64>,
) -> Result<bool, BackendError> {
    let client = db.client().await?;
    let n = match expect {
        None => {
            client
                .execute(
                    &db.sql("DELETE FROM {s}.kv WHERE bucket = $1 AND key = $2"),
                    &[&bucket, &key],
                )
                .await
        }
        Some(rev) => {
            client
                .execute(
                    &db.sql("DELETE FROM {s}.kv WHERE bucket = $1 AND key = $2 AND revision = $3"),
                    &[&bucket, &key, &seq_i64(rev)],
                )
                .await
        }
    }
    .map_err(db_err)?;
    match (n, expect) {
        (0, Some(expected)) => match revision_now(db, bucket, key).await? {
            // Absent, as expected: nothing to delete.
            0 if expected == 0 => Ok(false),
            current => Err(BackendError::RevisionMismatch { current }),
        },
        (n, _) => Ok(n > 0),
    }
}

pub(crate) async fn list(db: &Db, bucket: &str) -> Result<Vec<(String, KvEntry)>, BackendError> {
    let client = db.client().await?;
    let rows = client
        .query(
            &db.sql("SELECT key, value, revision FROM {s}.kv WHERE bucket = $1 ORDER BY key"),
            &[&bucket],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), entry(r.get(1), r.get(2))))
        .collect())
}
