//! The embedded backend against the delivery contract: the whole conformance suite, each check
//! in its own data directory; the crash harness; and the check, under strace, that an
//! acknowledged publish was synced.

mod crash;
mod sync;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use canon_conformance::Harness;
use canon_embedded::{Durability, EmbeddedBackend};

/// A fresh data directory per check, removed afterwards.
struct EmbeddedHarness {
    dir: PathBuf,
}

impl EmbeddedHarness {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "canon-embedded-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        EmbeddedHarness { dir }
    }
}

impl Drop for EmbeddedHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness for EmbeddedHarness {
    type Backend = EmbeddedBackend;

    async fn open(&self) -> EmbeddedBackend {
        match EmbeddedBackend::open(&self.dir, Durability::Sync) {
            Ok(b) => b,
            Err(e) => panic!("open {}: {e}", self.dir.display()),
        }
    }
}

canon_conformance::suite!(EmbeddedHarness::new());

/// Many publishers at once, with syncs: under this load the writer hands most batches to its
/// syncer while it writes the next ones (and syncs in line when nothing waits). The sequences
/// of all publishes are distinct and without gaps; an answered publish can be read at once
/// (the topic's committed sequence moved before the answer); every acknowledged event is
/// delivered, before and after a reopen. That an answer waits for `fdatasync` is checked by
/// `sync::acknowledged_publishes_were_synced`, under strace.
#[tokio::test]
async fn concurrent_synced_publishes_are_answered_readable_and_kept() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use canon_backend::{Backend, GroupConfig, PublishRequest, TopicConfig};
    use canon_envelope::CloudEvent;

    const PUBLISHERS: usize = 32;
    const BATCHES: usize = 25;
    const PER_BATCH: usize = 8;
    const TOTAL: usize = PUBLISHERS * BATCHES * PER_BATCH;

    let h = EmbeddedHarness::new();
    let b = Arc::new(h.open().await);
    b.create_topic(TopicConfig::new("t")).await.expect("topic");
    let group = GroupConfig {
        max_in_flight: TOTAL,
        ..GroupConfig::default()
    };
    b.create_group("t", "g", group).await.expect("group");
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let b = Arc::clone(&b);
        publishers.spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..BATCHES {
                let batch = (0..PER_BATCH)
                    .map(|i| {
                        PublishRequest::new(CloudEvent::new(
                            format!("{p}-{n}-{i}"),
                            "/test",
                            "order.placed",
                        ))
                    })
                    .collect();
                let outcomes = b.publish("t", batch).await.expect("publish");
                assert_eq!(outcomes.len(), PER_BATCH);
                let first = outcomes[0].seq();
                let read = b
                    .read("t", first, PER_BATCH, Duration::ZERO)
                    .await
                    .expect("read");
                assert_eq!(
                    read.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(),
                    (0..PER_BATCH)
                        .map(|i| format!("{p}-{n}-{i}"))
                        .collect::<Vec<_>>(),
                    "an answered batch is readable at once"
                );
                seqs.extend(outcomes.into_iter().map(|o| o.seq()));
            }
            seqs
        });
    }
    let mut all = BTreeSet::new();
    while let Some(seqs) = publishers.join_next().await {
        for s in seqs.expect("publisher") {
            assert!(all.insert(s), "sequence {s} answered twice");
        }
    }
    assert_eq!(all.len(), TOTAL);
    let (first, last) = (all.first().copied(), all.last().copied());
    assert_eq!(
        last.zip(first).map(|(l, f)| l - f + 1),
        Some(TOTAL as u64),
        "no gaps"
    );

    let delivered = |b: Arc<EmbeddedBackend>| async move {
        let mut ids = BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ids.len() < TOTAL && std::time::Instant::now() < deadline {
            for d in b
                .pull("t", "g", "c", 1000, Duration::from_millis(50))
                .await
                .expect("pull")
            {
                ids.insert(d.event.event.id);
            }
        }
        ids.len()
    };
    assert_eq!(delivered(Arc::clone(&b)).await, TOTAL, "all visible");
    drop(b);
    let b = Arc::new(h.open().await);
    // Nothing was acked: after a restart the group delivers everything again.
    assert_eq!(delivered(b).await, TOTAL, "all durable");
}

/// Age-based retention of a quiet topic runs while another topic keeps the writer busy: the
/// writer's once-a-second pass over every topic does not wait for a quiet moment.
#[tokio::test]
async fn a_quiet_topic_expires_while_another_is_busy() {
    use std::time::{Duration, Instant};

    use canon_backend::{Backend, PublishRequest, TopicConfig};
    use canon_envelope::CloudEvent;

    let h = EmbeddedHarness::new();
    let b = h.open().await;
    b.create_topic(TopicConfig {
        max_age: Some(Duration::from_millis(200)),
        ..TopicConfig::new("quiet")
    })
    .await
    .expect("topic");
    b.create_topic(TopicConfig::new("busy"))
        .await
        .expect("topic");
    let event = |id: String| PublishRequest::new(CloudEvent::new(id, "/test", "order.placed"));
    b.publish("quiet", vec![event("old".to_owned())])
        .await
        .expect("publish");
    // A publish on the busy topic every 50 ms: the writer never waits a second for work.
    let started = Instant::now();
    let mut n = 0;
    let mut expired = false;
    while started.elapsed() < Duration::from_secs(5) {
        b.publish("busy", vec![event(format!("busy-{n}"))])
            .await
            .expect("publish");
        n += 1;
        if b.read("quiet", 1, 1, Duration::ZERO)
            .await
            .expect("read")
            .is_empty()
        {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        expired,
        "the quiet topic's event outlived its max_age by 5 s under load elsewhere"
    );
}
