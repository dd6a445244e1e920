//! The HTTP modes: the same workload through `canon serve` (started in this process, on a
//! loopback port, schema-less topic `bench`): batch publish, single-event publish latency at a
//! fixed rate, pull consume with acks, and push delivery to a local subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use canon_server::config::{Config, DurabilitySetting};
use serde_json::{Value, json};

use crate::{Args, Tail, event};

/// What the HTTP modes measured.
#[derive(Debug, Default)]
pub(crate) struct HttpFigures {
    pub(crate) publish_eps: f64,
    /// Single-event publish, request latency.
    pub(crate) single: Tail,
    pub(crate) pull_eps: f64,
    pub(crate) sdk_eps: f64,
    /// Push delivery, events/s, per HTTP version.
    pub(crate) push_eps: Vec<(String, f64)>,
    pub(crate) push_batch: usize,
}

pub(crate) fn report(f: &HttpFigures) {
    let push: Vec<String> = f
        .push_eps
        .iter()
        .map(|(p, eps)| format!("push {p} {eps:>9.0} ev/s"))
        .collect();
    println!(
        "canon serve (http)           publish {:>9.0} ev/s (batches) | single publish {} | pull+ack {:>9.0} ev/s | sdk consumer {:>9.0} ev/s ({:.2}x pull+ack) | {} ({} per request)",
        f.publish_eps,
        f.single.show(),
        f.pull_eps,
        f.sdk_eps,
        f.sdk_eps / f.pull_eps.max(1.0),
        push.join(" | "),
        f.push_batch
    );
}

async fn post(http: &reqwest::Client, url: &str, ct: &str, body: Vec<u8>) -> Result<Value> {
    let bytes = post_raw(http, url, ct, body).await?;
    Ok(if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    })
}

/// POSTs `body` and returns the answer's body; an answer other than 2xx is an error.
async fn post_raw(http: &reqwest::Client, url: &str, ct: &str, body: Vec<u8>) -> Result<Vec<u8>> {
    let res = http
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let bytes = Vec::from(res.bytes().await?);
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(bytes)
}

/// The answer to a publish, as far as the load tool reads it.
#[derive(serde::Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    results: Vec<Outcome<'a>>,
}

#[derive(serde::Deserialize)]
struct Outcome<'a> {
    status: &'a str,
}

/// Publishes one batch and checks that each of its `n` events was stored.
async fn publish_batch(http: &reqwest::Client, url: &str, body: Vec<u8>, n: usize) -> Result<()> {
    let bytes = post_raw(http, url, "application/cloudevents-batch+json", body).await?;
    let answer: Published<'_> = serde_json::from_slice(&bytes)?;
    let stored = answer
        .results
        .iter()
        .filter(|o| o.status == "stored")
        .count();
    if stored != n {
        bail!("{url}: {stored} of {n} events stored");
    }
    Ok(())
}

