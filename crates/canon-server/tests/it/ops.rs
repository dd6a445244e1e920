//! Health, readiness, metrics, the OpenAPI document, configuration, problems for routing errors.

use serde_json::json;

use crate::{Server, generated};

#[tokio::test]
async fn health_ready_and_metrics() {
    let s = Server::start().await;
    let (status, v) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["service"], "canon");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (status, _) = s.get("/ready").await;
    assert_eq!(status, 200);
    s.publish(&[generated("m1", "d1")]).await;
    s.publish(&[generated("m1", "d1")]).await;
    s.publish(&[serde_json::json!({"id": 1})]).await;
    let (status, v) = s.get("/metrics").await;
    assert_eq!(status, 200);
    let text = v.as_str().unwrap();
    for needle in [
        "canon_published_events_total{topic=\"post.generated\",outcome=\"stored\"} 1",
        "canon_published_events_total{topic=\"post.generated\",outcome=\"duplicate\"} 1",
        "canon_refused_requests_total{code=\"invalid-event\"} 1",
        "canon_publish_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let (status, v) = s.get("/no/such/route").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not-found")));
    s.stop().await;
}

/// The PostgreSQL the tests use (`CANON_TEST_POSTGRES`, default the local server that
/// scripts/services starts).
fn postgres_url() -> String {
    std::env::var("CANON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:canon@127.0.0.1:5432/test".to_owned())
}

/// `/ready` answers 503 `storage-unavailable` while storage fails, here the PostgreSQL
/// backend's schema dropped under the running server (`CANON_TEST_POSTGRES`, default
/// `postgres://postgres:canon@127.0.0.1:5432/test`; scripts/services starts one), and 200
/// before; `/health` says the process is up either way.
#[tokio::test]
async fn readiness_follows_storage() {
    let url = postgres_url();
    let schema = format!("canon_ready_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.backend = format!("{url}?schema={schema}");
    let s = Server::with(c, Some(dir)).await;
    let (status, v) = s.get("/ready").await;
    assert_eq!(status, 200, "{v}");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    let (status, v) = s.get("/ready").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("storage-unavailable")),
        "{v}"
    );
    assert_eq!(
        v["type"]
            .as_str()
            .map(|t| t.contains("storage-unavailable")),
        Some(true),
        "a problem document: {v}"
    );
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
    if let Some(r) = s.running {
        // Its storage is gone: whatever the shutdown says, it must return.
        let _ = r.shutdown().await;
    }
}

/// docs/openapi.json is the served document; `CANON_BLESS=1` rewrites it.
#[tokio::test]
async fn openapi_document_is_current() {
    let s = Server::start().await;
    let (status, served) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        served["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    assert!(served["paths"]["/v1/subscriptions/{name}/pull"].is_object());
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("CANON_BLESS").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == pretty,
        "docs/openapi.json is stale: run CANON_BLESS=1 cargo test -p canon-server openapi"
    );
    s.stop().await;
}

/// Every native route the router serves (`.route("/v1/...")` in the server's source, the Dapr
/// API's aside) is in the OpenAPI document, whose path list `openapi.rs` keeps by hand.
#[tokio::test]
async fn every_native_route_is_in_the_openapi_document() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices(".route(") {
            let rest = text[at + ".route(".len()..].trim_start();
            if let Some(quoted) = rest.strip_prefix('"') {
                let path = &quoted[..quoted.find('"').unwrap()];
                if path.starts_with("/v1/") && !path.starts_with("/v1/dapr/") {
                    routes.push(path.to_owned());
                }
            }
        }
    }
    assert!(routes.len() >= 20, "the scan found the routes: {routes:?}");
    let s = Server::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| doc["paths"].get(r.as_str()).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.rs: {missing:?}"
    );
    s.stop().await;
}

#[test]
fn configuration_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("canon.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\nbody_limit = 1024\n[push]\nconcurrency = 4\n",
    )
    .unwrap();
    let c = canon_server::config::Config::load(Some(&file)).unwrap();
    assert_eq!(c.listen, "127.0.0.1:9000");
    assert_eq!((c.body_limit, c.push.concurrency), (1024, 4));
    std::fs::write(&file, "listen = 5\n").unwrap();
    let err = canon_server::config::Config::load(Some(&file)).unwrap_err();
    assert!(err.to_string().contains("listen"), "{err}");
    std::fs::write(&file, "lisen = \"x\"\n").unwrap();
    let err = canon_server::config::Config::load(Some(&file)).unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
    // The example configuration is complete and loads.
    let example =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../canon.example.toml");
    canon_server::config::Config::load(Some(&example)).unwrap();
}

