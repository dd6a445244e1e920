//! The outbox relay's phases: a PostgreSQL outbox table (`canon_load_outbox`) relayed into a
//! Canon backend. Throughput: `--relay-rows` rows committed up front, drained by one relay
//! (rows/s from its start to an empty table). Latency: rows committed one per transaction at
//! `--relay-rate` while the relay runs; each row's time from its commit returning to its
//! delivery by a consumer of the backend (an upper bound of commit→publish).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canon_backend::{Backend, GroupConfig, StartPosition};
use canon_engine::Engine;
use canon_outbox::{Outbox, Relay, RelayConfig};
use tokio_postgres::{Client, NoTls};

use crate::{Args, Tail, event, paced};

const TOPIC: &str = "relay";

/// What the relay phases measured.
#[derive(Debug, Default)]
pub(crate) struct RelayFigures {
    pub(crate) rows: usize,
    pub(crate) rows_per_s: f64,
    pub(crate) lat: Tail,
}

pub(crate) fn report(backend: &str, f: &RelayFigures) {
    println!(
        "outbox relay into {backend:<10} {:>9.0} rows/s ({} rows) | commit→delivered at rate {}",
        f.rows_per_s,
        f.rows,
        f.lat.show()
    );
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(conn);
    Ok(client)
}

async fn left(client: &Client, table: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

pub(crate) async fn run<B: Backend>(args: &Args, engine: Arc<Engine<B>>) -> Result<RelayFigures> {
    let outbox = Outbox::new("canon_load_outbox")?;
    let table = outbox.table().to_owned();
    let mut client = connect(&args.postgres).await?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_rejected"
        ))
        .await?;
    outbox.install(&client).await?;
    let mut f = RelayFigures {
        rows: args.relay_rows,
        ..RelayFigures::default()
    };

    // Throughput: everything committed first, then drained.
    let docs: Vec<String> = (0..args.relay_rows)
        .map(|i| {
            let mut e = event(i, args.size);
            e.id = format!("row-{i}");
            e.set_extension("partitionkey", format!("agg-{}", i % 64));
            String::from_utf8_lossy(&e.to_json()).into_owned()
        })
        .collect();
    for chunk in docs.chunks(5000) {
        let tx = client.transaction().await?;
        tx.execute(
            &format!("INSERT INTO {table} (topic, event) SELECT $1, unnest($2::text[])::json"),
            &[&TOPIC, &chunk],
        )
        .await?;
        tx.commit().await?;
    }
    let relay = Relay::new(
        RelayConfig {
            outbox: outbox.clone(),
            poll: Duration::from_millis(500),
            ..RelayConfig::new(args.postgres.clone())
        },
        Arc::clone(&engine),
    );
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    while left(&client, &table).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.rows_per_s = args.relay_rows as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        stats.rejected.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "the relay rejected rows"
    );

    // Latency: one row per transaction at a fixed rate, delivered to a consumer.
    let backend = engine.backend();
    backend
        .create_group(
            TOPIC,
            "relay-latency",
            GroupConfig {
                max_in_flight: 10_000,
                ..GroupConfig::default()
            },
        )
        .await?;
    backend
        .reset(TOPIC, "relay-latency", StartPosition::Latest)
        .await?;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let delivered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let expect = args.phase_events(args.relay_rate);
    let consumer = {
        let (engine, delivered) = (Arc::clone(&engine), Arc::clone(&delivered));
        tokio::spawn(async move {
            let b = engine.backend();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            while n < expect && Instant::now() < deadline {
                let got = b
                    .pull(
                        TOPIC,
                        "relay-latency",
                        "c",
                        1000,
                        Duration::from_millis(100),
                    )
                    .await?;
                let now = Instant::now();
                {
                    let mut d = delivered
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for x in &got {
                        d.insert(x.event.event.id.clone(), now);
                    }
                }
                n += got.len();
                for r in futures_util::future::join_all(got.iter().map(|d| b.ack(&d.token))).await {
                    r?;
                }
            }
            anyhow::Ok(())
        })
    };
    let pool: Arc<Vec<tokio::sync::Mutex<Client>>> = Arc::new(
        futures_util::future::try_join_all((0..16).map(|_| connect(&args.postgres)))
            .await?
            .into_iter()
            .map(tokio::sync::Mutex::new)
            .collect(),
    );
    let rate_args = Args {
        rate: args.relay_rate,
        ..args.clone()
    };
    paced(&rate_args, |i| {
        let (pool, outbox, committed) = (Arc::clone(&pool), outbox.clone(), Arc::clone(&committed));
        let size = args.size;
        async move {
            let mut client = pool[i % pool.len()].lock().await;
            let mut e = event(i, size);
            e.id = format!("lat-{i}");
            let tx = client.transaction().await?;
            outbox
                .enqueue_with(
                    &tx,
                    canon_outbox::Row {
                        event: &e,
                        topic: Some(TOPIC),
                        expected_sequence: None,
                    },
                )
                .await?;
            tx.commit().await?;
            committed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(e.id, Instant::now());
            Ok(())
        }
    })
    .await?;
    consumer.await??;
    let _ = stop.send(());
    task.await??;
    f.lat = {
        let committed = committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let delivered = delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // In the order due: row `lat-{i}` was the `i`th (commits on 16 connections may end
        // out of that order).
        let mut timed: Vec<(usize, Duration)> = committed
            .iter()
            .filter_map(|(id, c)| {
                let i = id.strip_prefix("lat-")?.parse().ok()?;
                Some((i, delivered.get(id)?.saturating_duration_since(*c)))
            })
            .collect();
        timed.sort_unstable();
        Tail::of(
            timed.into_iter().map(|(_, l)| l),
            args.warmup_events(args.relay_rate),
        )
    };
    client
        .batch_execute(&format!("DROP TABLE {table}; DROP TABLE {table}_rejected"))
        .await?;
    Ok(f)
}
