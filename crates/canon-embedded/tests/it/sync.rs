//! An acknowledged publish was synced: a worker publishes under `strace`, which records every
//! journal write, every `fdatasync`/`fsync` and every acknowledgement the worker saw, in the
//! order they happened. For each acknowledged event the check finds the journal write that
//! holds it and requires a sync of that journal file that started after the write and ended
//! before the acknowledgement. The SIGKILL crash harness cannot see this (the OS's buffers
//! survive a killed process); a power loss would. The same check run on
//! `Durability::LoseRecentOnOsCrash` must find acknowledgements with no sync behind them, so
//! it is known to tell the two apart; and there the background sync must have covered every
//! acknowledged write within forty of its intervals.
//!
//! A second run crosses a journal rotation: the worker first fills fjall's journal with 1 MiB
//! events (their writes are traced only up to strace's string limit, so the trace stays a few
//! MB), then probes while more of them push the journal past fjall's rotation point, until a
//! new journal file appears. The probes must then sit in two journal files, each synced before
//! its acknowledgements: the syncer follows fjall to the new file without losing the old one.
//!
//! Needs `strace` (scripts/services installs it when missing); without it the test fails.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use canon_backend::{Backend, PublishRequest, TopicConfig};
use canon_embedded::{BACKGROUND_SYNC, Durability, EmbeddedBackend};
use canon_envelope::CloudEvent;

const PUBLISHERS: usize = 8;
const EACH: usize = 25;

/// The filler events of the rotation run, and how many of them go in before the probes: a
/// flush rotates fjall's journal once it is past 64,000,000 bytes, and 56 MiB of events stay
/// short of that.
const FILLER_BYTES: usize = 1024 * 1024;
const FILLED_BEFORE: usize = 56;
/// Probes each publisher still publishes once the new journal is there.
const AFTER_ROTATION: usize = 10;

/// The numbers of the journal files (`<n>.jnl`) in a data directory.
fn journals(dir: &Path) -> Vec<u64> {
    let mut all: Vec<u64> = std::fs::read_dir(dir)
        .expect("data directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".jnl")?.parse().ok()
        })
        .collect();
    all.sort_unstable();
    all
}

