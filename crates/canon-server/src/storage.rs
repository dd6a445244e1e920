//! The backend chosen by URL: `embedded` (the default, in `data_dir`) or `embedded://PATH`,
//! `nats://HOST:PORT[?namespace=NAME]` (feature `nats`), `postgres://USER@HOST/DB[?schema=NAME]`
//! (feature `postgres`). [`AnyBackend`] is one type for all of them, so the server, the relay
//! and the load tool are compiled once, not once per backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canon_backend::{
    Backend, BackendError, Capabilities, DeadLetter, DeadLetterFilter, Delivery, GroupConfig,
    GroupInfo, KvEntry, LeaseToken, PublishOutcome, PublishRequest, RedriveOptions, RedriveReport,
    StartPosition, StoredEvent, TopicConfig, TopicInfo,
};
use canon_embedded::{Durability, EmbeddedBackend};

/// One of Canon's backends.
#[derive(Debug)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per process, opened once and never moved in bulk"
)]
pub enum AnyBackend {
    /// The embedded backend (a directory on local disk).
    Embedded(EmbeddedBackend),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(canon_nats::NatsBackend),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(canon_postgres::PgBackend),
}

/// Where a backend URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded data directory.
    Embedded(PathBuf),
    /// A JetStream server.
    Nats(String),
    /// A PostgreSQL database.
    Postgres(String),
}

impl Location {
    /// Reads a backend URL; `embedded` (or an empty string) means `data_dir`.
    pub fn parse(url: &str, data_dir: &Path) -> Result<Location, BackendError> {
        match url.split_once("://") {
            None if url.is_empty() || url == "embedded" => {
                Ok(Location::Embedded(data_dir.to_owned()))
            }
            Some(("embedded", path)) => Ok(Location::Embedded(if path.is_empty() {
                data_dir.to_owned()
            } else {
                PathBuf::from(path)
            })),
            Some(("nats", _)) => Ok(Location::Nats(url.to_owned())),
            Some(("postgres" | "postgresql", _)) => Ok(Location::Postgres(url.to_owned())),
            _ => Err(BackendError::InvalidConfig(format!(
                "backend {url:?}: use embedded, embedded://PATH, nats://HOST:PORT or \
                 postgres://USER@HOST/DATABASE"
            ))),
        }
    }

    /// The URL without credentials, for logs.
    pub fn display(&self) -> String {
        match self {
            Location::Embedded(p) => format!("embedded://{}", p.display()),
            // The last `@` ends the credentials (a password written with a raw `@` in it
            // must not leave its tail in the logs).
            Location::Nats(u) | Location::Postgres(u) => match u.rsplit_once('@') {
                Some((scheme_user, host)) => {
                    let scheme = scheme_user.split("://").next().unwrap_or("");
                    format!("{scheme}://…@{host}")
                }
                None => u.clone(),
            },
        }
    }
}

impl AnyBackend {
    /// Opens the backend a location names (`durability` applies to the embedded one).
    pub async fn open(location: &Location, durability: Durability) -> Result<Self, BackendError> {
        match location {
            Location::Embedded(dir) => Ok(AnyBackend::Embedded(EmbeddedBackend::open(
                dir, durability,
            )?)),
            #[cfg(feature = "nats")]
            Location::Nats(url) => Ok(AnyBackend::Nats(canon_nats::NatsBackend::open(url).await?)),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Ok(AnyBackend::Postgres(
                canon_postgres::PgBackend::open(url).await?,
            )),
            #[allow(
                unreachable_patterns,
                reason = "reached when a backend's feature is off"
            )]
            other => Err(BackendError::InvalidConfig(format!(
                "{} needs a canon built with its feature",
                other.display()
            ))),
        }
    }

    /// The backend's kind: `embedded`, `nats` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyBackend::Embedded(_) => "embedded",
            #[cfg(feature = "nats")]
            AnyBackend::Nats(_) => "nats",
            #[cfg(feature = "postgres")]
            AnyBackend::Postgres(_) => "postgres",
        }
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Embedded($b) => $call,
            #[cfg(feature = "nats")]
            AnyBackend::Nats($b) => $call,
            #[cfg(feature = "postgres")]
            AnyBackend::Postgres($b) => $call,
        }
    };
}

impl Backend for AnyBackend {
    fn capabilities(&self) -> Capabilities {
        each!(self, b => b.capabilities())
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<(), BackendError> {
        each!(self, b => b.create_topic(config).await)
    }

    async fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        each!(self, b => b.publish(topic, batch).await)
    }

