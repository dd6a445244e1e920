//! The PostgreSQL backend: topics, events, consumer groups, leases, dead letters and key-value
//! buckets in tables of one schema, so that several Canon processes share the work of one
//! database with no coordination of their own. docs/specs/delivery.md is the contract and
//! `canon-conformance` checks it.
//!
//! - Publishing: one writer task per topic and process gathers concurrent publishes into one
//!   transaction (group commit, as the embedded backend does), which locks the topic's row. So
//!   sequences are handed out in commit order, and a reader never sees a sequence that an
//!   earlier, still open transaction fills later (`publish`).
//! - Consuming: a group's row holds its cursor; `deliveries` holds what is pending at or below
//!   it (leased, waiting for a retry or a time, or held behind its ordering key). A pull locks
//!   the group's row, takes due rows with `FOR UPDATE SKIP LOCKED` and new events past the
//!   cursor; acks of every group are gathered into one statement per transaction (`groups`).
//! - Waking: a publish sends `NOTIFY` in its transaction; every process `LISTEN`s on one
//!   connection and wakes its waiting pulls (`wake`). A pull also polls, so a lost
//!   notification costs latency, never an event.
//! - Schema: versioned migrations run at open, under an advisory lock (`schema`).
//!
//! Durability is PostgreSQL's: a publish, ack or nack is answered after its transaction
//! commits, so with `synchronous_commit = on` (PostgreSQL's default) it survives a crash of
//! Canon, of PostgreSQL and of the machine (P1).

mod dlq;
mod groups;
mod kv;
mod maintain;
mod publish;
mod read;
mod schema;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use canon_backend::{
    Backend, BackendError, Capabilities, Capability, DeadLetter, DeadLetterFilter, Delivery,
    GroupConfig, GroupInfo, KvEntry, LeaseToken, PublishOutcome, PublishRequest, RedriveOptions,
    RedriveReport, StartPosition, StoredEvent, TopicConfig, TopicInfo,
};
use deadpool_postgres::{Manager, Object, Pool};
use tokio_postgres::NoTls;

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A libpq-style URL (`postgres://user:password@host:port/database`).
    pub url: String,
    /// The schema that holds Canon's tables (created if missing). Lower-case letters, digits
    /// and `_`, starting with a letter or `_`.
    pub schema: String,
    /// Connections in the pool (besides the one that listens for notifications).
    pub pool_size: usize,
}

impl PgConfig {
    /// Reads a backend URL: a PostgreSQL URL, optionally with `schema=NAME` (default `canon`) and
    /// `pool_size=N` (default 16) among its query parameters; Canon's parameters are taken out
    /// before the rest goes to the driver.
    pub fn from_url(url: &str) -> Result<PgConfig, BackendError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut config = PgConfig {
            url: String::new(),
            schema: "canon".to_owned(),
            pool_size: 16,
        };
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", v)) => v.clone_into(&mut config.schema),
                Some(("pool_size", v)) => {
                    config.pool_size = v.parse().map_err(|_| {
                        BackendError::InvalidConfig(format!("pool_size={v} is not a number"))
                    })?;
                }
                _ => rest.push(pair),
            }
        }
        config.url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok(config)
    }
}

/// A PostgreSQL backend. Cloning is cheap and shares the pool and the background tasks.
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    writers: publish::Writers,
    acks: groups::AckQueue,
    wakers: Arc<wake::Wakers>,
    /// The listener and the maintenance tasks, stopped when the backend is dropped.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("schema", &self.inner.db.schema)
            .finish_non_exhaustive()
    }
}

/// The pool and the schema every statement is written against.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    /// The schema's name, a validated identifier.
    pub(crate) schema: Arc<str>,
    /// The notification channel of this schema.
    pub(crate) channel: Arc<str>,
}

impl Db {
    /// A statement with `{s}` replaced by the schema.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.schema)
    }

    pub(crate) async fn client(&self) -> Result<Object, BackendError> {
        self.pool.get().await.map_err(|e| BackendError::Storage {
            message: format!("no PostgreSQL connection: {e}"),
            retry_after: Some(Duration::from_secs(1)),
        })
    }
}

/// A database error as a storage failure.
pub(crate) fn db_err(e: tokio_postgres::Error) -> BackendError {
    let message = match e.as_db_error() {
        Some(d) => format!("PostgreSQL: {}", d.message()),
        None => format!("PostgreSQL: {e}"),
    };
    BackendError::Storage {
        message,
        retry_after: None,
    }
}

fn valid_schema(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 50
}

impl PgBackend {
    /// Connects with a backend URL (see [`PgConfig::from_url`]), runs the migrations and starts
    /// the background tasks (notifications, retention, dedup pruning).
    pub async fn open(url: &str) -> Result<PgBackend, BackendError> {
        PgBackend::open_with(PgConfig::from_url(url)?).await
    }

