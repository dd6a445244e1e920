//! The Dapr sidecar API: publish and bulk publish (with metadata, on catalog-enforced and open
//! components), state with etags, secrets, healthz, and Dapr-shaped errors that store nothing.

use canon_server::config::{PubsubConfig, SecretStoreConfig, SecretStoreKind};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{Server, config, generated, with_keys};

/// A server with the coach catalog, API keys, the enforced component `pubsub`, an open one
/// `open`, the state store `statestore`, an env secret store and a file secret store.
async fn dapr_server(secrets_file: Option<std::path::PathBuf>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_keys(config(dir.path()));
    c.dapr.pubsubs.push(PubsubConfig {
        name: "open".to_owned(),
        catalogs: false,
    });
    c.dapr.secret_stores.push(SecretStoreConfig {
        name: "env".to_owned(),
        kind: SecretStoreKind::Env,
        prefix: "CARGO_PKG_".to_owned(),
        path: None,
    });
    if let Some(path) = secrets_file {
        c.dapr.secret_stores.push(SecretStoreConfig {
            name: "files".to_owned(),
            kind: SecretStoreKind::File,
            prefix: String::new(),
            path: Some(path),
        });
    }
    Server::with(c, Some(dir)).await.calling_with("backend-key")
}

impl Server {
    /// The same server, calling with `token` as a Dapr app does (`dapr-api-token`).
    fn calling_with(mut self, token: &str) -> Server {
        self.token = Some(token.to_owned());
        self
    }

    async fn dapr(
        &self,
        method: Method,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut headers = Vec::new();
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        self.send(method, path, &headers, body.to_vec()).await
    }
}

/// The stored event with this id, read by the operator.
async fn event(s: &Server, id: &str) -> Value {
    let (status, v) = s.as_token("ops-key").get(&format!("/v1/events/{id}")).await;
    assert_eq!(status, 200, "{v}");
    v[0]["event"].clone()
}

#[tokio::test]
async fn healthz_answers_204() {
    let s = dapr_server(None).await;
    let (status, _, body) = s.dapr(Method::GET, "/v1.0/healthz", None, b"").await;
    assert_eq!((status, body), (204, Value::Null));
    s.stop().await;
}

#[tokio::test]
async fn a_plain_body_is_wrapped_as_dapr_does_with_its_metadata() {
    let s = dapr_server(None).await;
    let (status, _, body) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/orders/eu?metadata.cloudevent.id=w-1&metadata.ttlInSeconds=60&metadata.partitionKey=o-1&metadata.cloudevent.subject=order",
            Some("application/json"),
            br#"{"orderId":"o-1"}"#,
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let ev = event(&s, "w-1").await;
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["source"], "backend");
    assert_eq!(ev["topic"], "orders/eu");
    assert_eq!(ev["pubsubname"], "open");
    assert_eq!(ev["subject"], "order");
    assert_eq!(ev["partitionkey"], "o-1");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["data"], json!({"orderId": "o-1"}));
    assert!(
        ev["expiration"].as_str().is_some_and(|e| e.ends_with('Z')),
        "{ev}"
    );
    // Text without a content type is text/plain data; bytes go as data_base64.
    let (status, ..) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/notes?metadata.cloudevent.id=t-1",
            None,
            b"hello",
        )
        .await;
    assert_eq!(status, 204);
    let ev = event(&s, "t-1").await;
    assert_eq!(
        (ev["datacontenttype"].as_str(), ev["data"].as_str()),
        (Some("text/plain"), Some("hello"))
    );
    let (status, ..) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/blobs?metadata.cloudevent.id=b-1",
            Some("application/octet-stream"),
            &[0, 159, 146, 150],
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(event(&s, "b-1").await["data_base64"], "AJ+Slg==");
    s.stop().await;
}

