//! `canon-load`: one workload, run against Canon's embedded backend and against NATS JetStream
//! (the real peer) in the same run, so every figure has its peer beside it.
//!
//! Phases, per system: durable publish in batches (events/s, MB/s), consume with one ack per
//! event (events/s), and publish→deliver latency at a fixed rate (p50/p99/p999). Then Canon's
//! peak RSS and the time to open its data directory with everything stored.
//!
//! Durability differs and is reported: Canon syncs (`fdatasync`) every group commit before it
//! acknowledges; JetStream with file storage syncs every 2 minutes by default.

#![allow(
    clippy::print_stdout,
    reason = "a report tool: its output is the point"
)]

mod dapr;
mod disk;
mod http;
mod pg;
mod relay;

canon_server::jemalloc!();

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream;
use canon_backend::{Backend, GroupConfig, PublishRequest, TopicConfig};
use canon_embedded::{Durability, EmbeddedBackend};
use canon_envelope::{CloudEvent, Data};
use clap::Parser;
use futures_util::StreamExt;

/// Measure Canon's embedded backend beside NATS JetStream under one workload.
#[derive(Debug, Clone, Parser)]
pub(crate) struct Args {
    /// Events to publish and consume in the throughput phases.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events per publish batch (Canon; JetStream publishes one by one with a window).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Size of each event in the JSON format, in bytes.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Rate of the latency phase, events per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Length of each latency phase, seconds, after its warm-up. Long enough that the phase
    /// holds several memtable flushes at 5,000/s (one about every 4 s), not one or none.
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Warm-up of each latency phase, seconds, at the same rate and with the same events,
    /// before the measured part. Its latencies are reported on their own (`warm-up p99, max`),
    /// not mixed into the steady state's, as OpenMessaging Benchmark's warm-up is.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Pause before each latency phase, seconds, the same for every system: the flushes and
    /// compactions that the bulk phases before it left behind finish first, so the phase
    /// measures a steady 5,000/s rather than the tail of a bulk load.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Canon's durability: `sync` (default) or `buffered` (survives a process crash, not an OS crash).
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Data directory for Canon (emptied first, unless --keep-data).
    #[arg(long, default_value = "target/canon-load-data")]
    dir: String,
    /// Run the embedded phases on what --dir already holds instead of emptying it: the
    /// figures then describe a backend with that backlog. Event ids get a prefix of this run.
    #[arg(long)]
    keep_data: bool,
    /// The JetStream server; empty to skip the peer.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Also run the workload through `canon serve` over HTTP (batch publish, single publish
    /// latency, pull consume, push delivery).
    #[arg(long)]
    http: bool,
    /// Events per push request in the HTTP mode (1: one event per request).
    #[arg(long, default_value_t = 1)]
    push_batch: usize,
    /// The HTTP versions of the push phase, each measured over every event with its own
    /// subscription and subscriber connection: `http` (HTTP/1.1), `h2c` (HTTP/2, prior knowledge).
    #[arg(long, value_delimiter = ',', default_value = "http,h2c")]
    push_protocols: Vec<String>,

