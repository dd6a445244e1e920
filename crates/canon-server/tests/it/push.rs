//! Push delivery to a real HTTP subscriber started by the test, under the Dapr answer contract.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::{Server, generated, subscribe};

/// One request the subscriber got: draft id, its count so far, headers, body.
type Request = (String, u32, HeaderMap, Vec<u8>);

/// What the subscriber got, and when each draft id came (in the same order).
#[derive(Clone, Default)]
struct Seen(
    Arc<Mutex<Vec<Request>>>,
    Arc<Mutex<Vec<(String, std::time::Instant)>>>,
);

/// A subscriber whose answer depends on the draftId: `ok*` success, `retry*` RETRY the first
/// time, `drop*` DROP, `gone*` 404, `fail*` 503 with Retry-After: 1 the first time. It serves
/// HTTP/1.1 and HTTP/2 with prior knowledge, and records the version as `x-test-version`.
async fn subscriber() -> (String, Seen) {
    let seen = Seen::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(
            move |version: axum::http::Version, mut headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                headers.insert("x-test-version", format!("{version:?}").parse().unwrap());
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let draft = v["data"]["draftId"]
                        .as_str()
                        .or_else(|| v["draftId"].as_str())
                        .or_else(|| headers.get("ce-id").and_then(|h| h.to_str().ok()))
                        .unwrap_or("")
                        .to_owned();
                    let mut seen = state.0.lock().unwrap();
                    let n = 1 + u32::try_from(seen.iter().filter(|(d, ..)| *d == draft).count())
                        .unwrap();
                    seen.push((draft.clone(), n, headers.clone(), body.to_vec()));
                    drop(seen);
                    state
                        .1
                        .lock()
                        .unwrap()
                        .push((draft.clone(), std::time::Instant::now()));
                    if draft.starts_with("retry") && n == 1 {
                        return axum::Json(json!({"status": "RETRY"})).into_response();
                    }
                    if draft.starts_with("drop") {
                        return axum::Json(json!({"status": "DROP"})).into_response();
                    }
                    if draft.starts_with("gone") {
                        return StatusCode::NOT_FOUND.into_response();
                    }
                    if draft.starts_with("fail") && n == 1 {
                        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")])
                            .into_response();
                    }
                    if draft.starts_with("empty") {
                        return StatusCode::OK.into_response();
                    }
                    axum::Json(json!({"status": "SUCCESS"})).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/events"), seen)
}

async fn wait_for(what: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !what() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn push_follows_the_dapr_answer_contract() {
    answer_contract("http", "HTTP/1.1").await;
}

#[tokio::test]
async fn h2c_push_follows_the_same_contract_over_http2() {
    answer_contract("h2c", "HTTP/2.0").await;
}

async fn answer_contract(protocol: &str, version: &str) {
    let (url, seen) = subscriber().await;
    let s = Server::start().await;
    let v = subscribe(
        &s,
        "hook",
        "post.generated",
        json!({"push": {"url": url, "protocol": protocol}}),
    )
    .await;
    assert_eq!(v["push"]["protocol"], protocol);
    let drafts = ["ok-1", "retry-1", "drop-1", "gone-1", "fail-1", "empty-1"];
    let batch: Vec<_> = drafts
        .iter()
        .enumerate()
        .map(|(i, d)| generated(&format!("h{i}"), d))
        .collect();
    let (status, _) = s.publish(&batch).await;
    assert_eq!(status, 200);
    let count = |d: &str| {
        seen.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(x, ..)| x == d)
            .count()
    };
    wait_for(|| count("retry-1") == 2 && count("fail-1") == 2).await;
    let mut dlq = Vec::new();
    for _ in 0..100 {
        let (_, v) = s.get("/v1/subscriptions/hook/dlq").await;
        dlq = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["data"]["draftId"].as_str().unwrap().to_owned())
            .collect();
        if dlq.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dlq.sort();
    assert_eq!(dlq, ["drop-1", "gone-1"], "DROP and 404 go to the DLQ");
    assert_eq!(count("ok-1"), 1);
    assert_eq!(count("empty-1"), 1, "an empty 2xx is success");
    assert_eq!(count("retry-1"), 2, "RETRY redelivers");
    assert_eq!(count("fail-1"), 2, "a 503 redelivers");
    let times: Vec<_> = seen.1.lock().unwrap().clone();
    let at = |d: &str| -> Vec<std::time::Instant> {
        times
            .iter()
            .filter(|(x, _)| x == d)
            .map(|(_, t)| *t)
            .collect()
    };
    let fail = at("fail-1");
    assert!(
        fail[1] - fail[0] >= Duration::from_millis(900),
        "Retry-After: 1 holds the retry back a second, not the policy's 50 ms backoff: {:?}",
        fail[1] - fail[0]
    );
    assert_eq!(count("drop-1"), 1);
    // Structured mode by default.
    let first = seen.0.lock().unwrap()[0].clone();
    assert_eq!(first.2["content-type"], "application/cloudevents+json");
    assert!(
        seen.0
            .lock()
            .unwrap()
            .iter()
            .all(|(.., h, _)| h["x-test-version"] == version),
        "every request over {version}"
    );
    // Four successes (ok, empty, and retry and fail the second time), each with its latency;
    // the last answer may still be on its way back to the server.
    let needles = [
        "canon_deliveries_total{subscription=\"hook\",outcome=\"success\"} 4",
        "canon_delivery_latency_seconds_count{subscription=\"hook\"} 4",
        "canon_push_duration_seconds_count{subscription=\"hook\"}",
        "canon_dlq_depth_events{subscription=\"hook\"} 2",
    ];
    let mut text = String::new();
    for _ in 0..100 {
        let (_, v) = s.get("/metrics").await;
        text = v.as_str().unwrap().to_owned();
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for needle in needles {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    s.stop().await;
}

#[tokio::test]
async fn binary_and_data_formats_and_trace_context() {
    let (url, seen) = subscriber().await;
    let s = Server::start().await;
    subscribe(
        &s,
        "bin",
        "post.generated",
        json!({"push": {"url": url, "format": "binary"}}),
    )
    .await;
    subscribe(
        &s,
        "raw",
        "post.generated",
        json!({"push": {"url": url, "format": "data"}}),
    )
    .await;
    let mut ev = generated("bin-1", "ok-b");
    ev["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    s.publish(&[ev]).await;
    wait_for(|| seen.0.lock().unwrap().len() >= 2).await;
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one request per subscription");
    // Payload only: the data as the body, with its content type, and no envelope.
    let (_, _, headers, body) = got
        .iter()
        .find(|(_, _, h, _)| !h.contains_key("ce-id"))
        .expect("the data-only request")
        .clone();
    assert_eq!(headers["content-type"], "application/json");
    let data: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(data["draftId"], "ok-b");
    assert!(
        data.get("specversion").is_none() && data.get("data").is_none(),
        "{data}"
    );
    // Binary mode: the attributes as ce- headers, the data as the body.
    let (_, _, headers, body) = got
        .iter()
        .find(|(_, _, h, _)| h.contains_key("ce-id"))
        .expect("the binary request")
        .clone();
    assert_eq!(headers["ce-id"], "bin-1");
    assert_eq!(headers["ce-type"], "post.generated");
    assert_eq!(
        headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let data: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(data["draftId"], "ok-b");
    s.stop().await;
}

#[tokio::test]
async fn ordered_push_keeps_per_key_order_under_concurrency() {
    let (url, seen) = subscriber().await;
    let s = Server::start().await;
    subscribe(
        &s,
        "ord",
        "post.generated",
        json!({"ordered": true, "push": {"url": url, "concurrency": 8}}),
    )
    .await;
    // Two users, interleaved; user-2's events are drafts "okB-n".
    let mut batch = Vec::new();
    for i in 0..20 {
        let mut e = generated(
            &format!("o{i}"),
            &format!("ok{}-{i:02}", if i % 2 == 0 { "A" } else { "B" }),
        );
        e["data"]["userId"] = json!(if i % 2 == 0 { "user-a" } else { "user-b" });
        batch.push(e);
    }
    s.publish(&batch).await;
    wait_for(|| seen.0.lock().unwrap().len() >= 20).await;
    let seen = seen.0.lock().unwrap().clone();
    for user in ["okA", "okB"] {
        let order: Vec<&String> = seen
            .iter()
            .map(|(d, ..)| d)
            .filter(|d| d.starts_with(user))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "per-key order for {user}");
        assert_eq!(order.len(), 10);
    }
    s.stop().await;
}

/// A graceful shutdown in the middle of push delivery: requests in flight are answered and
/// settled, nothing is lost, and what was acknowledged is not delivered again after a restart.
#[tokio::test]
async fn a_graceful_shutdown_mid_delivery_loses_nothing() {
    let seen = Seen::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let v: Value = serde_json::from_slice(&body).unwrap();
                let draft = v["data"]["draftId"].as_str().unwrap().to_owned();
                state
                    .0
                    .lock()
                    .unwrap()
                    .push((draft, 1, HeaderMap::new(), Vec::new()));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with(crate::config(dir.path()), None).await;
    subscribe(
        &s,
        "slow",
        "post.generated",
        json!({"push": {"url": url, "concurrency": 4}}),
    )
    .await;
    let batch: Vec<_> = (0..40)
        .map(|i| generated(&format!("g{i}"), &format!("ok-{i:02}")))
        .collect();
    s.publish(&batch).await;
    wait_for(|| seen.0.lock().unwrap().len() >= 6).await;
    s.stop().await;
    let before = seen.0.lock().unwrap().len();
    assert!(
        before < 40,
        "the shutdown came mid-delivery ({before} delivered)"
    );
    let s = Server::with(crate::config(dir.path()), Some(dir)).await;
    wait_for(|| {
        let seen = seen.0.lock().unwrap();
        let mut d: Vec<&String> = seen.iter().map(|(d, ..)| d).collect();
        d.sort();
        d.dedup();
        d.len() == 40
    })
    .await;
    let seen = seen.0.lock().unwrap().clone();
    let mut drafts: Vec<&String> = seen.iter().map(|(d, ..)| d).collect();
    drafts.sort();
    drafts.dedup();
    assert_eq!(drafts.len(), 40, "every event delivered");
    assert_eq!(
        seen.len(),
        40,
        "nothing answered before the shutdown was delivered again"
    );
    // The last acks may still be committing.
    let mut v = Value::Null;
    for _ in 0..100 {
        v = s.get("/v1/subscriptions/slow").await.1;
        if v["pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (v["pending"].as_u64(), v["dead_letters"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    s.stop().await;
}

/// Batched push: arrays of events, settled per entry by `statuses` (an entry left out is
/// RETRY, DROP goes to the DLQ).
#[tokio::test]
async fn batched_push_is_settled_per_entry() {
    let requests = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let state = Arc::clone(&requests);
    let app = axum::Router::new().route(
        "/bulk",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = Arc::clone(&state);
            async move {
                assert_eq!(
                    headers["content-type"],
                    "application/cloudevents-batch+json"
                );
                let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
                let drafts: Vec<String> = events
                    .iter()
                    .map(|e| e["data"]["draftId"].as_str().unwrap().to_owned())
                    .collect();
                let first_time = {
                    let mut seen = state.lock().unwrap();
                    let first = !seen.iter().flatten().any(|d| d == "left-out");
                    seen.push(drafts);
                    first
                };
                let statuses: Vec<Value> = events
                    .iter()
                    .filter_map(|e| {
                        let draft = e["data"]["draftId"].as_str().unwrap();
                        let id = e["id"].clone();
                        match draft {
                            "left-out" if first_time => None,
                            "drop" => Some(json!({"entryId": id, "status": "DROP"})),
                            _ => Some(json!({"entryId": id, "status": "SUCCESS"})),
                        }
                    })
                    .collect();
                axum::Json(json!({ "statuses": statuses }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/bulk", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = Server::start().await;
    let (status, v) = s
        .post("/v1/subscriptions", &json!({"name": "b", "topic": "post.generated", "push": {"url": url, "batch": 3, "format": "binary"}}))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid-request")),
        "batches are structured"
    );
    // A push URL must parse, with a host, over http: refused when created, not when delivering.
    for bad in [
        "http://",
        "https://example.com/x",
        "http//nope",
        "http://exa mple.com/",
    ] {
        let (status, v) = s
            .post(
                "/v1/subscriptions",
                &json!({"name": "u", "topic": "post.generated", "push": {"url": bad}}),
            )
            .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("invalid-request")),
            "{bad}"
        );
    }
    subscribe(
        &s,
        "bulk",
        "post.generated",
        json!({"push": {"url": url, "batch": 10, "concurrency": 1}}),
    )
    .await;
    let drafts = ["a", "b", "left-out", "drop", "c"];
    let batch: Vec<_> = drafts
        .iter()
        .enumerate()
        .map(|(i, d)| generated(&format!("k{i}"), d))
        .collect();
    s.publish(&batch).await;
    wait_for(|| {
        requests
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter(|d| *d == "left-out")
            .count()
            == 2
    })
    .await;
    let mut dlq = Vec::new();
    for _ in 0..100 {
        let (_, v) = s.get("/v1/subscriptions/bulk").await;
        if v["pending"] == 0 {
            dlq = s
                .get("/v1/subscriptions/bulk/dlq")
                .await
                .1
                .as_array()
                .unwrap()
                .clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["event"]["data"]["draftId"], "drop");
    let requests = requests.lock().unwrap().clone();
    assert!(
        requests[0].len() > 1,
        "events travel together: {requests:?}"
    );
    assert_eq!(requests.iter().flatten().filter(|d| *d == "a").count(), 1);
    s.stop().await;
}

/// A subscriber that answers on a connection and closes it a moment later, as servers with a
/// short keep-alive do: the next event goes out on a new connection, on its first attempt.
#[tokio::test]
async fn a_connection_the_subscriber_closed_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (got, accepted) = (bodies.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let got = got.clone();
            tokio::spawn(async move {
                // One request: the head, then content-length bytes of body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let body = &buf[end + 4..end + 4 + len];
                        got.lock()
                            .unwrap()
                            .push(serde_json::from_slice(body).unwrap_or(Value::Null));
                        break;
                    }
                }
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Dropped: closed without a `Connection: close`.
            });
        }
    });
    let s = Server::start().await;
    subscribe(
        &s,
        "short",
        "post.generated",
        json!({"push": {"url": format!("http://{addr}/events"), "concurrency": 1}}),
    )
    .await;
    for i in 0..5 {
        let (status, _) = s
            .publish(&[generated(&format!("k{i}"), &format!("ok-k{i}"))])
            .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_for(|| bodies.lock().unwrap().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        ids,
        ["k0", "k1", "k2", "k3", "k4"],
        "each event once, in order"
    );
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "a new connection for each event"
    );
    let (_, v) = s.get("/metrics").await;
    let text = v.as_str().unwrap();
    assert!(
        !text.contains("canon_deliveries_total{subscription=\"short\",outcome=\"retry\"}"),
        "no attempt failed: {text}"
    );
    s.stop().await;
}
