//! The outbox and its relay against the real PostgreSQL (`CANON_TEST_POSTGRES`, default
//! `postgres://postgres:canon@127.0.0.1:5432/test`; `scripts/services` starts it) and the
//! embedded backend. Each test has its own outbox table. A missing server fails the tests.

mod crash;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canon_backend::{Backend, StoredEvent, TopicConfig};
use canon_embedded::{Durability, EmbeddedBackend};
use canon_engine::Engine;
use canon_envelope::{CloudEvent, Data};
use canon_outbox::{Outbox, Relay, RelayConfig, RelayStats, Row};
use tokio_postgres::{Client, NoTls};

pub(crate) const TOPIC: &str = "orders";

pub(crate) fn url() -> String {
    std::env::var("CANON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:canon@127.0.0.1:5432/test".to_owned())
}

pub(crate) async fn connect() -> Client {
    let (client, conn) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("PostgreSQL must be running (scripts/services starts it)");
    tokio::spawn(conn);
    client
}

/// A fresh outbox table, installed.
pub(crate) async fn fresh_outbox() -> (Outbox, Client) {
    let outbox = Outbox::new(&format!("canon_outbox_t{:012x}", fastrand::u64(..1 << 48)))
        .expect("table name");
    let client = connect().await;
    outbox.install(&client).await.expect("install");
    (outbox, client)
}

pub(crate) fn event(id: &str, key: &str) -> CloudEvent {
    let mut e = CloudEvent::new(id, "/shop", "order.placed");
    e.set_extension("partitionkey", key);
    e.data = Data::json(format!(r#"{{"id":"{id}"}}"#)).ok();
    e
}

/// An engine with no catalog (every topic schema-less) over an embedded backend.
pub(crate) async fn engine(dir: &std::path::Path) -> Arc<Engine<EmbeddedBackend>> {
    let backend = EmbeddedBackend::open(dir, Durability::Sync).expect("embedded backend");
    backend
        .create_topic(TopicConfig::new(TOPIC))
        .await
        .expect("topic");
    Arc::new(Engine::new(backend, Vec::new()).await.expect("engine"))
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<RelayStats>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("relay task");
    }
}

fn start(outbox: &Outbox, engine: &Arc<Engine<EmbeddedBackend>>, poll: Duration) -> Running {
    let config = RelayConfig {
        outbox: outbox.clone(),
        poll,
        ..RelayConfig::new(url())
    };
    let relay = Relay::new(config, Arc::clone(engine));
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("relay");
    });
    Running { stop, task, stats }
}

pub(crate) async fn stored(b: &EmbeddedBackend) -> Vec<StoredEvent> {
    b.read(TOPIC, 1, 1_000_000, Duration::ZERO)
        .await
        .expect("read")
}

/// Waits until the topic holds `n` events (or 10 s passed).
async fn wait_for(b: &EmbeddedBackend, n: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = stored(b).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.id.as_str()).collect()
}