    /// Writes the HTTP single-publish latencies to this file, one line per request: when it
    /// was due (ms after the phase started) and its latency (ms), for looking at a tail. A
    /// first line (`#`) gives when the first request was due, in Unix time, to match a trace.
    /// Every other latency phase goes beside it, to `<file>.<phase>` (`embedded`, `jetstream`,
    /// `on-jetstream`, `on-postgresql`, `postgresql`): when each event was sent (ms after the
    /// first), its publish→deliver latency, and how long its publish took to be acknowledged.
    /// A second `#` line says how many rows (the first) are the warm-up.
    #[arg(long)]
    latency_dump: Option<std::path::PathBuf>,
    /// Push requests in flight (the subscription's `concurrency`).
    #[arg(long, default_value_t = 64)]
    push_concurrency: usize,
    /// Skip the embedded backend's own phases.
    #[arg(long)]
    no_embedded: bool,
    /// Also run the Dapr phases: the Dapr publish route beside the native one, and the
    /// lateness of `--jobs` scheduled jobs.
    #[arg(long)]
    dapr: bool,
    /// Jobs scheduled in the Dapr phase (due over 10 s, or longer for more than 100,000).
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Canon's backends to run the workload on, comma-separated: embedded, nats, postgres.
    /// nats uses the --nats server (namespace `load`); postgres the --postgres database
    /// (schema `canon_load`).
    #[arg(long, default_value = "embedded")]
    backends: String,
    /// The PostgreSQL database for Canon's PostgreSQL backend, the raw PostgreSQL peer and the
    /// outbox relay; empty to skip the raw peer.
    #[arg(long, default_value = "postgres://postgres:canon@127.0.0.1:5432/test")]
    postgres: String,
    /// Also measure the outbox relay (PostgreSQL outbox into the first of --backends):
    /// throughput draining --relay-rows rows, then commit→publish latency at --relay-rate.
    #[arg(long)]
    relay: bool,
    /// Rows for the relay's throughput phase.
    #[arg(long, default_value_t = 100_000)]
    relay_rows: usize,
    /// Rows per second for the relay's latency phase (each its own transaction).
    #[arg(long, default_value_t = 1_000)]
    relay_rate: u64,
    /// First measure the disk under --dir: fdatasync latency after a small write, quiet and
    /// beside 8 MB fsynced writes (what a synced publish's latency cannot go below).
    #[arg(long)]
    disk: bool,
}

impl Args {
    /// Events sent in a latency phase at `rate`, warm-up included.
    pub(crate) fn phase_events(&self, rate: u64) -> usize {
        (rate * (self.warmup_secs + self.latency_secs)) as usize
    }

    /// The first this many of a phase's events (in the order sent) are its warm-up.
    pub(crate) fn warmup_events(&self, rate: u64) -> usize {
        (rate * self.warmup_secs) as usize
    }
}

/// What this run's event ids start with: `ev-`, or with --keep-data `ev-<run>-`, so that a
/// run on a kept directory does not publish the ids of an earlier run (they would be dedup hits).
static ID_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Event `i` of the workload, `size` bytes in the JSON format (or the smallest event, when
/// `size` is less). Builds it without serializing it: the generator shares the two cores with
/// what it measures, and the JetStream peer reuses one serialized payload.
pub(crate) fn event(i: usize, size: usize) -> CloudEvent {
    /// The JSON length of the event with an empty id and `"data":{"pad":""}`. Ids are ASCII
    /// without escapes, so the length grows by exactly the id's.
    static WITHOUT_ID: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let prefix = ID_PREFIX.get().map_or("ev-", String::as_str);
    let mut ev = CloudEvent::new(format!("{prefix}{i}"), "/canon-load", "load.tick");
    let without_id = *WITHOUT_ID.get_or_init(|| {
        let mut ev = CloudEvent::new("", "/canon-load", "load.tick");
        ev.data = Data::json(r#"{"pad":""}"#).ok();
        ev.to_json().len()
    });
    let pad = size.saturating_sub(without_id + ev.id.len());
    // The data of each padding length is made once and cloned: the JetStream side publishes
    // one payload made before it starts, so neither side's figure carries the making.
    thread_local! {
        static PADDED: std::cell::RefCell<std::collections::HashMap<usize, Data>> =
            std::cell::RefCell::default();
    }
    ev.data = PADDED
        .with_borrow_mut(|padded| {
            padded
                .entry(pad)
                .or_insert_with(|| {
                    Data::json(format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)))
                        .expect("padding is JSON")
                })
                .clone()
        })
        .into();
    ev
}

/// The Unix time now.
pub(crate) fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A latency phase's percentiles: the steady state's, and the warm-up's apart.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tail {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    /// Measured (steady-state) samples.
    pub(crate) n: usize,
    pub(crate) warm_p99: Duration,
    pub(crate) warm_max: Duration,
}

impl Tail {
    /// `in_order` holds each latency in the order the events were sent; the first `warm` are
    /// the warm-up's.
    pub(crate) fn of(in_order: impl IntoIterator<Item = Duration>, warm: usize) -> Self {
        let mut warm_up: Vec<Duration> = in_order.into_iter().collect();
        let mut steady = warm_up.split_off(warm.min(warm_up.len()));
        warm_up.sort_unstable();
        steady.sort_unstable();
        Self {
            p50: percentile(&steady, 0.5),
            p99: percentile(&steady, 0.99),
            p999: percentile(&steady, 0.999),
            n: steady.len(),
            warm_p99: percentile(&warm_up, 0.99),
            warm_max: warm_up.last().copied().unwrap_or_default(),
        }
    }

