//! The single writer: every change to the data directory goes through one thread, which
//! commits whatever has queued up as one fjall batch (group commit). A publish or an ack is
//! answered only after the batch holding it is durable, so throughput does not fall to the
//! disk's sync rate: while one sync runs, the next batch fills up.
//!
//! With `Durability::Sync` the sync is pipelined: the writer writes a batch into fjall's
//! journal and hands it to a second thread, the syncer, which syncs the journal (once for every
//! batch queued by then) and only then makes the batch visible to readers and answers it. The
//! writer meanwhile plans and writes the next batch: the syncer syncs its own handle on the
//! journal file (`ActiveJournal`), so fjall's journal lock is free while the disk works.
//! With `Durability::LoseRecentOnOsCrash` a thread of the same name syncs the journal every
//! `BACKGROUND_SYNC` instead. In both modes a third thread, `canon-seal`, seals memtables when
//! the writer asks (`bound_write_buffer`) and frees the flushed ones (`Keeper`), and on Linux
//! a fourth, `canon-writeback`, starts the write-back of tables while fjall writes them
//! (`crate::writeback`). No helper changes data: the writer's thread is still the only one
//! that writes.
//!
//! The writer is the one thread every write waits for, so work that decides nothing happens
//! on the publishing tasks before a job is queued: encoding, key building and the first dedup
//! lookup, which `Recent` lets the writer trust or makes it repeat.

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
        /// Answer once written to the OS, without waiting for the sync (see `write_unsynced`).
        unsynced: bool,
    },
}