    /// Connects with an explicit configuration.
    pub async fn open_with(config: PgConfig) -> Result<PgBackend, BackendError> {
        if !valid_schema(&config.schema) {
            return Err(BackendError::InvalidConfig(format!(
                "schema {:?}: use lower-case letters, digits and _ (at most 50)",
                config.schema
            )));
        }
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| BackendError::InvalidConfig(format!("PostgreSQL URL: {e}")))?;
        let pool = Pool::builder(Manager::new(pg.clone(), NoTls))
            .max_size(config.pool_size.max(2))
            .build()
            .map_err(|e| BackendError::InvalidConfig(format!("PostgreSQL pool: {e}")))?;
        let db = Db {
            pool,
            channel: format!("canon_{}", config.schema).into(),
            schema: config.schema.into(),
        };
        schema::migrate(&db).await?;
        let wakers = Arc::new(wake::Wakers::default());
        let tasks = vec![
            tokio::spawn(wake::listen(pg, db.channel.clone(), Arc::clone(&wakers))),
            tokio::spawn(maintain::run(db.clone())),
        ];
        Ok(PgBackend {
            inner: Arc::new(Inner {
                writers: publish::Writers::new(db.clone(), Arc::clone(&wakers)),
                acks: groups::AckQueue::start(db.clone(), Arc::clone(&wakers)),
                db,
                wakers,
                tasks,
            }),
        })
    }

    /// The schema this backend works in.
    pub fn schema(&self) -> &str {
        &self.inner.db.schema
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }
}

impl Backend for PgBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities(vec![
            Capability::OrderedDelivery,
            Capability::AtomicBatch,
            Capability::OptimisticConcurrency,
            Capability::IdempotencyKeys,
        ])
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<(), BackendError> {
        read::create_topic(self.db(), &config).await
    }

    async fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        self.inner.writers.publish(topic, batch).await
    }

    async fn create_group(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
    ) -> Result<(), BackendError> {
        groups::create(self.db(), topic, group, &config).await
    }

    async fn pull(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        groups::pull(
            self.db(),
            &self.inner.wakers,
            topic,
            group,
            consumer,
            max,
            wait,
        )
        .await
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BackendError> {
        self.inner.acks.ack(token).await
    }

    async fn nack(
        &self,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        groups::nack(self.db(), &self.inner.wakers, token, delay, error).await
    }

    async fn extend(&self, token: &LeaseToken, by: Duration) -> Result<(), BackendError> {
        groups::extend(self.db(), token, by).await
    }

    async fn dead_letter(
        &self,
        token: &LeaseToken,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        groups::reject(self.db(), &self.inner.wakers, token, error).await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        dlq::list(self.db(), topic, group, filter).await
    }

    async fn redrive(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
        options: RedriveOptions,
    ) -> Result<RedriveReport, BackendError> {
        dlq::redrive(self.db(), &self.inner.wakers, topic, group, filter, options).await
    }

    async fn purge(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<usize, BackendError> {
        dlq::purge(self.db(), topic, group, filter).await
    }

    async fn reset(
        &self,
        topic: &str,
        group: &str,
        position: StartPosition,
    ) -> Result<(), BackendError> {
        groups::reset(self.db(), &self.inner.wakers, topic, group, &position).await
    }

    async fn events_by_id(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        read::by_column(self.db(), topic, read::Column::Id, id).await
    }

    async fn events_by_correlation(
        &self,
        topic: &str,
        correlation_id: &str,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        read::by_column(self.db(), topic, read::Column::Correlation, correlation_id).await
    }

    async fn effects_of(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        read::by_column(self.db(), topic, read::Column::Causation, id).await
    }

    async fn topics(&self) -> Result<Vec<String>, BackendError> {
        read::topics(self.db()).await
    }

    async fn topic_info(&self, topic: &str) -> Result<TopicInfo, BackendError> {
        read::topic_info(self.db(), topic).await
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        read::read(self.db(), &self.inner.wakers, topic, from, max, wait).await
    }

    async fn locate(&self, topic: &str, position: &StartPosition) -> Result<u64, BackendError> {
        read::locate(self.db(), topic, position).await
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, BackendError> {
        groups::list(self.db(), topic).await
    }

    async fn group_info(&self, topic: &str, group: &str) -> Result<GroupInfo, BackendError> {
        groups::info(self.db(), topic, group).await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), BackendError> {
        groups::delete(self.db(), topic, group).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BackendError> {
        kv::get(self.db(), bucket, key).await
    }

    async fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64, BackendError> {
        kv::put(self.db(), bucket, key, value, expect).await
    }

    async fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
        expect: Option<u64>,
    ) -> Result<bool, BackendError> {
        kv::delete(self.db(), bucket, key, expect).await
    }

    async fn kv_list(&self, bucket: &str) -> Result<Vec<(String, KvEntry)>, BackendError> {
        kv::list(self.db(), bucket).await
    }
}

/// Sequences are `bigint` in the database and `u64` at the port; they never reach 2^63.
pub(crate) fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// A duration in whole milliseconds, as the database takes it.
pub(crate) fn ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canon_parameters_are_taken_out_of_the_url() {
        let c = PgConfig::from_url(
            "postgres://u:p@127.0.0.1:5432/db?schema=canon_a&sslmode=disable&pool_size=4",
        )
        .expect("config");
        assert_eq!(
            c,
            PgConfig {
                url: "postgres://u:p@127.0.0.1:5432/db?sslmode=disable".into(),
                schema: "canon_a".into(),
                pool_size: 4,
            }
        );
        assert!(valid_schema("canon_a1"));
        assert!(!valid_schema("Canon"));
        assert!(!valid_schema("a;drop"));
        assert!(PgConfig::from_url("postgres://x/db?pool_size=many").is_err());
    }
}
