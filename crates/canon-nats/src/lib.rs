//! The NATS JetStream backend (`nats://`): Canon's delivery contract on JetStream's own
//! machinery, so several Canon processes over one JetStream share the work with no
//! coordination of their own. docs/backends.md maps every rule; the short of it:
//!
//! - **Native.** A topic is a stream (retention by `max_age` and `max_bytes`); a publish is a
//!   JetStream publish with `Nats-Msg-Id` = (`source`, `id`) (P4, the answer carries the
//!   original's sequence), a batch is an atomic batch (ADR-50, P2), an expected sequence is
//!   `Nats-Expected-Last-Subject-Sequence` on the key's subject (P6). A group is a durable pull
//!   consumer; a lease is AckWait, extended with `+WPI`; a retry is `-NAK` with a delay; the
//!   attempt number is JetStream's delivery count; a reset is `CONSUMER.RESET` (2.14).
//! - **On top.** Idempotency keys (P5) are claims on a per-key subject with
//!   `Nats-Expected-Last-Subject-Sequence: 0` and a TTL of the dedup window; dead letters go to
//!   a stream fed on the last attempt (R2, R5) and come back as copies for the one group (R7);
//!   per-key ordering (O1, O2) holds an event until its key's previous one is done; attempt
//!   histories live in a key-value bucket; lookups by id, correlation and causation (L3, L4) use
//!   an index stream that is brought up to date when asked; `lease-lost` (C3, C4) is told by the
//!   process that handed out the lease.
//!
//! Durability is the server's: Canon answers a publish once JetStream acknowledged it. A
//! single nats-server with file storage syncs to disk every 2 minutes by default, so an
//! acknowledged publish survives a crash of Canon or of nats-server but not of the machine,
//! unless the server runs with `sync_interval: always` or the streams are replicated (P1).
//! Needs nats-server 2.14 or later (atomic batches, message TTLs, consumer reset).

mod dlq;
mod groups;
mod index;
mod js;
mod kv;
mod names;
mod publish;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use canon_backend::{
    Backend, BackendError, Capabilities, Capability, DeadLetter, DeadLetterFilter, Delivery,
    GroupConfig, GroupInfo, KvEntry, LeaseToken, PublishOutcome, PublishRequest, RedriveOptions,
    RedriveReport, StartPosition, StoredEvent, TopicConfig, TopicInfo,
};
use futures_util::StreamExt as _;

use js::{Js, code};
use names::{Space, TopicNames};

/// The oldest nats-server this backend runs on.
const MIN_SERVER: (u64, u64) = (2, 14);

/// A JetStream backend. Cloning is cheap and shares the connection and the lease table.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) js: Js,
    pub(crate) space: names::Space,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    pub(crate) leases: groups::Leases,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// How long a topic's dedup window, read from its stream, is used before it is read again.
/// It bounds how long a server keeps claiming idempotency keys for the old window after
/// another server sharing the JetStream reconfigured the topic.
pub const WINDOW_FRESH: Duration = Duration::from_secs(5);

/// The dedup window stored in a stream's configuration (`duplicate_window`, in nanoseconds;
/// JetStream's default of two minutes if absent).
pub(crate) fn stream_window(info: &serde_json::Value) -> Duration {
    info.pointer("/config/duplicate_window")
        .and_then(serde_json::Value::as_u64)
        .map_or(Duration::from_secs(120), Duration::from_nanos)
}

/// A topic's dedup window and when it was read.
struct Window {
    value: Duration,
    read: std::time::Instant,
}

/// A topic's JetStream objects, opened once per process.
pub(crate) struct Topic {
    pub(crate) names: TopicNames,
    /// Its dedup window (for the TTL of idempotency-key claims), see `dedup_window`.
    dedup_window: Mutex<Window>,
    pub(crate) state: jetstream::kv::Store,
    /// Bounds this process's atomic batches in flight (JetStream takes 50 per stream).
    pub(crate) batches: tokio::sync::Semaphore,
    /// One index catch-up at a time.
    pub(crate) indexing: tokio::sync::Mutex<()>,
    pub(crate) groups: RwLock<HashMap<String, Arc<groups::Group>>>,
}