    /// `p50 … ms p99 … ms p999 … ms (n measured; warm-up p99 … ms, max … ms)`.
    pub(crate) fn show(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "p50 {:>7.3} ms p99 {:>7.3} ms p999 {:>7.3} ms ({} measured; warm-up p99 {:.3} ms, max {:.3} ms)",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            self.n,
            ms(self.warm_p99),
            ms(self.warm_max)
        )
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Debug, Default)]
pub(crate) struct Figures {
    publish_eps: f64,
    publish_mbps: f64,
    /// The same publishes with `publish_each` (partial acceptance: each event on its own).
    publish_each_eps: f64,
    /// Raw JetStream only: async publish with a `Nats-Msg-Id` per message (Canon's dedup).
    publish_msgid_eps: f64,
    /// Raw JetStream only: atomic batches (ADR-50) of `--batch` messages.
    publish_atomic_eps: f64,
    /// Raw JetStream only: consume with confirmed acks (ack as a request, as Canon acks).
    consume_sync_eps: f64,
    consume_eps: f64,
    lat: Tail,
    /// The latency phase's publishes: from sending to the publish's acknowledgement (for a
    /// synced backend, its commit and sync), apart from the delivery after it.
    ack: Tail,
    /// Each delivery of the latency phase, in the order sent: when it was sent (since the
    /// phase's clock), its latency, and its publish's acknowledgement latency (`--latency-dump`).
    timed: Vec<(Duration, Duration, Option<Duration>)>,
    /// The Unix time of the latency phase's clock, which `timed` counts from.
    epoch: Duration,
}