/// `topic_defaults` and `topics` reach the backend at start-up: a topic's own settings win,
/// what it leaves out comes from the defaults, a short dedup window ends, a size limit deletes
/// the oldest events; a dedup window under a second is refused.
#[tokio::test]
async fn topic_settings_apply_at_start() {
    use canon_server::config::TopicSettings;
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.topic_defaults = TopicSettings {
        max_age_ms: Some(7 * 24 * 3600 * 1000),
        max_bytes: Some(1 << 30),
        ..TopicSettings::default()
    };
    c.topics.insert(
        "post.generated".to_owned(),
        TopicSettings {
            dedup_window_ms: Some(1_000),
            max_bytes: Some(4_000),
            ..TopicSettings::default()
        },
    );
    let s = Server::with(c.clone(), Some(dir)).await;
    let (status, v) = s.get("/v1/topics/post.generated").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["dedup_window_ms"], &v["max_age_ms"], &v["max_bytes"]),
        (&json!(1_000), &json!(604_800_000), &json!(4_000)),
        "its own settings, the rest from the defaults: {v}"
    );
    let (_, v) = s.get("/v1/topics/post.posted").await;
    assert_eq!(
        (&v["dedup_window_ms"], &v["max_bytes"]),
        (&json!(86_400_000), &json!(1 << 30)),
        "the defaults: {v}"
    );
    let (_, v) = s.publish(&[generated("w1", "d-w1")]).await;
    assert_eq!(v["results"][0]["status"], "stored", "{v}");
    let (_, v) = s.publish(&[generated("w1", "d-w1")]).await;
    assert_eq!(
        v["results"][0]["status"], "duplicate",
        "within the window: {v}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let (_, v) = s.publish(&[generated("w1", "d-w1")]).await;
    assert_eq!(v["results"][0]["status"], "stored", "after the window: {v}");
    for i in 0..20 {
        let (status, v) = s
            .publish(&[generated(&format!("r{i}"), &format!("d-r{i}"))])
            .await;
        assert_eq!(status, 200, "{v}");
    }
    // Retention runs on the writer after each commit: give the last one a moment.
    let mut v = json!(null);
    for _ in 0..50 {
        v = s.get("/v1/topics/post.generated").await.1;
        if v["bytes"].as_u64().unwrap() <= 4_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        v["bytes"].as_u64().unwrap() <= 4_000 && v["first"].as_u64().unwrap() > 1,
        "the oldest events are gone: {v}"
    );
    s.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.topics.insert(
        "post.posted".to_owned(),
        TopicSettings {
            dedup_window_ms: Some(10),
            ..TopicSettings::default()
        },
    );
    let Err(err) = canon_server::start(c).await else {
        panic!("a dedup window under a second is refused");
    };
    assert!(err.to_string().contains("post.posted"), "{err}");
}

/// docs/http-api.md's error table and `problem::CODES` list the same codes with the same status.
#[test]
fn error_codes_are_documented_both_ways() {
    crate::assert_codes_documented("docs/http-api.md", canon_server::problem::CODES);
}

/// A server's `[[outbox]]` relays a PostgreSQL table's rows into its backend, and a topic the
/// relay makes (no catalog: topics are made as rows name them) gets the server's topic
/// settings, not the built-in defaults.
#[tokio::test]
async fn outbox_relay_makes_topics_with_the_configured_settings() {
    use canon_server::config::{OutboxConfig, TopicSettings};
    let url = postgres_url();
    let table = format!(
        "canon_outbox_srv_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.catalogs.clear();
    c.topic_defaults = TopicSettings {
        dedup_window_ms: Some(5_000),
        max_age_ms: Some(3_600_000),
        ..TopicSettings::default()
    };
    c.outbox.push(OutboxConfig {
        url: url.clone(),
        table: table.clone(),
        producer: None,
        batch: 100,
        poll_ms: 50,
    });
    // Installed before the relay starts: two concurrent CREATE TABLE IF NOT EXISTS can clash.
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let outbox = canon_outbox::Outbox::new(&table).unwrap();
    outbox.install(&db).await.unwrap();
    let s = Server::with(c, Some(dir)).await;
    let insert = format!(
        "INSERT INTO {table} (topic, event) VALUES ('orders', \
         '{{\"specversion\":\"1.0\",\"id\":\"o-1\",\"source\":\"/shop\",\
         \"type\":\"order.placed\",\"data\":{{\"total\":12}}}}'::json)"
    );
    db.batch_execute(&insert).await.unwrap();
    let mut v = json!(null);
    for _ in 0..100 {
        let (status, got) = s.get("/v1/topics/orders").await;
        v = got;
        if status == 200 && v["last"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Cleaned up before the assertions, so that a failed run leaves no tables behind.
    s.stop().await;
    db.batch_execute(&format!(
        "DROP TABLE {table}, {table}_rejected; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
    assert_eq!(v["last"], 1, "the row was relayed: {v}");
    assert_eq!(
        (&v["dedup_window_ms"], &v["max_age_ms"]),
        (&json!(5_000), &json!(3_600_000)),
        "the relay made the topic with topic_defaults: {v}"
    );
}

/// A request slower than `request_timeout_ms` gets 408 as a problem document, and stores
/// nothing.
#[tokio::test]
async fn slow_requests_time_out_with_a_problem() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.request_timeout_ms = 300;
    let s = Server::with(c, Some(dir)).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = serde_json::to_vec(&generated("slow", "d-slow")).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..10]).await.unwrap();
    // The rest never comes in time.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("request-timeout") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"code\":\"request-timeout\""), "{text}");
    assert_eq!(s.last_seq("post.generated").await, 0);
    s.stop().await;
}

/// The tail resumes after `Last-Event-ID` and starts from a time.
#[tokio::test]
async fn tail_resumes_after_the_last_event_id_and_starts_from_a_time() {
    let s = Server::start().await;
    for i in 0..3 {
        s.publish(&[generated(&format!("l{i}"), &format!("d{i}"))])
            .await;
    }
    let read = |req: reqwest::RequestBuilder| async move {
        let mut res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let mut text = String::new();
        while !text.contains("\"l2\"") {
            match tokio::time::timeout(std::time::Duration::from_secs(5), res.chunk()).await {
                Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
                _ => break,
            }
        }
        text
    };
    let url = format!("{}/v1/topics/post.generated/tail", s.base);
    let text = read(s.http.get(&url).header("last-event-id", "1")).await;
    assert!(
        !text.contains("\"l0\"") && text.contains("\"l1\"") && text.contains("\"l2\""),
        "{text}"
    );
    let text = read(s.http.get(format!("{url}?from=2000-01-01T00:00:00Z"))).await;
    assert!(text.contains("\"l0\"") && text.contains("\"l2\""), "{text}");
    let (status, v) = s.get("/v1/topics/post.generated/tail?from=yesterday").await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid-request")));
    s.stop().await;
}
