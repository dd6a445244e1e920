//! The embedded backend: Canon's default. One directory on local disk holds every topic, group
//! and dead-letter queue; nothing to install or run. Built on fjall (an LSM-tree storage
//! engine); docs/specs/delivery.md is the contract and `canon-conformance` checks it.
//!
//! Durability: with [`Durability::Sync`] (the default) a publish, ack or nack is answered only
//! once the write holding it is on disk (`fdatasync`), shared by everything queued meanwhile
//! (group commit, see `writer`). [`Durability::LoseRecentOnOsCrash`] answers once the write is
//! in the operating system's buffers: it survives a crash of the process, not of the machine;
//! a background thread syncs the journal every [`BACKGROUND_SYNC`] (50 ms), so a machine crash
//! loses about the last 50 ms of acknowledged writes (more while the disk is slower than the
//! writes).

mod group;
mod store;
mod writeback;
mod writer;

pub use writer::BACKGROUND_SYNC;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use canon_backend::{
    Backend, BackendError, Capabilities, Capability, DeadLetter, DeadLetterFilter, Delivery,
    GroupConfig, GroupInfo, KvEntry, LeaseToken, PublishOutcome, PublishRequest, RedriveOptions,
    RedriveReport, StartPosition, StoredEvent, TopicConfig, TopicInfo,
};

use group::{GroupState, LeaseError, Log, Recovered};
use store::{Index, Store};
use writer::{Op, Space, TopicShared, TopicStats, Topics, Writer};

/// When an acknowledged write is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On disk (`fdatasync`) before it is acknowledged. The default.
    #[default]
    Sync,
    /// In the operating system's buffers before it is acknowledged, not synced: survives a crash
    /// of this process (the crash harness runs half its rounds in this mode), but an
    /// operating-system crash or power loss can lose the last acknowledged writes: those since
    /// the last background sync of the journal, which runs every [`BACKGROUND_SYNC`].
    LoseRecentOnOsCrash,
}

type GroupHandle = Arc<Mutex<GroupState>>;