#[tokio::test]
async fn a_cloudevent_on_the_enforced_component_meets_the_catalog() {
    let s = dapr_server(None).await;
    let ok = serde_json::to_vec(&generated("g-1", "d-1")).unwrap();
    let (status, ..) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/cloudevents+json"),
            &ok,
        )
        .await;
    assert_eq!(status, 204);
    let ev = event(&s, "g-1").await;
    assert_eq!(
        (ev["topic"].as_str(), ev["pubsubname"].as_str()),
        (Some("post.generated"), Some("pubsub"))
    );

    // Not a declared producer: 403, nothing stored.
    let other = s.as_token("analytics-key");
    let doc = serde_json::to_vec(&generated("g-2", "d-2")).unwrap();
    let (status, _, body) = other
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/cloudevents+json"),
            &doc,
        )
        .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (403, Some("ERR_PUBSUB_FORBIDDEN")),
        "{body}"
    );
    // A payload that breaks the schema, and a wrapped body of an undeclared type: 400.
    let mut bad = generated("g-3", "d-3");
    bad["data"]["platform"] = json!(7);
    let (status, _, body) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/cloudevents+json"),
            &serde_json::to_vec(&bad).unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("ERR_PUBSUB_CATALOG")),
        "{body}"
    );
    let (status, _, body) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/json"),
            b"{}",
        )
        .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("ERR_PUBSUB_CATALOG")),
        "{body}"
    );
    // An invalid CloudEvent: 400 with the envelope's reasons.
    let (status, _, body) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/cloudevents+json"),
            br#"{"specversion":"1.0","id":""}"#,
        )
        .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("ERR_PUBSUB_CLOUD_EVENTS_SER")),
        "{body}"
    );
    for id in ["g-2", "g-3"] {
        assert_eq!(
            s.as_token("ops-key")
                .get(&format!("/v1/events/{id}"))
                .await
                .0,
            404
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_publishes_get_dapr_errors_and_store_nothing() {
    let s = dapr_server(None).await;
    // (path, content type, body, status, errorCode)
    type Case<'a> = (&'a str, Option<&'a str>, &'a [u8], u16, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "/v1.0/publish/nope/t",
            Some("application/json"),
            b"{}",
            404,
            "ERR_PUBSUB_NOT_FOUND",
        ),
        (
            "/v1.0/publish/open/t?metadata.ttlInSeconds=soon",
            Some("application/json"),
            b"{}",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/open/t?metadata.rawPayload=maybe",
            Some("application/json"),
            b"{}",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/open/t",
            Some("application/cloudevents+json"),
            b"not json",
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/open/t",
            Some("application/json"),
            br#"[{"event":1}]"#,
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/open/t",
            Some("application/json"),
            br#"[{"entryId":"a","event":1},{"entryId":"a","event":2}]"#,
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/open/t",
            Some("application/json"),
            b"{}",
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
    ];
    for (path, ct, body, want, code) in cases {
        let (status, headers, v) = s.dapr(Method::POST, path, *ct, body).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (*want, Some(*code)),
            "{path}: {v}"
        );
        assert_eq!(headers["content-type"], "application/json");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing reached topic t.
    assert_eq!(s.as_token("ops-key").get("/v1/topics/t").await.0, 404);
    // Oversize bodies are Dapr-shaped too.
    let big = vec![b'x'; 70 * 1024];
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/t",
            Some("text/plain"),
            &big,
        )
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (413, Some("ERR_BODY_TOO_LARGE")),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn bulk_publish_reports_the_entries_that_failed() {
    let s = dapr_server(None).await;
    let ok = json!([
        {"entryId": "1", "event": {"n": 1}, "contentType": "application/json", "metadata": {"cloudevent.id": "bulk-1"}},
        {"entryId": "2", "event": "two", "contentType": "text/plain", "metadata": {"cloudevent.id": "bulk-2"}}
    ]);
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0-alpha1/publish/bulk/open/bulky",
            Some("application/json"),
            &serde_json::to_vec(&ok).unwrap(),
        )
        .await;
    assert_eq!((status, v), (204, Value::Null));
    assert_eq!(event(&s, "bulk-1").await["data"], json!({"n": 1}));
    assert_eq!(event(&s, "bulk-2").await["data"], json!("two"));
    let mixed = json!([
        {"entryId": "good", "event": {"n": 3}, "metadata": {"cloudevent.id": "bulk-3"}},
        {"entryId": "bad", "event": {"specversion": "1.0"}, "contentType": "application/cloudevents+json"}
    ]);
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/bulk/open/bulky",
            Some("application/json"),
            &serde_json::to_vec(&mixed).unwrap(),
        )
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (500, Some("ERR_PUBSUB_PUBLISH_MESSAGE")),
        "{v}"
    );
    let failed = v["failedEntries"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["entryId"], "bad");
    assert_eq!(event(&s, "bulk-3").await["data"], json!({"n": 3}));
    s.stop().await;
}