impl Topic {
    /// Records the dedup window as read (or set) by a request sent at `asked`, unless a later
    /// request's value is recorded already (an answer that comes late does not undo a newer
    /// one), and returns the value it read.
    pub(crate) fn window_read(&self, asked: std::time::Instant, value: Duration) -> Duration {
        let mut known = lock(&self.dedup_window);
        if asked >= known.read {
            *known = Window { value, read: asked };
        }
        value
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A NATS error as a storage failure.
pub(crate) fn nats_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Storage {
        message: format!("NATS: {e}"),
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl NatsBackend {
    /// Connects with a backend URL, `nats://host:port`, optionally with `?namespace=NAME`: the
    /// streams and subjects of one Canon installation, so that several share a JetStream
    /// (default: none, streams named `CANON_<topic>`). Checks the server is recent enough.
    pub async fn open(url: &str) -> Result<NatsBackend, BackendError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut namespace = "";
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("namespace", v)) => namespace = v,
                _ => {
                    return Err(BackendError::InvalidConfig(format!(
                        "unknown NATS URL parameter {pair:?}: Canon takes namespace=NAME"
                    )));
                }
            }
        }
        NatsBackend::open_in(base, namespace).await
    }

    /// Connects to `url` with the streams and subjects of `namespace` ("" for none).
    pub async fn open_in(url: &str, namespace: &str) -> Result<NatsBackend, BackendError> {
        let client = async_nats::ConnectOptions::new()
            .name("canon")
            .request_timeout(Some(js::TIMEOUT))
            .connect(url)
            .await
            .map_err(|e| BackendError::Storage {
                message: format!("cannot connect to NATS at {url}: {e}"),
                retry_after: Some(Duration::from_secs(1)),
            })?;
        let server = client.server_info();
        if !server.jetstream {
            return Err(BackendError::InvalidConfig(format!(
                "the NATS server at {url} runs without JetStream: start it with -js"
            )));
        }
        if version(&server.version).is_none_or(|v| v < MIN_SERVER) {
            return Err(BackendError::InvalidConfig(format!(
                "nats-server {} is too old: Canon needs {}.{} or later (atomic batches, message \
                 TTLs, consumer reset)",
                server.version, MIN_SERVER.0, MIN_SERVER.1
            )));
        }
        let ctx = jetstream::new(client.clone());
        let leases = groups::Leases::default();
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| Inner {
            js: Js { client, ctx },
            space: Space::new(namespace),
            topics: RwLock::new(HashMap::new()),
            keepalive: tokio::spawn(groups::keep_alive(weak.clone())),
            leases,
        });
        Ok(NatsBackend { inner })
    }

    /// Deletes every stream and bucket of this backend's namespace: everything it stored.
    /// For tests and for tearing an installation down; there is no undo.
    pub async fn destroy(&self) -> Result<(), BackendError> {
        let names: Vec<String> = self
            .js()
            .ctx
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for n in names.iter().filter(|n| self.inner.space.owns_stream(n)) {
            self.js().ctx.delete_stream(n).await.map_err(nats_err)?;
        }
        Ok(())
    }

    pub(crate) fn js(&self) -> &Js {
        &self.inner.js
    }

    /// The topic's handle, opened from JetStream the first time (`UnknownTopic` if its stream
    /// does not exist).
    pub(crate) async fn topic(&self, topic: &str) -> Result<Arc<Topic>, BackendError> {
        if let Some(t) = self.cached_topic(topic) {
            return Ok(t);
        }
        let names = TopicNames::new(&self.inner.space, topic);
        let info = match self
            .js()
            .api(
                &format!("STREAM.INFO.{}", names.stream),
                &serde_json::json!({}),
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some(code::STREAM_NOT_FOUND) => {
                return Err(BackendError::UnknownTopic(topic.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        self.open_topic(names, stream_window(&info)).await
    }

    /// The topic's dedup window: as last read from its stream, read again once that is
    /// `WINDOW_FRESH` old, since another server on the same JetStream may have reconfigured the
    /// topic. One caller re-reads it; the others meanwhile use the last value, as does the one
    /// whose read fails (the next try comes `WINDOW_FRESH` later).
    pub(crate) async fn dedup_window(&self, t: &Topic) -> Duration {
        let asked = std::time::Instant::now();
        {
            let mut known = lock(&t.dedup_window);
            if asked.duration_since(known.read) < WINDOW_FRESH {
                return known.value;
            }
            // This caller re-reads it: the others see a fresh value until it answers.
            known.read = asked;
        }
        match index::stream_state(self, t).await {
            Ok(info) => t.window_read(asked, stream_window(&info)),
            Err(e) => {
                tracing::debug!(topic = %t.names.topic, error = %e, "dedup window not re-read");
                lock(&t.dedup_window).value
            }
        }
    }

    /// The topic if this process has opened it before.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    async fn open_topic(
        &self,
        names: TopicNames,
        window: Duration,
    ) -> Result<Arc<Topic>, BackendError> {
        let state = match self.js().ctx.get_key_value(&names.state).await {
            Ok(s) => s,
            Err(_) => self
                .js()
                .ctx
                .create_key_value(jetstream::kv::Config {
                    bucket: names.state.clone(),
                    history: 1,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(nats_err)?,
        };
        let topic = Arc::new(Topic {
            dedup_window: Mutex::new(Window {
                value: window,
                read: std::time::Instant::now(),
            }),
            state,
            batches: tokio::sync::Semaphore::new(32),
            indexing: tokio::sync::Mutex::new(()),
            groups: RwLock::new(HashMap::new()),
            names,
        });
        let mut topics = self
            .inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Arc::clone(
            topics.entry(topic.names.topic.clone()).or_insert(topic),
        ))
    }

    async fn put_stream(&self, config: stream::Config) -> Result<(), BackendError> {
        match self.js().ctx.get_stream(&config.name).await {
            Ok(_) => self
                .js()
                .ctx
                .update_stream(config)
                .await
                .map(drop)
                .map_err(nats_err),
            Err(_) => self
                .js()
                .ctx
                .create_stream(config)
                .await
                .map(drop)
                .map_err(nats_err),
        }
    }
}

fn valid_name(kind: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() || name.len() > 100 || name.contains('\0') {
        return Err(BackendError::InvalidConfig(format!(
            "{kind} names are 1 to 100 bytes without NUL on JetStream, got {name:?}"
        )));
    }
    Ok(())
}

impl Backend for NatsBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities(vec![
            Capability::OrderedDelivery,
            Capability::AtomicBatch,
            Capability::OptimisticConcurrency,
            Capability::IdempotencyKeys,
        ])
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<(), BackendError> {
        valid_name("topic", &config.name)?;
        let names = TopicNames::new(&self.inner.space, &config.name);
        // JetStream wants the dedup window within max_age.
        let window = config
            .max_age
            .map_or(config.dedup_window, |a| a.min(config.dedup_window));
        // A `duplicate_window` of 0 is JetStream's default (2 minutes), not "remember nothing".
        if window.is_zero() {
            return Err(BackendError::InvalidConfig(format!(
                "topic {:?}: a dedup window (or max age) of 0 is not possible on JetStream, \
                 where 0 means its default of 2 minutes",
                config.name
            )));
        }
        let mut metadata = HashMap::new();
        metadata.insert("canon.topic".to_owned(), config.name.clone());
        self.put_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.all()],
            storage: stream::StorageType::File,
            max_age: config.max_age.unwrap_or_default(),
            max_bytes: config
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            discard: stream::DiscardPolicy::Old,
            duplicate_window: window,
            allow_direct: true,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            metadata,
            ..Default::default()
        })
        .await?;
        self.put_stream(stream::Config {
            name: names.dlq.clone(),
            subjects: vec![names.dlq_all()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(600),
            allow_direct: true,
            ..Default::default()
        })
        .await?;
        self.put_stream(stream::Config {
            name: names.index.clone(),
            subjects: vec![names.index_all()],
            storage: stream::StorageType::File,
            max_age: config.max_age.unwrap_or_default(),
            duplicate_window: Duration::from_secs(600).min(config.max_age.unwrap_or(Duration::MAX)),
            allow_direct: true,
            ..Default::default()
        })
        .await?;
        let topic = self.open_topic(names, window).await?;
        // Set now that the stream holds it: a re-read sent before this does not undo it.
        topic.window_read(std::time::Instant::now(), window);
        Ok(())
    }

    async fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        let t = self.topic(topic).await?;
        publish::publish(self, &t, batch).await
    }

    async fn publish_each(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Vec<Result<PublishOutcome, BackendError>> {
        match self.topic(topic).await {
            Ok(t) => publish::publish_each(self, &t, batch).await,
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn create_group(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
    ) -> Result<(), BackendError> {
        valid_name("group", group)?;
        let t = self.topic(topic).await?;
        groups::create(self, &t, group, config).await
    }

    async fn pull(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        let t = self.topic(topic).await?;
        let g = groups::get(self, &t, group).await?;
        groups::pull(self, &t, &g, consumer, max, wait).await
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BackendError> {
        // Most acks are one `+ACK`; the rest (and their larger future) go boxed.
        if let Some(reply) = groups::plain_ack(self, token) {
            return Ok(self.js().settle(&reply, "+ACK").await?);
        }
        Box::pin(async {
            let t = self.topic(&token.topic).await?;
            let g = groups::get(self, &t, &token.group).await?;
            groups::ack(self, &t, &g, token).await
        })
        .await
    }

    async fn nack(
        &self,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        let t = self.topic(&token.topic).await?;
        let g = groups::get(self, &t, &token.group).await?;
        groups::nack(self, &t, &g, token, delay, error).await
    }

    async fn extend(&self, token: &LeaseToken, by: Duration) -> Result<(), BackendError> {
        let t = self.topic(&token.topic).await?;
        let g = groups::get(self, &t, &token.group).await?;
        groups::extend(self, &t, &g, token, by).await
    }

    async fn dead_letter(
        &self,
        token: &LeaseToken,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        let t = self.topic(&token.topic).await?;
        let g = groups::get(self, &t, &token.group).await?;
        groups::reject(self, &t, &g, token, error).await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        let t = self.topic(topic).await?;
        groups::get(self, &t, group).await?;
        Ok(dlq::list(self, &t, group, filter)
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    async fn redrive(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
        options: RedriveOptions,
    ) -> Result<RedriveReport, BackendError> {
        let t = self.topic(topic).await?;
        groups::get(self, &t, group).await?;
        dlq::redrive(self, &t, group, filter, options).await
    }

    async fn purge(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<usize, BackendError> {
        let t = self.topic(topic).await?;
        groups::get(self, &t, group).await?;
        dlq::purge(self, &t, group, filter).await
    }

    async fn reset(
        &self,
        topic: &str,
        group: &str,
        position: StartPosition,
    ) -> Result<(), BackendError> {
        let t = self.topic(topic).await?;
        let g = groups::get(self, &t, group).await?;
        let seq = index::locate(self, &t, &position).await?;
        groups::reset(self, &t, &g, seq).await
    }

    async fn events_by_id(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        let t = self.topic(topic).await?;
        index::lookup(self, &t, index::Kind::Id, id).await
    }

    async fn events_by_correlation(
        &self,
        topic: &str,
        correlation_id: &str,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        let t = self.topic(topic).await?;
        index::lookup(self, &t, index::Kind::Correlation, correlation_id).await
    }

    async fn effects_of(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        let t = self.topic(topic).await?;
        index::lookup(self, &t, index::Kind::Causation, id).await
    }

    async fn topics(&self) -> Result<Vec<String>, BackendError> {
        let space = &self.inner.space;
        let mut names: Vec<String> = self
            .js()
            .ctx
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .filter_map(|n| async move { space.topic_of_stream(&n) })
            .collect()
            .await;
        names.sort();
        Ok(names)
    }

    async fn topic_info(&self, topic: &str) -> Result<TopicInfo, BackendError> {
        let t = self.topic(topic).await?;
        index::topic_info(self, &t).await
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        let t = self.topic(topic).await?;
        index::read(self, &t, from, max, wait).await
    }

    async fn locate(&self, topic: &str, position: &StartPosition) -> Result<u64, BackendError> {
        let t = self.topic(topic).await?;
        index::locate(self, &t, position).await
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, BackendError> {
        let t = self.topic(topic).await?;
        groups::list(self, &t).await
    }

    async fn group_info(&self, topic: &str, group: &str) -> Result<GroupInfo, BackendError> {
        let t = self.topic(topic).await?;
        let g = groups::get(self, &t, group).await?;
        groups::info(self, &t, &g).await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), BackendError> {
        let t = self.topic(topic).await?;
        let g = groups::get(self, &t, group).await?;
        groups::delete(self, &t, &g).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BackendError> {
        kv::get(self, bucket, key).await
    }

    async fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64, BackendError> {
        kv::put(self, bucket, key, value, expect).await
    }

    async fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
        expect: Option<u64>,
    ) -> Result<bool, BackendError> {
        kv::delete(self, bucket, key, expect).await
    }

    async fn kv_list(&self, bucket: &str) -> Result<Vec<(String, KvEntry)>, BackendError> {
        kv::list(self, bucket).await
    }
}
