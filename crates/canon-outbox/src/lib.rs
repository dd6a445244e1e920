//! The transactional outbox (seed 002): a producer writes its events into an outbox table in
//! the same PostgreSQL transaction as its business writes, so an event exists exactly when the
//! change it announces committed; the relay ([`Relay`], feature `relay`, run as `canon relay`
//! or inside `canon serve`) moves committed rows into Canon and deletes them.
//!
//! ```no_run
//! # async fn f(client: &mut tokio_postgres::Client, event: canon_envelope::CloudEvent)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let outbox = canon_outbox::Outbox::default();
//! let tx = client.transaction().await?;
//! tx.execute("UPDATE tasks SET state = 'assigned' WHERE id = $1", &[&"t-1"]).await?;
//! outbox.enqueue(&tx, &event).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! Any other language writes the same row with a plain `INSERT INTO canon_outbox (event)
//! VALUES ($1)`; `sql/outbox.sql` (docs/outbox.md) is the table's definition.

#[cfg(feature = "relay")]
mod relay;

#[cfg(feature = "relay")]
pub use relay::{Publisher, Relay, RelayConfig, RelayStats};

use canon_envelope::CloudEvent;

/// The table's definition, with `{table}` for its name.
pub const SCHEMA: &str = include_str!("../sql/outbox.sql");

/// What can go wrong writing to the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The table name is not a plain (optionally schema-qualified) identifier.
    #[error("outbox table {0:?}: use letters, digits and _, optionally schema.table")]
    InvalidTable(String),
    /// The database refused or failed; the transaction should be rolled back.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The event store the relay publishes to failed; the rows stay and are tried again.
    #[error("publishing failed: {0}")]
    Publish(String),
}

/// An outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    table: String,
}

impl Default for Outbox {
    /// The table `canon_outbox` (in the connection's search path).
    fn default() -> Self {
        Outbox {
            table: "canon_outbox".to_owned(),
        }
    }
}

/// One row for [`Outbox::enqueue_with`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The event.
    pub event: &'a CloudEvent,
    /// The topic, for a type no catalog declares (else the catalog's topic is used).
    pub topic: Option<&'a str>,
    /// Refuse unless the event's aggregate is at this sequence (0: new), as `canon serve`'s
    /// `Canon-Expected-Sequence` does.
    pub expected_sequence: Option<u64>,
}

impl Outbox {
    /// An outbox in `table` (`name` or `schema.name`).
    pub fn new(table: &str) -> Result<Outbox, OutboxError> {
        let ident = |p: &str| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && p.len() <= 50
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| ident(p)) {
            return Err(OutboxError::InvalidTable(table.to_owned()));
        }
        Ok(Outbox {
            table: table.to_owned(),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table, its rejected-rows table and its notification trigger if missing.
    pub async fn install(
        &self,
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<(), OutboxError> {
        client
            .batch_execute(&SCHEMA.replace("{table}", &self.table))
            .await?;
        Ok(())
    }

    /// Writes `event` into the outbox within `tx`: it is relayed once `tx` commits, and never if
    /// it rolls back. Returns the row's id.
    pub async fn enqueue(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &CloudEvent,
    ) -> Result<i64, OutboxError> {
        self.enqueue_with(
            tx,
            Row {
                event,
                topic: None,
                expected_sequence: None,
            },
        )
        .await
    }

    /// Writes one row with a topic or an expected sequence.
    pub async fn enqueue_with(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        row: Row<'_>,
    ) -> Result<i64, OutboxError> {
        let json = String::from_utf8_lossy(&row.event.to_json()).into_owned();
        let expected = row
            .expected_sequence
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {} (topic, expected_sequence, event) VALUES ($1, $2, $3::text::json)
                 RETURNING id",
                self.table
            ))
            .await?;
        Ok(tx
            .query_one(&stmt, &[&row.topic, &expected, &json])
            .await?
            .get(0))
    }

    /// Writes several events in order within `tx`, in one statement. Returns their ids.
    pub async fn enqueue_all(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        events: &[CloudEvent],
    ) -> Result<Vec<i64>, OutboxError> {
        let docs: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned())
            .collect();
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {} (event)
                 SELECT u.e::json FROM unnest($1::text[]) WITH ORDINALITY AS u(e, n) ORDER BY u.n
                 RETURNING id",
                self.table
            ))
            .await?;
        let mut ids: Vec<i64> = tx
            .query(&stmt, &[&docs])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(Outbox::default().table(), "canon_outbox");
        assert!(Outbox::new("app.outbox_1").is_ok());
        for bad in ["", "a.b.c", "x;drop table y", "1abc", "a b"] {
            assert!(Outbox::new(bad).is_err(), "{bad}");
        }
    }
}