impl Figures {
    /// Takes a phase's deliveries and its publishes' acknowledgements (each: when sent,
    /// latency); the first `warm` sent are its warm-up.
    fn set_latencies(
        &mut self,
        mut timed: Vec<(Duration, Duration)>,
        acked: &Acked,
        warm: usize,
    ) -> Result<()> {
        let mut acked =
            std::mem::take(&mut *acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        acked.sort_unstable();
        timed.sort_unstable();
        self.lat = Tail::of(timed.iter().map(|&(_, l)| l), warm);
        self.ack = Tail::of(acked.iter().map(|&(_, l)| l), warm);
        let acked: std::collections::HashMap<Duration, Duration> = acked.into_iter().collect();
        self.timed = timed
            .into_iter()
            .map(|(sent, l)| (sent, l, acked.get(&sent).copied()))
            .collect();
        Ok(())
    }
}

/// A latency phase's publishes as they are acknowledged: when each was sent (since the phase's
/// clock, as its event carries it) and how long its acknowledgement took.
pub(crate) type Acked = Arc<std::sync::Mutex<Vec<(Duration, Duration)>>>;

/// Records that the publish sent at `sent` (on `clock`) was acknowledged now.
pub(crate) fn record_ack(acked: &Acked, clock: Instant, sent: Duration) -> Result<()> {
    let took = clock.elapsed().saturating_sub(sent);
    acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .push((sent, took));
    Ok(())
}

pub(crate) fn report(name: &str, f: &Figures) {
    println!(
        "{name:<28} publish {:>9.0} ev/s {:>7.1} MB/s, each {:>9.0} ev/s | consume+ack {:>9.0} ev/s | latency {}",
        f.publish_eps,
        f.publish_mbps,
        f.publish_each_eps,
        f.consume_eps,
        f.lat.show()
    );
    println!("{:<28} publish acknowledged: {}", "", f.ack.show());
}

/// Writes a latency phase's deliveries to `<--latency-dump>.<phase>` (see `write_dump`).
fn dump(args: &Args, phase: &str, f: &Figures) -> Result<()> {
    match &args.latency_dump {
        Some(path) => write_dump(
            std::path::Path::new(&format!("{}.{phase}", path.display())),
            "sent",
            f.epoch,
            &f.timed,
            args.warmup_events(args.rate),
        ),
        None => Ok(()),
    }
}

/// Writes a latency dump: a first line (`#`) with the Unix time at which the first row's
/// event was `what` ("sent", "request due"), to line the rows up with a trace, then one line
/// per row: ms after the first, the latency in ms and, where known, the publish's
/// acknowledgement latency in ms. `rows` are sorted by their first member, which counts from
/// `epoch` (a Unix time); the first `warm` are the warm-up, which a second `#` line says.
pub(crate) fn write_dump(
    path: &std::path::Path,
    what: &str,
    epoch: Duration,
    rows: &[(Duration, Duration, Option<Duration>)],
    warm: usize,
) -> Result<()> {
    use std::fmt::Write as _;
    let Some(&(first, _, _)) = rows.first() else {
        return Ok(());
    };
    let mut out = format!(
        "# first {what} at {:.6} (Unix time, s)\n# the first {warm} rows are the warm-up\n",
        (epoch + first).as_secs_f64()
    );
    for &(at, latency, ack) in rows {
        let _ = write!(
            out,
            "{:.3}\t{:.3}",
            (at - first).as_secs_f64() * 1e3,
            latency.as_secs_f64() * 1e3
        );
        let _ = match ack {
            Some(ack) => writeln!(out, "\t{:.3}", ack.as_secs_f64() * 1e3),
            None => writeln!(out),
        };
    }
    std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
}

async fn canon(args: &Args, durability: Durability) -> Result<Figures> {
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    let b = Arc::new(EmbeddedBackend::open(&args.dir, durability)?);
    let f = workload(args, &b).await?;
    drop(b);
    Ok(f)
}

/// The workload on any backend: durable publish in batches (atomic, then each event on its
/// own), consume with acks, publish→deliver latency at a fixed rate.
pub(crate) async fn workload<B: Backend>(args: &Args, b: &Arc<B>) -> Result<Figures> {
    b.create_topic(TopicConfig::new("bench")).await?;
    let group = GroupConfig {
        max_in_flight: 10_000,
        ..GroupConfig::default()
    };
    b.create_group("bench", "consume", group.clone()).await?;
    let mut f = Figures::default();
    let per = args.events / args.publishers;
    let total = per * args.publishers;
    for each in [false, true] {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..args.publishers {
            let (b, batch, size) = (Arc::clone(b), args.batch, args.size);
            let base = if each { total } else { 0 };
            tasks.spawn(async move {
                let mut i = p * per;
                while i < (p + 1) * per {
                    let n = batch.min((p + 1) * per - i);
                    let reqs: Vec<PublishRequest> = (i..i + n)
                        .map(|k| PublishRequest::new(event(base + k, size)))
                        .collect();
                    if each {
                        for r in b.publish_each("bench", reqs).await {
                            r?;
                        }
                    } else {
                        b.publish("bench", reqs).await?;
                    }
                    i += n;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let secs = started.elapsed().as_secs_f64();
        if each {
            f.publish_each_eps = total as f64 / secs;
        } else {
            f.publish_eps = total as f64 / secs;
            f.publish_mbps = (total * args.size) as f64 / secs / 1e6;
        }
    }

    // Consume with acks: everything both publish phases stored.
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < 2 * total {
        let got = b
            .pull("bench", "consume", "c", 1000, Duration::from_millis(100))
            .await?;
        if got.is_empty() {
            break;
        }
        consumed += got.len();
        let acks = got.iter().map(|d| b.ack(&d.token));
        for r in futures_util::future::join_all(acks).await {
            r?;
        }
    }
    f.consume_eps = consumed as f64 / started.elapsed().as_secs_f64();

    // Latency at a fixed rate.
    b.create_group("bench", "latency", group).await?;
    b.reset("bench", "latency", canon_backend::StartPosition::Latest)
        .await?;
    let clock = Instant::now();
    f.epoch = unix_now();
    let give_up = latency_deadline(args);
    let consumer = {
        let b = Arc::clone(b);
        let expect = args.phase_events(args.rate);
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(expect);
            // Acks run beside the next pull, one unconfirmed write per pull (answered once
            // written to the OS, not synced), as the JetStream consumer below acks without
            // waiting for the server: a delivery's latency is not the previous ack's commit.
            let mut acks = tokio::task::JoinSet::new();
            let deadline = give_up;
            while lat.len() < expect && Instant::now() < deadline {
                while let Some(r) = acks.try_join_next() {
                    r??;
                }
                let got = b
                    .pull("bench", "latency", "c", 1000, Duration::from_millis(50))
                    .await?;
                let now = clock.elapsed();
                for d in &got {
                    let sent: u64 = d
                        .event
                        .event
                        .extensions
                        .get("sent")
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let sent = Duration::from_nanos(sent);
                    lat.push((sent, now.saturating_sub(sent)));
                }
                if got.is_empty() {
                    continue;
                }
                let b = Arc::clone(&b);
                acks.spawn(async move {
                    let tokens: Vec<_> = got.into_iter().map(|d| d.token).collect();
                    for r in b.ack_unconfirmed(&tokens).await {
                        r?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = acks.join_next().await {
                r??;
            }
            anyhow::Ok(lat)
        })
    };
    let acked = Acked::default();
    paced(args, |i| {
        let (b, acked) = (Arc::clone(b), Arc::clone(&acked));
        let size = args.size;
        async move {
            let mut ev = event(1_000_000_000 + i, size);
            let sent = Duration::from_nanos(clock.elapsed().as_nanos() as u64);
            ev.set_extension("sent", sent.as_nanos().to_string());
            b.publish("bench", vec![PublishRequest::new(ev)]).await?;
            record_ack(&acked, clock, sent)
        }
    })
    .await?;
    f.set_latencies(consumer.await??, &acked, args.warmup_events(args.rate))?;
    Ok(f)
}

/// When a latency phase's consumer stops waiting for what is still missing.
pub(crate) fn latency_deadline(args: &Args) -> Instant {
    Instant::now()
        + Duration::from_secs(30 + args.settle_secs + args.warmup_secs + args.latency_secs)
}

/// After `args.settle_secs`, calls `publish(i)` at `args.rate` per second for
/// `args.warmup_secs` and then `args.latency_secs`, each call on its own task so a slow one does
/// not hold back the schedule. Returns when the first call was due.
pub(crate) async fn paced<F, Fut>(args: &Args, publish: F) -> Result<std::time::SystemTime>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let total = args.phase_events(args.rate);
    let started = Instant::now();
    let wall_clock = std::time::SystemTime::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        // Finished tasks are reaped as the phase goes: a `JoinSet` keeps each one's memory
        // until it is joined (about 600 B a publish, 50 MB over a 20 s phase in the peak RSS).
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        tasks.spawn(publish(i));
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(wall_clock)
}

async fn jetstream(args: &Args) -> Result<Figures> {
    let client = async_nats::connect(&args.nats)
        .await
        .context("connect to NATS")?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("CANONBENCH").await;
    js.create_stream(jetstream::stream::Config {
        name: "CANONBENCH".into(),
        subjects: vec!["canonbench.>".into()],
        storage: jetstream::stream::StorageType::File,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .context("create stream")?;
    let stream = js.get_stream("CANONBENCH").await?;
    let consumer_config = |name: &str, deliver: jetstream::consumer::DeliverPolicy| {
        jetstream::consumer::pull::Config {
            durable_name: Some(name.into()),
            deliver_policy: deliver,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            filter_subject: "canonbench.tick".into(),
            ..Default::default()
        }
    };
    let consumer = stream
        .create_consumer(consumer_config(
            "consume",
            jetstream::consumer::DeliverPolicy::All,
        ))
        .await?;
    let sync_consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "canonbench.id".into(),
            ..consumer_config("consume-sync", jetstream::consumer::DeliverPolicy::All)
        })
        .await?;
    let mut f = Figures::default();
    let total = (args.events / args.publishers) * args.publishers;

    // Publish: async, a window of 1,024 acks in flight.
    let payload: Vec<u8> = event(0, args.size).to_json();
    let started = Instant::now();
    let mut window = std::collections::VecDeque::with_capacity(1024);
    for _ in 0..total {
        if window.len() == 1024
            && let Some(ack) = window.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        window.push_back(
            js.publish("canonbench.tick", payload.clone().into())
                .await?,
        );
    }
    for ack in window {
        ack.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    f.publish_eps = total as f64 / secs;
    f.publish_mbps = (total * args.size) as f64 / secs / 1e6;

    // The same with a Nats-Msg-Id per message, as Canon publishes.
    let started = Instant::now();
    let mut window = std::collections::VecDeque::with_capacity(1024);
    for i in 0..total {
        if window.len() == 1024
            && let Some(ack) = window.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
        window.push_back(
            js.publish_with_headers("canonbench.id", headers, payload.clone().into())
                .await?,
        );
    }
    for ack in window {
        ack.await?;
    }
    f.publish_msgid_eps = total as f64 / started.elapsed().as_secs_f64();

    // Atomic batches of --batch, --publishers at once.
    let started = Instant::now();
    let per = total / args.publishers;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.publishers {
        let (client, payload, batch) = (client.clone(), payload.clone(), args.batch);
        tasks.spawn(async move {
            let mut i = 0;
            while i < per {
                let n = batch.min(per - i);
                let id = format!("b{p}-{i}");
                for k in 0..n {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Batch-Id", id.as_str());
                    h.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
                    if k + 1 == n {
                        h.insert("Nats-Batch-Commit", "1");
                        let r = client
                            .request_with_headers("canonbench.batch", h, payload.clone().into())
                            .await?;
                        anyhow::ensure!(
                            !String::from_utf8_lossy(&r.payload).contains("\"error\""),
                            "atomic batch: {}",
                            String::from_utf8_lossy(&r.payload)
                        );
                    } else {
                        client
                            .publish_with_headers("canonbench.batch", h, payload.clone().into())
                            .await?;
                    }
                }
                i += n;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    f.publish_atomic_eps = (per * args.publishers) as f64 / started.elapsed().as_secs_f64();

    // Consume with confirmed acks (each ack a request the server answers), as Canon acks.
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < total {
        let mut batch = sync_consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut replies = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!(e))?;
            if let Some(r) = m.reply.clone() {
                replies.push(r);
            }
        }
        if replies.is_empty() {
            break;
        }
        consumed += replies.len();
        let acks = replies
            .into_iter()
            .map(|r| client.request(r, "+ACK".into()));
        for r in futures_util::future::join_all(acks).await {
            r?;
        }
    }
    f.consume_sync_eps = consumed as f64 / started.elapsed().as_secs_f64();

    // Consume with acks.
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            m.map_err(|e| anyhow::anyhow!(e))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            got += 1;
        }
        if got == 0 {
            break;
        }
        consumed += got;
    }
    f.consume_eps = consumed as f64 / started.elapsed().as_secs_f64();

    // Latency at a fixed rate.
    let latency = stream
        .create_consumer(consumer_config(
            "latency",
            jetstream::consumer::DeliverPolicy::New,
        ))
        .await?;
    let clock = Instant::now();
    f.epoch = unix_now();
    let expect = args.phase_events(args.rate);
    // The first message comes after the settling pause.
    let quiet = Duration::from_secs(2 + args.settle_secs);
    let give_up = latency_deadline(args);
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(expect);
        let mut messages = latency.messages().await.map_err(|e| anyhow::anyhow!(e))?;
        let deadline = give_up;
        while lat.len() < expect && Instant::now() < deadline {
            let Ok(Some(m)) = tokio::time::timeout(quiet, messages.next()).await else {
                break;
            };
            let m = m.map_err(|e| anyhow::anyhow!(e))?;
            let sent = Duration::from_nanos(
                std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.split(':').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            );
            lat.push((sent, clock.elapsed().saturating_sub(sent)));
            m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::Ok(lat)
    });
    let pad = "x".repeat(args.size.saturating_sub(30));
    let acked = Acked::default();
    paced(args, |_| {
        let (js, acked) = (js.clone(), Arc::clone(&acked));
        let sent = Duration::from_nanos(clock.elapsed().as_nanos() as u64);
        let body = format!("{}:{pad}", sent.as_nanos());
        async move {
            js.publish("canonbench.tick", body.into_bytes().into())
                .await?
                .await?;
            record_ack(&acked, clock, sent)
        }
    })
    .await?;
    f.set_latencies(receiver.await??, &acked, args.warmup_events(args.rate))?;
    let _ = js.delete_stream("CANONBENCH").await;
    Ok(f)
}

fn main() -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run(Args::parse()))
}

async fn run(args: Args) -> Result<()> {
    if args.keep_data {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = ID_PREFIX.set(format!("ev-{run}-"));
    }
    let durability = match args.durability.as_str() {
        "sync" => Durability::Sync,
        "buffered" => Durability::LoseRecentOnOsCrash,
        other => anyhow::bail!("--durability is sync or buffered, not {other}"),
    };
    println!(
        "workload: {} events of {} B, batches of {}, {} publishers; latency at {}/s for {} s after {} s of warm-up",
        args.events,
        args.size,
        args.batch,
        args.publishers,
        args.rate,
        args.latency_secs,
        args.warmup_secs
    );
    if args.disk {
        let dir = std::path::PathBuf::from(&args.dir);
        tokio::task::spawn_blocking(move || disk::probe(&dir)).await??;
    }
    let backends: Vec<&str> = args
        .backends
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    let mut c = None;
    let mut on_nats = None;
    let mut on_pg = None;
    for name in &backends {
        match *name {
            "embedded" if !args.no_embedded => {
                let f = canon(&args, durability).await?;
                report(&format!("canon embedded ({})", args.durability), &f);
                dump(&args, "embedded", &f)?;
                println!("canon peak RSS: {:.0} MB", peak_rss_mb());
                let started = Instant::now();
                let reopened = EmbeddedBackend::open(&args.dir, durability)?;
                println!(
                    "canon open with {} events stored{}: {:.0} ms",
                    2 * args.events + args.phase_events(args.rate),
                    if args.keep_data {
                        " by this run, beside what --dir held"
                    } else {
                        ""
                    },
                    started.elapsed().as_secs_f64() * 1e3
                );
                drop(reopened);
                c = Some(f);
            }
            "embedded" => {}
            "nats" => {
                let b = Arc::new(canon_nats::NatsBackend::open_in(&args.nats, "load").await?);
                b.destroy().await?;
                let f = workload(&args, &b).await?;
                report("canon on jetstream", &f);
                dump(&args, "on-jetstream", &f)?;
                b.destroy().await?;
                on_nats = Some(f);
            }
            "postgres" => {
                let schema = "canon_load";
                drop_schema(&args.postgres, schema).await?;
                let b = Arc::new(
                    canon_postgres::PgBackend::open_with(canon_postgres::PgConfig {
                        url: args.postgres.clone(),
                        schema: schema.to_owned(),
                        pool_size: 32,
                    })
                    .await?,
                );
                let f = workload(&args, &b).await?;
                report("canon on postgresql", &f);
                dump(&args, "on-postgresql", &f)?;
                drop(b);
                drop_schema(&args.postgres, schema).await?;
                on_pg = Some(f);
            }
            other => anyhow::bail!("--backends takes embedded, nats, postgres; not {other}"),
        }
    }
    let h = if args.http {
        let h = http::run(&args).await?;
        http::report(&h);
        Some(h)
    } else {
        None
    };
    if args.dapr {
        let d = dapr::run(&args).await?;
        dapr::report(&d);
    }
    if args.relay {
        let target = backends.first().copied().unwrap_or("embedded");
        let f = match target {
            "nats" => {
                let b = canon_nats::NatsBackend::open_in(&args.nats, "relay").await?;
                b.destroy().await?;
                let engine = Arc::new(canon_engine::Engine::new(b, Vec::new()).await?);
                let f = relay::run(&args, Arc::clone(&engine)).await?;
                engine.backend().destroy().await?;
                f
            }
            "postgres" => {
                drop_schema(&args.postgres, "canon_relay").await?;
                let b = canon_postgres::PgBackend::open(&format!(
                    "{}{}schema=canon_relay",
                    args.postgres,
                    if args.postgres.contains('?') {
                        '&'
                    } else {
                        '?'
                    }
                ))
                .await?;
                let engine = Arc::new(canon_engine::Engine::new(b, Vec::new()).await?);
                let f = relay::run(&args, engine).await?;
                drop_schema(&args.postgres, "canon_relay").await?;
                f
            }
            _ => {
                let dir = format!("{}-relay", args.dir);
                let _ = std::fs::remove_dir_all(&dir);
                let b = EmbeddedBackend::open(&dir, durability)?;
                let engine = Arc::new(canon_engine::Engine::new(b, Vec::new()).await?);
                relay::run(&args, engine).await?
            }
        };
        relay::report(target, &f);
    }
    if !args.postgres.is_empty() && on_pg.is_some() {
        let raw = pg::run(&args).await?;
        report("postgresql (raw queue table)", &raw);
        dump(&args, "postgresql", &raw)?;
        if let Some(p) = &on_pg {
            println!(
                "ratios canon-on-postgresql/raw: publish {:.2}x, consume+ack {:.2}x, p99 latency {:.3}x",
                p.publish_eps / raw.publish_eps,
                p.consume_eps / raw.consume_eps,
                p.lat.p99.as_secs_f64() / raw.lat.p99.as_secs_f64().max(1e-9)
            );
        }
    }
    if !args.nats.is_empty() {
        let j = jetstream(&args).await?;
        report("nats jetstream (file)", &j);
        dump(&args, "jetstream", &j)?;
        println!(
            "nats jetstream (file) raw   publish with Nats-Msg-Id {:>9.0} ev/s | atomic batches of {} {:>9.0} ev/s | consume with confirmed acks {:>9.0} ev/s",
            j.publish_msgid_eps, args.batch, j.publish_atomic_eps, j.consume_sync_eps
        );
        if let Some(c) = &c {
            println!(
                "ratios canon/jetstream: publish {:.2}x, consume+ack {:.2}x, p99 latency {:.3}x",
                c.publish_eps / j.publish_eps,
                c.consume_eps / j.consume_eps,
                c.lat.p99.as_secs_f64() / j.lat.p99.as_secs_f64().max(1e-9)
            );
        }
        if let Some(n) = &on_nats {
            println!(
                "ratios canon-on-jetstream/raw: each-event publish {:.2}x (raw async with Nats-Msg-Id), atomic batch publish {:.2}x (raw atomic batches), consume+ack {:.2}x (raw with confirmed acks), {:.2}x (raw with plain acks), p99 latency {:.3}x",
                n.publish_each_eps / j.publish_msgid_eps,
                n.publish_eps / j.publish_atomic_eps,
                n.consume_eps / j.consume_sync_eps,
                n.consume_eps / j.consume_eps,
                n.lat.p99.as_secs_f64() / j.lat.p99.as_secs_f64().max(1e-9)
            );
        }
        if let Some(h) = &h {
            let push: Vec<String> = h
                .push_eps
                .iter()
                .map(|(p, eps)| format!("push {p} {:.2}x", eps / j.consume_eps))
                .collect();
            println!(
                "ratios canon http/jetstream: publish {:.2}x, pull+ack {:.2}x, {} (jetstream consume)",
                h.publish_eps / j.publish_eps,
                h.pull_eps / j.consume_eps,
                push.join(", ")
            );
        }
    }
    Ok(())
}

async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_warm_up_is_counted_apart() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        // Ten slow warm-up deliveries, then 1 ms to 100 ms.
        let t = super::Tail::of(
            std::iter::repeat_n(ms(500), 10).chain((1..=100).map(ms)),
            10,
        );
        assert_eq!(t.n, 100);
        assert_eq!((t.p50, t.p99, t.p999), (ms(51), ms(99), ms(100)));
        assert_eq!((t.warm_p99, t.warm_max), (ms(500), ms(500)));
        // A phase shorter than its warm-up measures nothing rather than failing.
        let t = super::Tail::of([ms(3)], 10);
        assert_eq!((t.n, t.p99, t.warm_max), (0, Duration::ZERO, ms(3)));
    }

    #[test]
    fn events_have_the_asked_size() {
        for i in [0, 7, 12_345, 2_000_000_123] {
            for size in [256, 512, 4096] {
                assert_eq!(
                    super::event(i, size).to_json().len(),
                    size,
                    "event {i}, {size} B"
                );
            }
        }
        // Smaller than an event can be: the smallest event.
        let smallest = super::event(1, 0).to_json();
        assert!(smallest.ends_with(br#""data":{"pad":""}}"#), "{smallest:?}");
    }
}
