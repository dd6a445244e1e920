//! Seed 004 end to end: the todo app's services, written against the Dapr sidecar API, on one
//! Canon server configured by examples/dapr/seed004 (its components, its declarative
//! subscriptions, the todo catalog enforced). The chat API publishes task and reminder events;
//! the notification service turns a scheduled reminder into a Dapr job and, when it fires,
//! publishes reminder.triggered and reminder.delivered; the recurring-task service turns a
//! completed recurring task into a recurring job whose trigger publishes recurring.generated.
//! Each service must receive exactly the types the seed's producer -> consumer matrix (the
//! catalog's `consumers`) gives it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::routing::post;
use canon_server::config::{ApiKey, Config, DaprApp};
use serde_json::{Value, json};

use crate::Server;

const SERVICES: [&str; 5] = [
    "chat-api",
    "audit-service",
    "websocket-service",
    "recurring-task-service",
    "notification-service",
];

/// One stand-in service: records every event it receives and reacts as the seed describes.
#[derive(Clone)]
struct Service {
    id: &'static str,
    canon: Arc<OnceLock<String>>,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    http: reqwest::Client,
}

impl Service {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> u16 {
        let base = self.canon.get().expect("canon started");
        self.http
            .request(method, format!("{base}{path}"))
            .header("dapr-api-token", format!("{}-key", self.id))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("canon answers")
            .status()
            .as_u16()
    }

    async fn publish(&self, topic: &str, ty: &str, data: Value) {
        let base = self.canon.get().expect("canon started");
        let event = json!({"specversion": "1.0", "id": uuid(), "source": self.id, "type": ty,
            "datacontenttype": "application/json", "data": data});
        let status = self
            .http
            .post(format!("{base}/v1.0/publish/todo-pubsub/{topic}"))
            .header("dapr-api-token", format!("{}-key", self.id))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .expect("canon answers")
            .status();
        assert_eq!(status, 204, "{} publishing {ty}", self.id);
    }
}