#[tokio::test]
async fn state_keeps_values_with_etags_and_concurrency() {
    let s = dapr_server(None).await;
    let save = |body: Value| {
        let s = &s;
        async move {
            s.dapr(
                Method::POST,
                "/v1.0/state/statestore",
                Some("application/json"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let (status, ..) =
        save(json!([{"key": "task-1", "value": {"title": "buy milk"}}, {"key": "n", "value": 3}]))
            .await;
    assert_eq!(status, 204);
    let (status, headers, v) = s
        .dapr(Method::GET, "/v1.0/state/statestore/task-1", None, b"")
        .await;
    assert_eq!((status, v), (200, json!({"title": "buy milk"})));
    let etag = headers["etag"].to_str().unwrap().to_owned();

    // first-write: only a key nobody wrote.
    let (status, _, v) =
        save(json!([{"key": "task-1", "value": 1, "options": {"concurrency": "first-write"}}]))
            .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (409, Some("ERR_STATE_SAVE")),
        "{v}"
    );
    // An etag must be the current one.
    let (status, ..) =
        save(json!([{"key": "task-1", "value": {"title": "buy oat milk"}, "etag": etag}])).await;
    assert_eq!(status, 204);
    let (status, _, v) = save(json!([{"key": "task-1", "value": 2, "etag": etag}])).await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (409, Some("ERR_STATE_SAVE")),
        "{v}"
    );
    let (_, headers, v) = s
        .dapr(Method::GET, "/v1.0/state/statestore/task-1", None, b"")
        .await;
    assert_eq!(v, json!({"title": "buy oat milk"}));
    let current = headers["etag"].to_str().unwrap().to_owned();

    // A malformed item anywhere: nothing of the request is stored.
    let (status, _, v) = save(json!([{"key": "x", "value": 1}, {"key": "", "value": 2}])).await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (400, Some("ERR_MALFORMED_REQUEST")),
        "{v}"
    );
    assert_eq!(
        s.dapr(Method::GET, "/v1.0/state/statestore/x", None, b"")
            .await
            .0,
        204
    );

    // Delete with a stale If-Match is refused; then without.
    let (status, _, v) = s
        .send(
            Method::DELETE,
            "/v1.0/state/statestore/task-1",
            &[("if-match", etag.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (409, Some("ERR_STATE_DELETE")),
        "{v}"
    );
    let (status, ..) = s
        .send(
            Method::DELETE,
            "/v1.0/state/statestore/task-1",
            &[("if-match", current.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        s.dapr(Method::GET, "/v1.0/state/statestore/task-1", None, b"")
            .await
            .0,
        204
    );
    // An unknown store.
    let (status, _, v) = s.dapr(Method::GET, "/v1.0/state/nope/k", None, b"").await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (400, Some("ERR_STATE_STORE_NOT_FOUND"))
    );
    s.stop().await;
}

#[tokio::test]
async fn secrets_come_from_the_environment_and_from_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, r#"{"db": {"password": "s3cret"}, "token": "t0k"}"#).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = dapr_server(Some(file.clone())).await;
    let (status, _, v) = s
        .dapr(Method::GET, "/v1.0/secrets/env/NAME", None, b"")
        .await;
    assert_eq!((status, v), (200, json!({"NAME": "canon-server"})));
    let (status, _, v) = s
        .dapr(Method::GET, "/v1.0/secrets/files/db:password", None, b"")
        .await;
    assert_eq!((status, v), (200, json!({"db:password": "s3cret"})));
    let (status, _, v) = s
        .dapr(Method::GET, "/v1.0/secrets/files/missing", None, b"")
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (404, Some("ERR_SECRET_GET"))
    );
    let (status, _, v) = s
        .dapr(Method::GET, "/v1.0/secrets/vault/x", None, b"")
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (400, Some("ERR_SECRET_STORE_NOT_FOUND"))
    );
    s.stop().await;

    // A file others may read keeps the server from starting, and the error shows no secret.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut c = config(data.path());
    c.dapr.secret_stores.push(SecretStoreConfig {
        name: "files".to_owned(),
        kind: SecretStoreKind::File,
        prefix: String::new(),
        path: Some(file),
    });
    let err = canon_server::start(c).await.unwrap_err().to_string();
    assert!(err.contains("mode 644") && !err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn apps_may_authenticate_with_dapr_api_token() {
    let s = dapr_server(None).await;
    let mut anonymous = s.as_token("");
    anonymous.token = None;
    let (status, _, v) = anonymous
        .send(
            Method::GET,
            "/v1.0/state/statestore/k",
            &[("dapr-api-token", "backend-key")],
            Vec::new(),
        )
        .await;
    assert_eq!((status, v), (204, Value::Null));
    let (status, _, v) = anonymous
        .send(Method::GET, "/v1.0/state/statestore/k", &[], Vec::new())
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (401, Some("ERR_UNAUTHENTICATED"))
    );
    s.stop().await;
}

/// docs/dapr.md's error table and `dapr::CODES` list the same codes with the same status.
#[test]
fn dapr_error_codes_are_documented_both_ways() {
    crate::assert_codes_documented("docs/dapr.md", canon_server::dapr::CODES);
}

/// A Dapr app: answers `/dapr/subscribe` with `subscriptions` and records what it receives,
/// and the HTTP version of every request (it serves HTTP/1.1 and h2c).
struct App {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    subscriptions: std::sync::Arc<std::sync::Mutex<Value>>,
    versions: std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::Version)>>>,
}

async fn dapr_app(subscriptions: Value) -> App {
    use axum::routing::{get, post};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let subs = std::sync::Arc::new(std::sync::Mutex::new(subscriptions));
    let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (g, s, v) = (got.clone(), subs.clone(), versions.clone());
    let app = axum::Router::new()
        .route(
            "/dapr/subscribe",
            get(move || {
                let s = s.clone();
                async move { axum::Json(s.lock().unwrap().clone()) }
            }),
        )
        .route(
            "/{*path}",
            post(move |uri: axum::http::Uri, body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let fail = v["data"]["fail"] == json!(true);
                    g.lock().unwrap().push((uri.path().to_owned(), v));
                    if fail {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no").into_response()
                    } else {
                        axum::Json(json!({"status": "SUCCESS"})).into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            v.lock()
                .unwrap()
                .push((req.uri().path().to_owned(), req.version()));
            next.run(req)
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    App {
        url,
        got,
        subscriptions: subs,
        versions,
    }
}

use axum::response::IntoResponse;

/// A schema-less server with an open component `open`, Dapr resources from `resources`, and
/// one app.
async fn app_server(resources: &std::path::Path, id: &str, url: &str) -> Server {
    app_server_over(resources, id, url, canon_server::PushProtocol::Http).await
}

async fn app_server_over(
    resources: &std::path::Path,
    id: &str,
    url: &str,
    protocol: canon_server::PushProtocol,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.catalogs = Vec::new();
    c.dapr.pubsubs.push(PubsubConfig {
        name: "open".to_owned(),
        catalogs: false,
    });
    c.dapr.resources = vec![resources.to_path_buf()];
    c.dapr.apps = vec![canon_server::config::DaprApp {
        id: id.to_owned(),
        url: url.to_owned(),
        protocol,
    }];
    Server::with(c, Some(dir)).await
}

/// The subscription names, sorted, once there are at least `n` (or after 5 s).
async fn subscription_names(s: &Server, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..100 {
        let (_, v) = s.get("/v1/subscriptions").await;
        names = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect();
        if names.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    names.sort();
    names
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

fn widget(id: &str, ty: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"specversion": "1.0", "id": id, "source": "shop", "type": ty, "data": data}),
    )
    .unwrap()
}

#[tokio::test]
async fn apps_get_events_by_their_routes_and_failures_reach_the_dead_letter_topic() {
    let app = dapr_app(json!([
        {"pubsubname": "open", "topic": "widgets", "deadLetterTopic": "widgets-dlq",
         "routes": {"rules": [{"match": "event.type == \"widget.v2\"", "path": "/widgets/v2"}],
                    "default": "/widgets"}},
        {"pubsubname": "open", "topic": "orders", "route": "orders", "metadata": {"rawPayload": "true"}},
        {"pubsubname": "nope", "topic": "ignored", "route": "/x"},
        {"pubsubname": "open", "topic": "bulky", "route": "/bulk",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10}},
        {"pubsubname": "open", "topic": "bad-rule", "routes": {"rules": [{"match": "size(event) > 1", "path": "/x"}]}}
    ]))
    .await;
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("todo.yaml"),
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: todo-pubsub\nspec:\n  type: pubsub.kafka\n  version: v1\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: audit-task-events-sub\nspec:\n  topic: task-events\n  routes:\n    default: /events/task-events\n  pubsubname: todo-pubsub\nscopes:\n  - audit\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: other-sub\nspec:\n  topic: task-events\n  routes:\n    default: /other\n  pubsubname: todo-pubsub\nscopes:\n  - somebody-else\n",
    )
    .unwrap();
    let s = app_server(resources.path(), "audit", &app.url).await;

    // Discovery installs the app's valid subscriptions and its declarative one, nothing else.
    let names = subscription_names(&s, 4).await;
    assert_eq!(
        names,
        vec![
            "dapr:audit:open:bulky",
            "dapr:audit:open:orders",
            "dapr:audit:open:widgets",
            "dapr:audit:todo-pubsub:task-events"
        ]
    );

    let publish = |topic: &'static str, body: Vec<u8>| {
        let s = &s;
        async move {
            let path = if topic == "task-events" {
                "/v1.0/publish/todo-pubsub/task-events".to_owned()
            } else {
                format!("/v1.0/publish/open/{topic}")
            };
            let (status, _, v) = s
                .dapr(
                    Method::POST,
                    &path,
                    Some("application/cloudevents+json"),
                    &body,
                )
                .await;
            assert_eq!(status, 204, "{v}");
        }
    };
    publish("widgets", widget("w-2", "widget.v2", json!({}))).await;
    publish("widgets", widget("w-1", "widget.v1", json!({}))).await;
    publish("orders", widget("o-1", "order.placed", json!({"n": 1}))).await;
    publish(
        "task-events",
        widget("t-1", "com.todo.task.created.v1", json!({"title": "x"})),
    )
    .await;
    publish(
        "widgets",
        widget("w-bad", "widget.v1", json!({"fail": true})),
    )
    .await;
    // Three events stored together reach the bulk subscriber in Dapr's bulk shape.
    let batch: Vec<Value> = (1..=3)
        .map(|i| {
            serde_json::from_slice(&widget(&format!("b-{i}"), "bulk.item", json!({"i": i})))
                .unwrap()
        })
        .collect();
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/bulky",
            Some("application/cloudevents-batch+json"),
            &serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    assert_eq!(status, 204, "{v}");

    let got = app.got.clone();
    eventually("every event reached its route", || {
        let g = got.lock().unwrap();
        ["/widgets/v2", "/orders", "/events/task-events"]
            .iter()
            .all(|p| g.iter().any(|(q, _)| q == p))
            && g.iter()
                .filter(|(q, v)| q == "/widgets" && v["id"] == "w-1")
                .count()
                == 1
    })
    .await;
    {
        let g = got.lock().unwrap();
        let (_, v2) = g.iter().find(|(p, _)| p == "/widgets/v2").unwrap();
        assert_eq!(
            (
                v2["id"].as_str(),
                v2["topic"].as_str(),
                v2["pubsubname"].as_str()
            ),
            (Some("w-2"), Some("widgets"), Some("open"))
        );
        // rawPayload: the stored event's bytes, base64, in Dapr's envelope.
        let (_, raw) = g.iter().find(|(p, _)| p == "/orders").unwrap();
        assert_eq!(raw["type"], "com.dapr.event.sent");
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            raw["data_base64"].as_str().unwrap(),
        )
        .unwrap();
        let inner: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(inner["id"], "o-1");
    }
    eventually("the bulk subscriber got all three", || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/bulk")
            .map(|(_, v)| v["entries"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            == 3
    })
    .await;
    {
        let g = got.lock().unwrap();
        let (_, bulk) = g.iter().find(|(p, _)| p == "/bulk").unwrap();
        assert_eq!(
            (bulk["type"].as_str(), bulk["topic"].as_str()),
            (Some("com.dapr.event.sent.bulk"), Some("bulky"))
        );
        assert_eq!(bulk["entries"][0]["event"]["pubsubname"], "open");
        assert_eq!(
            bulk["entries"][0]["entryId"],
            bulk["entries"][0]["event"]["id"]
        );
    }
    // The always-failing event: 4 attempts, then the original goes to widgets-dlq.
    eventually("the failing event reached the dead-letter topic", || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["id"] == "w-bad")
            .count()
            >= 4
    })
    .await;
    let mut topics = Vec::new();
    for _ in 0..100 {
        let (_, v) = s.get("/v1/events/w-bad").await;
        topics = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["topic"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if topics.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    topics.sort();
    assert_eq!(topics, vec!["widgets", "widgets-dlq"]);
    assert_eq!(
        got.lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["id"] == "w-bad")
            .count(),
        4
    );

    // Re-discovery: the app dropped `orders`; its subscription goes, the others stay.
    {
        let mut subs = app.subscriptions.lock().unwrap();
        subs.as_array_mut().unwrap().remove(1);
    }
    let (status, v) = s.post("/v1/dapr/apps/audit/subscribe", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = s.get("/v1/subscriptions").await;
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "dapr:audit:open:bulky",
            "dapr:audit:open:widgets",
            "dapr:audit:todo-pubsub:task-events"
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn an_h2c_app_is_asked_delivered_to_and_triggered_over_http2() {
    let app = dapr_app(json!([
        {"pubsubname": "open", "topic": "orders", "route": "/orders"},
        {"pubsubname": "open", "topic": "bulky", "route": "/bulk",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10}}
    ]))
    .await;
    let resources = tempfile::tempdir().unwrap();
    let s = app_server_over(
        resources.path(),
        "audit",
        &app.url,
        canon_server::PushProtocol::H2c,
    )
    .await;
    let names = subscription_names(&s, 2).await;
    assert_eq!(names, ["dapr:audit:open:bulky", "dapr:audit:open:orders"]);
    for (topic, id) in [("orders", "o-1"), ("bulky", "b-1")] {
        let (status, _, v) = s
            .dapr(
                Method::POST,
                &format!("/v1.0/publish/open/{topic}"),
                Some("application/cloudevents+json"),
                &widget(id, "order.placed", json!({"n": 1})),
            )
            .await;
        assert_eq!(status, 204, "{v}");
    }
    let (status, v) = s
        .post(
            "/v1.0-alpha1/jobs/ping",
            &json!({"dueTime": "1s", "data": "tick"}),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let paths = || -> Vec<String> {
        let mut p: Vec<String> = app
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        p.sort();
        p
    };
    eventually("a delivery per route and the job", || {
        paths() == ["/bulk", "/job/ping", "/orders"]
    })
    .await;
    let versions = app.versions.lock().unwrap().clone();
    assert!(
        versions.iter().any(|(p, _)| p == "/dapr/subscribe"),
        "{versions:?}"
    );
    assert!(
        versions
            .iter()
            .all(|(_, v)| *v == axum::http::Version::HTTP_2),
        "every call to an h2c app is HTTP/2: {versions:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_resource_outside_the_supported_subset_stops_the_start() {
    let resources = tempfile::tempdir().unwrap();
    let file = resources.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  topic: t\n  pubsubname: pubsub\n  routes:\n    rules:\n      - match: event.data.count > 3\n        path: /x\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.dapr.resources = vec![file];
    let err = canon_server::start(c).await.unwrap_err().to_string();
    assert!(
        err.contains("bad.yaml") && err.contains("routing rule") && err.contains("'>' at 17"),
        "{err}"
    );
}

#[tokio::test]
async fn an_app_url_without_a_host_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // Parses as a URL of scheme `localhost`, with no host to connect to.
    c.dapr.apps = vec![canon_server::config::DaprApp {
        id: "reminders".to_owned(),
        url: "localhost:8000".to_owned(),
        protocol: Default::default(),
    }];
    let err = canon_server::start(c).await.unwrap_err().to_string();
    assert!(
        err.contains("dapr app reminders") && err.contains("has no host"),
        "{err}"
    );
}

/// A server with one Dapr app (no subscriptions) on a data directory the caller keeps.
async fn jobs_server(data: &std::path::Path, app: &App) -> Server {
    let mut c = config(data);
    c.dapr.apps = vec![canon_server::config::DaprApp {
        id: "reminders".to_owned(),
        url: app.url.clone(),
        protocol: Default::default(),
    }];
    Server::with(c, None).await
}

fn job_calls(app: &App, name: &str) -> Vec<Value> {
    app.got
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == &format!("/job/{name}"))
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test]
async fn jobs_fire_into_their_app_with_their_data() {
    let app = dapr_app(json!([])).await;
    let data = tempfile::tempdir().unwrap();
    let s = jobs_server(data.path(), &app).await;
    let (status, v) = s
        .post(
            "/v1.0-alpha1/jobs/reminder-1",
            &json!({"dueTime": "1s", "data": {"reminder_id": "r-1", "task_id": "t-1"}}),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = s.get("/v1.0-alpha1/jobs/reminder-1").await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"name": "reminder-1", "dueTime": "1s", "data": {"reminder_id": "r-1", "task_id": "t-1"}})
        )
    );
    // A second job, repeating, under the /v1.0 path.
    let (status, _) = s
        .post(
            "/v1.0/jobs/recurring-1",
            &json!({"schedule": "@every 1s", "repeats": 2, "data": "tick"}),
        )
        .await;
    assert_eq!(status, 204);
    let calls = || {
        (
            job_calls(&app, "reminder-1").len(),
            job_calls(&app, "recurring-1").len(),
        )
    };
    eventually("both jobs fired", || calls() == (1, 2)).await;
    assert_eq!(
        job_calls(&app, "reminder-1")[0],
        json!({"reminder_id": "r-1", "task_id": "t-1"})
    );
    assert_eq!(job_calls(&app, "recurring-1")[0], json!("tick"));
    // Finished jobs are gone.
    for name in ["reminder-1", "recurring-1"] {
        let (status, v) = s.get(&format!("/v1.0-alpha1/jobs/{name}")).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (404, Some("DAPR_SCHEDULER_GET_JOB"))
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(calls(), (1, 2), "no tick beyond repeats");
    s.stop().await;
}

