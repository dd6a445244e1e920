//! Starts the write-back of tables while fjall writes them (the `canon-writeback` thread).
//!
//! fjall writes a table (a flush's or a compaction's output) through the page cache and fsyncs
//! it once, at the end: up to 16 MiB go to the disk in one burst, and a journal sync issued
//! meanwhile waits behind them (9–15 ms in `scripts/fsync-probe.py`, 65–99 ms once measured in
//! the writer on a busier disk; BENCHMARKS.md). fjall has no setting like RocksDB's
//! `bytes_per_sync`, so this thread does the same from outside: every `NUDGE` it asks the kernel
//! to start writing what each table being written has added (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`, which does not wait for the writes). The burst becomes a trickle,
//! and the final fsync finds little left to do.
//!
//! It knows fjall's layout (`keyspaces/*/tables/*`), as the background sync knows its journals.
//! Should the layout change, it finds no tables and does nothing. Nothing depends on it for
//! durability: fjall still syncs every table itself. Linux only; elsewhere there is no thread.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// How often the tables being written are nudged.
pub(crate) const NUDGE: Duration = Duration::from_millis(5);
/// Every how many nudges the directories are listed for new tables. A table takes longer than
/// this to write, so nearly all of it is still trickled.
const LIST_EVERY: u32 = 10;
/// A table that has not grown for this long is finished.
const FINISHED: Duration = Duration::from_secs(1);

/// The tables being written.
#[derive(Default)]
pub(crate) struct Tables {
    writing: HashMap<PathBuf, Writing>,
    /// Nudges the kernel took, for tests.
    pub(crate) nudges: u64,
    /// Whether a nudge was refused yet (logged once).
    refused: bool,
}

struct Writing {
    file: File,
    /// Its length at the last nudge.
    len: u64,
    grew: Instant,
}

impl Tables {
    /// Follows the tables under `dir` modified in the last `FINISHED` that it does not follow
    /// yet. A finished table's last change is older than that, so it is not followed again.
    pub(crate) fn list(&mut self, dir: &Path) {
        let now = SystemTime::now();
        let Ok(keyspaces) = std::fs::read_dir(dir.join("keyspaces")) else {
            return;
        };
        for ks in keyspaces.flatten() {
            let Ok(tables) = std::fs::read_dir(ks.path().join("tables")) else {
                continue;
            };
            for table in tables.flatten() {
                let path = table.path();
                let recent = || {
                    table
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < FINISHED)
                };
                if self.writing.contains_key(&path) || !recent() {
                    continue;
                }
                // Gone already, or not openable: nothing to nudge.
                if let Ok(file) = File::open(&path) {
                    let grew = Instant::now();
                    self.writing.insert(path, Writing { file, len: 0, grew });
                }
            }
        }
    }

    /// Starts the write-back of what each table being written has added since the last call;
    /// a table that stopped growing is let go.
    pub(crate) fn nudge(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (path, w) in &mut self.writing {
            let len = w.file.metadata().map_or(w.len, |m| m.len());
            if len > w.len {
                match start_writeback(&w.file) {
                    Ok(()) => self.nudges += 1,
                    Err(e) if !self.refused => {
                        self.refused = true;
                        tracing::debug!(table = %path.display(), error = %e,
                            "sync_file_range refused; tables are written back by their own fsync");
                    }
                    Err(_) => {}
                }
                w.len = len;
                w.grew = now;
            } else if now.duration_since(w.grew) >= FINISHED {
                done.push(path.clone());
            }
        }
        for path in done {
            self.writing.remove(&path);
        }
    }

    /// Tables followed now.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn writing(&self) -> usize {
        self.writing.len()
    }
}

/// Nudges the tables under `dir` until `stop` is dropped. With no table being written it only
/// lists, every `NUDGE * LIST_EVERY`.
pub(crate) fn run(dir: &Path, stop: &mpsc::Receiver<()>) {
    let mut tables = Tables::default();
    let mut round = 0u32;
    loop {
        let idle = tables.writing.is_empty();
        let wait = if idle { NUDGE * LIST_EVERY } else { NUDGE };
        if !matches!(
            stop.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        if idle || round.is_multiple_of(LIST_EVERY) {
            tables.list(dir);
            round = 0;
        }
        round += 1;
        tables.nudge();
    }
}

/// Whether this platform has the thread.
pub(crate) const AVAILABLE: bool = cfg!(target_os = "linux");

/// Asks the kernel to start writing `file`'s dirty pages, without waiting. A refusal only
/// means the table is written back later, by its own fsync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `sync_file_range` takes a descriptor and three integers and touches no memory of
    // this process; the descriptor stays open for the call, since `file` is borrowed.
    #[allow(unsafe_code)]
    let answer =
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if answer == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;

    use super::*;

    /// A table being written is nudged as it grows, and let go once it stops; an old one is
    /// never followed, nor one let go.
    #[test]
    fn tables_are_followed_while_they_grow() {
        let dir = tempfile::tempdir().unwrap();
        let tables_dir = dir.path().join("keyspaces").join("3").join("tables");
        std::fs::create_dir_all(&tables_dir).unwrap();
        let old = tables_dir.join("1");
        std::fs::write(&old, b"old").unwrap();
        let old_time = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(old_time)
            .unwrap();
        let mut tables = Tables::default();
        tables.list(dir.path());
        assert_eq!(tables.writing(), 0, "an old table is not followed");

        let mut new = File::create(tables_dir.join("2")).unwrap();
        tables.list(dir.path());
        assert_eq!(tables.writing(), 1, "a new table is followed");
        for _ in 0..3 {
            new.write_all(&[7; 4096]).unwrap();
            tables.nudge();
        }
        assert_eq!(tables.nudges, 3, "one nudge per growth");
        tables.nudge();
        assert_eq!(tables.nudges, 3, "no nudge without growth");

        std::thread::sleep(FINISHED);
        tables.nudge();
        assert_eq!(
            tables.writing(),
            0,
            "a table that stopped growing is finished"
        );
        tables.list(dir.path());
        assert_eq!(tables.writing(), 0, "and not followed again");
    }

    /// The layout `list` reads is fjall's: a table a flush writes is found, and the kernel
    /// takes the nudge for it.
    #[test]
    fn fjall_tables_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).expect("open");
        let mut batch = store.db.batch();
        for i in 0..1000u32 {
            batch.insert(&store.log, i.to_be_bytes().to_vec(), vec![7u8; 512]);
        }
        batch.commit().expect("commit");
        store.log.rotate_memtable_and_wait().expect("flush");
        let mut tables = Tables::default();
        tables.list(dir.path());
        assert!(
            tables.writing() > 0,
            "the flushed table is found (just written)"
        );
        tables.nudge();
        assert!(tables.nudges > 0, "and nudged");
        drop(store);
    }
}
