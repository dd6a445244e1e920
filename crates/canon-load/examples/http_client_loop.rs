//! The ceiling of one-event push on this machine, without Canon: `concurrency` tasks POST 600
//! bytes in a loop to an axum subscriber in the same process (answering 200, empty), for 4 s,
//! once through reqwest and once through hyper's connection API (a connection per task). This
//! is why push delivery has its own client (`canon-server`'s `push/client.rs`).
//!
//! `cargo run --release -p canon-load --example http_client_loop [-- CONCURRENCY]`

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const RUN: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> Result<()> {
    let concurrency: usize = std::env::args().nth(1).map_or(Ok(64), |s| s.parse())?;
    for client in ["reqwest", "hyper"] {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |_: Bytes| {
                counter.fetch_add(1, Ordering::Relaxed);
                async {}
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let body = Bytes::from(vec![b'x'; 600]);
        let pool = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency * 2)
            .build()?;
        for _ in 0..concurrency {
            let body = body.clone();
            let until = started + RUN;
            if client == "reqwest" {
                let (pool, url) = (
                    pool.clone(),
                    reqwest::Url::parse(&format!("http://{addr}/events"))?,
                );
                tasks.spawn(async move {
                    while Instant::now() < until {
                        let res = pool
                            .post(url.clone())
                            .header("content-type", "application/cloudevents+json")
                            .body(body.clone())
                            .send()
                            .await?;
                        res.bytes().await?;
                    }
                    anyhow::Ok(())
                });
            } else {
                tasks.spawn(hyper_loop(addr, body, until));
            }
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let rate = received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!("{client:<8} {concurrency} in flight: {rate:>8.0} requests/s");
        server.abort();
    }
    Ok(())
}

/// One kept-open HTTP/1.1 connection, one request at a time.
async fn hyper_loop(addr: SocketAddr, body: Bytes, until: Instant) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut conn, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    while Instant::now() < until {
        let req = hyper::Request::post("/events")
            .header("host", addr.to_string())
            .header("content-type", "application/cloudevents+json")
            .body(Full::new(body.clone()))?;
        let res = conn.send_request(req).await?;
        res.into_body().collect().await?;
    }
    Ok(())
}