#[tokio::test]
async fn overwriting_a_job_is_explicit_and_bad_jobs_are_refused() {
    let app = dapr_app(json!([])).await;
    let data = tempfile::tempdir().unwrap();
    let s = jobs_server(data.path(), &app).await;
    let (status, _) = s
        .post("/v1.0-alpha1/jobs/j", &json!({"dueTime": "1h", "data": 1}))
        .await;
    assert_eq!(status, 204);
    let (status, v) = s
        .post("/v1.0-alpha1/jobs/j", &json!({"dueTime": "1h", "data": 2}))
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (409, Some("DAPR_SCHEDULER_JOB_EXISTS")),
        "{v}"
    );
    let (status, _) = s
        .post(
            "/v1.0-alpha1/jobs/j",
            &json!({"dueTime": "1h", "data": 3, "overwrite": true}),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(s.get("/v1.0-alpha1/jobs/j").await.1["data"], 3);
    for (body, code) in [
        (json!({"data": 1}), "DAPR_SCHEDULER_SCHEDULE_EMPTY"),
        (json!({"schedule": "* * * * *"}), "ERR_MALFORMED_REQUEST"),
        (json!({"schedule": "@fortnightly"}), "ERR_MALFORMED_REQUEST"),
        (json!({"dueTime": "soon"}), "ERR_MALFORMED_REQUEST"),
        (
            json!({"dueTime": "1s", "ttl": "forever"}),
            "ERR_MALFORMED_REQUEST",
        ),
        (
            json!({"dueTime": "1s", "name": "other"}),
            "ERR_MALFORMED_REQUEST",
        ),
        (
            json!({"dueTime": "1s", "failurePolicy": {"sometimes": {}}}),
            "ERR_MALFORMED_REQUEST",
        ),
        (
            json!({"dueTime": "1s", "repeats": -1}),
            "ERR_MALFORMED_REQUEST",
        ),
    ] {
        let (status, v) = s.post("/v1.0-alpha1/jobs/bad", &body).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        s.get("/v1.0-alpha1/jobs/bad").await.0,
        404,
        "nothing scheduled"
    );
    let (status, _, _) = s
        .send(Method::DELETE, "/v1.0-alpha1/jobs/j", &[], Vec::new())
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = s
        .send(
            Method::DELETE,
            "/v1.0-alpha1/jobs/never-was",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(s.get("/v1.0-alpha1/jobs/j").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn jobs_survive_a_restart_and_missed_ticks_are_counted_once() {
    let app = dapr_app(json!([])).await;
    let data = tempfile::tempdir().unwrap();
    let s = jobs_server(data.path(), &app).await;
    s.post(
        "/v1.0-alpha1/jobs/later",
        &json!({"dueTime": "2s", "data": {"n": 1}}),
    )
    .await;
    s.post(
        "/v1.0-alpha1/jobs/every",
        &json!({"schedule": "@every 500ms", "data": "e"}),
    )
    .await;
    eventually("the repeating job ticked", || {
        !job_calls(&app, "every").is_empty()
    })
    .await;
    s.stop().await;
    let before = job_calls(&app, "every").len();
    // Down for a while: ticks of `every` pass unfired; `later` comes due.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let s = jobs_server(data.path(), &app).await;
    eventually("the one-shot job fired after the restart", || {
        job_calls(&app, "later").len() == 1
    })
    .await;
    eventually("the repeating job fired again", || {
        job_calls(&app, "every").len() > before
    })
    .await;
    let (_, _, metrics) = s.send(Method::GET, "/metrics", &[], Vec::new()).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    let missed: f64 = text
        .lines()
        .find(|l| l.starts_with("canon_job_ticks_total{outcome=\"missed\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(missed >= 3.0, "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(job_calls(&app, "later").len(), 1, "fired once");
    s.stop().await;
}

/// Subscriptions of an app that starts after the server are installed once it answers; a
/// v1alpha1 `route` works; a binary-mode CloudEvent is kept as sent; an expired event is never
/// delivered.
#[tokio::test]
async fn a_late_app_is_asked_until_it_answers_and_expired_events_are_not_delivered() {
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("v1.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: late\nspec:\n  topic: late-topic\n  route: /late\n  pubsubname: open\n",
    )
    .unwrap();
    let s = app_server(
        resources.path(),
        "late",
        &format!("http://127.0.0.1:{port}"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, v) = s.get("/v1/subscriptions").await;
    assert_eq!(v, json!([]), "nothing before the app answers");

    // The app comes up on that port.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/late",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let fail = v["data"]["fail"] == json!(true);
                g.lock().unwrap().push(v);
                if fail {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(
        subscription_names(&s, 1).await,
        vec!["dapr:late:open:late-topic"]
    );

    // A binary-mode CloudEvent: its attributes are kept.
    let (status, _, v) = s
        .send(
            Method::POST,
            "/v1.0/publish/open/late-topic",
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-1"),
                ("ce-source", "binary-source"),
                ("ce-type", "order.binary"),
            ],
            br#"{"n":1}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    // An event that fails once and expires before its retry (1 s later) is not delivered again.
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/open/late-topic?metadata.ttlInSeconds=1&metadata.cloudevent.id=ttl-1",
            Some("application/json"),
            br#"{"fail":true}"#,
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let g = got.clone();
    eventually("the binary event arrived", || {
        g.lock().unwrap().iter().any(|v| v["id"] == "bin-1")
    })
    .await;
    {
        let list = got.lock().unwrap();
        let bin = list.iter().find(|v| v["id"] == "bin-1").unwrap();
        assert_eq!(
            (bin["source"].as_str(), bin["type"].as_str()),
            (Some("binary-source"), Some("order.binary"))
        );
        assert_eq!(bin["data"], json!({"n": 1}));
    }
    let mut reason = Value::Null;
    for _ in 0..100 {
        let (_, v) = s
            .get("/v1/subscriptions/dapr:late:open:late-topic/dlq")
            .await;
        if let Some(e) = v.as_array().and_then(|a| a.first()) {
            reason = e["reason"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(reason, "expired");
    assert_eq!(
        got.lock()
            .unwrap()
            .iter()
            .filter(|v| v["id"] == "ttl-1")
            .count(),
        1,
        "delivered once, never after it expired"
    );
    s.stop().await;
}

#[tokio::test]
async fn failure_policies_apply_and_a_deleted_job_stops_retrying() {
    let app = dapr_app(json!([])).await;
    let data = tempfile::tempdir().unwrap();
    let s = jobs_server(data.path(), &app).await;
    // The app fails every trigger whose data says so.
    let failing = json!({"data": {"fail": true}});
    s.post(
        "/v1.0-alpha1/jobs/drop-me",
        &json!({"dueTime": "0s", "data": failing, "failurePolicy": {"drop": {}}}),
    )
    .await;
    s.post(
        "/v1.0-alpha1/jobs/forever",
        &json!({"dueTime": "0s", "data": failing, "failurePolicy": {"constant": {"interval": "100ms"}}}),
    )
    .await;
    eventually("the endless job retried a few times", || {
        job_calls(&app, "forever").len() >= 3
    })
    .await;
    let (status, _, _) = s
        .send(Method::DELETE, "/v1.0-alpha1/jobs/forever", &[], Vec::new())
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after_delete = job_calls(&app, "forever").len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        job_calls(&app, "forever").len(),
        after_delete,
        "no retry after the delete"
    );
    assert_eq!(job_calls(&app, "drop-me").len(), 1, "drop: one attempt");
    s.stop().await;
}

#[tokio::test]
async fn a_dapr_batch_is_all_or_nothing_and_stale_etags_never_match() {
    let s = dapr_server(None).await;
    // One event of the batch breaks the catalog: nothing of it is stored.
    let mut bad = generated("ab-2", "d-2");
    bad["data"]["platform"] = json!(3);
    let batch = serde_json::to_vec(&json!([generated("ab-1", "d-1"), bad])).unwrap();
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/post.generated",
            Some("application/cloudevents-batch+json"),
            &batch,
        )
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (400, Some("ERR_PUBSUB_CATALOG")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("payload"), "{v}");
    assert_eq!(s.as_token("ops-key").get("/v1/events/ab-1").await.0, 404);
    // An unknown Dapr route answers in Dapr's shape.
    let (status, _, v) = s
        .dapr(
            Method::POST,
            "/v1.0/publish/pubsub/",
            Some("text/plain"),
            b"x",
        )
        .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (404, Some("ERR_NOT_FOUND")),
        "{v}"
    );
    // A key deleted and written again: the old etag does not match the new value.
    let save = |body: Value| {
        let s = &s;
        async move {
            s.dapr(
                Method::POST,
                "/v1.0/state/statestore",
                Some("application/json"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    save(json!([{"key": "k", "value": "first"}])).await;
    let (_, headers, _) = s
        .dapr(Method::GET, "/v1.0/state/statestore/k", None, b"")
        .await;
    let old = headers["etag"].to_str().unwrap().to_owned();
    s.send(Method::DELETE, "/v1.0/state/statestore/k", &[], Vec::new())
        .await;
    save(json!([{"key": "k", "value": "second"}])).await;
    let (status, _, v) = save(json!([{"key": "k", "value": "third", "etag": old}])).await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (409, Some("ERR_STATE_SAVE")),
        "{v}"
    );
    assert_eq!(
        s.dapr(Method::GET, "/v1.0/state/statestore/k", None, b"")
            .await
            .2,
        json!("second")
    );
    s.stop().await;
}
