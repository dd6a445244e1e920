//! The on-disk layout: fjall keyspaces, key encodings and record formats.
//!
//! Every key starts with the topic name and a NUL byte (topic names never contain NUL), so a
//! topic's entries are one prefix. Sequence numbers are big-endian, so keys sort by sequence.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `log` | topic, seq | stored-at ms, ordering key, event JSON |
//! | `dedup` | topic, `i`, id, NUL, source / topic, `k`, idempotency key | seq, stored-at ms |
//! | `agg` | topic, ordering key | last seq |
//! | `topic` | topic | dedup window ms, max age ms (0: none), max bytes (0: none) |
//! | `group` | topic, group | config (and the floor when it was written) |
//! | `floor` | topic, group | the ack floor: every sequence at or below it is done |
//! | `stats` | topic | oldest retained seq, retained bytes |
//! | `done` | topic, group, NUL, seq | empty (acked or dead-lettered above the floor) |
//! | `attempt` | topic, group, NUL, seq | the failed attempts (JSON) |
//! | `dlq` | topic, group, NUL, seq | reason, at ms, last error, every failed attempt (JSON) |
//! | `requeue` | topic, group, NUL, seq | empty (redriven at or below the floor: pending again) |
//! | `index` | topic, `r` correlationid / `c` causationid, NUL, seq | empty |
//! | `kv` | bucket, NUL, key | revision, value |

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use canon_backend::{
    AttemptRecord, BackendError, DeadLetterReason, GroupConfig, StoredEvent, codec,
};
use canon_envelope::CloudEvent;
use fjall::config::{PartitioningPolicy, PinningPolicy};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

/// The size at which a keyspace's memtable is sealed and flushed.
pub(crate) const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// The keyspaces of one data directory.
#[derive(Clone)]
pub(crate) struct Store {
    /// The data directory (fjall's journals are files in it).
    pub(crate) dir: Arc<std::path::Path>,
    pub(crate) db: Database,
    pub(crate) log: Keyspace,
    pub(crate) dedup: Keyspace,
    pub(crate) agg: Keyspace,
    pub(crate) topic: Keyspace,
    pub(crate) group: Keyspace,
    pub(crate) done: Keyspace,
    pub(crate) attempt: Keyspace,
    pub(crate) dlq: Keyspace,
    pub(crate) requeue: Keyspace,
    pub(crate) floor: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) stats: Keyspace,
    pub(crate) kv: Keyspace,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Every keyspace.
    pub(crate) fn keyspaces(&self) -> [&Keyspace; 13] {
        [
            &self.log,
            &self.dedup,
            &self.agg,
            &self.topic,
            &self.group,
            &self.done,
            &self.attempt,
            &self.dlq,
            &self.requeue,
            &self.floor,
            &self.index,
            &self.stats,
            &self.kv,
        ]
    }

    pub(crate) fn open(dir: &std::path::Path) -> Result<Store, BackendError> {
        std::fs::create_dir_all(dir).map_err(BackendError::storage)?;
        // A small journal bounds what a restart after a crash must replay; a bounded block cache
        // bounds memory whatever the backlog.
        //
        // One background worker for flushes and compactions. With two (fjall's default on two
        // cores), the first worker hands every compaction request on to the second and, while
        // the second is busy compacting, takes the same request back at once: it spins on the
        // queue and takes a core from the writer (perf: `worker_tick` and `flume` sends among
        // the hottest symbols). One worker does the same work without the spin: publishing
        // went from 197,000-213,000 to 264,000-300,000 events/s (BENCHMARKS.md).
        let db = Database::builder(dir)
            .max_journaling_size(64 * 1024 * 1024)
            .cache_size(32 * 1024 * 1024)
            .manual_journal_persist(false)
            .worker_threads(1)
            .open()
            .map_err(BackendError::storage)?;
        // Index and filter blocks are split into partitions at every level: a merged segment of
        // the dedup keyspace grows to 64 MiB, whose whole filter (1.5 MB) is too large for the
        // block cache to keep, so every lookup read it from the file again (publishing fell
        // from 66,000/s to 3,000/s with ten million ids stored). Partitions are small, cached
        // like data blocks, and only their top-level index stays in memory.
        // Tables of 8 MiB instead of fjall's 64 MiB: with one background worker (above),
        // flushes wait behind whatever compaction runs, and a compaction that merges 64 MiB
        // tables of random keys (dedup) runs for seconds while memtables pile up (peak RSS
        // 621 MB over ten million events). Smaller tables make every compaction short.
        let options = || {
            KeyspaceCreateOptions::default()
                .compaction_strategy(Arc::new(
                    fjall::compaction::Leveled::default().with_table_target_size(8 * 1024 * 1024),
                ))
                .max_memtable_size(MEMTABLE_BYTES)
                .index_block_partitioning_policy(PartitioningPolicy::all(true))
                .filter_block_partitioning_policy(PartitioningPolicy::all(true))
        };
        let ks = |name: &str| db.keyspace(name, options).map_err(BackendError::storage);
        // Keys that only grow (sequence numbers) are never merged: a flushed segment moves down
        // the levels as it is. fjall pins the index and filter blocks of a freshly flushed
        // segment in memory and keeps them pinned when it moves, so memory grew with the log
        // (peak RSS 341 MB with 20 million events stored; 170 MB unpinned and partitioned).
        // Unpinned, they are read through the bounded block cache. fjall fixes these options
        // when a keyspace is created: existing data directories keep theirs.
        let unpinned = |name: &str| {
            db.keyspace(name, || {
                options()
                    .index_block_pinning_policy(PinningPolicy::all(false))
                    .filter_block_pinning_policy(PinningPolicy::all(false))
            })
            .map_err(BackendError::storage)
        };
        Ok(Store {
            log: unpinned("log")?,
            dedup: ks("dedup")?,
            agg: ks("agg")?,
            topic: ks("topic")?,
            group: ks("group")?,
            done: unpinned("done")?,
            attempt: ks("attempt")?,
            dlq: ks("dlq")?,
            requeue: ks("requeue")?,
            floor: ks("floor")?,
            stats: ks("stats")?,
            index: ks("index")?,
            kv: ks("kv")?,
            db,
            // Absolute, as fjall keeps it: the syncer lists it (`writer::ActiveJournal`).
            dir: Arc::from(std::path::absolute(dir).map_err(BackendError::storage)?),
        })
    }
}

