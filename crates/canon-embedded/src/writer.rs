//! The single writer: every change to the data directory goes through one thread, which
//! commits whatever has queued up as one fjall batch and syncs it once (group commit). A publish
//! or an ack is answered only after the batch holding it is durable, so throughput does not
//! fall to the disk's sync rate: while one sync runs, the next batch fills up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use canon_backend::{BackendError, PublishOutcome, PublishRequest};
use fjall::PersistMode;
use tokio::sync::{Notify, oneshot};

use crate::Durability;
use crate::store::{self, Index, Store};

/// At most this many queued jobs go into one commit.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// What the writer and readers share about a topic.
#[derive(Debug)]
pub(crate) struct TopicShared {
    pub(crate) name: String,
    pub(crate) dedup_window: Duration,
    /// The next sequence to assign; only the writer changes it.
    next_seq: AtomicU64,
    /// Every event up to this sequence is durable and may be delivered.
    pub(crate) committed: AtomicU64,
    /// Woken when `committed` grows.
    pub(crate) notify: Notify,
}

impl TopicShared {
    pub(crate) fn new(name: String, dedup_window: Duration, last_seq: u64) -> Self {
        TopicShared {
            name,
            dedup_window,
            next_seq: AtomicU64::new(last_seq + 1),
            committed: AtomicU64::new(last_seq),
            notify: Notify::new(),
        }
    }
}

/// Which keyspace an operation writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Space {
    Log,
    Dedup,
    Agg,
    Topic,
    Group,
    Done,
    Attempt,
    Dlq,
    Requeue,
    Index,
    Floor,
}

/// One change.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
}

type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

enum Job {
    Publish {
        topic: Arc<TopicShared>,
        batch: Vec<PublishRequest>,
        reply: Reply<Vec<PublishOutcome>>,
    },
    Write {
        ops: Vec<Op>,
        reply: Reply<()>,
    },
}

/// The handle to the writer thread. Dropping it lets the thread finish what is queued and
/// waits for it, so the data directory is free once the backend is dropped.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    /// Lets the thread finish what is queued, and waits for it.
    pub(crate) fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Writer {
    pub(crate) fn start(store: Store, durability: Durability) -> Writer {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("canon-writer".into())
            .spawn(move || run(&store, durability, &rx, &flag));
        if thread.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        Writer {
            tx: Some(tx),
            thread: thread.ok(),
            failed,
        }
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>, BackendError> {
        match &self.tx {
            Some(tx) if !self.failed.load(Ordering::SeqCst) => Ok(tx),
            _ => Err(BackendError::storage(
                "an earlier write failed; the data directory must be reopened",
            )),
        }
    }

    pub(crate) async fn publish(
        &self,
        topic: Arc<TopicShared>,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Publish {
                topic,
                batch,
                reply,
            })
            .map_err(|_| BackendError::storage("the writer has stopped"))?;
        rx.await
            .map_err(|_| BackendError::storage("the writer has stopped"))?
    }

    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Write { ops, reply })
            .map_err(|_| BackendError::storage("the writer has stopped"))?;
        rx.await
            .map_err(|_| BackendError::storage("the writer has stopped"))?
    }
}

fn keyspace(store: &Store, space: Space) -> &fjall::Keyspace {
    match space {
        Space::Log => &store.log,
        Space::Dedup => &store.dedup,
        Space::Agg => &store.agg,
        Space::Topic => &store.topic,
        Space::Group => &store.group,
        Space::Done => &store.done,
        Space::Attempt => &store.attempt,
        Space::Dlq => &store.dlq,
        Space::Requeue => &store.requeue,
        Space::Index => &store.index,
        Space::Floor => &store.floor,
    }
}

/// Dedup and aggregate values written by the commit being built, so that later jobs in it see
/// earlier ones.
#[derive(Default)]
struct Overlay {
    dedup: HashMap<Vec<u8>, Vec<u8>>,
    agg: HashMap<Vec<u8>, Vec<u8>>,
}

