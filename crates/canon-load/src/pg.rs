//! The raw PostgreSQL peer: the same workload written straight against PostgreSQL, as a
//! hand-rolled queue table would be, so that Canon's PostgreSQL backend has its floor beside
//! it. Publish: each publisher inserts its batches with one multi-row INSERT per transaction.
//! Consume: `SELECT ... FOR UPDATE SKIP LOCKED` of 1,000 rows and their `DELETE` (the ack) in
//! one transaction. Latency: one row per transaction at the fixed rate, the consumer woken by
//! `NOTIFY` (sent in the inserting transaction) and polling every 50 ms besides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::{Args, Figures, event, paced};

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(conn);
    Ok(client)
}

pub(crate) async fn run(args: &Args) -> Result<Figures> {
    let admin = connect(&args.postgres).await?;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS canon_load_raw;
             CREATE TABLE canon_load_raw (id bigserial PRIMARY KEY, sent bigint, payload bytea NOT NULL)",
        )
        .await?;
    let mut f = Figures::default();
    let per = args.events / args.publishers;
    let total = per * args.publishers;
    let payload = event(0, args.size).to_json();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.publishers {
        let (url, payload, batch) = (args.postgres.clone(), payload.clone(), args.batch);
        tasks.spawn(async move {
            let mut client = connect(&url).await?;
            let mut i = 0;
            while i < per {
                let n = batch.min(per - i);
                let rows: Vec<&[u8]> = (0..n).map(|_| payload.as_slice()).collect();
                let tx = client.transaction().await?;
                tx.execute(
                    "INSERT INTO canon_load_raw (payload) SELECT unnest($1::bytea[])",
                    &[&rows],
                )
                .await?;
                tx.commit().await?;
                i += n;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    f.publish_eps = total as f64 / secs;
    f.publish_mbps = (total * args.size) as f64 / secs / 1e6;

    let mut client = connect(&args.postgres).await?;
    let started = Instant::now();
    let mut consumed = 0;
    loop {
        let tx = client.transaction().await?;
        let ids: Vec<i64> = tx
            .query(
                "SELECT id, payload FROM canon_load_raw ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            break;
        }
        tx.execute("DELETE FROM canon_load_raw WHERE id = ANY($1)", &[&ids])
            .await?;
        tx.commit().await?;
        consumed += ids.len();
    }
    f.consume_eps = consumed as f64 / started.elapsed().as_secs_f64();

    // Latency at a fixed rate.
    let clock = Instant::now();
    f.epoch = crate::unix_now();
    let expect = args.phase_events(args.rate);
    let (listener, mut conn) = tokio_postgres::connect(&args.postgres, NoTls).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    {
        let wake = Arc::clone(&wake);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(_) = m {
                    wake.notify_one();
                }
            }
        });
    }
    listener.batch_execute("LISTEN canon_load_raw").await?;
    let give_up = crate::latency_deadline(args);
    let consumer = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(expect);
        let deadline = give_up;
        while lat.len() < expect && Instant::now() < deadline {
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT id, sent FROM canon_load_raw ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                    &[],
                )
                .await?;
            let now = clock.elapsed();
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            for r in &rows {
                let sent: i64 = r.get(1);
                let sent = Duration::from_nanos(u64::try_from(sent).unwrap_or(0));
                lat.push((sent, now.saturating_sub(sent)));
            }
            if !ids.is_empty() {
                tx.execute("DELETE FROM canon_load_raw WHERE id = ANY($1)", &[&ids])
                    .await?;
            }
            tx.commit().await?;
            if ids.is_empty() {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
        drop(listener);
        anyhow::Ok(lat)
    });
    let pool: Arc<Vec<tokio::sync::Mutex<Client>>> = Arc::new(
        futures_util::future::try_join_all((0..16).map(|_| connect(&args.postgres)))
            .await?
            .into_iter()
            .map(tokio::sync::Mutex::new)
            .collect(),
    );
    let payload = Arc::new(payload);
    let acked = crate::Acked::default();
    paced(args, |i| {
        let (pool, payload, acked) = (Arc::clone(&pool), Arc::clone(&payload), Arc::clone(&acked));
        async move {
            let mut client = pool[i % pool.len()].lock().await;
            let tx = client.transaction().await?;
            let sent = i64::try_from(clock.elapsed().as_nanos()).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO canon_load_raw (sent, payload) VALUES ($1, $2)",
                &[&sent, &payload.as_slice()],
            )
            .await?;
            tx.execute("SELECT pg_notify('canon_load_raw', '')", &[])
                .await?;
            tx.commit().await?;
            crate::record_ack(
                &acked,
                clock,
                Duration::from_nanos(u64::try_from(sent).unwrap_or(0)),
            )
        }
    })
    .await?;
    f.set_latencies(consumer.await??, &acked, args.warmup_events(args.rate))?;
    admin.batch_execute("DROP TABLE canon_load_raw").await?;
    Ok(f)
}