/// The embedded backend over one data directory.
#[derive(Debug)]
pub struct EmbeddedBackend {
    store: Store,
    writer: Writer,
    topics: Topics,
    groups: RwLock<HashMap<(String, String), GroupHandle>>,
    /// Serialises key-value writes, so a compare-and-set reads and writes with no other write of
    /// the bucket in between (S2).
    kv_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves state that is still consistent per operation.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lost(_: LeaseError) -> BackendError {
    BackendError::LeaseLost
}

impl EmbeddedBackend {
    /// Opens (or creates) the data directory, recovering every topic and group in it.
    pub fn open(dir: impl AsRef<Path>, durability: Durability) -> Result<Self, BackendError> {
        let store = Store::open(dir.as_ref())?;
        let mut topics = HashMap::new();
        for item in store.topic.iter() {
            let (k, v) = item.into_inner().map_err(BackendError::storage)?;
            let name = String::from_utf8_lossy(&k[..k.len().saturating_sub(1)]).into_owned();
            let config = store::decode_topic(name.clone(), &v)
                .ok_or_else(|| BackendError::storage(format!("topic record {name} is corrupt")))?;
            let last = last_seq(&store, &name)?;
            let stats = topic_stats(&store, &name, last)?;
            topics.insert(name, Arc::new(TopicShared::new(&config, last, stats)));
        }
        let mut groups = HashMap::new();
        for item in store.group.iter() {
            let (k, v) = item.into_inner().map_err(BackendError::storage)?;
            let mut parts = k.split(|b| *b == 0);
            let (Some(topic), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (topic, name) = (
                String::from_utf8_lossy(topic).into_owned(),
                String::from_utf8_lossy(name).into_owned(),
            );
            let (config, floor) = store::decode_group(&v).ok_or_else(|| {
                BackendError::storage(format!("group record {topic}/{name} is corrupt"))
            })?;
            let prefix = store::group_prefix(&topic, &name);
            // The floor key is written on every advance; the record's copy only on changes.
            let floor = match store.floor.get(&prefix).map_err(BackendError::storage)? {
                Some(v) => <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(floor),
                None => floor,
            };
            let done: BTreeSet<u64> = store
                .done
                .prefix(&prefix)
                .filter_map(|g| g.key().ok())
                .filter_map(|k| store::seq_suffix(&k))
                .collect();
            let mut failures = HashMap::new();
            for g in store.attempt.prefix(&prefix) {
                let (k, v) = g.into_inner().map_err(BackendError::storage)?;
                let history = serde_json::from_slice(&v)
                    .ok()
                    .and_then(|j| store::decode_history(&j));
                if let (Some(seq), Some(history)) = (store::seq_suffix(&k), history) {
                    failures.insert(seq, history);
                }
            }
            let requeued: BTreeSet<u64> = store
                .requeue
                .prefix(&prefix)
                .filter_map(|g| g.key().ok())
                .filter_map(|k| store::seq_suffix(&k))
                .collect();
            let state = GroupState::new(
                topic.clone(),
                name.clone(),
                config,
                Recovered {
                    floor,
                    done,
                    failures,
                    requeued,
                },
            );
            groups.insert((topic, name), Arc::new(Mutex::new(state)));
        }
        let topics: Topics = Arc::new(RwLock::new(topics));
        let writer = Writer::start(store.clone(), durability, Arc::clone(&topics));
        Ok(EmbeddedBackend {
            store,
            writer,
            topics,
            groups: RwLock::new(groups),
            kv_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<TopicShared>, BackendError> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::UnknownTopic(name.to_owned()))
    }

    fn group(&self, topic: &str, group: &str) -> Result<GroupHandle, BackendError> {
        let groups = self
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups
            .get(&(topic.to_owned(), group.to_owned()))
            .cloned()
            .ok_or_else(|| BackendError::UnknownGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            })
    }

    /// Reads a topic's log up to what is committed now: a record the writer has written but
    /// not yet synced (its batch waits for the syncer) is not there for readers.
    fn log_reader(&self, topic: &TopicShared) -> LogReader<'_> {
        LogReader {
            store: &self.store,
            topic: topic.name.clone(),
            committed: topic.committed.load(Ordering::SeqCst),
        }
    }