impl Overlay {
    fn of(&mut self, space: Space) -> Option<&mut HashMap<Vec<u8>, Vec<u8>>> {
        match space {
            Space::Dedup => Some(&mut self.dedup),
            Space::Agg => Some(&mut self.agg),
            _ => None,
        }
    }
}

enum Pending {
    Publish(
        Reply<Vec<PublishOutcome>>,
        Result<Vec<PublishOutcome>, BackendError>,
    ),
    Write(Reply<()>),
}

fn run(store: &Store, durability: Durability, rx: &mpsc::Receiver<Job>, failed: &AtomicBool) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut batch = store.db.batch();
        // Values written by this commit, so that later jobs in it see earlier ones.
        let mut overlay = Overlay::default();
        // Topics whose next sequence this commit advanced, with the value to restore on failure.
        let mut touched: Vec<(Arc<TopicShared>, u64)> = Vec::new();
        let mut pending = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Publish {
                    topic,
                    batch: requests,
                    reply,
                } => {
                    let before = topic.next_seq.load(Ordering::SeqCst);
                    let result = plan_publish(store, &topic, requests, &overlay).map(
                        |(outcomes, ops, next)| {
                            for op in ops {
                                apply(store, &mut batch, &mut overlay, op);
                            }
                            if next != before {
                                if !touched.iter().any(|(t, _)| Arc::ptr_eq(t, &topic)) {
                                    touched.push((Arc::clone(&topic), before));
                                }
                                topic.next_seq.store(next, Ordering::SeqCst);
                            }
                            outcomes
                        },
                    );
                    pending.push(Pending::Publish(reply, result));
                }
                Job::Write { ops, reply } => {
                    for op in ops {
                        apply(store, &mut batch, &mut overlay, op);
                    }
                    pending.push(Pending::Write(reply));
                }
            }
        }
        let committed = batch.commit().and_then(|()| match durability {
            Durability::Sync => store.db.persist(PersistMode::SyncData),
            Durability::LoseRecentOnOsCrash => Ok(()),
        });
        match committed {
            Ok(()) => {
                for (topic, _) in &touched {
                    topic
                        .committed
                        .store(topic.next_seq.load(Ordering::SeqCst) - 1, Ordering::SeqCst);
                    topic.notify.notify_waiters();
                }
                for p in pending {
                    match p {
                        Pending::Publish(reply, result) => drop(reply.send(result)),
                        Pending::Write(reply) => drop(reply.send(Ok(()))),
                    }
                }
            }
            Err(e) => {
                // Nothing of this commit is acknowledged. The in-memory state may now disagree
                // with the disk, so the backend refuses further work until it is reopened.
                failed.store(true, Ordering::SeqCst);
                for (topic, before) in touched {
                    topic.next_seq.store(before, Ordering::SeqCst);
                }
                let err = BackendError::storage(e);
                for p in pending {
                    match p {
                        Pending::Publish(reply, _) => drop(reply.send(Err(err.clone()))),
                        Pending::Write(reply) => drop(reply.send(Err(err.clone()))),
                    }
                }
            }
        }
    }
}

fn apply(store: &Store, batch: &mut fjall::OwnedWriteBatch, overlay: &mut Overlay, op: Op) {
    match op {
        Op::Put(space, k, v) => {
            if let Some(map) = overlay.of(space) {
                map.insert(k.clone(), v.clone());
            }
            batch.insert(keyspace(store, space), k, v);
        }
        Op::Delete(space, k) => batch.remove(keyspace(store, space), k),
    }
}

/// Reads a key as this commit sees it: its own writes first, then the disk.
fn read(
    store: &Store,
    overlay: &Overlay,
    local: &HashMap<Vec<u8>, Vec<u8>>,
    space: Space,
    key: &[u8],
) -> Result<Option<Vec<u8>>, BackendError> {
    let committed = match space {
        Space::Dedup => overlay.dedup.get(key),
        Space::Agg => overlay.agg.get(key),
        _ => None,
    };
    if let Some(v) = local.get(key).or(committed) {
        return Ok(Some(v.clone()));
    }
    keyspace(store, space)
        .get(key)
        .map(|v| v.map(|s| s.to_vec()))
        .map_err(BackendError::storage)
}

