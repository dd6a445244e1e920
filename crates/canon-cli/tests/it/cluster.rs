//! Two `canon serve` processes on one shared backend (JetStream, PostgreSQL) share a pull
//! subscription: an acknowledged event is never delivered again, and killing one server in
//! the middle (SIGKILL, leases out) loses nothing: its leases expire and the other server
//! delivers them. The servers are real processes; the backends are the test servers
//! (`CANON_TEST_NATS`, `CANON_TEST_POSTGRES`; scripts/services starts them).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http;

const EVENTS: usize = 1500;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

fn serve(backend: &str, port: u16) -> Child {
    let dir = std::env::temp_dir().join(format!("canon-cluster-{}-{port}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["serve", "--backend", backend])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("canon serve starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "canon serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// What the consumers saw.
#[derive(Default)]
struct Seen {
    /// Event id → when its ack was confirmed.
    acked: HashMap<String, Instant>,
    /// Events delivered after their ack had been confirmed.
    again: Vec<String>,
    /// Acks confirmed by each server's consumer.
    by_port: HashMap<u16, usize>,
    /// Events leased through the doomed server when it was killed.
    held_at_kill: usize,
}

/// Pulls and acks until `stop`, or until the server stops answering. With `doomed` set, once
/// a third of the events is acknowledged it keeps one pull's leases unacknowledged, says so in
/// `holding`, and waits to be killed with them.
fn consume(
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    doomed: Option<Arc<AtomicBool>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((status, body)) = std::panic::catch_unwind(|| {
            http(
                port,
                "POST",
                "/v1/subscriptions/work/pull",
                "application/json",
                r#"{"max":50,"wait_ms":300}"#,
            )
        }) else {
            return; // the server is gone
        };
        if status != 200 {
            continue;
        }
        let v = json(&body);
        let deliveries = v["deliveries"].as_array().cloned().unwrap_or_default();
        let mut ids = Vec::new();
        let mut acks = Vec::new();
        {
            let mut s = seen.lock().expect("lock");
            for d in &deliveries {
                let id = d["event"]["id"].as_str().unwrap_or("").to_owned();
                if s.acked.contains_key(&id) {
                    s.again.push(id.clone());
                }
                ids.push(id);
                acks.push(d["ack_id"].clone());
            }
        }
        if acks.is_empty() {
            continue;
        }
        if let Some(holding) = &doomed
            && seen.lock().expect("lock").acked.len() >= EVENTS / 3
        {
            seen.lock().expect("lock").held_at_kill = acks.len();
            holding.store(true, Ordering::SeqCst);
            // Killed meanwhile; the server's answers fail from now on.
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let body = serde_json::json!({ "ack_ids": acks }).to_string();
        let Ok((status, answer)) = std::panic::catch_unwind(|| {
            http(
                port,
                "POST",
                "/v1/subscriptions/work/ack",
                "application/json",
                &body,
            )
        }) else {
            return;
        };
        if status != 200 {
            continue;
        }
        let results = json(&answer)["results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let now = Instant::now();
        let mut s = seen.lock().expect("lock");
        for (id, r) in ids.into_iter().zip(results) {
            if r["status"] == "ok" {
                s.acked.insert(id, now);
                *s.by_port.entry(port).or_default() += 1;
            }
        }
    }
}

fn share_a_group_and_survive_a_kill(backend: &str) {
    let (pa, pb) = (free_port(), free_port());
    let mut a = serve(backend, pa);
    let mut b = serve(backend, pb);
    for chunk in 0..EVENTS / 100 {
        let batch: Vec<serde_json::Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|i| {
                serde_json::json!({
                    "specversion": "1.0", "id": format!("job-{i:05}"), "source": "/cluster-test",
                    "type": "job.queued", "data": {"n": i}
                })
            })
            .collect();
        let (status, body) = http(
            pa,
            "POST",
            "/v1/topics/jobs/events",
            "application/cloudevents-batch+json",
            &serde_json::Value::Array(batch).to_string(),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Created after the topic (a schema-less server makes it on the first publish); a new group
    // starts at the beginning of the topic. B learns of it from the backend.
    let (status, body) = http(
        pa,
        "POST",
        "/v1/subscriptions",
        "application/json",
        r#"{"name":"work","topic":"jobs","lease_ms":4000,"max_in_flight":1000}"#,
    );
    assert!(status == 201 || status == 200, "{status} {body}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let holding = Arc::new(AtomicBool::new(false));
    let on_a = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || consume(pa, seen, stop, None))
    };
    let on_b = {
        let (seen, stop, holding) = (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&holding));
        std::thread::spawn(move || consume(pb, seen, stop, Some(holding)))
    };
    // Kill B while its consumer holds leases it never acknowledges.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holding.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill().expect("SIGKILL server B");
    let _ = b.wait();
    drop(on_b);
    // A delivers the rest, B's leased events too once their leases expire.
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.lock().expect("lock").acked.len() < EVENTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    on_a.join().expect("consumer of A");
    let _ = Command::new("kill").arg(a.id().to_string()).status();
    let _ = a.wait();
    let s = seen.lock().expect("lock");
    assert!(s.held_at_kill > 0, "B was killed holding leases");
    assert!(
        s.by_port.get(&pb).copied().unwrap_or(0) > 0
            && s.by_port.get(&pa).copied().unwrap_or(0) > 0,
        "both servers shared the work: {:?}",
        s.by_port
    );
    assert_eq!(s.acked.len(), EVENTS, "every event acknowledged, none lost");
    assert!(
        s.again.is_empty(),
        "acknowledged events delivered again: {:?}",
        &s.again[..s.again.len().min(10)]
    );
}

#[test]
fn two_servers_on_one_jetstream_share_a_group_and_survive_a_kill() {
    let url = std::env::var("CANON_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4223".into());
    let ns = format!("cluster{:08x}", std::process::id());
    share_a_group_and_survive_a_kill(&format!("{url}?namespace={ns}"));
    // Remove the namespace's streams.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let b = canon_nats::NatsBackend::open_in(&url, &ns)
            .await
            .expect("connect");
        b.destroy().await.expect("delete the test's streams");
    });
}

#[test]
fn two_servers_on_one_postgres_share_a_group_and_survive_a_kill() {
    let url = std::env::var("CANON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:canon@127.0.0.1:5432/test".into());
    let schema = format!("canon_cluster_{:08x}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    share_a_group_and_survive_a_kill(&format!("{url}{sep}schema={schema}"));
    let dropped = Command::new("psql")
        .args([
            url.as_str(),
            "-qc",
            &format!("DROP SCHEMA {schema} CASCADE"),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(dropped.success(), "drop the test's schema");
}
