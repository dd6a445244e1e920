//! The crash harness: a worker process publishes and consumes under load while this test kills
//! it with SIGKILL at random moments, restarts it, and after every round checks that nothing
//! acknowledged was lost (odd rounds in the buffered durability mode, even ones synced): no acknowledged publish missing, no acknowledged delivery delivered
//! again to its group, every dead letter still in the DLQ, every scheduled event still there.
//!
//! The worker is this same test binary, run with `CANON_CRASH_WORKER` set (see `crash_worker`).
//! It appends what was acknowledged to a journal file after each acknowledgement returns; the
//! kernel keeps those writes across a SIGKILL of the process.
//!
//! `CANON_CRASH_ROUNDS` sets the number of kill/restart rounds (default 50).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use canon_backend::{
    Backend, DeadLetterFilter, GroupConfig, PublishOutcome, PublishRequest, RetryPolicy,
    StartPosition, TopicConfig,
};
use canon_embedded::{Durability, EmbeddedBackend};
use canon_envelope::{CloudEvent, Data};

const TOPIC: &str = "load";
const GROUP: &str = "workers";

fn group_config() -> GroupConfig {
    GroupConfig {
        ordered: false,
        lease: Duration::from_millis(200),
        retry: RetryPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(5),
            multiplier: 1.0,
            max_backoff: Duration::from_millis(5),
            jitter: 0.0,
        },
        max_in_flight: 64,
    }
}

