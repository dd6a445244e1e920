//! The PostgreSQL inbox: one row per processed key in `canon_inbox`, written in the handler's
//! own transaction.

use std::ops::Deref;
use std::time::Duration;

use deadpool_postgres::{Manager, Object, Pool};
use tokio_postgres::NoTls;

use canon_envelope::CloudEvent;

use super::InboxError;
use crate::context::AsyncContext;

/// The table, created at connect if missing. `consumer` separates the consumers that share a
/// database; `expires_at` is when a key may be processed again (and when it is pruned);
/// `emitted` holds the events the handler emitted, as CloudEvents, so that a redelivery after
/// the commit publishes them again (same ids) instead of losing them.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS canon_inbox (
    consumer     text        NOT NULL,
    key          text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    emitted      jsonb,
    PRIMARY KEY (consumer, key)
);
CREATE INDEX IF NOT EXISTS canon_inbox_expires_at ON canon_inbox (expires_at);
";

/// An inbox in PostgreSQL for one consumer. Cloning shares the connection pool.
#[derive(Clone)]
pub struct PgInbox {
    pool: Pool,
    consumer: String,
    ttl: Duration,
}

impl std::fmt::Debug for PgInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInbox")
            .field("consumer", &self.consumer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl PgInbox {
    /// Connects (a pool of up to `pool_size` connections), creates the table if missing, and
    /// remembers processed keys of `consumer` for `ttl`.
    pub async fn connect(
        url: &str,
        consumer: &str,
        ttl: Duration,
        pool_size: usize,
    ) -> Result<PgInbox, InboxError> {
        let config: tokio_postgres::Config = url.parse()?;
        let pool = Pool::builder(Manager::new(config, NoTls))
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| InboxError::Pool(e.to_string()))?;
        let inbox = PgInbox {
            pool,
            consumer: consumer.to_owned(),
            ttl,
        };
        let client = inbox.client().await?;
        // Serialise concurrent first starts: CREATE ... IF NOT EXISTS can race with itself.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7262); {SCHEMA} COMMIT;"
            ))
            .await?;
        Ok(inbox)
    }

    async fn client(&self) -> Result<Object, InboxError> {
        self.pool
            .get()
            .await
            .map_err(|e| InboxError::Pool(e.to_string()))
    }

    /// Opens a transaction and claims the handled event's key (`cx.inbox_key()`) in it.
    ///
    /// `Ok(None)`: the key was processed within the time-to-live: skip the work. The events
    /// that processing emitted are emitted again into `cx` with their original ids, so they
    /// reach the server even if the earlier attempt died between its commit and their publish
    /// (the server keeps one copy of each).
    ///
    /// Otherwise do the work through the returned transaction, emit, then
    /// [`PgInboxTx::commit`]: the key, the work and the emitted events commit together. A
    /// concurrent delivery of the same key waits for this transaction, then sees it processed
    /// (or, if this one rolls back, claims it).
    pub async fn begin(&self, cx: &AsyncContext) -> Result<Option<PgInboxTx>, InboxError> {
        let key = cx.inbox_key();
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        let claimed = client
            .execute(
                "INSERT INTO canon_inbox (consumer, key, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (consumer, key) DO UPDATE
                    SET processed_at = now(), expires_at = EXCLUDED.expires_at, emitted = NULL
                    WHERE canon_inbox.expires_at <= now()",
                &[&self.consumer, &key, &self.ttl.as_secs_f64()],
            )
            .await;
        match claimed {
            Ok(0) => {
                let row = client
                    .query_opt(
                        "SELECT emitted::text FROM canon_inbox WHERE consumer = $1 AND key = $2",
                        &[&self.consumer, &key],
                    )
                    .await;
                client.batch_execute("ROLLBACK").await?;
                let emitted: Option<String> = row?.and_then(|r| r.get(0));
                if let Some(json) = emitted {
                    let events = CloudEvent::batch_from_json(json.as_bytes())
                        .map_err(|e| InboxError::Stored(e.to_string()))?;
                    for e in events {
                        cx.re_emit(e);
                    }
                }
                Ok(None)
            }
            Ok(_) => Ok(Some(PgInboxTx {
                client: Some(client),
                consumer: self.consumer.clone(),
                key,
            })),
            Err(e) => {
                // The connection is mid-transaction: drop it rather than return it.
                drop(Object::take(client));
                Err(e.into())
            }
        }
    }

    /// Whether `key` is recorded as processed (and not expired).
    pub async fn processed(&self, key: &str) -> Result<bool, InboxError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM canon_inbox WHERE consumer = $1 AND key = $2 AND expires_at > now()",
                &[&self.consumer, &key],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Deletes expired keys of every consumer; returns how many. Run it now and then: expired
    /// keys are already ignored by `begin`, this only keeps the table small.
    pub async fn prune(&self) -> Result<u64, InboxError> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM canon_inbox WHERE expires_at <= now()", &[])
            .await?)
    }
}

/// A transaction holding a claimed key. Run the handler's writes on it (it derefs to a
/// `tokio_postgres::Client`), emit, then [`PgInboxTx::commit`]. Dropped without commit, the
/// transaction rolls back and the key is free again.
pub struct PgInboxTx {
    client: Option<Object>,
    consumer: String,
    key: String,
}

impl std::fmt::Debug for PgInboxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInboxTx").finish_non_exhaustive()
    }
}

impl Deref for PgInboxTx {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        match &self.client {
            Some(c) => c,
            None => unreachable!("the client is taken only by commit, rollback and drop"),
        }
    }
}

impl PgInboxTx {
    /// Records what the handler emitted so far and commits it with the work and the key.
    pub async fn commit(mut self, cx: &AsyncContext) -> Result<(), InboxError> {
        let Some(client) = self.client.take() else {
            return Ok(());
        };
        let emitted = cx.pending_events();
        let result = async {
            if !emitted.is_empty() {
                let json = String::from_utf8_lossy(&CloudEvent::batch_to_json(&emitted)).into_owned();
                client
                    .execute(
                        "UPDATE canon_inbox SET emitted = $3::text::jsonb WHERE consumer = $1 AND key = $2",
                        &[&self.consumer, &self.key, &json],
                    )
                    .await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = result {
            drop(Object::take(client));
            return Err(e.into());
        }
        Ok(())
    }

    /// Rolls back the work and releases the key.
    pub async fn rollback(mut self) -> Result<(), InboxError> {
        if let Some(client) = self.client.take()
            && let Err(e) = client.batch_execute("ROLLBACK").await
        {
            drop(Object::take(client));
            return Err(e.into());
        }
        Ok(())
    }
}

impl Drop for PgInboxTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Mid-transaction: closing the connection makes the server roll it back.
            drop(Object::take(client));
        }
    }
}
