//! The single writer: every change to the data directory goes through one thread, which
//! commits whatever has queued up as one fjall batch (group commit). A publish or an ack is
//! answered only after the batch holding it is durable, so throughput does not fall to the
//! disk's sync rate: while one sync runs, the next batch fills up.
//!
//! With `Durability::Sync` the sync is pipelined: the writer writes a batch into fjall's
//! journal and hands it to a second thread, the syncer, which syncs the journal (once for every
//! batch queued by then) and only then makes the batch visible to readers and answers it. The
//! writer meanwhile plans the next batch (dedup lookups, encoding), which is most of its CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use canon_backend::{BackendError, PublishOutcome, PublishRequest, TopicConfig};
use fjall::PersistMode;
use tokio::sync::{Notify, oneshot};

use crate::Durability;
use crate::store::{self, Index, Store};

/// How often age-based retention runs when nothing is written.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many log records are deleted by one retention pass.
const RETENTION_BATCH: usize = 10_000;

/// At most this many queued jobs go into one commit.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// What the writer and readers share about a topic.
#[derive(Debug)]
pub(crate) struct TopicShared {
    pub(crate) name: String,
    dedup_window_ms: AtomicU64,
    /// Retention by age in ms, 0 for none (L2).
    max_age_ms: AtomicU64,
    /// Retention by size in bytes, 0 for none (L2).
    max_bytes: AtomicU64,
    /// Bytes of the retained log records.
    bytes: AtomicU64,
    /// The oldest retained sequence.
    first: AtomicU64,
    /// The next sequence to assign; only the writer changes it.
    next_seq: AtomicU64,
    /// Every event up to this sequence is durable and may be delivered.
    pub(crate) committed: AtomicU64,
    /// Woken when `committed` grows.
    pub(crate) notify: Notify,
}

