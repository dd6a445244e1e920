//! A relay killed with SIGKILL in the middle of its batches, again and again, loses and
//! duplicates nothing downstream. The test binary runs itself as the relay (`relay_worker`, an
//! ignored test; `CANON_RELAY_WORKER` names the data directory and the table).

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use canon_outbox::{Outbox, Relay, RelayConfig};

use crate::{TOPIC, engine, event, fresh_outbox, stored, url};

const ROWS: usize = 20_000;
const KILLS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_loses_and_duplicates_nothing() {
    let (outbox, mut client) = fresh_outbox().await;
    let dir = tempfile::tempdir().expect("dir");
    // Create the topic, then leave the directory to the workers.
    drop(engine(dir.path()).await);
    let tx = client.transaction().await.expect("tx");
    let events: Vec<_> = (0..ROWS)
        .map(|i| event(&format!("e{i:05}"), &format!("agg-{}", i % 16)))
        .collect();
    for chunk in events.chunks(1000) {
        outbox.enqueue_all(&tx, chunk).await.expect("enqueue");
    }
    tx.execute(
        &format!("UPDATE {} SET topic = $1", outbox.table()),
        &[&TOPIC],
    )
    .await
    .expect("topic");
    tx.commit().await.expect("commit");

    let mut killed_mid_way = 0;
    for round in 0..=KILLS {
        let mut worker = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "crash::relay_worker", "--ignored", "--nocapture"])
            .env(
                "CANON_RELAY_WORKER",
                format!("{}|{}", dir.path().display(), outbox.table()),
            )
            .env("CANON_TEST_POSTGRES", url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("worker");
        if round < KILLS {
            // Wait for the worker to start relaying, then kill it at a random moment.
            let before = count(&client, outbox.table()).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while count(&client, outbox.table()).await == before
                && before > 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
            worker.kill().await.expect("SIGKILL");
            let left = count(&client, outbox.table()).await;
            if left > 0 && left < i64::try_from(ROWS).unwrap_or(i64::MAX) {
                killed_mid_way += 1;
            }
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(&client, outbox.table()).await > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worker.kill().await.expect("stop");
        }
    }
    assert_eq!(
        count(&client, outbox.table()).await,
        0,
        "the last relay finished the table"
    );
    assert!(killed_mid_way > 0, "some kills landed while rows were left");

    let engine = engine(dir.path()).await;
    let got = stored(engine.backend()).await;
    let ids: Vec<&str> = got.iter().map(|e| e.event.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ROWS, "no row lost");
    assert_eq!(ids.len(), ROWS, "no row stored twice");
    for k in 0..16 {
        let key = format!("agg-{k}");
        let of_key: Vec<&str> = got
            .iter()
            .filter(|e| e.ordering_key.as_deref() == Some(key.as_str()))
            .map(|e| e.event.id.as_str())
            .collect();
        assert!(of_key.windows(2).all(|w| w[0] < w[1]), "{key} in order");
    }
    drop(
        client
            .batch_execute(&format!(
                "DROP TABLE {0}; DROP TABLE {0}_rejected",
                outbox.table()
            ))
            .await,
    );
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// The relay the crash test kills: runs until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of a_relay_killed_mid_batch_loses_and_duplicates_nothing"]
async fn relay_worker() {
    let Ok(spec) = std::env::var("CANON_RELAY_WORKER") else {
        return;
    };
    let (dir, table) = spec.split_once('|').expect("dir|table");
    let engine = engine(std::path::Path::new(dir)).await;
    let config = RelayConfig {
        outbox: Outbox::new(table).expect("table"),
        batch: 500,
        poll: Duration::from_millis(100),
        ..RelayConfig::new(url())
    };
    let relay: Relay<_> = Relay::new(config, engine);
    relay.run(std::future::pending()).await.expect("relay");
}