/// The worker: publishes batches and consumes, journaling what was acknowledged, until killed.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by crash_harness in a child process"]
async fn crash_worker() {
    let Ok(dir) = std::env::var("CANON_CRASH_WORKER") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let run: u64 = std::env::var("CANON_CRASH_RUN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // Both modes promise to survive a crash of the process: odd rounds run the buffered one.
    let durability = if run % 2 == 1 {
        Durability::LoseRecentOnOsCrash
    } else {
        Durability::Sync
    };
    let b = EmbeddedBackend::open(dir.join("data"), durability).expect("open");
    b.create_topic(TopicConfig::new(TOPIC))
        .await
        .expect("topic");
    b.create_group(TOPIC, GROUP, group_config())
        .await
        .expect("group");
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("journal"))
        .expect("journal");
    let mut note = |line: String| {
        journal
            .write_all(format!("{line}\n").as_bytes())
            .expect("journal write");
    };
    let mut n = 0u64;
    loop {
        // Publish a batch of 8; every 10th event is scheduled 50 ms ahead.
        let batch: Vec<PublishRequest> = (0..8)
            .map(|i| {
                n += 1;
                let id = format!("r{run}-{n}");
                let mut ev = CloudEvent::new(id, "/crash", "load.tick");
                ev.data = Data::json(format!(r#"{{"i":{i}}}"#)).ok();
                if n.is_multiple_of(10) {
                    let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(50);
                    ev.set_extension(
                        "notbefore",
                        at.format(&time::format_description::well_known::Rfc3339)
                            .expect("format"),
                    );
                }
                PublishRequest::new(ev)
            })
            .collect();
        let ids: Vec<String> = batch.iter().map(|r| r.event.id.clone()).collect();
        let outcomes = b.publish(TOPIC, batch).await.expect("publish");
        for (id, o) in ids.iter().zip(outcomes) {
            assert!(matches!(o, PublishOutcome::Stored { .. }));
            note(format!("published {id}"));
        }
        // Consume what is there; dead-letter every 13th, ack the rest.
        for d in b
            .pull(TOPIC, GROUP, "worker", 16, Duration::ZERO)
            .await
            .expect("pull")
        {
            let id = d.event.event.id.clone();
            note(format!(
                "delivered {id} run{run} attempt{} seq{}",
                d.attempt, d.event.seq
            ));
            let digits: u64 = id
                .rsplit('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            // The intent is journaled first: a kill between the acknowledgement and its journal
            // line must not look like a lost event.
            note(format!("settling {id}"));
            if digits.is_multiple_of(13) {
                b.dead_letter(&d.token, Some("unlucky".into()))
                    .await
                    .expect("dead-letter");
                note(format!("deadlettered {id}"));
            } else {
                b.ack(&d.token).await.expect("ack");
                note(format!("acked {id}"));
            }
        }
    }
}

struct Journal {
    published: HashSet<String>,
    /// Ids the worker was about to ack or dead-letter (maybe done, maybe not).
    settling: HashSet<String>,
    acked: HashSet<String>,
    dead: HashSet<String>,
}

/// Reads the journal and checks that no acknowledged delivery was delivered again.
fn check_journal(path: &Path) -> Journal {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut j = Journal {
        published: HashSet::new(),
        settling: HashSet::new(),
        acked: HashSet::new(),
        dead: HashSet::new(),
    };
    for line in text.lines() {
        // The last line may be cut by the kill.
        let Some((what, id)) = line.split_once(' ') else {
            continue;
        };
        match what {
            "published" => drop(j.published.insert(id.to_owned())),
            "delivered" => {
                let id = id.split(' ').next().unwrap_or(id);
                assert!(
                    !j.acked.contains(id) && !j.dead.contains(id),
                    "{id} was delivered again after it was acknowledged: {line}"
                );
            }
            "settling" => drop(j.settling.insert(id.to_owned())),
            "acked" => drop(j.acked.insert(id.to_owned())),
            "deadlettered" => drop(j.dead.insert(id.to_owned())),
            _ => {}
        }
    }
    j
}

#[tokio::test(flavor = "current_thread")]
async fn crash_harness() {
    let rounds: u64 = std::env::var("CANON_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("canon-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = std::env::current_exe().expect("test binary");
    for run in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash::crash_worker", "--ignored", "--nocapture"])
            .env("CANON_CRASH_WORKER", &dir)
            .env("CANON_CRASH_RUN", run.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker");
        // Kill at a random moment: sometimes during start-up, mostly under load.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(30..400))).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("round {run}: the worker stopped by itself ({status}); run it alone to see why");
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        check_journal(&dir.join("journal"));
    }
    let journal = check_journal(&dir.join("journal"));
    assert!(
        journal.published.len() > 100,
        "the worker did too little work to prove anything: {} publishes",
        journal.published.len()
    );
    // Everything acknowledged is there.
    let b = EmbeddedBackend::open(dir.join("data"), Durability::Sync).expect("open");
    let dlq: HashSet<String> = b
        .dead_letters(TOPIC, GROUP, &DeadLetterFilter::default())
        .await
        .expect("dlq")
        .into_iter()
        .map(|d| d.event.event.id)
        .collect();
    let missing_dead: Vec<_> = journal.dead.difference(&dlq).collect();
    assert!(
        missing_dead.is_empty(),
        "dead letters lost: {missing_dead:?}"
    );
    b.create_group(TOPIC, "audit", group_config())
        .await
        .expect("group");
    b.reset(TOPIC, "audit", StartPosition::Earliest)
        .await
        .expect("reset");
    let mut stored: HashMap<String, u32> = HashMap::new();
    loop {
        let got = b
            .pull(TOPIC, "audit", "audit", 1000, Duration::from_millis(200))
            .await
            .expect("pull");
        if got.is_empty() {
            break;
        }
        for d in got {
            *stored.entry(d.event.event.id.clone()).or_default() += 1;
            b.ack(&d.token).await.expect("ack");
        }
    }
    let lost: Vec<_> = journal
        .published
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .take(10)
        .collect();
    // P2: batches of 8 (events 8k+1..=8k+8 of a run) are stored whole or not at all.
    let mut batches: HashMap<(String, u64), usize> = HashMap::new();
    for id in stored.keys() {
        if let Some((run, n)) = id
            .split_once('-')
            .and_then(|(run, n)| Some((run.to_owned(), n.parse::<u64>().ok()?)))
        {
            *batches.entry((run, (n - 1) / 8)).or_default() += 1;
        }
    }
    let torn: Vec<_> = batches.iter().filter(|(_, n)| **n != 8).take(10).collect();
    assert!(torn.is_empty(), "batches stored in part: {torn:?}");
    assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
    assert!(stored.values().all(|n| *n == 1), "an event is stored twice");
    // Pending work of the main group (including scheduled events) is still deliverable.
    let mut seen = HashSet::new();
    loop {
        let got = b
            .pull(TOPIC, GROUP, "final", 1000, Duration::from_millis(300))
            .await
            .expect("pull");
        if got.is_empty() {
            break;
        }
        for d in got {
            assert!(
                !journal.acked.contains(&d.event.event.id),
                "{} was acked but delivered again",
                d.event.event.id
            );
            seen.insert(d.event.event.id.clone());
            b.ack(&d.token).await.expect("ack");
        }
    }
    let unaccounted: Vec<_> = stored
        .keys()
        .filter(|id| !journal.settling.contains(*id) && !dlq.contains(*id) && !seen.contains(*id))
        .take(10)
        .collect();
    assert!(
        unaccounted.is_empty(),
        "events neither acked, dead-lettered nor still pending: {unaccounted:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
