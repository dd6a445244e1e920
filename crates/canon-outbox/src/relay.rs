//! The relay: moves committed outbox rows into a Canon backend, through the catalog engine
//! (each row is checked and keyed like any publish), and deletes them.
//!
//! Guarantees, and how they are kept:
//! - **No row is skipped.** The relay keeps no position: each round reads the oldest rows
//!   still in the table and deletes what it published. A transaction that commits late with a
//!   lower id than rows already relayed (the sequence-gap trap of cursor-based relays) simply
//!   has its rows read in a later round.
//! - **At least once, never twice downstream.** A row is deleted only after its publish was
//!   acknowledged; a crash in between publishes it again, and the backend answers `duplicate`
//!   by the event's (`source`, `id`) (P4).
//! - **Per-aggregate order.** One relay per table is active (a session-level advisory lock;
//!   others wait as standbys), rows of a topic are published in id order in atomic batches, and
//!   a topic whose publish fails is not continued past the failure in that round. Rows of one
//!   aggregate are in id order whenever the producer serialises its writes to the aggregate,
//!   which it must do for its own consistency.
//! - **Low latency.** A trigger `NOTIFY`s on every insert; the relay `LISTEN`s, and polls too.
//! - **Nothing silently dropped.** A row that cannot be published (it breaks its catalog, or
//!   its expected sequence conflicts) moves to `<table>_rejected` with the reason.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use canon_backend::{Backend, BackendError, PublishOutcome, PublishRequest, TopicConfig};
use canon_engine::{Engine, SchemaLess, Submit};
use canon_envelope::{CloudEvent, Dialect};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::{Outbox, OutboxError};

/// Events per atomic publish (JetStream's atomic batches take at most 1,000 messages).
const CHUNK: usize = 500;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The producer's database (a libpq-style URL).
    pub url: String,
    /// The outbox table.
    pub outbox: Outbox,
    /// Rows read per round.
    pub batch: usize,
    /// How often to look without a notification.
    pub poll: Duration,
    /// Publish as this service: rows of types it does not declare as producer are rejected.
    pub producer: Option<String>,
}

impl RelayConfig {
    /// The default table, 1,000 rows a round, a poll every second, no producer check.
    pub fn new(url: impl Into<String>) -> RelayConfig {
        RelayConfig {
            url: url.into(),
            outbox: Outbox::default(),
            batch: 1000,
            poll: Duration::from_secs(1),
            producer: None,
        }
    }
}

/// What a relay did so far.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows published and deleted (duplicates included).
    pub relayed: AtomicU64,
    /// Of those, rows the backend already had (a publish repeated after a crash).
    pub duplicates: AtomicU64,
    /// Rows moved to the rejected table.
    pub rejected: AtomicU64,
    /// Whether this relay holds the table's lock now.
    pub leader: AtomicBool,
}

/// What a relay publishes through: an engine, or something that holds one (`canon serve`'s
/// state, so that its relays share the server's catalogs and backend).
pub trait Publisher: Send + Sync + 'static {
    /// The backend the engine publishes to.
    type Backend: Backend;
    /// The engine.
    fn engine(&self) -> &Engine<Self::Backend>;
    /// The settings of a topic the relay creates (with no catalog, topics are made as rows
    /// name them): the built-in defaults unless the publisher has its own (`canon serve`
    /// applies its `topic_defaults` and `topics` settings).
    fn topic_config(&self, name: &str) -> TopicConfig {
        TopicConfig::new(name)
    }
}

impl<B: Backend> Publisher for Engine<B> {
    type Backend = B;
    fn engine(&self) -> &Engine<B> {
        self
    }
}

/// Moves one outbox table's rows into a backend.
#[derive(Debug)]
pub struct Relay<P> {
    config: RelayConfig,
    publisher: Arc<P>,
    stats: Arc<RelayStats>,
}

/// A row as read from the table.
struct OutboxRow {
    id: i64,
    topic: Option<String>,
    dialect: Option<String>,
    expected: Option<i64>,
    event: String,
}

