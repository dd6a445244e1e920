//! `canon serve` driven over real HTTP: an in-process server on a loopback port with its own
//! data directory, the seed catalogs, and real HTTP clients (reqwest, and the official
//! CloudEvents SDK in `sdk`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod access;
mod bad_input;
mod consume;
mod dapr;
mod ops;
mod publish;
mod push;
mod sdk;
mod seed004;

use std::path::PathBuf;

use canon_server::config::{ApiKey, Config};
use canon_server::{Running, start};
use serde_json::{Value, json};

pub(crate) struct Server {
    pub(crate) running: Option<Running>,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) token: Option<String>,
    _dir: Option<tempfile::TempDir>,
    pub(crate) data: PathBuf,
}

pub(crate) fn catalogs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/catalogs/coach.yaml")
}

pub(crate) fn config(data: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: data.to_path_buf(),
        catalogs: vec![catalogs()],
        body_limit: 64 * 1024,
        ..Config::default()
    }
}

/// Keys: `backend-key` (backend, workflow producer), `analytics-key` (analytics),
/// `coach-key` (coach-service), `ops-key` (ops, admin).
pub(crate) fn with_keys(mut c: Config) -> Config {
    c.auth.api_keys = [
        "backend",
        "analytics",
        "coach-service",
        "ops",
        "streak-service",
    ]
    .iter()
    .map(|s| ApiKey {
        service: (*s).to_owned(),
        sha256: None,
        key: Some(format!("{}-key", s.split('-').next().unwrap())),
    })
    .collect();
    c.auth.admins = vec!["ops".to_owned()];
    c
}

impl Server {
    pub(crate) async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        Server::with(c, Some(dir)).await
    }

    pub(crate) async fn with(config: Config, dir: Option<tempfile::TempDir>) -> Server {
        let data = config.data_dir.clone();
        let running = start(config).await.expect("server starts");
        Server {
            base: format!("http://{}", running.addr),
            running: Some(running),
            http: reqwest::Client::new(),
            token: None,
            _dir: dir,
            data,
        }
    }

    pub(crate) fn as_token(&self, token: &str) -> Server {
        Server {
            running: None,
            base: self.base.clone(),
            http: self.http.clone(),
            token: Some(token.to_owned()),
            _dir: None,
            data: self.data.clone(),
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let res = r.body(body).send().await.expect("request");
        let status = res.status().as_u16();
        let h = res.headers().clone();
        let bytes = res.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, h, v)
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.send(reqwest::Method::GET, path, &[], Vec::new()).await;
        (s, v)
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, _, v) = self
            .send(
                reqwest::Method::POST,
                path,
                &[("content-type", "application/json")],
                serde_json::to_vec(body).unwrap(),
            )
            .await;
        (s, v)
    }

    /// Publishes structured-mode events; returns status and body.
    pub(crate) async fn publish(&self, events: &[Value]) -> (u16, Value) {
        let (ct, body) = if events.len() == 1 {
            (
                "application/cloudevents+json",
                serde_json::to_vec(&events[0]).unwrap(),
            )
        } else {
            (
                "application/cloudevents-batch+json",
                serde_json::to_vec(events).unwrap(),
            )
        };
        let (s, _, v) = self
            .send(
                reqwest::Method::POST,
                "/v1/events",
                &[("content-type", ct)],
                body,
            )
            .await;
        (s, v)
    }

    pub(crate) async fn last_seq(&self, topic: &str) -> u64 {
        let (s, v) = self.get(&format!("/v1/topics/{topic}")).await;
        assert_eq!(s, 200, "{v}");
        v["last"].as_u64().unwrap()
    }
}

/// A valid `post.generated` event (topic `post.generated`, producer `backend`).
pub(crate) fn generated(id: &str, draft: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/coach/backend",
        "type": "post.generated",
        "time": "2025-05-01T10:00:00Z",
        "datacontenttype": "application/json",
        "correlationid": "corr-1",
        "data": {"userId": "user-1", "platform": "linkedin", "prompt": "p", "draftId": draft,
                 "archetype": "storyteller", "valuesMode": true}
    })
}

/// Creates a pull subscription and returns its name.
pub(crate) async fn subscribe(s: &Server, name: &str, topic: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "topic": topic, "lease_ms": 2000,
        "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 200, "jitter": 0.0}});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let (status, v) = s.post("/v1/subscriptions", &body).await;
    assert_eq!(status, 201, "{v}");
    v
}

pub(crate) async fn pull(s: &Server, name: &str, max: usize, wait_ms: u64) -> Vec<Value> {
    let (status, v) = s
        .post(
            &format!("/v1/subscriptions/{name}/pull"),
            &json!({"max": max, "wait_ms": wait_ms}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["deliveries"].as_array().unwrap().clone()
}

/// The `## Errors` table of a doc (`| `code` | status | ... |` rows) lists exactly `codes`.
pub(crate) fn assert_codes_documented(doc: &str, codes: &[(&str, u16)]) {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(doc),
    )
    .unwrap();
    let section = text.split("## Errors").nth(1).unwrap();
    let mut documented: Vec<(String, u16)> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code.to_owned(), cells.get(2)?.parse().ok()?))
        })
        .collect();
    let mut coded: Vec<(String, u16)> = codes.iter().map(|(c, s)| ((*c).to_owned(), *s)).collect();
    documented.sort();
    coded.sort();
    assert_eq!(documented, coded, "{doc} and the code registry differ");
}