    /// The DLQ entries of a group that match a filter, oldest first.
    fn matching_dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        let log = self.log_reader(&*self.topic(topic)?);
        let mut out = Vec::new();
        for g in self.store.dlq.prefix(store::group_prefix(topic, group)) {
            if filter.limit > 0 && out.len() == filter.limit {
                break;
            }
            let (k, v) = g.into_inner().map_err(BackendError::storage)?;
            let seq =
                store::seq_suffix(&k).ok_or_else(|| BackendError::storage("dlq key is corrupt"))?;
            let (reason, attempts, at, last_error, history) = store::decode_dlq(&v)
                .ok_or_else(|| BackendError::storage("dlq entry is corrupt"))?;
            // The entry's own copy; entries written before copies were kept read the log.
            let event = store::dlq_event(&v, seq)
                .or_else(|| log.get(seq))
                .ok_or_else(|| {
                    BackendError::storage(format!("dead-lettered event {seq} is missing"))
                })?;
            let entry = DeadLetter {
                event,
                reason,
                last_error,
                attempts,
                history,
                at: store::time_of(at),
            };
            if filter.matches(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The retained events with an id, from the dedup entries (one per source), in sequence
    /// order. After the dedup window a re-used (source, id) points at its newest event.
    fn by_id(&self, topic: &TopicShared, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        let log = self.log_reader(topic);
        let mut out = Vec::new();
        for g in self.store.dedup.prefix(store::id_prefix(&topic.name, id)) {
            let v = g.value().map_err(BackendError::storage)?;
            if let Some(e) = store::decode_seq_time(&v).and_then(|(seq, _)| log.get(seq)) {
                out.push(e);
            }
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// The retained events an index lists for a value, in sequence order.
    fn indexed(
        &self,
        topic: &TopicShared,
        kind: Index,
        value: &str,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        let log = self.log_reader(topic);
        let mut out = Vec::new();
        for g in self
            .store
            .index
            .prefix(store::index_prefix(&topic.name, kind, value))
        {
            let k = g.key().map_err(BackendError::storage)?;
            if let Some(e) = store::seq_suffix(&k).and_then(|seq| log.get(seq)) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The first sequence at or after a position (L1, L5).
    fn first_at(
        &self,
        shared: &TopicShared,
        position: &StartPosition,
    ) -> Result<u64, BackendError> {
        let log = self.log_reader(shared);
        let committed = log.committed;
        Ok(match position {
            StartPosition::Earliest => log
                .range(1, committed, 1)
                .first()
                .map_or(committed + 1, |e| e.seq),
            StartPosition::Latest => committed + 1,
            StartPosition::Time(t) => {
                // The first event stored at or after `t`; the log is in storage order.
                let mut from = 1;
                loop {
                    let chunk = log.range(from, committed, 1024);
                    let Some(last) = chunk.last().map(|e| e.seq) else {
                        break committed + 1;
                    };
                    if let Some(e) = chunk.iter().find(|e| e.published_at >= *t) {
                        break e.seq;
                    }
                    from = last + 1;
                }
            }
            StartPosition::EventId(id) => match self.by_id(shared, id)?.first() {
                Some(e) => e.seq,
                None => {
                    return Err(BackendError::InvalidConfig(format!(
                        "no retained event has id {id}"
                    )));
                }
            },
        })
    }

    /// The entry of a key-value key.
    fn kv_entry(&self, key: &[u8]) -> Result<Option<KvEntry>, BackendError> {
        let Some(v) = self.store.kv.get(key).map_err(BackendError::storage)? else {
            return Ok(None);
        };
        let (rev, value) = v
            .split_at_checked(8)
            .ok_or_else(|| BackendError::storage("kv entry is corrupt"))?;
        let revision = u64::from_be_bytes(rev.try_into().map_err(BackendError::storage)?);
        Ok(Some(KvEntry {
            value: value.to_vec(),
            revision,
        }))
    }

    /// Checks `expect` against a key's revision; returns the current revision (0: absent).
    fn kv_check(&self, key: &[u8], expect: Option<u64>) -> Result<u64, BackendError> {
        let current = self.kv_entry(key)?.map_or(0, |e| e.revision);
        match expect {
            Some(e) if e != current => Err(BackendError::RevisionMismatch { current }),
            _ => Ok(current),
        }
    }

    /// Acks `tokens` in one write to the log, answered when `answer` says.
    async fn ack_together(
        &self,
        tokens: &[LeaseToken],
        answer: Answer,
    ) -> Vec<Result<(), BackendError>> {
        // In ascending order per group: an ack next to the group's floor moves the floor, where
        // one further on leaves a `done` entry to write now and delete later. A push worker's
        // acks arrive in whatever order its requests finished.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        // Equal tokens keep the caller's order: the first of two copies gets the `ok`.
        order.sort_unstable_by_key(|&i| (&tokens[i].topic, &tokens[i].group, tokens[i].seq, i));
        let mut answers = vec![Ok(()); tokens.len()];
        let mut ops = Vec::new();
        let mut topics: Vec<&str> = Vec::new();
        for i in order {
            let token = &tokens[i];
            let acked = self
                .group(&token.topic, &token.group)
                .and_then(|group| lock(&group).ack(token).map_err(lost));
            if let Ok(more) = &acked
                && !more.is_empty()
                && !topics.contains(&token.topic.as_str())
            {
                topics.push(&token.topic);
            }
            answers[i] = acked.map(|more| ops.extend(more));
        }
        if !ops.is_empty() {
            let written = match answer {
                Answer::WhenSynced => self.writer.write(ops).await,
                Answer::WhenWritten => self.writer.write_unsynced(ops).await,
            };
            if let Err(e) = written {
                for a in answers.iter_mut().filter(|a| a.is_ok()) {
                    *a = Err(e.clone());
                }
            }
            // As `on_lease`: waiting pulls look again.
            for t in topics {
                if let Ok(shared) = self.topic(t) {
                    shared.notify.notify_waiters();
                }
            }
        }
        answers
    }

    /// Runs a lease operation on its group and persists what it changed.
    async fn on_lease<T>(
        &self,
        token: &LeaseToken,
        f: impl FnOnce(&mut GroupState) -> Result<(T, Vec<Op>), LeaseError>,
    ) -> Result<T, BackendError> {
        let group = self.group(&token.topic, &token.group)?;
        let (value, ops) = f(&mut lock(&group)).map_err(lost)?;
        if !ops.is_empty() {
            self.writer.write(ops).await?;
            // Settling may free a key of an ordered group or room under the in-flight limit:
            // waiting pulls look again.
            if let Ok(shared) = self.topic(&token.topic) {
                shared.notify.notify_waiters();
            }
        }
        Ok(value)
    }
}

/// When `ack_together` answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Once the acks are synced (`ack_many`).
    WhenSynced,
    /// Once they are written to the OS (`ack_unconfirmed`).
    WhenWritten,
}

impl Drop for EmbeddedBackend {
    /// A clean shutdown: the writer finishes what is queued, then memtables go to disk so the
    /// next open starts fast.
    fn drop(&mut self) {
        self.writer.stop();
        self.store.flush(Duration::from_secs(5));
    }
}

/// What the writer last recorded of a topic's size, or an empty topic's.
fn topic_stats(store: &Store, topic: &str, last: u64) -> Result<TopicStats, BackendError> {
    let v = store
        .stats
        .get(store::topic_prefix(topic))
        .map_err(BackendError::storage)?;
    let read = |v: &[u8], at: usize| {
        v.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    Ok(match v {
        Some(v) => TopicStats {
            first: read(&v, 0).unwrap_or(1),
            bytes: read(&v, 8).unwrap_or(0),
        },
        None => TopicStats {
            first: if last == 0 {
                1
            } else {
                first_seq(store, topic)?
            },
            bytes: 0,
        },
    })
}

fn first_seq(store: &Store, topic: &str) -> Result<u64, BackendError> {
    match store.log.prefix(store::topic_prefix(topic)).next() {
        Some(g) => g
            .key()
            .map_err(BackendError::storage)
            .map(|k| store::seq_suffix(&k).unwrap_or(1)),
        None => Ok(1),
    }
}

fn last_seq(store: &Store, topic: &str) -> Result<u64, BackendError> {
    match store.log.prefix(store::topic_prefix(topic)).next_back() {
        Some(g) => g
            .key()
            .map_err(BackendError::storage)
            .map(|k| store::seq_suffix(&k).unwrap_or(0)),
        None => Ok(0),
    }
}

struct LogReader<'a> {
    store: &'a Store,
    topic: String,
    /// The topic's last committed sequence when the reader was made: nothing above it is read.
    committed: u64,
}

impl Log for LogReader<'_> {
    fn range(&self, from: u64, to: u64, limit: usize) -> Vec<StoredEvent> {
        let to = to.min(self.committed);
        if from > to {
            return Vec::new();
        }
        let (start, end) = (
            store::log_key(&self.topic, from),
            store::log_key(&self.topic, to),
        );
        self.store
            .log
            .range(start..=end)
            .take(limit)
            .filter_map(|g| g.into_inner().ok())
            .filter_map(|(k, v)| store::decode_record(store::seq_suffix(&k)?, &v).ok())
            .collect()
    }

    fn get(&self, seq: u64) -> Option<StoredEvent> {
        if seq > self.committed {
            return None;
        }
        let v = self
            .store
            .log
            .get(store::log_key(&self.topic, seq))
            .ok()??;
        store::decode_record(seq, &v).ok()
    }
}

fn valid_name(kind: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(BackendError::InvalidConfig(format!(
            "{kind} names are 1 to 255 bytes without NUL, got {name:?}"
        )));
    }
    Ok(())
}

impl Backend for EmbeddedBackend {
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
        let key = store::topic_prefix(&config.name);
        self.writer
            .write(vec![Op::Put(
                Space::Topic,
                key,
                store::encode_topic(&config),
            )])
            .await?;
        let last = last_seq(&self.store, &config.name)?;
        let stats = topic_stats(&self.store, &config.name, last)?;
        let mut topics = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An existing topic keeps its state and takes the new limits.
        match topics.get(&config.name) {
            Some(t) => t.configure(&config),
            None => drop(topics.insert(
                config.name.clone(),
                Arc::new(TopicShared::new(&config, last, stats)),
            )),
        }
        Ok(())
    }

    async fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        let topic = self.topic(topic)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.writer.publish(topic, batch).await
    }

    async fn create_group(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
    ) -> Result<(), BackendError> {
        self.topic(topic)?;
        valid_name("group", group)?;
        if config.max_in_flight == 0 || config.retry.max_attempts == 0 || config.lease.is_zero() {
            return Err(BackendError::InvalidConfig(
                "max_in_flight, max_attempts and lease must be positive".into(),
            ));
        }
        let existing = self
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), group.to_owned()))
            .cloned();
        let floor = match &existing {
            Some(g) => {
                let mut g = lock(g);
                g.config = config.clone();
                g.floor()
            }
            None => 0,
        };
        self.writer
            .write(vec![Op::Put(
                Space::Group,
                store::group_prefix(topic, group),
                store::encode_group(&config, floor),
            )])
            .await?;
        if existing.is_none() {
            let state = GroupState::new(
                topic.to_owned(),
                group.to_owned(),
                config,
                Recovered::default(),
            );
            let mut groups = self
                .groups
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            groups
                .entry((topic.to_owned(), group.to_owned()))
                .or_insert_with(|| Arc::new(Mutex::new(state)));
        }
        Ok(())
    }

    async fn pull(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        let shared = self.topic(topic)?;
        let handle = self.group(topic, group)?;
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a publish in between is not missed.
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let (deliveries, ops, next_due) = {
                let log = self.log_reader(&shared);
                let mut g = lock(&handle);
                let (d, ops) = g.pull(now, log.committed, max, consumer, &log);
                (d, ops, g.next_due())
            };
            if !ops.is_empty() {
                self.writer.write(ops).await?;
            }
            if !deliveries.is_empty() || max == 0 || now >= deadline {
                return Ok(deliveries);
            }
            let until = next_due
                .map_or(deadline, |d| d.min(deadline))
                .max(now + Duration::from_millis(1));
            let _ = tokio::time::timeout_at(until.into(), notified).await;
        }
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BackendError> {
        self.on_lease(token, |g| g.ack(token).map(|ops| ((), ops)))
            .await
    }

    /// One commit for all the acks, answered once it is synced.
    async fn ack_many(&self, tokens: &[LeaseToken]) -> Vec<Result<(), BackendError>> {
        self.ack_together(tokens, Answer::WhenSynced).await
    }

    /// One write for all the acks, answered once it is written to the OS (safe from a crash
    /// of this process), without waiting for its sync.
    async fn ack_unconfirmed(&self, tokens: &[LeaseToken]) -> Vec<Result<(), BackendError>> {
        self.ack_together(tokens, Answer::WhenWritten).await
    }

    async fn nack(
        &self,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        let log = self.log_reader(&*self.topic(&token.topic)?);
        self.on_lease(token, |g| {
            g.nack(Instant::now(), token, delay, error, &log)
                .map(|ops| ((), ops))
        })
        .await
    }

    async fn extend(&self, token: &LeaseToken, by: Duration) -> Result<(), BackendError> {
        self.on_lease(token, |g| {
            g.extend(Instant::now(), token, by)
                .map(|()| ((), Vec::new()))
        })
        .await
    }

    async fn dead_letter(
        &self,
        token: &LeaseToken,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        let log = self.log_reader(&*self.topic(&token.topic)?);
        self.on_lease(token, |g| g.reject(token, error, &log).map(|ops| ((), ops)))
            .await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        self.group(topic, group)?;
        self.matching_dead_letters(topic, group, filter)
    }

    async fn redrive(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
        options: RedriveOptions,
    ) -> Result<RedriveReport, BackendError> {
        let handle = self.group(topic, group)?;
        let entries = self.matching_dead_letters(topic, group, filter)?;
        let mut report = RedriveReport {
            matched: entries.iter().map(|d| d.event.event.id.clone()).collect(),
            redriven: 0,
        };
        if options.dry_run {
            return Ok(report);
        }
        let pause = (options.per_second > 0).then(|| Duration::from_secs(1) / options.per_second);
        let shared = self.topic(topic)?;
        for entry in entries {
            // Each move is one atomic write: a crash between two leaves every event either in
            // the DLQ or back in the group, never both and never neither.
            let ops = lock(&handle).redrive(entry.event.seq, entry.event.ordering_key.clone());
            self.writer.write(ops).await?;
            report.redriven += 1;
            shared.notify.notify_waiters();
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(report)
    }

    async fn purge(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> Result<usize, BackendError> {
        self.group(topic, group)?;
        let entries = self.matching_dead_letters(topic, group, filter)?;
        let ops: Vec<Op> = entries
            .iter()
            .map(|d| Op::Delete(Space::Dlq, store::group_seq_key(topic, group, d.event.seq)))
            .collect();
        let n = ops.len();
        if n > 0 {
            self.writer.write(ops).await?;
        }
        Ok(n)
    }

    async fn reset(
        &self,
        topic: &str,
        group: &str,
        position: StartPosition,
    ) -> Result<(), BackendError> {
        let shared = self.topic(topic)?;
        let handle = self.group(topic, group)?;
        let floor = self.first_at(&shared, &position)? - 1;
        let prefix = store::group_prefix(topic, group);
        let mut ops = lock(&handle).reset(floor);
        for (space, ks) in [
            (Space::Done, &self.store.done),
            (Space::Attempt, &self.store.attempt),
            (Space::Requeue, &self.store.requeue),
        ] {
            for g in ks.prefix(&prefix) {
                ops.push(Op::Delete(
                    space,
                    g.key().map_err(BackendError::storage)?.to_vec(),
                ));
            }
        }
        self.writer.write(ops).await?;
        shared.notify.notify_waiters();
        Ok(())
    }

    async fn events_by_id(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        self.by_id(&*self.topic(topic)?, id)
    }

    async fn events_by_correlation(
        &self,
        topic: &str,
        correlation_id: &str,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        self.indexed(&*self.topic(topic)?, Index::Correlation, correlation_id)
    }

    async fn effects_of(&self, topic: &str, id: &str) -> Result<Vec<StoredEvent>, BackendError> {
        self.indexed(&*self.topic(topic)?, Index::Causation, id)
    }

    async fn topics(&self) -> Result<Vec<String>, BackendError> {
        let mut names: Vec<String> = self
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }

    async fn topic_info(&self, topic: &str) -> Result<TopicInfo, BackendError> {
        let shared = self.topic(topic)?;
        let config = self
            .store
            .topic
            .get(store::topic_prefix(topic))
            .map_err(BackendError::storage)?
            .and_then(|v| store::decode_topic(topic.to_owned(), &v))
            .unwrap_or_else(|| TopicConfig::new(topic));
        let (first, bytes) = shared.retained();
        Ok(TopicInfo {
            config,
            first,
            last: shared.committed.load(Ordering::SeqCst),
            bytes,
        })
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>, BackendError> {
        let shared = self.topic(topic)?;
        let deadline = Instant::now() + wait;
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let log = self.log_reader(&shared);
            let events = if from <= log.committed && max > 0 {
                log.range(from.max(1), log.committed, max)
            } else {
                Vec::new()
            };
            if !events.is_empty() || max == 0 || Instant::now() >= deadline {
                return Ok(events);
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    async fn locate(&self, topic: &str, position: &StartPosition) -> Result<u64, BackendError> {
        let shared = self.topic(topic)?;
        self.first_at(&shared, position)
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, BackendError> {
        self.topic(topic)?;
        let mut names: Vec<String> = self
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, g)| g.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn group_info(&self, topic: &str, group: &str) -> Result<GroupInfo, BackendError> {
        let shared = self.topic(topic)?;
        let handle = self.group(topic, group)?;
        let committed = shared.committed.load(Ordering::SeqCst);
        let (config, floor, (pending, in_flight)) = {
            let g = lock(&handle);
            (g.config.clone(), g.floor(), g.standing(committed))
        };
        let dead_letters = self
            .store
            .dlq
            .prefix(store::group_prefix(topic, group))
            .count();
        Ok(GroupInfo {
            config,
            acked_through: floor,
            pending,
            in_flight,
            dead_letters: u64::try_from(dead_letters).unwrap_or(u64::MAX),
        })
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), BackendError> {
        self.group(topic, group)?;
        drop(
            self.groups
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(topic.to_owned(), group.to_owned())),
        );
        let prefix = store::group_prefix(topic, group);
        let mut ops = vec![
            Op::Delete(Space::Group, prefix.clone()),
            Op::Delete(Space::Floor, prefix.clone()),
        ];
        for (space, ks) in [
            (Space::Done, &self.store.done),
            (Space::Attempt, &self.store.attempt),
            (Space::Requeue, &self.store.requeue),
            (Space::Dlq, &self.store.dlq),
        ] {
            for g in ks.prefix(&prefix) {
                ops.push(Op::Delete(
                    space,
                    g.key().map_err(BackendError::storage)?.to_vec(),
                ));
            }
        }
        self.writer.write(ops).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BackendError> {
        self.kv_entry(&store::kv_key(bucket, key))
    }

    async fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64, BackendError> {
        valid_name("bucket", bucket)?;
        let k = store::kv_key(bucket, key);
        let _guard = self.kv_lock.lock().await;
        let revision = self.kv_check(&k, expect)? + 1;
        let v = [&revision.to_be_bytes()[..], &value].concat();
        self.writer.write(vec![Op::Put(Space::Kv, k, v)]).await?;
        Ok(revision)
    }

    async fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
        expect: Option<u64>,
    ) -> Result<bool, BackendError> {
        let k = store::kv_key(bucket, key);
        let _guard = self.kv_lock.lock().await;
        let current = self.kv_check(&k, expect)?;
        if current == 0 {
            return Ok(false);
        }
        self.writer.write(vec![Op::Delete(Space::Kv, k)]).await?;
        Ok(true)
    }

    async fn kv_list(&self, bucket: &str) -> Result<Vec<(String, KvEntry)>, BackendError> {
        let prefix = store::kv_key(bucket, "");
        let mut out = Vec::new();
        for g in self.store.kv.prefix(&prefix) {
            let k = g.key().map_err(BackendError::storage)?;
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(e) = self.kv_entry(&k)? {
                out.push((name, e));
            }
        }
        Ok(out)
    }
}