/// How much of a topic is retained, as the writer keeps count.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TopicStats {
    pub(crate) first: u64,
    pub(crate) bytes: u64,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl TopicShared {
    pub(crate) fn new(config: &TopicConfig, last_seq: u64, stats: TopicStats) -> Self {
        let t = TopicShared {
            name: config.name.clone(),
            dedup_window_ms: AtomicU64::new(0),
            max_age_ms: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
            bytes: AtomicU64::new(stats.bytes),
            first: AtomicU64::new(stats.first.max(1)),
            next_seq: AtomicU64::new(last_seq + 1),
            committed: AtomicU64::new(last_seq),
            notify: Notify::new(),
        };
        t.configure(config);
        t
    }

    /// Applies a (new) configuration.
    pub(crate) fn configure(&self, config: &TopicConfig) {
        self.dedup_window_ms
            .store(ms(Some(config.dedup_window)), Ordering::SeqCst);
        self.max_age_ms.store(ms(config.max_age), Ordering::SeqCst);
        self.max_bytes
            .store(config.max_bytes.unwrap_or(0), Ordering::SeqCst);
    }

    /// The oldest retained sequence and the retained bytes.
    pub(crate) fn retained(&self) -> (u64, u64) {
        (
            self.first.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    fn stats(&self) -> Vec<u8> {
        [
            self.first.load(Ordering::SeqCst).to_be_bytes(),
            self.bytes.load(Ordering::SeqCst).to_be_bytes(),
        ]
        .concat()
    }
}

/// The topics the writer knows, for retention.
pub(crate) type Topics = Arc<RwLock<HashMap<String, Arc<TopicShared>>>>;

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
    Kv,
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
        batch: Vec<Prepared>,
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
    pub(crate) fn start(store: Store, durability: Durability, topics: Topics) -> Writer {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("canon-writer".into())
            .spawn(move || run(&store, durability, &rx, &flag, &topics));
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
        // Encoding and key building happen here, on the publishing task, not on the writer.
        let batch = batch
            .into_iter()
            .map(|r| Prepared::new(&topic.name, r))
            .collect::<Result<Vec<_>, _>>()?;
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
        Space::Kv => &store.kv,
    }
}

/// A map keyed by storage keys, hashed with foldhash: the writer builds a few per commit,
/// one entry per event, and SipHash was a measurable part of its time. Entries are bounded by
/// the commit's size, so the weaker guarantee against crafted keys costs at most that.
type KeyMap<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// Dedup entries and aggregate sequences written by the commit being built, so that later jobs
/// in it see earlier ones; and the group-state writes of the commit, last one per key.
#[derive(Default)]
struct Overlay {
    /// Dedup key -> (sequence, stored-at ms).
    dedup: KeyMap<(u64, u64)>,
    /// Aggregate key -> its last sequence.
    agg: KeyMap<u64>,
    /// fjall gives every item of a batch the same sequence number, so a put and a delete of one
    /// key in one commit would be ambiguous (which one wins differs between the live memtable
    /// and a journal replay). Group state is written once per key per commit: the last write.
    group: HashMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

enum Pending {
    Publish(
        Reply<Vec<PublishOutcome>>,
        Result<Vec<PublishOutcome>, BackendError>,
    ),
    Write(Reply<()>),
}

/// A batch written to the journal, waiting for its sync: what to publish and answer then.
struct Written {
    /// Each topic the batch advanced, and its last sequence once the batch is durable.
    committed: Vec<(Arc<TopicShared>, u64)>,
    pending: Vec<Pending>,
}

impl Written {
    /// The batch is durable: readers may see it, its callers get their answers.
    fn done(self) {
        for (topic, last) in self.committed {
            topic.committed.store(last, Ordering::SeqCst);
            topic.notify.notify_waiters();
        }
        for p in self.pending {
            match p {
                Pending::Publish(reply, result) => drop(reply.send(result)),
                Pending::Write(reply) => drop(reply.send(Ok(()))),
            }
        }
    }

    fn fail(self, err: &BackendError) {
        fail_all(self.pending, err);
    }
}

/// Answers every job of a batch that is not durable with the error.
fn fail_all(pending: Vec<Pending>, err: &BackendError) {
    for p in pending {
        match p {
            Pending::Publish(reply, _) => drop(reply.send(Err(err.clone()))),
            Pending::Write(reply) => drop(reply.send(Err(err.clone()))),
        }
    }
}

/// Batches a sync has not covered yet, at most: bounds what waits in memory behind a slow disk.
const SYNC_QUEUE: usize = 4;

fn run(
    store: &Store,
    durability: Durability,
    rx: &mpsc::Receiver<Job>,
    failed: &AtomicBool,
    topics: &Topics,
) {
    match durability {
        Durability::Sync => {
            let queued = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                let (tx, synced) = mpsc::sync_channel(SYNC_QUEUE);
                let waiting = &queued;
                let syncer = std::thread::Builder::new()
                    .name("canon-sync".into())
                    .spawn_scoped(scope, move || sync(store, &synced, waiting, failed));
                match syncer {
                    Ok(_) => write(store, rx, failed, topics, Persist::Syncer(tx, &queued)),
                    // No second thread: sync in line.
                    Err(_) => write(
                        store,
                        rx,
                        failed,
                        topics,
                        Persist::Inline(PersistMode::SyncData),
                    ),
                }
                // `tx` is dropped with `write`: the syncer finishes what is queued, and the scope
                // waits for it.
            });
        }
        // Into the OS buffers: safe from a crash of this process (the journal is flushed by
        // hand, once per commit).
        Durability::LoseRecentOnOsCrash => {
            write(
                store,
                rx,
                failed,
                topics,
                Persist::Inline(PersistMode::Buffer),
            );
        }
    }
}

/// The syncer: syncs the journal once for every batch queued, then answers them in order.
/// After a failed sync nothing more is answered with success: fjall refuses further writes
/// (it is poisoned), and the backend refuses work until the directory is reopened.
fn sync(store: &Store, queue: &mpsc::Receiver<Written>, queued: &AtomicUsize, failed: &AtomicBool) {
    let mut broken: Option<BackendError> = None;
    while let Ok(first) = queue.recv() {
        let mut batches = vec![first];
        batches.extend(queue.try_iter());
        if broken.is_none()
            && let Err(e) = store.db.persist(PersistMode::SyncData)
        {
            failed.store(true, Ordering::SeqCst);
            broken = Some(BackendError::storage(e));
        }
        let n = batches.len();
        for b in batches {
            match &broken {
                None => b.done(),
                Some(err) => b.fail(err),
            }
        }
        queued.fetch_sub(n, Ordering::SeqCst);
    }
}