/// Decides a publish: duplicates, conflicts, sequences. Returns the outcomes, the writes and the
/// topic's next sequence; writes nothing itself.
fn plan_publish(
    store: &Store,
    topic: &TopicShared,
    requests: Vec<PublishRequest>,
    overlay: &Overlay,
) -> Result<(Vec<PublishOutcome>, Vec<Op>, u64), BackendError> {
    let now = store::now_ms();
    let window = u64::try_from(topic.dedup_window.as_millis()).unwrap_or(u64::MAX);
    let fresh = |v: Option<Vec<u8>>| {
        v.and_then(|v| store::decode_seq_time(&v))
            .filter(|(_, at)| now.saturating_sub(*at) <= window)
            .map(|(seq, _)| seq)
    };
    let mut next = topic.next_seq.load(Ordering::SeqCst);
    let mut ops = Vec::with_capacity(requests.len() * 4);
    let mut outcomes = Vec::with_capacity(requests.len());
    // This job's own dedup and aggregate writes, seen by its later events.
    let mut local_dedup: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut local_agg: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for r in requests {
        let name = &topic.name;
        if r.ordering_key
            .as_ref()
            .is_some_and(|k| k.len() > usize::from(u16::MAX))
        {
            return Err(BackendError::InvalidConfig(
                "an ordering key is limited to 65,535 bytes".into(),
            ));
        }
        let id_key = store::id_key(name, &r.event.source, &r.event.id);
        if let Some(seq) = fresh(read(store, overlay, &local_dedup, Space::Dedup, &id_key)?) {
            outcomes.push(PublishOutcome::Duplicate { seq });
            continue;
        }
        let idem_key = r
            .idempotency_key
            .as_deref()
            .map(|k| store::idem_key(name, k));
        if let Some(k) = &idem_key
            && let Some(seq) = fresh(read(store, overlay, &local_dedup, Space::Dedup, k)?)
        {
            outcomes.push(PublishOutcome::Duplicate { seq });
            continue;
        }
        let agg_key = r.ordering_key.as_deref().map(|k| store::agg_key(name, k));
        if let Some(expected) = r.expected_sequence {
            let Some(k) = &agg_key else {
                return Err(BackendError::ExpectedSequenceWithoutKey);
            };
            let current = read(store, overlay, &local_agg, Space::Agg, k)?
                .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            if current != expected {
                let key = r.ordering_key.unwrap_or_default();
                return Err(BackendError::Conflict {
                    key,
                    expected,
                    current,
                });
            }
        }
        let seq = next;
        next += 1;
        let entry = store::encode_seq_time(seq, now);
        ops.push(Op::Put(
            Space::Log,
            store::log_key(name, seq),
            store::encode_record(now, r.ordering_key.as_deref(), &r.event),
        ));
        if let Some(c) = r.event.correlation_id() {
            ops.push(Op::Put(
                Space::Index,
                store::index_key(name, Index::Correlation, c, seq),
                Vec::new(),
            ));
        }
        if let Some(c) = r.event.causation_id() {
            ops.push(Op::Put(
                Space::Index,
                store::index_key(name, Index::Causation, c, seq),
                Vec::new(),
            ));
        }
        local_dedup.insert(id_key.clone(), entry.clone());
        ops.push(Op::Put(Space::Dedup, id_key, entry.clone()));
        if let Some(k) = idem_key {
            local_dedup.insert(k.clone(), entry.clone());
            ops.push(Op::Put(Space::Dedup, k, entry));
        }
        if let Some(k) = agg_key {
            local_agg.insert(k.clone(), seq.to_be_bytes().to_vec());
            ops.push(Op::Put(Space::Agg, k, seq.to_be_bytes().to_vec()));
        }
        outcomes.push(PublishOutcome::Stored { seq });
    }
    Ok((outcomes, ops, next))
}
