//! Publishing in every mode, with per-event answers.

use serde_json::json;

use crate::{Server, generated};

#[tokio::test]
async fn structured_event_is_stored_then_a_duplicate() {
    let s = Server::start().await;
    let (status, v) = s.publish(&[generated("e1", "d1")]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "stored");
    assert_eq!(v["results"][0]["topic"], "post.generated");
    assert_eq!(v["results"][0]["sequence"], 1);
    // Same source and id.
    let (_, v) = s.publish(&[generated("e1", "d1")]).await;
    assert_eq!(v["results"][0]["status"], "duplicate");
    assert_eq!(v["results"][0]["sequence"], 1);
    // Same idempotency key (draftId), another id.
    let (_, v) = s.publish(&[generated("e2", "d1")]).await;
    assert_eq!(v["results"][0]["status"], "duplicate");
    assert_eq!(s.last_seq("post.generated").await, 1);
    let (status, v) = s.get("/v1/events/e1").await;
    assert_eq!(status, 200);
    assert_eq!(v[0]["event"]["data"]["draftId"], "d1");
    s.stop().await;
}

#[tokio::test]
async fn binary_mode_round_trips_attributes_and_data() {
    let s = Server::start().await;
    let data = r#"{"userId":"u","platform":"x","prompt":"p","draftId":"d9","archetype":"a","valuesMode":false}"#;
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/events",
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-1"),
                ("ce-source", "/coach/backend"),
                ("ce-type", "post.generated"),
                ("ce-correlationid", "c%20one"),
            ],
            data.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "stored");
    let (_, v) = s.get("/v1/events/bin-1").await;
    assert_eq!(v[0]["event"]["correlationid"], "c one");
    assert_eq!(v[0]["event"]["data"]["draftId"], "d9");
    s.stop().await;
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_unless_partial() {
    let s = Server::start().await;
    let mut bad = generated("b2", "d2");
    bad["data"]["platform"] = json!(7);
    let batch = [generated("b1", "d1"), bad.clone(), generated("b3", "d3")];
    let (status, v) = s.publish(&batch).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["code"], "rejected");
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["not-stored", "rejected", "not-stored"]);
    assert_eq!(v["results"][1]["problems"][0]["location"], "/data/platform");
    assert_eq!(s.last_seq("post.generated").await, 0, "nothing stored");
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/events?partial=true",
            &[("content-type", "application/cloudevents-batch+json")],
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["stored", "rejected", "stored"]);
    assert_eq!(s.last_seq("post.generated").await, 2);
    s.stop().await;
}

#[tokio::test]
async fn seed_dialects_are_accepted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.catalogs =
        vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/catalogs")];
    let s = Server::with(c, Some(dir)).await;
    let bme = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/events/bme.json"),
    )
    .unwrap();
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/events?dialect=bme&partial=true",
            &[],
            bme,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert!(results.len() > 10);
    assert!(results.iter().all(|r| r["status"] == "stored"), "{v}");
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/events?dialect=klingon",
            &[],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid-request")));
    s.stop().await;
}

#[tokio::test]
async fn expected_sequence_guards_an_aggregate() {
    let s = Server::start().await;
    let send = |id: &'static str, draft: &'static str, expect: &'static str| {
        let s = &s;
        async move {
            s.send(
                reqwest::Method::POST,
                "/v1/events",
                &[
                    ("content-type", "application/cloudevents+json"),
                    ("canon-expected-sequence", expect),
                ],
                serde_json::to_vec(&generated(id, draft)).unwrap(),
            )
            .await
        }
    };
    let (status, _, v) = send("x1", "d1", "0").await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = send("x2", "d2", "0").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "conflict");
    assert_eq!(v["current_sequence"], 1);
    let (status, _, _) = send("x3", "d3", "1").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn the_request_traceparent_travels_with_the_event() {
    let s = Server::start().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, _) = s
        .send(
            reqwest::Method::POST,
            "/v1/events",
            &[
                ("content-type", "application/cloudevents+json"),
                ("traceparent", tp),
            ],
            serde_json::to_vec(&generated("t1", "d1")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    let (_, v) = s.get("/v1/events/t1").await;
    assert_eq!(v[0]["event"]["traceparent"], tp);
    s.stop().await;
}

#[tokio::test]
async fn schemaless_topics_take_undeclared_types_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.schemaless_topics = vec!["scratch".to_owned()];
    let s = Server::with(c, Some(dir)).await;
    let ev = json!({"specversion":"1.0","id":"s1","source":"/x","type":"anything.at.all","data":{"a":1}});
    let body = serde_json::to_vec(&ev).unwrap();
    let ct = [("content-type", "application/cloudevents+json")];
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/topics/scratch/events",
            &ct,
            body.clone(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["topic"], "scratch");
    let (status, _, v) = s.send(reqwest::Method::POST, "/v1/events", &ct, body).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["results"][0]["problems"][0]["code"], "topic-required");
    // A declared type must go to its own topic.
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/topics/scratch/events",
            &ct,
            serde_json::to_vec(&generated("g", "d")).unwrap(),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["results"][0]["problems"][0]["code"], "wrong-topic");
    s.stop().await;
}

#[tokio::test]
async fn a_server_without_catalogs_is_schemaless() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.catalogs.clear();
    let s = Server::with(c, Some(dir)).await;
    let ev = json!({"specversion":"1.0","id":"f1","source":"/x","type":"t","data":"hi","datacontenttype":"text/plain"});
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/topics/free/events",
            &[("content-type", "application/cloudevents+json")],
            serde_json::to_vec(&ev).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn events_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with(crate::config(dir.path()), None).await;
    let batch: Vec<_> = (0..50)
        .map(|i| generated(&format!("r{i}"), &format!("d{i}")))
        .collect();
    let (status, _) = s.publish(&batch).await;
    assert_eq!(status, 200);
    s.stop().await;
    let s = Server::with(crate::config(dir.path()), Some(dir)).await;
    assert_eq!(s.last_seq("post.generated").await, 50);
    s.stop().await;
}
