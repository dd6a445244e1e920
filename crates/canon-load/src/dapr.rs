//! The Dapr mode (`--dapr`): the Dapr publish route beside the native one under the same
//! workload (single-event requests from concurrent publishers), and the Jobs scheduler's
//! lateness with many jobs scheduled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use canon_server::config::{Config, DaprApp, DurabilitySetting, PubsubConfig};

use crate::{Args, event, percentile};

/// What the Dapr mode measured.
#[derive(Debug, Default)]
pub(crate) struct DaprFigures {
    pub(crate) native_eps: f64,
    pub(crate) dapr_eps: f64,
    pub(crate) jobs: usize,
    pub(crate) fired: usize,
    pub(crate) job_p50: Duration,
    pub(crate) job_p99: Duration,
    pub(crate) job_max: Duration,
}

pub(crate) fn report(f: &DaprFigures) {
    println!(
        "canon serve (dapr)           single-event publish: native {:>8.0} ev/s, dapr route {:>8.0} ev/s ({:.2}x) | {} jobs scheduled, {} fired over 10 s: after due p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        f.native_eps,
        f.dapr_eps,
        f.dapr_eps / f.native_eps.max(1.0),
        f.jobs,
        f.fired,
        f.job_p50.as_secs_f64() * 1e3,
        f.job_p99.as_secs_f64() * 1e3,
        f.job_max.as_secs_f64() * 1e3,
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) async fn run(args: &Args) -> Result<DaprFigures> {
    // The app jobs fire into: records how late each one came.
    let late = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let l = Arc::clone(&late);
    let app = axum::Router::new().route(
        "/job/{name}",
        axum::routing::post(move |body: axum::body::Bytes| {
            let l = Arc::clone(&l);
            async move {
                let due: u64 = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["due"].as_u64())
                    .unwrap_or(0);
                let lateness = Duration::from_millis(now_ms().saturating_sub(due));
                if let Ok(mut l) = l.lock() {
                    l.push(lateness);
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = format!("{}-dapr", args.dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: dir.into(),
        durability: if args.durability == "sync" {
            DurabilitySetting::Sync
        } else {
            DurabilitySetting::LoseRecentOnOsCrash
        },
        schemaless_topics: vec!["bench".to_owned()],
        body_limit: 64 * 1024 * 1024,
        ..Config::default()
    };
    config.dapr.pubsubs.push(PubsubConfig {
        name: "open".to_owned(),
        catalogs: false,
    });
    config.dapr.apps.push(DaprApp {
        id: "bench".to_owned(),
        url: app_url,
        protocol: Default::default(),
    });
    let server = crate::http::Served::start(config).await?;
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut f = DaprFigures::default();

    // The same single-event publishes through each route, alternating rounds so that neither
    // gets the warmer disk.
    let per_route = (args.events / 4).max(1000);
    let publishers = args.publishers.max(1);
    let mut native = Duration::ZERO;
    let mut dapr = Duration::ZERO;
    for round in 0..2 {
        for (route, total) in [("native", &mut native), ("dapr", &mut dapr)] {
            let url = match route {
                "native" => format!("{base}/v1/topics/bench/events"),
                _ => format!("{base}/v1.0/publish/open/bench"),
            };
            let next = Arc::new(AtomicUsize::new(0));
            let n = per_route / 2;
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..publishers {
                let (http, url, next, size) =
                    (http.clone(), url.clone(), Arc::clone(&next), args.size);
                let offset = if route == "native" { 0 } else { 1 } * 10_000_000 + round * 1_000_000;
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return anyhow::Ok(());
                        }
                        let body = event(3_000_000_000 + offset + i, size).to_json();
                        let res = http
                            .post(&url)
                            .header("content-type", "application/cloudevents+json")
                            .body(body)
                            .send()
                            .await?;
                        if !res.status().is_success() {
                            bail!("{url} answered {}", res.status());
                        }
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            *total += started.elapsed();
        }
    }
    f.native_eps = per_route as f64 / native.as_secs_f64();
    f.dapr_eps = per_route as f64 / dapr.as_secs_f64();

    // Jobs: `--jobs` one-shot jobs scheduled up front; 10,000 of them come due over 10 s once
    // all are scheduled (at least 2,000 a second are), the others an hour later, so they are
    // there, scheduled, while the 10,000 fire.
    let jobs = args.jobs.max(1);
    let measured = jobs.min(10_000);
    let start = now_ms() + 2_000 + jobs as u64 / 2;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..publishers {
        let (http, base, next) = (http.clone(), base.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(());
                }
                let due = if i < measured {
                    start + (i as u64 * 10_000 / measured as u64)
                } else {
                    start + 3_600_000
                };
                let due_time =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(due) * 1_000_000)?
                        .format(&time::format_description::well_known::Rfc3339)?;
                let body = serde_json::json!({"dueTime": due_time, "data": {"due": due}});
                let res = http
                    .post(format!("{base}/v1.0-alpha1/jobs/job-{i}"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await?;
                if !res.status().is_success() {
                    bail!("scheduling answered {}", res.status());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while late.lock().map_or(0, |l| l.len()) < measured && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut l = std::mem::take(&mut *late.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    l.sort_unstable();
    f.jobs = jobs;
    f.fired = l.len();
    f.job_p50 = percentile(&l, 0.5);
    f.job_p99 = percentile(&l, 0.99);
    f.job_max = l.last().copied().unwrap_or_default();
    server.shutdown().await?;
    Ok(f)
}