async fn rows(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

async fn drop_tables(client: &Client, outbox: &Outbox) {
    let t = outbox.table();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS {t}_rejected; \
             DROP FUNCTION IF EXISTS {t}_notify()"
        ))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_relayed_when_its_transaction_commits_and_never_after_a_rollback() {
    let (outbox, mut client) = fresh_outbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    // A long poll: only the notification can make this fast.
    let relay = start(&outbox, &engine, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tx = client.transaction().await.expect("tx");
    outbox
        .enqueue_with(
            &tx,
            Row {
                event: &event("rolled-back", "o-1"),
                topic: Some(TOPIC),
                expected_sequence: None,
            },
        )
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    let tx = client.transaction().await.expect("tx");
    tx.execute(
        &format!(
            "INSERT INTO {} (topic, event) VALUES ($1, $2::text::json)",
            outbox.table()
        ),
        &[
            &TOPIC,
            &String::from_utf8_lossy(&event("committed", "o-1").to_json()).into_owned(),
        ],
    )
    .await
    .expect("a plain INSERT, as any language would write it");
    let committed = Instant::now();
    tx.commit().await.expect("commit");

    let got = wait_for(engine.backend(), 1).await;
    assert_eq!(
        ids(&got),
        ["committed"],
        "only the committed row is relayed"
    );
    assert!(
        committed.elapsed() < Duration::from_secs(5),
        "woken by the notification, not the 30 s poll"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows(&client, outbox.table()).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rows(&client, outbox.table()).await,
        0,
        "relayed rows are pruned"
    );
    assert!(relay.stats.leader.load(Ordering::SeqCst));
    relay.stop().await;
    drop_tables(&client, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_with_a_lower_id_is_not_skipped() {
    let (outbox, mut early) = fresh_outbox().await;
    let mut late = connect().await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    let relay = start(&outbox, &engine, Duration::from_millis(100));
    let (low_event, high_event) = (event("low", "low"), event("high", "high"));
    let row = |e| Row {
        event: e,
        topic: Some(TOPIC),
        expected_sequence: None,
    };

    // The late transaction takes the lower id and stays open.
    let slow = late.transaction().await.expect("tx");
    let low = outbox
        .enqueue_with(&slow, row(&low_event))
        .await
        .expect("enqueue");
    let fast = early.transaction().await.expect("tx");
    let high = outbox
        .enqueue_with(&fast, row(&high_event))
        .await
        .expect("enqueue");
    assert!(low < high);
    fast.commit().await.expect("commit");
    assert_eq!(ids(&wait_for(engine.backend(), 1).await), ["high"]);
    // The relay has moved past id `high`; the lower id commits now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.commit().await.expect("commit");
    assert_eq!(
        ids(&wait_for(engine.backend(), 2).await),
        ["high", "low"],
        "a row committed after a higher id was relayed is still relayed"
    );
    relay.stop().await;
    drop_tables(&early, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_each_aggregate_keep_their_order_under_concurrent_producers() {
    let (outbox, client) = fresh_outbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    let relay = start(&outbox, &engine, Duration::from_millis(100));
    // Four producers, each writing 200 events of its own two aggregates, one transaction per
    // event, while the relay runs.
    let mut producers = Vec::new();
    for p in 0..4 {
        let outbox = outbox.clone();
        producers.push(tokio::spawn(async move {
            let mut client = connect().await;
            for i in 0..200 {
                let key = format!("agg-{p}-{}", i % 2);
                let tx = client.transaction().await.expect("tx");
                let e = event(&format!("{key}-{i:03}"), &key);
                outbox
                    .enqueue_with(
                        &tx,
                        Row {
                            event: &e,
                            topic: Some(TOPIC),
                            expected_sequence: None,
                        },
                    )
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    let got = wait_for(engine.backend(), 800).await;
    assert_eq!(got.len(), 800, "every row relayed once");
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for e in &got {
        per_key
            .entry(e.ordering_key.clone().expect("a key"))
            .or_default()
            .push(e.event.id.clone());
    }
    assert_eq!(per_key.len(), 8);
    for (key, seen) in per_key {
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{key}: in the order they were written");
    }
    relay.stop().await;
    drop_tables(&client, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_published_is_set_aside_with_its_reason() {
    let (outbox, mut client) = fresh_outbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    let relay = start(&outbox, &engine, Duration::from_millis(100));
    let tx = client.transaction().await.expect("tx");
    let t = outbox.table();
    tx.batch_execute(&format!(
        r#"INSERT INTO {t} (topic, event) VALUES ('orders', '{{"id":"broken"}}');
           INSERT INTO {t} (topic, expected_sequence, event) VALUES ('orders', 7, '{}');"#,
        String::from_utf8_lossy(&event("stale", "o-9").to_json())
    ))
    .await
    .expect("insert");
    outbox
        .enqueue_with(
            &tx,
            Row {
                event: &event("fine", "o-1"),
                topic: Some(TOPIC),
                expected_sequence: None,
            },
        )
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(
        ids(&wait_for(engine.backend(), 1).await),
        ["fine"],
        "the rows behind a bad one flow"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.stats.rejected.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reasons: Vec<String> = client
        .query(&format!("SELECT reason FROM {t}_rejected ORDER BY id"), &[])
        .await
        .expect("rejected")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("does not decode"), "{}", reasons[0]);
    assert!(reasons[1].contains("conflict"), "{}", reasons[1]);
    assert_eq!(rows(&client, t).await, 0, "nothing left behind");
    relay.stop().await;
    drop_tables(&client, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_stops() {
    let (outbox, mut client) = fresh_outbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    let first = start(&outbox, &engine, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = start(&outbox, &engine, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.stats.leader.load(Ordering::SeqCst));
    assert!(
        !second.stats.leader.load(Ordering::SeqCst),
        "one active relay per table"
    );
    first.stop().await;
    let tx = client.transaction().await.expect("tx");
    outbox
        .enqueue_with(
            &tx,
            Row {
                event: &event("after", "o-1"),
                topic: Some(TOPIC),
                expected_sequence: None,
            },
        )
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(ids(&wait_for(engine.backend(), 1).await), ["after"]);
    assert!(second.stats.leader.load(Ordering::SeqCst));
    second.stop().await;
    drop_tables(&client, &outbox).await;
}