/// A filler event of `FILLER_BYTES`.
fn filler(n: usize) -> PublishRequest {
    let mut event = CloudEvent::new(format!("fill-{n}"), "/test", "order.placed");
    event.data = Some(
        canon_envelope::Data::json(format!(r#"{{"pad":"{}"}}"#, "x".repeat(FILLER_BYTES)))
            .expect("JSON"),
    );
    PublishRequest::new(event)
}

/// Publishes single events from several tasks at once (so the writer both syncs in line and
/// hands batches to its syncer) and writes `ack <id>` to `acks.log`, one `write` per answer.
/// With `CANON_SYNC_ROTATE`, it fills the journal first and probes across its rotation.
#[test]
#[ignore = "run by acknowledged_publishes_were_synced, under strace"]
fn sync_worker() {
    let Ok(dir) = std::env::var("CANON_SYNC_WORKER") else {
        return;
    };
    let durability = match std::env::var("CANON_SYNC_MODE").as_deref() {
        Ok("buffered") => Durability::LoseRecentOnOsCrash,
        _ => Durability::Sync,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let b = Arc::new(EmbeddedBackend::open(&dir, durability).expect("open"));
        b.create_topic(TopicConfig::new("t")).await.expect("topic");
        let rotate = std::env::var_os("CANON_SYNC_ROTATE").is_some();
        // Without a rotation to wait for, the probes count as after it from the start, so
        // each publisher stops after `EACH`.
        let rotated = Arc::new(std::sync::atomic::AtomicBool::new(!rotate));
        let mut pusher = None;
        if rotate {
            for n in 0..FILLED_BEFORE {
                b.publish("t", vec![filler(n)]).await.expect("filler");
            }
            let before = *journals(Path::new(&dir)).last().expect("a journal");
            let (b, rotated, dir) = (Arc::clone(&b), Arc::clone(&rotated), dir.clone());
            pusher = Some(tokio::spawn(async move {
                // A flush rotates the journal once it is past the point; a memtable fills
                // (and so is flushed) every 16 MiB.
                let mut new_journal = false;
                for n in FILLED_BEFORE..FILLED_BEFORE + 100 {
                    new_journal = journals(Path::new(&dir)).last() > Some(&before);
                    if new_journal {
                        break;
                    }
                    b.publish("t", vec![filler(n)]).await.expect("filler");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                // Either way the probes stop; without a new journal the worker fails here.
                rotated.store(true, std::sync::atomic::Ordering::SeqCst);
                assert!(new_journal, "no new journal after 100 MiB more");
            }));
        }
        let acks = Arc::new(Mutex::new(
            std::fs::File::create(Path::new(&dir).join("acks.log")).expect("acks.log"),
        ));
        let mut publishers = tokio::task::JoinSet::new();
        for p in 0..PUBLISHERS {
            let (b, acks) = (Arc::clone(&b), Arc::clone(&acks));
            let rotated = Arc::clone(&rotated);
            publishers.spawn(async move {
                let mut after = 0;
                for n in 0.. {
                    if rotated.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                    }
                    if n >= EACH && after > AFTER_ROTATION {
                        break;
                    }
                    let id = format!("probe-{p}-{n:05}");
                    let event = CloudEvent::new(id.clone(), "/test", "order.placed");
                    b.publish("t", vec![PublishRequest::new(event)])
                        .await
                        .expect("publish");
                    acks.lock()
                        .expect("acks")
                        .write_all(format!("ack {id}\n").as_bytes())
                        .expect("ack line");
                }
            });
        }
        while let Some(done) = publishers.join_next().await {
            done.expect("publisher");
        }
        if let Some(pusher) = pusher {
            pusher.await.expect("pusher");
        }
        // Forty background sync intervals of the weaker mode (a wide margin for a loaded
        // machine), then a mark in the trace.
        tokio::time::sleep(40 * BACKGROUND_SYNC).await;
        acks.lock()
            .expect("acks")
            .write_all(b"end\n")
            .expect("end line");
    });
}

/// One system call as strace printed it, from the line it started on to the line it ended on.
#[derive(Debug)]
struct Call {
    name: String,
    /// The file of its first argument (strace -y), if it had one.
    path: String,
    text: String,
    start: usize,
    end: usize,
    ok: bool,
}

/// strace -f output: `<pid> name(args) = ret`, or a call split across `<unfinished ...>` and
/// `<... name resumed>` lines when another thread's call came in between.
fn parse(trace: &str) -> Vec<Call> {
    let call = |text: String, start: usize, end: usize| {
        let name = text.split('(').next().unwrap_or_default().to_owned();
        let path = text
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        // The result follows the last `=` (strace pads before it: `)     = 16`).
        let ok = text
            .rsplit_once("= ")
            .is_some_and(|(_, ret)| ret.starts_with(|c: char| c.is_ascii_digit()));
        Call {
            name,
            path,
            text,
            start,
            end,
            ok,
        }
    };
    let mut open: HashMap<&str, (String, usize)> = HashMap::new();
    let mut calls = Vec::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some((text, start)) = open.remove(pid) {
                let tail = resumed.split_once("resumed>").map_or("", |(_, t)| t);
                calls.push(call(text + tail, start, i));
            }
        } else if let Some(text) = rest.strip_suffix(" <unfinished ...>") {
            open.insert(pid, (text.to_owned(), i));
        } else {
            calls.push(call(rest.to_owned(), i, i));
        }
    }
    calls
}

/// What the trace shows of one acknowledged event.
#[derive(Debug)]
struct Acked {
    id: String,
    /// The journal file its write went to.
    journal: String,
    /// A sync of its journal write ended before the acknowledgement.
    synced_before_ack: bool,
    /// ... before the worker's `end` line, forty background sync intervals after the last one.
    synced_before_end: bool,
}