/// How a written batch becomes durable.
enum Persist<'a> {
    /// Synced by the syncer when more work waits (or the syncer has batches): the writer goes
    /// on to the next batch meanwhile. Synced here when nothing else waits, which spares a
    /// quiet writer the hand-over (a thread wake-up per commit). The count is of the batches
    /// the syncer has not answered yet; while it is not zero, everything goes to the syncer, so
    /// batches are answered in the order they were written.
    Syncer(mpsc::SyncSender<Written>, &'a AtomicUsize),
    /// Persisted here in this mode before it is answered.
    Inline(PersistMode),
}

/// The writer's loop: plans and writes one batch per round.
fn write(
    store: &Store,
    rx: &mpsc::Receiver<Job>,
    failed: &AtomicBool,
    topics: &Topics,
    persist: Persist<'_>,
) {
    // A job taken from the queue while deciding how to persist a batch: the next batch's first.
    let mut taken: Option<Job> = None;
    // Every topic gets a retention pass at least once a `RETENTION_INTERVAL`, busy or quiet:
    // age needs no publish to expire, and a topic whose last batch is still at the syncer
    // when its own pass runs is trimmed by the next one.
    let mut last_sweep = std::time::Instant::now();
    loop {
        if last_sweep.elapsed() >= RETENTION_INTERVAL {
            last_sweep = std::time::Instant::now();
            let all: Vec<Arc<TopicShared>> = topics
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for t in all {
                enforce_retention(store, &t);
            }
        }
        let next = match taken.take() {
            Some(job) => Ok(job),
            None => rx.recv_timeout(RETENTION_INTERVAL),
        };
        let first = match next {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
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
        // Topics whose next sequence this commit advanced, with the value to restore on failure
        // and the bytes the commit adds to them.
        let mut touched: Vec<(Arc<TopicShared>, u64, u64)> = Vec::new();
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
                        |(outcomes, ops, next, local)| {
                            overlay.dedup.extend(local.dedup);
                            overlay.agg.extend(local.agg);
                            let mut added = 0;
                            for op in ops {
                                if let Op::Put(Space::Log, _, v) = &op {
                                    added += v.len() as u64;
                                }
                                apply(store, &mut batch, &mut overlay, op);
                            }
                            if next != before {
                                match touched.iter_mut().find(|(t, _, _)| Arc::ptr_eq(t, &topic)) {
                                    Some(entry) => entry.2 += added,
                                    None => touched.push((Arc::clone(&topic), before, added)),
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
        for ((space, k), v) in std::mem::take(&mut overlay.group) {
            match v {
                Some(v) => batch.insert(keyspace(store, space), k, v),
                None => batch.remove(keyspace(store, space), k),
            }
        }
        // The topics' sizes, in the same commit as the records they count.
        for (topic, _, added) in &touched {
            let stats = [
                topic.first.load(Ordering::SeqCst).to_be_bytes(),
                (topic.bytes.load(Ordering::SeqCst) + added).to_be_bytes(),
            ]
            .concat();
            batch.insert(&store.stats, store::topic_prefix(&topic.name), stats);
        }
        let committed = batch.commit().and_then(|()| {
            // Hand over when the syncer still holds batches (answers stay in order) or when
            // more work waits (the writer has something to plan while the journal syncs).
            let (hand_over, mode) = match &persist {
                Persist::Syncer(_, queued) => {
                    let busy = queued.load(Ordering::SeqCst) > 0 || {
                        taken = rx.try_recv().ok();
                        taken.is_some()
                    };
                    let mode = if busy {
                        PersistMode::Buffer
                    } else {
                        PersistMode::SyncData
                    };
                    (busy, mode)
                }
                Persist::Inline(mode) => (false, *mode),
            };
            store.db.persist(mode).map(|()| hand_over)
        });
        match committed {
            Ok(hand_over) => {
                let mut written = Written {
                    committed: Vec::with_capacity(touched.len()),
                    pending,
                };
                for (topic, _, added) in &touched {
                    topic.bytes.fetch_add(*added, Ordering::SeqCst);
                    written
                        .committed
                        .push((Arc::clone(topic), topic.next_seq.load(Ordering::SeqCst) - 1));
                }
                match &persist {
                    Persist::Syncer(tx, queued) if hand_over => {
                        // Waits while `SYNC_QUEUE` batches wait for their sync. A syncer that
                        // is gone has failed on its way out: answer with the failure.
                        queued.fetch_add(1, Ordering::SeqCst);
                        if let Err(mpsc::SendError(w)) = tx.send(written) {
                            failed.store(true, Ordering::SeqCst);
                            w.fail(&BackendError::storage("the syncer thread stopped"));
                        }
                    }
                    _ => written.done(),
                }
                for (topic, _, _) in &touched {
                    enforce_retention(store, topic);
                }
                bound_write_buffer(store);
            }
            Err(e) => {
                // Nothing of this commit is acknowledged. The in-memory state may now disagree
                // with the disk, so the backend refuses further work until it is reopened.
                failed.store(true, Ordering::SeqCst);
                for (topic, before, _) in touched {
                    topic.next_seq.store(before, Ordering::SeqCst);
                }
                fail_all(pending, &BackendError::storage(e));
            }
        }
    }
}

/// Over this, the writer seals memtables itself, so that their flush is queued.
const WRITE_BUFFER_SOFT: u64 = 24 * 1024 * 1024;

/// Over this, the writer also waits for flushes: what the memtables of all keyspaces may hold.
const WRITE_BUFFER_HARD: u64 = 48 * 1024 * 1024;

/// The longest the writer waits for flushes after one commit: a worker that does not come
/// back (a failing disk) must not stop writes for good.
const MAX_STALL: Duration = Duration::from_secs(2);

/// Keeps the memtables of all keyspaces bounded. fjall seals a full memtable on its one
/// background worker, and that worker may be in the middle of a compaction of a second or more
/// (the dedup keyspace's random keys): until it comes back, the full memtable keeps growing
/// (to 57 MiB in a measured run, with 100 MiB of memtables in all, and a peak RSS of 353 MB
/// over ten million events).
///
/// Over `WRITE_BUFFER_SOFT`, the writer seals the full memtables itself (the largest one if
/// none is full and none is waiting for its flush), which queues their flush. Only over
/// `WRITE_BUFFER_HARD` does it wait for the worker to flush: at full-rate ingest writes then
/// slow to what the disk and the worker sustain instead of growing memory, and at moderate
/// rates (5,000 events/s) a compaction never makes a commit wait. The commit just made has
/// been answered already, or handed to the syncer, which answers it without the writer.
///
/// `Keyspace::rotate_memtable` is public but hidden from fjall's documentation, so a fjall
/// upgrade may change it (a removal fails the build; a change of meaning shows in the
/// ten-million-event run of `canon-load`).
fn bound_write_buffer(store: &Store) {
    use fjall::AbstractTree;
    if store.db.write_buffer_size() <= WRITE_BUFFER_SOFT {
        return;
    }
    let size = |ks: &fjall::Keyspace| ks.tree.active_memtable().size();
    let sealed = || {
        store
            .keyspaces()
            .iter()
            .any(|ks| ks.sealed_memtable_count() > 0)
    };
    for ks in store.keyspaces() {
        if size(ks) >= store::MEMTABLE_BYTES {
            // Best effort: on failure the worker still rotates it when it gets to it.
            let _ = ks.rotate_memtable();
        }
    }
    if !sealed()
        && let Some(ks) = store.keyspaces().into_iter().max_by_key(|ks| size(ks))
    {
        let _ = ks.rotate_memtable();
    }
    let started = std::time::Instant::now();
    while store.db.write_buffer_size() > WRITE_BUFFER_HARD
        && sealed()
        && started.elapsed() < MAX_STALL
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn apply(store: &Store, batch: &mut fjall::OwnedWriteBatch, overlay: &mut Overlay, op: Op) {
    match op {
        // Group state: one write per key per commit (see `Overlay::group`).
        Op::Put(space, k, v) if is_group_state(space) => {
            drop(overlay.group.insert((space, k), Some(v)));
        }
        Op::Delete(space, k) if is_group_state(space) => {
            drop(overlay.group.insert((space, k), None));
        }
        Op::Put(space, k, v) => batch.insert(keyspace(store, space), k, v),
        Op::Delete(space, k) => batch.remove(keyspace(store, space), k),
    }
}

fn is_group_state(space: Space) -> bool {
    matches!(
        space,
        Space::Done
            | Space::Floor
            | Space::Attempt
            | Space::Requeue
            | Space::Dlq
            | Space::Group
            | Space::Kv
    )
}

/// A dedup entry as this commit sees it: the job's own writes, then the commit's, then the
/// disk.
fn dedup_entry(
    store: &Store,
    overlay: &Overlay,
    local: &Local,
    key: &[u8],
) -> Result<Option<(u64, u64)>, BackendError> {
    if let Some(entry) = local.dedup.get(key).or_else(|| overlay.dedup.get(key)) {
        return Ok(Some(*entry));
    }
    let stored = store.dedup.get(key).map_err(BackendError::storage)?;
    Ok(stored.and_then(|v| store::decode_seq_time(&v)))
}

/// An aggregate's last sequence as this commit sees it (0: none yet).
fn agg_seq(
    store: &Store,
    overlay: &Overlay,
    local: &Local,
    key: &[u8],
) -> Result<u64, BackendError> {
    if let Some(seq) = local.agg.get(key).or_else(|| overlay.agg.get(key)) {
        return Ok(*seq);
    }
    let stored = store.agg.get(key).map_err(BackendError::storage)?;
    Ok(stored
        .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The dedup and aggregate writes of one publish job, seen by its later events, and merged into
/// the commit's overlay when the job is planned in full (a refused job leaves no trace).
#[derive(Default)]
struct Local {
    dedup: KeyMap<(u64, u64)>,
    agg: KeyMap<u64>,
}

/// One event ready for the writer: everything that does not depend on the topic's state is
/// computed by the publishing task, so the single writer thread only decides and writes.
#[derive(Debug)]
pub(crate) struct Prepared {
    record: Vec<u8>,
    stored_ms: u64,
    id_key: Vec<u8>,
    idem_key: Option<Vec<u8>>,
    agg_key: Option<Vec<u8>>,
    ordering_key: Option<String>,
    expected: Option<u64>,
    /// Index prefixes (`index_prefix`) to which the sequence is appended.
    index: Vec<Vec<u8>>,
}

impl Prepared {
    pub(crate) fn new(topic: &str, r: PublishRequest) -> Result<Prepared, BackendError> {
        if r.ordering_key
            .as_ref()
            .is_some_and(|k| k.len() > usize::from(u16::MAX))
        {
            return Err(BackendError::InvalidConfig(
                "an ordering key is limited to 65,535 bytes".into(),
            ));
        }
        let stored_ms = store::now_ms();
        let mut index = Vec::new();
        if let Some(c) = r.event.correlation_id() {
            index.push(store::index_prefix(topic, Index::Correlation, c));
        }
        if let Some(c) = r.event.causation_id() {
            index.push(store::index_prefix(topic, Index::Causation, c));
        }
        Ok(Prepared {
            record: store::encode_record(stored_ms, r.ordering_key.as_deref(), &r.event),
            stored_ms,
            id_key: store::id_key(topic, &r.event.source, &r.event.id),
            idem_key: r
                .idempotency_key
                .as_deref()
                .map(|k| store::idem_key(topic, k)),
            agg_key: r.ordering_key.as_deref().map(|k| store::agg_key(topic, k)),
            ordering_key: r.ordering_key,
            expected: r.expected_sequence,
            index,
        })
    }
}

/// Decides a publish: duplicates, conflicts, sequences. Returns the outcomes, the writes, the
/// topic's next sequence and the job's dedup and aggregate entries; writes nothing itself.
fn plan_publish(
    store: &Store,
    topic: &TopicShared,
    requests: Vec<Prepared>,
    overlay: &Overlay,
) -> Result<(Vec<PublishOutcome>, Vec<Op>, u64, Local), BackendError> {
    let now = store::now_ms();
    let window = topic.dedup_window_ms.load(Ordering::SeqCst);
    let fresh = |entry: Option<(u64, u64)>| {
        entry
            .filter(|(_, at)| now.saturating_sub(*at) <= window)
            .map(|(seq, _)| seq)
    };
    let mut next = topic.next_seq.load(Ordering::SeqCst);
    let mut ops = Vec::with_capacity(requests.len() * 3);
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut local = Local::default();
    for r in requests {
        if let Some(seq) = fresh(dedup_entry(store, overlay, &local, &r.id_key)?) {
            outcomes.push(PublishOutcome::Duplicate { seq });
            continue;
        }
        if let Some(k) = &r.idem_key
            && let Some(seq) = fresh(dedup_entry(store, overlay, &local, k)?)
        {
            outcomes.push(PublishOutcome::Duplicate { seq });
            continue;
        }
        if let Some(expected) = r.expected {
            let Some(k) = &r.agg_key else {
                return Err(BackendError::ExpectedSequenceWithoutKey);
            };
            let current = agg_seq(store, overlay, &local, k)?;
            if current != expected {
                return Err(BackendError::Conflict {
                    key: r.ordering_key.unwrap_or_default(),
                    expected,
                    current,
                });
            }
        }
        let seq = next;
        next += 1;
        ops.push(Op::Put(
            Space::Log,
            store::log_key(&topic.name, seq),
            r.record,
        ));
        for mut k in r.index {
            k.extend_from_slice(&seq.to_be_bytes());
            ops.push(Op::Put(Space::Index, k, Vec::new()));
        }
        let entry = store::encode_seq_time(seq, r.stored_ms);
        if let Some(k) = r.idem_key {
            local.dedup.insert(k.clone(), (seq, r.stored_ms));
            ops.push(Op::Put(Space::Dedup, k, entry.clone()));
        }
        local.dedup.insert(r.id_key.clone(), (seq, r.stored_ms));
        ops.push(Op::Put(Space::Dedup, r.id_key, entry));
        if let Some(k) = r.agg_key {
            local.agg.insert(k.clone(), seq);
            ops.push(Op::Put(Space::Agg, k, seq.to_be_bytes().to_vec()));
        }
        outcomes.push(PublishOutcome::Stored { seq });
    }
    Ok((outcomes, ops, next, local))
}

/// Deletes a topic's oldest records while it is over its age or size limit (L2), at most
/// `RETENTION_BATCH` at a time, never a record within the limits. Not synced: a deletion lost to
/// a crash is made again by the next pass.
fn enforce_retention(store: &Store, topic: &TopicShared) {
    let (max_age, max_bytes) = (
        topic.max_age_ms.load(Ordering::SeqCst),
        topic.max_bytes.load(Ordering::SeqCst),
    );
    if max_age == 0 && max_bytes == 0 {
        return;
    }
    let now = store::now_ms();
    let committed = topic.committed.load(Ordering::SeqCst);
    let mut batch = store.db.batch();
    let mut deleted = 0;
    while deleted < RETENTION_BATCH {
        let first = topic.first.load(Ordering::SeqCst);
        if first > committed {
            break;
        }
        let key = store::log_key(&topic.name, first);
        let Ok(record) = store.log.get(&key) else {
            return;
        };
        if let Some(record) = record {
            let stored =
                <[u8; 8]>::try_from(&record[..8.min(record.len())]).map_or(now, u64::from_be_bytes);
            let too_old = max_age > 0 && now.saturating_sub(stored) > max_age;
            let too_big = max_bytes > 0 && topic.bytes.load(Ordering::SeqCst) > max_bytes;
            if !(too_old || too_big) {
                break;
            }
            batch.remove(&store.log, key);
            topic.bytes.fetch_sub(
                (record.len() as u64).min(topic.bytes.load(Ordering::SeqCst)),
                Ordering::SeqCst,
            );
        }
        topic.first.store(first + 1, Ordering::SeqCst);
        deleted += 1;
    }
    if deleted > 0 {
        batch.insert(
            &store.stats,
            store::topic_prefix(&topic.name),
            topic.stats(),
        );
        // Best effort: what is not deleted now is deleted by the next pass.
        let _ = batch.commit();
    }
}