    async fn publish_each(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Vec<Result<PublishOutcome, BackendError>> {
        each!(self, b => b.publish_each(topic, batch).await)
    }

    async fn create_group(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
    ) -> Result<(), BackendError> {
        each!(self, b => b.create_group(topic, group, config).await)
    }

    async fn pull(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        each!(self, b => b.pull(topic, group, consumer, max, wait).await)
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BackendError> {
        each!(self, b => b.ack(token).await)
    }

    async fn ack_many(&self, tokens: &[LeaseToken]) -> Vec<Result<(), BackendError>> {
        each!(self, b => b.ack_many(tokens).await)
    }

    async fn ack_unconfirmed(&self, tokens: &[LeaseToken]) -> Vec<Result<(), BackendError>> {
        each!(self, b => b.ack_unconfirmed(tokens).await)
    }

    async fn nack(
        &self,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        each!(self, b => b.nack(token, delay, error).await)
    }

    async fn extend(&self, token: &LeaseToken, by: Duration) -> Result<(), BackendError> {
        each!(self, b => b.extend(token, by).await)
    }

    async fn dead_letter(
        &self,
        token: &LeaseToken,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        each!(self, b => b.dead_letter(token, error).await)
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        each!(self, b => b.dead_letters(topic, group, filter).await)
    }

    async fn redrive(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
        options: RedriveOptions,
    ) -> Result<RedriveReport, BackendError> {
        each!(self, b => b.redrive(topic, group, filter, options).await)
    }

    async fn purge(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<usize, BackendError> {
        each!(self, b => b.purge(topic, group, filter).await)
    }

    async fn reset(
        &self,
        topic: &str,
        group: &str,
        position: StartPosition,
    ) -> Result<(), BackendError> {
        each!(self, b => b.reset(topic, group, position).await)
    }

    async fn events_by_id(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        each!(self, b => b.events_by_id(topic, id).await)
    }

    async fn events_by_correlation(
        &self,
        topic: &str,
        correlation_id: &str,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        each!(self, b => b.events_by_correlation(topic, correlation_id).await)
    }

    async fn effects_of(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        each!(self, b => b.effects_of(topic, id).await)
    }

    async fn topics(&self) -> Result<Vec<String>, BackendError> {
        each!(self, b => b.topics().await)
    }

    async fn topic_info(&self, topic: &str) -> Result<TopicInfo, BackendError> {
        each!(self, b => b.topic_info(topic).await)
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        each!(self, b => b.read(topic, from, max, wait).await)
    }

    async fn locate(&self, topic: &str, position: &StartPosition) -> Result<u64, BackendError> {
        each!(self, b => b.locate(topic, position).await)
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, BackendError> {
        each!(self, b => b.groups(topic).await)
    }

    async fn group_info(&self, topic: &str, group: &str) -> Result<GroupInfo, BackendError> {
        each!(self, b => b.group_info(topic, group).await)
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), BackendError> {
        each!(self, b => b.delete_group(topic, group).await)
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BackendError> {
        each!(self, b => b.kv_get(bucket, key).await)
    }

    async fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64, BackendError> {
        each!(self, b => b.kv_put(bucket, key, value, expect).await)
    }

    async fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
        expect: Option<u64>,
    ) -> Result<bool, BackendError> {
        each!(self, b => b.kv_delete(bucket, key, expect).await)
    }

    async fn kv_list(&self, bucket: &str) -> Result<Vec<(String, KvEntry)>, BackendError> {
        each!(self, b => b.kv_list(bucket).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_name_their_backend() {
        let dir = Path::new("canon-data");
        assert_eq!(
            Location::parse("", dir).expect("default"),
            Location::Embedded(dir.into())
        );
        assert_eq!(
            Location::parse("embedded:///var/lib/canon", dir).expect("path"),
            Location::Embedded("/var/lib/canon".into())
        );
        assert_eq!(
            Location::parse("nats://127.0.0.1:4222", dir).expect("nats"),
            Location::Nats("nats://127.0.0.1:4222".into())
        );
        let pg = Location::parse("postgres://app:secret@db/app", dir).expect("pg");
        assert_eq!(pg.display(), "postgres://…@db/app");
        let raw_at = Location::parse("postgres://app:p@ss@db/app", dir).expect("pg");
        assert_eq!(raw_at.display(), "postgres://…@db/app");
        assert!(Location::parse("kafka://x", dir).is_err());
    }
}