/// The handle to the writer thread. Dropping it lets the thread finish what is queued and
/// waits for it, so the data directory is free once the backend is dropped.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    /// For the publishing tasks' dedup lookups (see `Recent`).
    store: Store,
    epoch: Arc<AtomicU64>,
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
        let epoch = Arc::new(AtomicU64::new(0));
        let recent = Recent::new(Arc::clone(&epoch));
        let thread = {
            let store = store.clone();
            std::thread::Builder::new()
                .name("canon-writer".into())
                .spawn(move || run(&store, durability, &rx, &flag, &topics, recent))
        };
        if thread.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        Writer {
            tx: Some(tx),
            thread: thread.ok(),
            failed,
            store,
            epoch,
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
        // Encoding, key building and the dedup lookups happen here, on the publishing task,
        // not on the writer. The epoch is read before the lookups (see `Recent`).
        let epoch = self.epoch.load(Ordering::SeqCst);
        let batch = batch
            .into_iter()
            .map(|r| {
                let mut p = Prepared::new(&topic.name, r)?;
                p.look_up(&self.store, epoch)?;
                Ok(p)
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
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
        self.submit(ops, false).await
    }

    /// Writes `ops` and answers once they are written to the OS, before the sync that makes
    /// them durable against a machine crash (a process crash does not lose them). A later
    /// synced write covers them: the journal is synced in order.
    pub(crate) async fn write_unsynced(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        self.submit(ops, true).await
    }

    async fn submit(&self, ops: Vec<Op>, unsynced: bool) -> Result<(), BackendError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Write {
                ops,
                reply,
                unsynced,
            })
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

/// Dedup keys a new epoch starts after: what the writer remembers is at most twice this.
/// Small in unit tests, so that they cross many epochs.
const RECENT_EPOCH: usize = if cfg!(test) { 16 } else { 1 << 16 };

/// The dedup keys the writer wrote lately (by hash), so that it can take a publishing task's
/// own dedup lookups (`Prepared::look_up`) instead of repeating them: they were most of the
/// writer's time in a measured run, and the writer is the one thread every write waits for.
///
/// A publishing task reads the epoch, then looks its keys up. The writer starts a new epoch only
/// when everything it has planned is committed, which makes it visible to lookups. So a key
/// written before the epoch the task read was visible to its lookup, and a key written since
/// is in one of the two sets the writer keeps (the current epoch's and the previous one's), as
/// long as the task's epoch is one of those two. The writer trusts a lookup only then and when
/// neither set holds the key's hash; otherwise (an older lookup, a key written since, a hash
/// collision) it looks the key up itself, as it always did.
struct Recent {
    /// The current epoch, shared with the publishing tasks; only the writer changes it.
    epoch: Arc<AtomicU64>,
    current: std::collections::HashSet<u64, foldhash::fast::FixedState>,
    previous: std::collections::HashSet<u64, foldhash::fast::FixedState>,
    hasher: foldhash::fast::FixedState,
}

impl Recent {
    fn new(epoch: Arc<AtomicU64>) -> Recent {
        Recent {
            epoch,
            current: std::collections::HashSet::default(),
            previous: std::collections::HashSet::default(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// Whether a lookup of `key` made in `epoch` still holds.
    fn holds(&self, epoch: u64, key: &[u8]) -> bool {
        let now = self.epoch.load(Ordering::Relaxed);
        let h = self.hash(key);
        epoch.saturating_add(1) >= now && !self.current.contains(&h) && !self.previous.contains(&h)
    }

    /// Records dedup keys a commit being planned writes.
    fn wrote<'a>(&mut self, keys: impl Iterator<Item = &'a Vec<u8>>) {
        for k in keys {
            let h = self.hash(k);
            self.current.insert(h);
        }
    }

    /// Starts a new epoch if the current one is full. Only between commits: everything planned
    /// must be committed.
    fn roll(&mut self) {
        if self.current.len() >= RECENT_EPOCH {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            self.epoch.fetch_add(1, Ordering::SeqCst);
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
    recent: Recent,
) {
    // Batches handed to the syncer and not answered yet (`Durability::Sync`).
    let queued = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // Seals memtables when the writer asks (`bound_write_buffer`), so that the writer does
        // not wait for a seal. Without the thread, the writer seals in line.
        let (seal, seal_requests) = mpsc::sync_channel::<()>(1);
        let sealer = std::thread::Builder::new()
            .name("canon-seal".into())
            .spawn_scoped(scope, move || {
                let mut keeper = Keeper::default();
                loop {
                    keeper.hold(store);
                    match seal_requests.recv_timeout(Keeper::POLL) {
                        Ok(()) => seal_memtables(store),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    keeper.release();
                }
            });
        let seal = sealer.is_ok().then_some(seal);
        // Trickles tables to the disk while fjall writes them (see `writeback`): the journal
        // syncs then never queue behind a whole table. Ends when `nudging` is dropped.
        let (nudging, stop_nudging) = mpsc::channel::<()>();
        if crate::writeback::AVAILABLE {
            let nudger = std::thread::Builder::new()
                .name("canon-writeback".into())
                .spawn_scoped(scope, move || {
                    crate::writeback::run(&store.dir, &stop_nudging);
                });
            if let Err(e) = nudger {
                tracing::warn!(error = %e, "no write-back thread: tables go to the disk in bursts");
            }
        }
        match durability {
            Durability::Sync => {
                let (tx, synced) = mpsc::sync_channel(SYNC_QUEUE);
                let waiting = &queued;
                let syncer = std::thread::Builder::new()
                    .name("canon-sync".into())
                    .spawn_scoped(scope, move || sync(store, &synced, waiting, failed));
                let persist = match syncer {
                    Ok(_) => Persist::Syncer(tx, &queued),
                    // No second thread: sync in line.
                    Err(_) => Persist::Inline(PersistMode::SyncData),
                };
                // `tx` is dropped with `write`: the syncer finishes what is queued, and the
                // scope waits for it.
                write(store, rx, failed, topics, recent, persist, seal.as_ref());
            }
            // Into the OS buffers: safe from a crash of this process (the journal is flushed
            // by hand, once per commit). A background thread syncs the journal every
            // `BACKGROUND_SYNC`, which bounds what an OS crash can lose and keeps fjall's own
            // syncs short: before every flush fjall fsyncs the journal while it holds the
            // journal lock, and with the OS left to write back on its own (after 30 s) that
            // fsync wrote megabytes and held every commit for 13-16 ms (strace,
            // BENCHMARKS.md).
            Durability::LoseRecentOnOsCrash => {
                let (stop, stopped) = mpsc::channel::<()>();
                let syncer = std::thread::Builder::new()
                    .name("canon-sync".into())
                    .spawn_scoped(scope, move || sync_in_background(store, &stopped, failed));
                if let Err(e) = syncer {
                    tracing::warn!(error = %e, "no background sync thread: the OS writes back alone");
                }
                let persist = Persist::Inline(PersistMode::Buffer);
                write(store, rx, failed, topics, recent, persist, seal.as_ref());
                drop(stop);
            }
        }
        // Closes the sealer's and the write-back thread's channels, so that the scope can end.
        drop(seal);
        drop(nudging);
    });
}

/// How often `Durability::LoseRecentOnOsCrash` syncs the journal in the background: about what
/// a machine crash can lose in that mode.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(50);

/// `Durability::LoseRecentOnOsCrash`'s syncer: syncs the journal every `BACKGROUND_SYNC` (on
/// its own handles, without fjall's journal lock) until `stop` is dropped, and once more then.
/// A failed `fdatasync` fails the backend as in `Sync` mode: the OS may have dropped the
/// unwritten pages, so what was acknowledged may be gone. A journal that cannot be listed or
/// opened (out of file handles, say) is tried again at the next round.
fn sync_in_background(store: &Store, stop: &mpsc::Receiver<()>, failed: &AtomicBool) {
    let mut journal = ActiveJournal::new(store);
    loop {
        let last = !matches!(
            stop.recv_timeout(BACKGROUND_SYNC),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        match journal.sync() {
            Ok(()) => {}
            Err(SyncFailure::Find(e)) => {
                tracing::warn!(error = %e, "the background sync could not find the journal; trying again");
            }
            Err(SyncFailure::Sync(e)) => {
                tracing::error!(error = %e, "the background sync of the journal failed");
                failed.store(true, Ordering::SeqCst);
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// The syncer: syncs the journal once for every batch queued, then answers them in order.
/// After a failed sync nothing more is answered with success: fjall refuses further writes
/// (it is poisoned), and the backend refuses work until the directory is reopened.
fn sync(store: &Store, queue: &mpsc::Receiver<Written>, queued: &AtomicUsize, failed: &AtomicBool) {
    let mut broken: Option<BackendError> = None;
    let mut journal = ActiveJournal::new(store);
    while let Ok(first) = queue.recv() {
        let mut batches = vec![first];
        batches.extend(queue.try_iter());
        if broken.is_none()
            && let Err(e) = journal.sync()
        {
            // Answers wait for this sync: whichever part failed, they cannot be given.
            failed.store(true, Ordering::SeqCst);
            broken = Some(e.into_error());
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

/// The syncer's own handle on fjall's active journal, so that it syncs without fjall's journal
/// lock: `Database::persist` holds that lock while the disk syncs, and every commit of the
/// writer waits for it (a fifth of the writer's time in a measured run).
///
/// This leans on facts of fjall 3's journal (the version is pinned; `journal_layout` tests the
/// layout): the journals are files `<n>.jnl` in the data directory, fjall writes the newest,
/// and it deletes a journal only once everything in it is flushed to tables. A batch handed to
/// the syncer has been written to the OS (the writer persisted it with `PersistMode::Buffer`)
/// into the journal that was the newest then, or (if fjall failed half way through moving to
/// a new journal, after creating the file) into the one before. So each round syncs every
/// journal from the newest at the previous round up to the newest now: normally that is one
/// file. A journal gone meanwhile was flushed and needs no sync. Where the directory holds no
/// journal this recognises, or the newest vanishes, it falls back to `Database::persist`.
struct ActiveJournal<'a> {
    store: &'a Store,
    /// The newest journal at the previous round (or when the syncer started).
    from: Option<u64>,
    open: Option<(u64, std::fs::File)>,
}

impl<'a> ActiveJournal<'a> {
    fn new(store: &'a Store) -> ActiveJournal<'a> {
        let from = journals(&store.dir)
            .ok()
            .and_then(|all| all.last().copied());
        ActiveJournal {
            store,
            from,
            open: None,
        }
    }

    fn sync(&mut self) -> Result<(), SyncFailure> {
        let find = |e| SyncFailure::Find(BackendError::storage(e));
        let synced = |e| SyncFailure::Sync(BackendError::storage(e));
        let all = journals(&self.store.dir).map_err(find)?;
        let Some(&newest) = all.last() else {
            return self.fall_back();
        };
        let from = self.from.unwrap_or(newest);
        for &n in all.iter().filter(|&&n| n >= from && n < newest) {
            match self.open_journal(n) {
                Ok(file) => file.sync_data().map_err(synced)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(find(e)),
            }
        }
        if self.open.as_ref().is_none_or(|(n, _)| *n != newest) {
            match self.open_journal(newest) {
                Ok(file) => self.open = Some((newest, file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.fall_back(),
                Err(e) => return Err(find(e)),
            }
        }
        if let Some((_, file)) = &self.open {
            file.sync_data().map_err(synced)?;
        }
        self.from = Some(newest);
        Ok(())
    }

    fn open_journal(&self, n: u64) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.store.dir.join(format!("{n}.jnl")))
    }

    /// fjall's own sync, under its journal lock; the next round lists the journals again.
    fn fall_back(&mut self) -> Result<(), SyncFailure> {
        self.open = None;
        self.from = None;
        self.store
            .db
            .persist(PersistMode::SyncData)
            .map_err(|e| SyncFailure::Sync(BackendError::storage(e)))
    }
}

/// Why a round of `ActiveJournal::sync` failed.
enum SyncFailure {
    /// A journal could not be listed or opened: nothing was synced, nothing is known lost.
    Find(BackendError),
    /// A sync failed: what was written may not be on disk, and after a failed `fdatasync` the
    /// OS may have dropped the unwritten pages.
    Sync(BackendError),
}

impl SyncFailure {
    fn into_error(self) -> BackendError {
        match self {
            SyncFailure::Find(e) | SyncFailure::Sync(e) => e,
        }
    }
}

/// The numbers of fjall's journals (`<n>.jnl`) in a data directory, oldest first.
fn journals(dir: &std::path::Path) -> std::io::Result<Vec<u64>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            all.push(n);
        }
    }
    all.sort_unstable();
    Ok(all)
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
    mut recent: Recent,
    persist: Persist<'_>,
    seal: Option<&mpsc::SyncSender<()>>,
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
        // Everything planned so far is committed (visible to lookups): a new epoch may start.
        recent.roll();
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
        // Unsynced writes: answered once the commit is written to the OS.
        let mut early: Vec<Reply<()>> = Vec::new();
        for job in jobs {
            match job {
                Job::Publish {
                    topic,
                    batch: requests,
                    reply,
                } => {
                    let before = topic.next_seq.load(Ordering::SeqCst);
                    let result = plan_publish(store, &topic, requests, &overlay, &recent).map(
                        |(outcomes, ops, next, local)| {
                            recent.wrote(local.dedup.keys());
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
                Job::Write {
                    ops,
                    reply,
                    unsynced,
                } => {
                    for op in ops {
                        apply(store, &mut batch, &mut overlay, op);
                    }
                    if unsynced {
                        early.push(reply);
                    } else {
                        pending.push(Pending::Write(reply));
                    }
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
        // A failed sync on the syncer fails everything after it, as a failed commit does:
        // fjall does not know of the syncer's failure (it is not poisoned by it).
        let committed = if failed.load(Ordering::SeqCst) {
            Err(fjall::Error::Poisoned)
        } else {
            batch.commit()
        }
        .and_then(|()| {
            // Hand over when the syncer still holds batches (answers stay in order) or when
            // more work waits (the writer has something to plan while the journal syncs).
            let (hand_over, mode) = match &persist {
                // Nothing of this commit waits for a sync: into the OS buffers only. A later
                // synced commit covers it.
                _ if pending.is_empty() => (false, PersistMode::Buffer),
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
                for reply in early {
                    drop(reply.send(Ok(())));
                }
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
                bound_write_buffer(store, seal);
            }
            Err(e) => {
                // Nothing of this commit is acknowledged. The in-memory state may now disagree
                // with the disk, so the backend refuses further work until it is reopened.
                failed.store(true, Ordering::SeqCst);
                for (topic, before, _) in touched {
                    topic.next_seq.store(before, Ordering::SeqCst);
                }
                let err = BackendError::storage(e);
                for reply in early {
                    drop(reply.send(Err(err.clone())));
                }
                fail_all(pending, &err);
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
/// Over `WRITE_BUFFER_SOFT`, the writer asks the sealing thread (`canon-seal`) to seal the
/// full memtables (`seal_memtables`), which queues their flush. A seal takes fjall's journal
/// lock and runs fjall's version and journal maintenance: 25-50 ms at times when the writer did
/// it in line, with every commit waiting meanwhile. Only over `WRITE_BUFFER_HARD` does the
/// writer seal in line (if nothing is sealed yet) and wait for the worker to flush: at
/// full-rate ingest writes then slow to what the disk and the worker sustain instead of
/// growing memory, and at moderate rates (5,000 events/s) a compaction never makes a commit
/// wait. The commit just made has been answered already, or handed to the syncer, which
/// answers it without the writer.
fn bound_write_buffer(store: &Store, seal: Option<&mpsc::SyncSender<()>>) {
    let size = store.db.write_buffer_size();
    if size <= WRITE_BUFFER_SOFT {
        return;
    }
    if let Some(seal) = seal {
        // A request already waiting will do.
        let _ = seal.try_send(());
        if size <= WRITE_BUFFER_HARD {
            return;
        }
    }
    if !sealed(store) {
        seal_memtables(store);
    }
    let started = std::time::Instant::now();
    while store.db.write_buffer_size() > WRITE_BUFFER_HARD
        && sealed(store)
        && started.elapsed() < MAX_STALL
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Frees memtables on the sealing thread instead of where fjall lets go of them.
///
/// fjall drops a flushed memtable when it prunes a keyspace's old versions, which it does at
/// every memtable rotation while it holds that keyspace's version lock; and every commit that
/// writes to the keyspace takes that lock to reach the active memtable. Freeing a 16 MiB
/// skiplist there took over 20 ms of CPU, with the writer, and so every publish, waiting
/// (BENCHMARKS.md, seventh session). The keeper holds a second reference to every memtable it
/// has seen, and lets go of those only it still holds, outside any lock of fjall's.
///
/// A memtable that is rotated, flushed and pruned between two looks (`POLL`) is freed by
/// fjall as before. The keeper only delays a free, never prevents one. This works around
/// fjall from outside; the fix proper is in fjall (prune, then free after the lock). Files
/// pruned under the same lock (old version files, compacted tables) are still deleted there.
#[derive(Default)]
struct Keeper {
    /// `Arc<lsm_tree::Memtable>`, which fjall does not name; only the count matters here.
    held: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Keeper {
    /// How often the keeper looks for new memtables and frees the ones fjall let go.
    const POLL: Duration = Duration::from_millis(100);

    /// Holds every keyspace's active memtable.
    fn hold(&mut self, store: &Store) {
        use fjall::AbstractTree;
        for ks in store.keyspaces() {
            let active: Arc<dyn std::any::Any + Send + Sync> = ks.tree.active_memtable();
            if !self.held.iter().any(|m| Arc::ptr_eq(m, &active)) {
                self.held.push(active);
            }
        }
    }

    /// Frees the memtables nothing else refers to any more.
    fn release(&mut self) {
        self.held.retain(|m| Arc::strong_count(m) > 1);
    }
}

/// Whether some keyspace has a sealed memtable waiting for its flush.
fn sealed(store: &Store) -> bool {
    store
        .keyspaces()
        .iter()
        .any(|ks| ks.sealed_memtable_count() > 0)
}

/// Seals the full memtables, or the largest one if none is full and none waits for its flush.
///
/// `Keyspace::rotate_memtable` is public but hidden from fjall's documentation, so a fjall
/// upgrade may change it (a removal fails the build; a change of meaning shows in the
/// ten-million-event run of `canon-load`).
fn seal_memtables(store: &Store) {
    use fjall::AbstractTree;
    if store.db.write_buffer_size() <= WRITE_BUFFER_SOFT {
        return;
    }
    let size = |ks: &fjall::Keyspace| ks.tree.active_memtable().size();
    for ks in store.keyspaces() {
        if size(ks) >= store::MEMTABLE_BYTES {
            // Best effort: on failure the worker still rotates it when it gets to it.
            let _ = ks.rotate_memtable();
        }
    }
    if !sealed(store)
        && let Some(ks) = store.keyspaces().into_iter().max_by_key(|ks| size(ks))
    {
        let _ = ks.rotate_memtable();
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

/// A dedup entry as this commit sees it: the job's own writes, then the commit's, then what
/// the publishing task found (`seen`, if `Recent` says that still holds), then the disk.
fn dedup_entry(
    store: &Store,
    overlay: &Overlay,
    local: &Local,
    recent: &Recent,
    key: &[u8],
    seen: Option<&Seen>,
) -> Result<Option<(u64, u64)>, BackendError> {
    if let Some(entry) = local.dedup.get(key).or_else(|| overlay.dedup.get(key)) {
        return Ok(Some(*entry));
    }
    if let Some(seen) = seen
        && recent.holds(seen.epoch, key)
    {
        return Ok(seen.entry);
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
    /// What the publishing task found under `id_key` and `idem_key` (`look_up`).
    seen_id: Option<Seen>,
    seen_idem: Option<Seen>,
}

/// A dedup entry as a publishing task found it, and the writer's epoch before it looked.
#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: u64,
    entry: Option<(u64, u64)>,
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
            seen_id: None,
            seen_idem: None,
        })
    }

    /// Looks up the event's dedup keys, so that the writer need not (see `Recent`). `epoch`
    /// must be read before the lookups.
    fn look_up(&mut self, store: &Store, epoch: u64) -> Result<(), BackendError> {
        let get = |key: &[u8]| -> Result<Seen, BackendError> {
            let stored = store.dedup.get(key).map_err(BackendError::storage)?;
            Ok(Seen {
                epoch,
                entry: stored.and_then(|v| store::decode_seq_time(&v)),
            })
        };
        self.seen_id = Some(get(&self.id_key)?);
        if let Some(k) = &self.idem_key {
            self.seen_idem = Some(get(k)?);
        }
        Ok(())
    }
}

/// Decides a publish: duplicates, conflicts, sequences. Returns the outcomes, the writes, the
/// topic's next sequence and the job's dedup and aggregate entries; writes nothing itself.
fn plan_publish(
    store: &Store,
    topic: &TopicShared,
    requests: Vec<Prepared>,
    overlay: &Overlay,
    recent: &Recent,
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
        if let Some(seq) = fresh(dedup_entry(
            store,
            overlay,
            &local,
            recent,
            &r.id_key,
            r.seen_id.as_ref(),
        )?) {
            outcomes.push(PublishOutcome::Duplicate { seq });
            continue;
        }
        if let Some(k) = &r.idem_key
            && let Some(seq) = fresh(dedup_entry(
                store,
                overlay,
                &local,
                recent,
                k,
                r.seen_idem.as_ref(),
            )?)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use canon_backend::{Backend, PublishOutcome, PublishRequest, TopicConfig};
    use canon_envelope::CloudEvent;

    use super::{Recent, journals};
    use crate::{Durability, EmbeddedBackend};

    fn newest(dir: &std::path::Path) -> u64 {
        let all = journals(dir).expect("list");
        *all.last().expect("a journal")
    }

    /// fjall lets go of a flushed memtable (when it prunes old versions, at a later rotation)
    /// while the keeper still holds it; the keeper's `release` is then the one that frees it.
    #[test]
    fn the_keeper_frees_flushed_memtables() {
        use fjall::AbstractTree;
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = crate::store::Store::open(tmp.path()).expect("open");
        let write = |k: u32| {
            let mut batch = store.db.batch();
            batch.insert(&store.log, k.to_be_bytes().to_vec(), vec![7u8; 512]);
            batch.commit().expect("commit");
        };
        let flushed = || {
            let started = std::time::Instant::now();
            while store.log.sealed_memtable_count() > 0 {
                assert!(started.elapsed() < Duration::from_secs(10), "no flush");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        write(0);
        let mut keeper = super::Keeper::default();
        keeper.hold(&store);
        assert_eq!(keeper.held.len(), store.keyspaces().len());
        let first = Arc::downgrade(&store.log.tree.active_memtable());
        store.log.rotate_memtable().expect("rotate");
        flushed();
        // Rotations prune the versions that still refer to the flushed memtable.
        for k in 1..=20 {
            if first.strong_count() == 1 {
                break;
            }
            write(k);
            store.log.rotate_memtable().expect("rotate");
            flushed();
        }
        assert_eq!(
            first.strong_count(),
            1,
            "fjall still refers to the memtable"
        );
        keeper.release();
        assert!(first.upgrade().is_none(), "the keeper did not free it");
        // The active memtable (and the other keyspaces') stay held.
        assert!(!keeper.held.is_empty());
    }

    /// The facts of fjall's journal that `ActiveJournal` rests on: the journals are `<n>.jnl`
    /// files in the data directory, and what a commit writes is in the newest one, before and
    /// after fjall moves to a new journal (at 64 MB). That fjall syncs a journal before it
    /// creates the next is in its `journal::writer::Writer::rotate`; a fjall upgrade must keep
    /// both, and this test fails if the layout changes.
    #[test]
    fn journal_layout() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let store = crate::store::Store::open(&dir).expect("open");
        let written_to_newest = |marker: &[u8]| {
            let mut batch = store.db.batch();
            batch.insert(&store.kv, marker.to_vec(), b"v".to_vec());
            batch.commit().expect("commit");
            store.db.persist(fjall::PersistMode::Buffer).expect("flush");
            let n = newest(&dir);
            let bytes = std::fs::read(dir.join(format!("{n}.jnl"))).expect("read journal");
            let found = bytes.windows(marker.len()).any(|w| w == marker);
            (n, found)
        };
        let (first, found) = written_to_newest(b"marker-before-rotation");
        assert!(found, "a commit is in the newest journal");
        // Over 64 MB of journal, then a flush: fjall moves to the next journal.
        let value = vec![7u8; 1 << 20];
        let mut n = first;
        for i in 0..200u32 {
            let mut batch = store.db.batch();
            batch.insert(&store.log, i.to_be_bytes().to_vec(), value.clone());
            batch.commit().expect("commit");
            if i % 16 == 15 {
                let _ = store.log.rotate_memtable();
            }
            n = newest(&dir);
            if n > first {
                break;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while n == first && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            n = newest(&dir);
        }
        assert!(n > first, "fjall moved to a new journal");
        let (now, found) = written_to_newest(b"marker-after-rotation");
        assert_eq!(now, n);
        assert!(found, "a commit after the move is in the newest journal");
        drop(store);
    }

    /// Publishers race with the same ids and idempotency keys while the writer's dedup epochs
    /// roll every 16 keys (`RECENT_EPOCH` in tests, less than a batch): whether the writer takes a publishing
    /// task's lookup or repeats it, every id and every idempotency key is stored once, and
    /// every other publish of it is answered as a duplicate of that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_duplicates_are_stored_once() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let b = Arc::new(EmbeddedBackend::open(tmp.path(), Durability::Sync).expect("open"));
        // A few rounds, each on a fresh topic: a race that goes wrong does not in every round.
        // Rounds with shared ids only, and with idempotency keys shared by different ids.
        for round in 0..6 {
            race(&b, &format!("t{round}"), round % 2 == 1).await;
        }
        drop(b);
    }

    async fn race(b: &Arc<EmbeddedBackend>, topic: &str, idempotency_keys: bool) {
        const IDS: usize = 1500;
        const PUBLISHERS: usize = 8;
        const BATCH: usize = 25;
        b.create_topic(TopicConfig::new(topic))
            .await
            .expect("topic");
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..PUBLISHERS {
            let (b, topic) = (Arc::clone(b), topic.to_owned());
            tasks.spawn(async move {
                // Every publisher in the same order, so that the same keys are looked up at about
                // the same time and meet in the writer in different commits.
                let order: Vec<usize> = (0..IDS).collect();
                let mut answers = Vec::new();
                for chunk in order.chunks(BATCH) {
                    let batch = chunk
                        .iter()
                        .map(|&i| {
                            // Without idempotency keys every publisher sends the same ids. With
                            // them, even publishers share ids and odd ones send their own ids
                            // with the same idempotency key.
                            let id = if p % 2 == 0 || !idempotency_keys {
                                format!("e-{i}")
                            } else {
                                format!("p{p}-{i}")
                            };
                            let mut r =
                                PublishRequest::new(CloudEvent::new(id, "/test", "t.happened"));
                            if idempotency_keys {
                                r.idempotency_key = Some(format!("k-{i}"));
                            }
                            r
                        })
                        .collect();
                    let outcomes = b.publish(&topic, batch).await.expect("publish");
                    answers.extend(chunk.iter().copied().zip(outcomes));
                }
                answers
            });
        }
        let mut stored = vec![None; IDS];
        let mut duplicates = Vec::new();
        while let Some(answers) = tasks.join_next().await {
            for (i, outcome) in answers.expect("publisher") {
                match outcome {
                    PublishOutcome::Stored { seq } => {
                        assert!(stored[i].is_none(), "key {i} stored twice");
                        stored[i] = Some(seq);
                    }
                    PublishOutcome::Duplicate { seq } => duplicates.push((i, seq)),
                }
            }
        }
        assert!(stored.iter().all(Option::is_some), "every key stored");
        assert_eq!(duplicates.len(), IDS * (PUBLISHERS - 1));
        for (i, seq) in duplicates {
            assert_eq!(Some(seq), stored[i], "a duplicate names the stored event");
        }
        let events = b
            .read(topic, 1, IDS * 2, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(events.len(), IDS, "the log holds each key once");
    }

    /// `Recent` vouches for a lookup only if no key with its hash was written since its epoch,
    /// and only for the current and the previous epoch.
    #[test]
    fn recent_vouches_only_for_unwritten_keys_of_recent_epochs() {
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut recent = Recent::new(Arc::clone(&epoch));
        let (a, b) = (b"key-a".to_vec(), b"key-b".to_vec());
        assert!(recent.holds(0, &a), "nothing written yet");
        recent.wrote([&a].into_iter());
        assert!(!recent.holds(0, &a), "written in this epoch");
        assert!(recent.holds(0, &b));
        // Fill the epoch and roll: `a` is now in the previous epoch, still remembered.
        let filler: Vec<Vec<u8>> = (0..super::RECENT_EPOCH)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        recent.wrote(filler.iter());
        recent.roll();
        assert_eq!(epoch.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!recent.holds(0, &a), "written in the previous epoch");
        assert!(
            recent.holds(0, &b),
            "a lookup of the previous epoch still holds"
        );
        assert!(recent.holds(1, &b));
        // Another full epoch: lookups from epoch 0 are too old, whatever the key.
        recent.wrote([&b"other".to_vec()].into_iter());
        let filler: Vec<Vec<u8>> = (0..super::RECENT_EPOCH)
            .map(|i| (i + 1_000_000).to_be_bytes().to_vec())
            .collect();
        recent.wrote(filler.iter());
        recent.roll();
        assert!(!recent.holds(0, &b), "too old to vouch for");
        assert!(recent.holds(1, &b));
        assert!(
            recent.holds(2, &a),
            "forgotten two epochs later, but read after it was written"
        );
        // No roll below a full epoch.
        recent.wrote([&a].into_iter());
        recent.roll();
        assert_eq!(epoch.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