pub(crate) async fn run(args: &Args) -> Result<HttpFigures> {
    let dir = format!("{}-http", args.dir);
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: dir.clone().into(),
        durability: if args.durability == "sync" {
            DurabilitySetting::Sync
        } else {
            DurabilitySetting::LoseRecentOnOsCrash
        },
        schemaless_topics: vec!["bench".to_owned()],
        body_limit: 64 * 1024 * 1024,
        ..Config::default()
    };
    let server = Served::start(config).await?;
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut f = HttpFigures {
        push_batch: args.push_batch,
        ..HttpFigures::default()
    };
    let publish_url = format!("{base}/v1/topics/bench/events");

    // Subscriptions first, so they see every event.
    post(
        &http,
        &format!("{base}/v1/subscriptions"),
        "application/json",
        serde_json::to_vec(&json!({"name": "pull", "topic": "bench", "max_in_flight": 10000}))?,
    )
    .await?;
    post(
        &http,
        &format!("{base}/v1/subscriptions"),
        "application/json",
        serde_json::to_vec(&json!({"name": "sdk", "topic": "bench", "max_in_flight": 10000}))?,
    )
    .await?;

    // Batch publish.
    let per = args.events / args.publishers;
    let total = per * args.publishers;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.publishers {
        let (http, url, batch, size) = (http.clone(), publish_url.clone(), args.batch, args.size);
        tasks.spawn(async move {
            let mut i = p * per;
            while i < (p + 1) * per {
                let n = batch.min((p + 1) * per - i);
                let mut body = Vec::with_capacity(n * (size + 1) + 1);
                for k in i..i + n {
                    body.push(if k == i { b'[' } else { b',' });
                    body.extend_from_slice(&event(k, size).to_json());
                }
                body.push(b']');
                publish_batch(&http, &url, body, n).await?;
                i += n;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    f.publish_eps = total as f64 / started.elapsed().as_secs_f64();

    // Pull consume with one ack request per pull.
    let started = Instant::now();
    let consumed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.publishers.clamp(1, 8) {
        let (http, base, consumed) = (http.clone(), base.clone(), Arc::clone(&consumed));
        tasks.spawn(async move {
            loop {
                let v = post(
                    &http,
                    &format!("{base}/v1/subscriptions/pull/pull"),
                    "application/json",
                    br#"{"max": 500, "wait_ms": 200}"#.to_vec(),
                )
                .await?;
                let ids: Vec<Value> = v["deliveries"]
                    .as_array()
                    .context("deliveries")?
                    .iter()
                    .map(|d| d["ack_id"].clone())
                    .collect();
                if ids.is_empty() {
                    return anyhow::Ok(());
                }
                consumed.fetch_add(ids.len(), Ordering::Relaxed);
                post(
                    &http,
                    &format!("{base}/v1/subscriptions/pull/ack"),
                    "application/json",
                    serde_json::to_vec(&json!({ "ack_ids": ids }))?,
                )
                .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    f.pull_eps = consumed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // The SDK's consumer runner on the same events: a no-op handler through the dispatcher.
    let d = canon_sdk::Dispatcher::builder()
        .dispatch_emitted(false)
        .build();
    d.on_json("count", "load.tick", "*", |_, _| Ok(()))?;
    let consumer =
        canon_sdk::remote::Consumer::new(canon_sdk::remote::Client::new(&base), "sdk", d)
            .batch(500)
            .concurrency(64)
            .pullers(args.publishers.clamp(1, 8))
            .wait(Duration::from_millis(200));
    let started = Instant::now();
    let watch = consumer.clone();
    let stats = consumer
        .run(async move {
            while watch.stats().acked < total as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
    f.sdk_eps = stats.acked as f64 / started.elapsed().as_secs_f64();

    // Single-event publish latency at a fixed rate.
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let phase_started = {
        let lat = Arc::clone(&lat);
        let (http, publish_url) = (http.clone(), publish_url.clone());
        crate::paced(args, move |i| {
            let (http, url, lat, size) = (
                http.clone(),
                publish_url.clone(),
                Arc::clone(&lat),
                args.size,
            );
            async move {
                let body = event(2_000_000_000 + i, size).to_json();
                let t = Instant::now();
                post(&http, &url, "application/cloudevents+json", body).await?;
                lat.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((i, t.elapsed()));
                Ok(())
            }
        })
        .await?
    };
    let mut timed = std::mem::take(&mut *lat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    timed.sort_unstable();
    let warm = args.warmup_events(args.rate);
    if let Some(path) = &args.latency_dump {
        // Each request by when it was due, counted from when the first was.
        let due: Vec<(Duration, Duration, Option<Duration>)> = timed
            .iter()
            .map(|&(i, d)| {
                (
                    Duration::from_secs_f64(i as f64 / args.rate as f64),
                    d,
                    None,
                )
            })
            .collect();
        let epoch = phase_started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        crate::write_dump(path, "request due", epoch, &due, warm)?;
    }
    f.single = Tail::of(timed.into_iter().map(|(_, d)| d), warm);
    // Push delivery to a local subscriber that answers 200 with an empty body (HTTP/1.1 and
    // HTTP/2 both: axum detects the HTTP/2 preface).
    for protocol in &args.push_protocols {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let batched = args.push_batch > 1;
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: axum::body::Bytes| {
                // A batch: count its events (a JSON array of objects), answer 200 empty: all done.
                let n = if batched {
                    serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&body)
                        .map_or(0, |v| v.len())
                } else {
                    1
                };
                counter.fetch_add(n, Ordering::Relaxed);
                async {}
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sub_addr = listener.local_addr()?;
        let subscriber = tokio::spawn(async move { axum::serve(listener, app).await });
        let started = Instant::now();
        post(
            &http,
            &format!("{base}/v1/subscriptions"),
            "application/json",
            serde_json::to_vec(&json!({"name": format!("push-{protocol}"), "topic": "bench",
                "max_in_flight": 10000,
                "push": {"url": format!("http://{sub_addr}/events"), "concurrency": args.push_concurrency,
                         "batch": args.push_batch, "protocol": protocol}}))?,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let eps = received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        f.push_eps.push((protocol.clone(), eps));
        http.delete(format!("{base}/v1/subscriptions/push-{protocol}"))
            .send()
            .await?
            .error_for_status()?;
        subscriber.abort();
    }

    server.shutdown().await?;
    Ok(f)
}

/// `canon serve` on a tokio runtime of its own, as it runs in its own process: the server's
/// tasks do not wait in the load generator's run queues, nor its tasks in the server's.
#[derive(Debug)]
pub(crate) struct Served {
    server: canon_server::Running,
    runtime: tokio::runtime::Runtime,
}

impl Served {
    pub(crate) async fn start(config: Config) -> Result<Served> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("canon-serve")
            .build()?;
        let server = runtime.spawn(canon_server::start(config)).await??;
        Ok(Served { server, runtime })
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Shuts the server down gracefully, then its runtime.
    pub(crate) async fn shutdown(self) -> Result<()> {
        self.server.shutdown().await?;
        self.runtime.shutdown_background();
        Ok(())
    }
}