/// For each acknowledgement: whether syncs of its journal write came before it and before the
/// end.
fn acks_and_syncs(calls: &[Call]) -> Vec<Acked> {
    let journal_write = |c: &&Call| {
        c.ok && (c.name.starts_with("write") || c.name.starts_with("pwrite"))
            && c.path.ends_with(".jnl")
    };
    let sync = |c: &&Call| c.ok && (c.name == "fdatasync" || c.name == "fsync");
    let acks_log = |c: &&Call| c.name == "write" && c.path.ends_with("acks.log");
    let end = calls
        .iter()
        .filter(acks_log)
        .find(|c| c.text.contains("\"end\\n\""))
        .expect("the worker's end line is in the trace")
        .start;
    // The first journal write holding each probe id (one pass: the filler writes are large).
    let mut first_write: HashMap<&str, &Call> = HashMap::new();
    for w in calls.iter().filter(journal_write) {
        for (at, _) in w.text.match_indices("probe-") {
            let len = w.text[at + 6..]
                .find(|c: char| !c.is_ascii_digit() && c != '-')
                .unwrap_or(w.text.len() - at - 6);
            first_write.entry(&w.text[at..at + 6 + len]).or_insert(w);
        }
    }
    let mut out = Vec::new();
    for ack in calls.iter().filter(acks_log) {
        let Some(id) = ack
            .text
            .split_once("\"ack ")
            .and_then(|(_, rest)| rest.split_once("\\n"))
            .map(|(id, _)| id.to_owned())
        else {
            continue;
        };
        let Some(write) = first_write
            .get(id.as_str())
            .copied()
            .filter(|w| w.end < ack.start)
        else {
            panic!("no journal write before the acknowledgement of {id} holds it");
        };
        // A commit reaches the journal through an 8 KiB buffer emptied at every commit: under
        // 8 KiB it is one `write`, so a sync after that write covers the whole commit (its
        // end marker and checksum too, without which recovery drops it). A commit that also
        // holds a 1 MiB filler (the writer joins concurrent publishes) takes more writes, but
        // the writer syncs only after the whole commit is written.
        let bytes: usize = write
            .text
            .rsplit_once("= ")
            .and_then(|(_, ret)| ret.trim().parse().ok())
            .expect("a write's byte count");
        assert!(
            bytes < 8 * 1024,
            "the commit holding {id} took more than one write ({bytes} bytes in the first)"
        );
        let synced_before = |until: usize| {
            calls
                .iter()
                .filter(sync)
                .any(|s| s.path == write.path && s.start > write.end && s.end < until)
        };
        out.push(Acked {
            journal: write.path.clone(),
            synced_before_ack: synced_before(ack.start),
            synced_before_end: synced_before(end),
            id,
        });
    }
    out
}

fn traced(mode: &str, rotate: bool) -> Vec<Acked> {
    let dir = tempfile::tempdir().expect("dir");
    let trace = dir.path().join("trace.txt");
    let mut strace = Command::new("strace");
    if rotate {
        strace.env("CANON_SYNC_ROTATE", "1");
    }
    let status = strace
        .args(["-f", "-y", "-qq", "-s", "65536", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=write,writev,pwrite64,pwritev,pwritev2,fdatasync,fsync",
        ])
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", "sync::sync_worker", "--ignored", "--nocapture"])
        .env("CANON_SYNC_WORKER", dir.path().join("data"))
        .env("CANON_SYNC_MODE", mode)
        .stdout(Stdio::null())
        .status()
        .expect("strace must be installed (scripts/services installs it)");
    assert!(status.success(), "the {mode} worker failed: {status}");
    let text = std::fs::read_to_string(&trace).expect("trace");
    acks_and_syncs(&parse(&text))
}

/// The ids of the acknowledgements without the sync `synced` asks about.
fn unsynced(acked: &[Acked], synced: impl Fn(&Acked) -> bool) -> Vec<&str> {
    acked
        .iter()
        .filter(|a| !synced(a))
        .map(|a| a.id.as_str())
        .collect()
}

#[test]
fn acknowledged_publishes_were_synced() {
    let synced = traced("sync", false);
    assert_eq!(
        synced.len(),
        PUBLISHERS * EACH,
        "every acknowledgement was traced"
    );
    assert_eq!(
        unsynced(&synced, |a| a.synced_before_ack),
        Vec::<&str>::new(),
        "acknowledged before their journal write was synced"
    );

    // The weaker mode acknowledges before the sync (the check tells the two apart), and its
    // background sync covers every acknowledged write soon after.
    let buffered = traced("buffered", false);
    assert_eq!(buffered.len(), PUBLISHERS * EACH);
    assert!(
        !unsynced(&buffered, |a| a.synced_before_ack).is_empty(),
        "the check finds buffered acknowledgements without a sync (else it proves nothing)"
    );
    assert_eq!(
        unsynced(&buffered, |a| a.synced_before_end),
        Vec::<&str>::new(),
        "not synced within forty background intervals"
    );
}

#[test]
fn acknowledged_publishes_were_synced_across_a_journal_rotation() {
    for mode in ["sync", "buffered"] {
        let acked = traced(mode, true);
        assert!(
            acked.len() >= PUBLISHERS * EACH,
            "{mode}: every probe traced"
        );
        let files: std::collections::BTreeSet<&str> =
            acked.iter().map(|a| a.journal.as_str()).collect();
        assert!(
            files.len() >= 2,
            "{mode}: the probes did not cross a journal rotation: {files:?}"
        );
        assert_eq!(
            unsynced(&acked, |a| a.synced_before_end),
            Vec::<&str>::new(),
            "{mode}: not synced within forty background intervals"
        );
        if mode == "sync" {
            assert_eq!(
                unsynced(&acked, |a| a.synced_before_ack),
                Vec::<&str>::new(),
                "acknowledged before their journal write was synced"
            );
        }
    }
}
