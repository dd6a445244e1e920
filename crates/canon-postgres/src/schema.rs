//! Versioned migrations, run at open. Each is a SQL file under `migrations/`, applied once in
//! order and recorded in `{schema}.schema_migrations`. The whole run holds a transaction-scoped
//! advisory lock, so processes that start together apply each migration exactly once; a
//! migration that fails rolls back with everything else of its run.
//!
//! Migrations are never edited once released: a change of the schema is a new file.

use canon_backend::BackendError;

use crate::{Db, db_err};

/// Every migration, oldest first: (version, SQL with `{schema}` for the schema's name).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_queue_vacuum.sql")),
];

pub(crate) async fn migrate(db: &Db) -> Result<(), BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    // One lock per schema, so that two schemas migrate independently.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('canon-migrations'), hashtext($1))",
        &[&&*db.schema],
    )
    .await
    .map_err(db_err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        s = db.schema
    ))
    .await
    .map_err(db_err)?;
    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {}.schema_migrations", db.schema),
            &[],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let newest_known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(newer) = applied.iter().find(|v| **v > newest_known) {
        return Err(BackendError::InvalidConfig(format!(
            "schema {} is at migration {newer}, newer than this Canon knows ({newest_known}): \
             upgrade Canon",
            db.schema
        )));
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(schema = %db.schema, version, "applying migration");
        tx.batch_execute(&sql.replace("{schema}", &db.schema))
            .await
            .map_err(db_err)?;
        tx.execute(
            &format!(
                "INSERT INTO {}.schema_migrations (version) VALUES ($1)",
                db.schema
            ),
            &[version],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}