/// A topic record: dedup window ms, max age ms (0: none), max bytes (0: none).
pub(crate) fn encode_topic(config: &canon_backend::TopicConfig) -> Vec<u8> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let age = config.max_age.map_or(0, |d| ms(d).max(1));
    [
        ms(config.dedup_window).to_be_bytes(),
        age.to_be_bytes(),
        config.max_bytes.unwrap_or(0).to_be_bytes(),
    ]
    .concat()
}

pub(crate) fn decode_topic(name: String, v: &[u8]) -> Option<canon_backend::TopicConfig> {
    let window = Duration::from_millis(u64_at(v, 0)?);
    let (age, bytes) = (u64_at(v, 8).unwrap_or(0), u64_at(v, 16).unwrap_or(0));
    Some(canon_backend::TopicConfig {
        name,
        dedup_window: window,
        max_age: (age > 0).then(|| Duration::from_millis(age)),
        max_bytes: (bytes > 0).then_some(bytes),
    })
}

impl Store {
    /// Writes every memtable out to disk segments, so that the next open has no journal to
    /// replay. Called on a clean shutdown; after a crash the (bounded) journal is replayed.
    /// Waits at most `limit`: fjall's wait has no deadline of its own and never ends if the
    /// disk fails (or the directory is deleted) mid-flush. Skipping the flush loses nothing:
    /// every acknowledged write is in the journal.
    pub(crate) fn flush(&self, limit: std::time::Duration) {
        let store = self.clone();
        let (done, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("canon-flush".into())
            .spawn(move || {
                for ks in store.keyspaces() {
                    // Best effort: a failure leaves the journal, which the next open replays.
                    let _ = ks.rotate_memtable_and_wait();
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    codec::millis(SystemTime::now())
}

pub(crate) use codec::from_millis as time_of;

/// `topic NUL` — the prefix of every key of a topic.
pub(crate) fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 9);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

pub(crate) fn log_key(topic: &str, seq: u64) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `topic NUL i id NUL` — the prefix of the dedup entries of one id, whatever the source: the
/// lookup by id reads it.
pub(crate) fn id_prefix(topic: &str, id: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.push(b'i');
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

pub(crate) fn id_key(topic: &str, source: &str, id: &str) -> Vec<u8> {
    let mut k = id_prefix(topic, id);
    k.extend_from_slice(source.as_bytes());
    k
}

pub(crate) fn idem_key(topic: &str, key: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn agg_key(topic: &str, key: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(key.as_bytes());
    k
}

/// What an `index` entry indexes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Index {
    Correlation,
    Causation,
}

/// `topic NUL kind value NUL` — the prefix of an index's entries for one value.
pub(crate) fn index_prefix(topic: &str, kind: Index, value: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.push(match kind {
        Index::Correlation => b'r',
        Index::Causation => b'c',
    });
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

/// `topic NUL group NUL` — the prefix of a group's entries.
pub(crate) fn group_prefix(topic: &str, group: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

pub(crate) fn group_seq_key(topic: &str, group: &str, seq: u64) -> Vec<u8> {
    let mut k = group_prefix(topic, group);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `bucket NUL key`: a key-value entry.
pub(crate) fn kv_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = topic_prefix(bucket);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The last 8 bytes of a key as a sequence number.
pub(crate) fn seq_suffix(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A `log` record: stored-at ms (8), ordering key length (2) and bytes, event JSON.
pub(crate) fn encode_record(
    stored_ms: u64,
    ordering_key: Option<&str>,
    event: &CloudEvent,
) -> Vec<u8> {
    let key = ordering_key.unwrap_or("").as_bytes();
    let json = event.to_json();
    let mut v = Vec::with_capacity(10 + key.len() + json.len());
    v.extend_from_slice(&stored_ms.to_be_bytes());
    // Ordering keys longer than 65,535 bytes are refused before they get here.
    v.extend_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&json);
    v
}

pub(crate) fn decode_record(seq: u64, v: &[u8]) -> Result<StoredEvent, BackendError> {
    let corrupt = || BackendError::storage(format!("log record {seq} is corrupt"));
    let stored_ms = u64_at(v, 0).ok_or_else(corrupt)?;
    let key_len = usize::from(u16::from_be_bytes(
        v.get(8..10)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ));
    let key = v.get(10..10 + key_len).ok_or_else(corrupt)?;
    let json = v.get(10 + key_len..).ok_or_else(corrupt)?;
    let event = CloudEvent::from_json(json)
        .map_err(|e| BackendError::storage(format!("log record {seq} does not decode: {e}")))?;
    let ordering_key = if key.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(key).into_owned())
    };
    Ok(StoredEvent {
        seq,
        published_at: time_of(stored_ms),
        ordering_key,
        event,
    })
}

/// `seq, stored-at ms` — a dedup entry.
pub(crate) fn encode_seq_time(seq: u64, ms: u64) -> Vec<u8> {
    [seq.to_be_bytes(), ms.to_be_bytes()].concat()
}

pub(crate) fn decode_seq_time(v: &[u8]) -> Option<(u64, u64)> {
    Some((u64_at(v, 0)?, u64_at(v, 8)?))
}

/// A group record: config and ack floor, as JSON (small and rarely written): the shared
/// `codec` form of the config with a `floor` member.
pub(crate) fn encode_group(config: &GroupConfig, floor: u64) -> Vec<u8> {
    let mut j = codec::group_config_json(config);
    j["floor"] = floor.into();
    j.to_string().into_bytes()
}

pub(crate) fn decode_group(v: &[u8]) -> Option<(GroupConfig, u64)> {
    let j: serde_json::Value = serde_json::from_slice(v).ok()?;
    Some((
        codec::group_config_from_json(&j)?,
        j.get("floor")?.as_u64()?,
    ))
}

/// Failed attempts as JSON, in the shared `codec` form.
pub(crate) fn encode_history(history: &[AttemptRecord]) -> serde_json::Value {
    codec::history_json(history)
}

pub(crate) fn decode_history(v: &serde_json::Value) -> Option<Vec<AttemptRecord>> {
    codec::history_from_json(v)
}

/// A DLQ entry: reason, at ms, last error and every failed attempt.
pub(crate) fn encode_dlq(
    reason: DeadLetterReason,
    history: &[AttemptRecord],
    at_ms: u64,
    error: Option<&str>,
    event: Option<&StoredEvent>,
) -> Vec<u8> {
    let mut entry = serde_json::json!({"reason": reason.as_str(), "attempts": history.len(), "history": encode_history(history), "at": at_ms, "error": error});
    if let Some(e) = event {
        let stored = e
            .published_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        entry["event"] =
            serde_json::Value::String(String::from_utf8_lossy(&e.event.to_json()).into_owned());
        entry["stored_at"] = stored.into();
        entry["key"] = e.ordering_key.clone().into();
    }
    entry.to_string().into_bytes()
}

/// The copy of the event a DLQ entry holds.
pub(crate) fn dlq_event(v: &[u8], seq: u64) -> Option<StoredEvent> {
    let j: serde_json::Value = serde_json::from_slice(v).ok()?;
    let event = CloudEvent::from_json(j.get("event")?.as_str()?.as_bytes()).ok()?;
    let ordering_key = j.get("key").and_then(|k| k.as_str()).map(str::to_owned);
    Some(StoredEvent {
        seq,
        published_at: time_of(j.get("stored_at")?.as_u64()?),
        ordering_key,
        event,
    })
}

/// Decoded DLQ bookkeeping: reason, attempts, at ms, last error, history.
pub(crate) type DlqEntry = (
    DeadLetterReason,
    u32,
    u64,
    Option<String>,
    Vec<AttemptRecord>,
);

pub(crate) fn decode_dlq(v: &[u8]) -> Option<DlqEntry> {
    let j: serde_json::Value = serde_json::from_slice(v).ok()?;
    let reason = DeadLetterReason::parse(j.get("reason")?.as_str()?)?;
    let attempts = u32::try_from(j.get("attempts")?.as_u64()?).ok()?;
    let history = decode_history(j.get("history")?)?;
    Some((
        reason,
        attempts,
        j.get("at")?.as_u64()?,
        j.get("error").and_then(|e| e.as_str()).map(str::to_owned),
        history,
    ))
}