impl<P: Publisher> Relay<P> {
    /// A relay publishing through `publisher`'s engine.
    pub fn new(config: RelayConfig, publisher: Arc<P>) -> Relay<P> {
        Relay {
            config,
            publisher,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Relays until `shutdown` completes: connects (again after a failure, with backoff),
    /// installs the table if missing, waits to be the table's one active relay, then moves rows
    /// as they commit. A shutdown between rounds loses nothing: unpublished rows stay.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), OutboxError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = self.session() => {
                    self.stats.leader.store(false, Ordering::SeqCst);
                    if let Err(e) = r {
                        tracing::warn!(error = %e, table = self.config.outbox.table(), "outbox relay session ended");
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// One connection: leadership, then rounds until something fails.
    async fn session(&self) -> Result<(), OutboxError> {
        let (client, mut connection) = tokio_postgres::connect(&self.config.url, NoTls).await?;
        let wake = Arc::new(Notify::new());
        let notifications = {
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(m)) = messages.next().await {
                    if let AsyncMessage::Notification(_) = m {
                        wake.notify_one();
                    }
                }
            })
        };
        let result = self.lead(&client, &wake).await;
        notifications.abort();
        result
    }

    async fn lead(&self, client: &Client, wake: &Notify) -> Result<(), OutboxError> {
        let table = self.config.outbox.table();
        self.config.outbox.install(client).await?;
        loop {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('canon-relay'), hashtext($1))",
                    &[&table],
                )
                .await?
                .get(0);
            if got {
                break;
            }
            tokio::time::sleep(self.config.poll).await;
        }
        self.stats.leader.store(true, Ordering::SeqCst);
        tracing::info!(table, "outbox relay active");
        client.batch_execute("LISTEN canon_outbox").await?;
        loop {
            let (moved, blocked) = self.round(client).await?;
            if blocked {
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else if moved == 0 {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll) => {}
                }
            }
        }
    }

    /// Reads the oldest rows, publishes them, deletes (or rejects) what was settled. Returns
    /// how many rows were settled, and whether a topic's backend failed (its rows stay).
    async fn round(&self, client: &Client) -> Result<(usize, bool), OutboxError> {
        let table = self.config.outbox.table();
        let limit = i64::try_from(self.config.batch.max(1)).unwrap_or(1000);
        let rows: Vec<OutboxRow> = client
            .query(
                &format!(
                    "SELECT id, topic, dialect, expected_sequence, event::text FROM {table}
                     ORDER BY id LIMIT $1"
                ),
                &[&limit],
            )
            .await?
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                topic: r.get(1),
                dialect: r.get(2),
                expected: r.get(3),
                event: r.get(4),
            })
            .collect();
        if rows.is_empty() {
            return Ok((0, false));
        }
        let mut done: Vec<i64> = Vec::new();
        let mut rejected: Vec<(i64, String)> = Vec::new();
        // Topics in order of their first row; each topic's rows in id order.
        let mut order: Vec<String> = Vec::new();
        let mut by_topic: HashMap<String, Vec<(i64, PublishRequest)>> = HashMap::new();
        for row in rows {
            match self.prepare(&row) {
                Ok((topic, request)) => {
                    if !by_topic.contains_key(&topic) {
                        order.push(topic.clone());
                    }
                    by_topic.entry(topic).or_default().push((row.id, request));
                }
                Err(reason) => rejected.push((row.id, reason)),
            }
        }
        let mut blocked = false;
        let mut duplicates = 0u64;
        for topic in order {
            let items = by_topic.remove(&topic).unwrap_or_default();
            match self.publish_topic(&topic, items).await {
                Publish::Done(ids, rej, dup) => {
                    done.extend(ids);
                    rejected.extend(rej);
                    duplicates += dup;
                }
                Publish::Stopped(ids, rej, dup, e) => {
                    done.extend(ids);
                    rejected.extend(rej);
                    duplicates += dup;
                    blocked = true;
                    tracing::warn!(topic, error = %e, "publishing outbox rows failed; they stay");
                }
            }
        }
        let settled = done.len() + rejected.len();
        if settled > 0 {
            self.settle(client, &done, &rejected).await?;
        }
        self.stats
            .relayed
            .fetch_add(u64::try_from(done.len()).unwrap_or(0), Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        self.stats.rejected.fetch_add(
            u64::try_from(rejected.len()).unwrap_or(0),
            Ordering::Relaxed,
        );
        Ok((settled, blocked))
    }

    /// The row as a publish request on its topic, or why it cannot be published.
    fn prepare(&self, row: &OutboxRow) -> Result<(String, PublishRequest), String> {
        let dialect = match &row.dialect {
            None => Dialect::CloudEvents,
            Some(d) => d.parse().map_err(|_| format!("unknown dialect {d:?}"))?,
        };
        let event: CloudEvent = dialect
            .decode(row.event.as_bytes())
            .map_err(|e| format!("the event does not decode: {e}"))?;
        let submit = Submit {
            event,
            expected_sequence: row.expected.map(|s| u64::try_from(s).unwrap_or(0)),
        };
        let p = self
            .publisher
            .engine()
            .prepare(
                submit,
                self.config.producer.as_deref(),
                row.topic.as_deref(),
            )
            .map_err(|r| r.to_string())?;
        Ok((p.topic, p.request))
    }

    /// Publishes one topic's rows in order, in atomic chunks. A chunk refused for one of its
    /// events is published event by event, so only the refused ones are rejected. A storage
    /// failure stops the topic: rows after it wait for the next round, to keep their order.
    async fn publish_topic(&self, topic: &str, items: Vec<(i64, PublishRequest)>) -> Publish {
        let engine = self.publisher.engine();
        let backend = engine.backend();
        // With no catalog every topic is schema-less, and made as rows name it (as `canon
        // serve` makes them on publish).
        if *engine.schemaless() == SchemaLess::All
            && let Err(BackendError::UnknownTopic(_)) = backend.topic_info(topic).await
            && let Err(e) = backend
                .create_topic(self.publisher.topic_config(topic))
                .await
        {
            return Publish::Stopped(Vec::new(), Vec::new(), 0, e);
        }
        let (mut done, mut rejected, mut duplicates) = (Vec::new(), Vec::new(), 0u64);
        let count = |outcomes: &[PublishOutcome]| {
            outcomes
                .iter()
                .filter(|o| matches!(o, PublishOutcome::Duplicate { .. }))
                .count() as u64
        };
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<(i64, PublishRequest)> = rest.by_ref().take(CHUNK).collect();
            let (ids, requests): (Vec<i64>, Vec<PublishRequest>) = chunk.iter().cloned().unzip();
            match backend.publish(topic, requests).await {
                Ok(outcomes) => {
                    duplicates += count(&outcomes);
                    done.extend(ids);
                }
                Err(e) if refuses_an_event(&e) => {
                    for (id, request) in chunk {
                        match backend.publish(topic, vec![request]).await {
                            Ok(outcomes) => {
                                duplicates += count(&outcomes);
                                done.push(id);
                            }
                            Err(e) if refuses_an_event(&e) => rejected.push((id, e.to_string())),
                            Err(e) => return Publish::Stopped(done, rejected, duplicates, e),
                        }
                    }
                }
                Err(e) => return Publish::Stopped(done, rejected, duplicates, e),
            }
        }
        Publish::Done(done, rejected, duplicates)
    }

    /// Deletes published rows and moves rejected ones aside, in one transaction.
    async fn settle(
        &self,
        client: &Client,
        done: &[i64],
        rejected: &[(i64, String)],
    ) -> Result<(), OutboxError> {
        let table = self.config.outbox.table();
        let (ids, reasons): (Vec<i64>, Vec<&str>) =
            rejected.iter().map(|(i, r)| (*i, r.as_str())).unzip();
        for (id, reason) in rejected {
            tracing::warn!(table, id, reason, "outbox row rejected");
        }
        let all: Vec<i64> = done.iter().copied().chain(ids.iter().copied()).collect();
        client.batch_execute("BEGIN").await?;
        let result = async {
            if !ids.is_empty() {
                client
                    .execute(
                        &format!(
                            "INSERT INTO {table}_rejected
                               (id, created_at, topic, dialect, expected_sequence, event, reason)
                             SELECT o.id, o.created_at, o.topic, o.dialect, o.expected_sequence,
                                    o.event, u.reason
                             FROM {table} o
                             JOIN unnest($1::int8[], $2::text[]) AS u(id, reason) ON u.id = o.id
                             ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&ids, &reasons],
                    )
                    .await?;
            }
            client
                .execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&all])
                .await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result.map_err(OutboxError::from)
    }
}

/// How one topic's publish ended: settled ids, rejected rows, duplicates, and the failure that
/// stopped it, if one did.
enum Publish {
    Done(Vec<i64>, Vec<(i64, String)>, u64),
    Stopped(Vec<i64>, Vec<(i64, String)>, u64, BackendError),
}

/// Whether the backend refused the publish because of an event in it (which retrying cannot
/// fix), rather than failing.
fn refuses_an_event(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::Conflict { .. }
            | BackendError::ExpectedSequenceWithoutKey
            | BackendError::InvalidConfig(_)
            | BackendError::UnsupportedCapability(_)
    )
}