fn uuid() -> String {
    let n = fastrand::u128(..);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

const NOW: &str = "2026-11-22T10:00:00Z";

/// What a service does with an event or a job trigger (the path says which).
async fn react(State(s): State<Service>, uri: axum::http::Uri, body: axum::body::Bytes) -> String {
    let path = uri.path().to_owned();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.received.lock().unwrap().push((path.clone(), v.clone()));
    match (s.id, path.as_str()) {
        // A scheduled reminder becomes the Dapr job reminder-<id>.
        ("notification-service", "/events/reminder-scheduled") => {
            let d = &v["data"];
            let name = format!(
                "/v1.0-alpha1/jobs/reminder-{}",
                d["reminder_id"].as_str().unwrap()
            );
            let job = json!({"dueTime": "1s", "data": {"reminder_id": d["reminder_id"], "task_id": d["task_id"],
                "user_id": d["user_id"], "remind_at": d["remind_at"]}});
            assert_eq!(s.call(reqwest::Method::POST, &name, job).await, 204);
        }
        // The reminder's time came: tell everyone, deliver it.
        ("notification-service", p) if p.starts_with("/job/reminder-") => {
            let mut data = v.clone();
            data["triggered_at"] = json!(NOW);
            s.publish("reminder-events", "com.todo.reminder.triggered.v1", data)
                .await;
            let delivered = json!({"reminder_id": v["reminder_id"], "task_id": v["task_id"],
                "user_id": v["user_id"], "channel": "websocket", "delivered_at": NOW});
            s.publish(
                "reminder-events",
                "com.todo.reminder.delivered.v1",
                delivered,
            )
            .await;
        }
        // A completed recurring task schedules the next occurrence.
        ("recurring-task-service", "/events/task-completed") => {
            let d = &v["data"];
            if let Some(rule) = d["recurrence_rule_id"].as_str() {
                let job = json!({"schedule": "@every 1s", "repeats": 1,
                    "data": {"recurrence_rule_id": rule, "task_id": d["task_id"], "user_id": d["user_id"]}});
                let status = s
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1.0-alpha1/jobs/recurring-{rule}"),
                        job,
                    )
                    .await;
                assert_eq!(status, 204);
            }
        }
        ("recurring-task-service", p) if p.starts_with("/job/recurring-") => {
            let data = json!({"recurrence_rule_id": v["recurrence_rule_id"], "source_task_id": v["task_id"],
                "new_task_id": uuid(), "user_id": v["user_id"], "generated_at": NOW});
            s.publish("recurring-events", "com.todo.recurring.generated.v1", data)
                .await;
        }
        _ => {}
    }
    String::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_app_runs_on_canon_as_on_dapr() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let canon = Arc::new(OnceLock::new());
    let mut services = BTreeMap::new();
    let mut apps = Vec::new();
    for id in SERVICES {
        let s = Service {
            id,
            canon: canon.clone(),
            received: Arc::default(),
            http: reqwest::Client::new(),
        };
        let router = axum::Router::new()
            .route("/{*path}", post(react))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        apps.push(DaprApp {
            id: id.to_owned(),
            url: format!("http://{}", listener.local_addr().unwrap()),
            protocol: Default::default(),
        });
        tokio::spawn(async move { axum::serve(listener, router).await });
        services.insert(id, s);
    }

    // The example configuration, with this test's ports, data directory and keys.
    let mut c = Config::load(Some(&repo.join("examples/dapr/seed004/canon.toml"))).unwrap();
    let data = tempfile::tempdir().unwrap();
    c.listen = "127.0.0.1:0".to_owned();
    c.data_dir = data.path().to_path_buf();
    c.catalogs = vec![repo.join("examples/catalogs/todo.yaml")];
    c.dapr.resources = vec![repo.join("examples/dapr/seed004")];
    c.dapr.apps = apps;
    c.auth.api_keys = SERVICES
        .iter()
        .map(|s| ApiKey {
            service: (*s).to_owned(),
            sha256: None,
            key: Some(format!("{s}-key")),
        })
        .collect();
    c.auth.api_keys.push(ApiKey {
        service: "ops".to_owned(),
        sha256: None,
        key: Some("ops-key".to_owned()),
    });
    c.auth.admins = vec!["ops".to_owned()];
    let server = Server::with(c, None).await;
    canon.set(server.base.clone()).unwrap();
    let ops = server.as_token("ops-key");
    // Every declarative subscription is installed before the chat API starts.
    for _ in 0..200 {
        let (_, v) = ops.get("/v1/subscriptions").await;
        if v.as_array().is_some_and(|a| a.len() == 8) {
            break;
        }
        assert!(v.as_array().is_some(), "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The chat API: a recurring task is created and completed, another created and deleted,
    // and a reminder scheduled.
    let chat = &services["chat-api"];
    let (user, rule, t1, t2, reminder) = (uuid(), uuid(), uuid(), uuid(), uuid());
    chat.publish(
        "task-events",
        "com.todo.task.created.v1",
        json!({"task_id": t1, "user_id": user,
        "title": "water the plants", "created_at": NOW,
        "recurrence": {"recurrence_rule_id": rule, "frequency": "daily"}}),
    )
    .await;
    chat.publish(
        "reminder-events",
        "com.todo.reminder.scheduled.v1",
        json!({"reminder_id": reminder,
        "task_id": t1, "user_id": user, "remind_at": NOW}),
    )
    .await;
    chat.publish(
        "task-events",
        "com.todo.task.completed.v1",
        json!({"task_id": t1, "user_id": user,
        "completed_at": NOW, "recurrence_rule_id": rule}),
    )
    .await;
    chat.publish(
        "task-events",
        "com.todo.task.created.v1",
        json!({"task_id": t2, "user_id": user,
        "title": "call mum", "created_at": NOW}),
    )
    .await;
    chat.publish(
        "task-events",
        "com.todo.task.deleted.v1",
        json!({"task_id": t2, "user_id": user,
        "deleted_at": NOW}),
    )
    .await;
    // A service the catalog does not name as the producer is refused (403), and nothing of
    // it reaches anyone.
    let base = canon.get().unwrap();
    let forged = json!({"specversion": "1.0", "id": uuid(), "source": "audit-service",
        "type": "com.todo.task.created.v1", "data": {"task_id": uuid(), "user_id": user,
        "title": "forged", "created_at": NOW}});
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1.0/publish/todo-pubsub/task-events"))
        .header("dapr-api-token", "audit-service-key")
        .header("content-type", "application/cloudevents+json")
        .body(forged.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let err: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(err["errorCode"], "ERR_PUBSUB_FORBIDDEN");

    // What each service should receive: the catalog's consumers of every type in the flow.
    let catalog = canon_catalog::Catalog::load(
        &std::fs::read_to_string(repo.join("examples/catalogs/todo.yaml")).unwrap(),
        "todo.yaml",
    )
    .catalog
    .unwrap();
    let flow = [
        ("com.todo.task.created.v1", 2),
        ("com.todo.task.completed.v1", 1),
        ("com.todo.task.deleted.v1", 1),
        ("com.todo.reminder.scheduled.v1", 1),
        ("com.todo.reminder.triggered.v1", 1),
        ("com.todo.reminder.delivered.v1", 1),
        ("com.todo.recurring.generated.v1", 1),
    ];
    let mut expected: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for (ty, n) in flow {
        for consumer in &catalog.types[ty].consumers {
            *expected
                .entry(SERVICES.iter().find(|s| *s == consumer).unwrap())
                .or_default()
                .entry(ty.to_owned())
                .or_default() += n;
        }
    }
    let received = |id: &str| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (path, v) in services[id].received.lock().unwrap().iter() {
            if path.starts_with("/events/") {
                *m.entry(v["type"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
            }
        }
        m
    };
    let mut last = BTreeMap::new();
    for _ in 0..300 {
        last = SERVICES
            .iter()
            .map(|id| (*id, received(id)))
            .filter(|(_, m)| !m.is_empty())
            .collect::<BTreeMap<_, _>>();
        if last == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(last, expected, "who received what");
    // The jobs fired into the services that scheduled them, with their data, and are done.
    let jobs: BTreeSet<String> = services
        .values()
        .flat_map(|s| {
            s.received
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with("/job/"))
                .map(|(p, _)| format!("{} {p}", s.id))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from([
            format!("notification-service /job/reminder-{reminder}"),
            format!("recurring-task-service /job/recurring-{rule}"),
        ])
    );
    // Every event carried the topic and pub/sub name, as from a sidecar.
    let (_, ev) = services["audit-service"].received.lock().unwrap()[0].clone();
    assert_eq!(ev["pubsubname"], "todo-pubsub");
    server.stop().await;
}
