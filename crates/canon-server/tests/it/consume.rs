//! Subscriptions, pull with leases, ack/nack/extend/reject, the DLQ, replay, lookups and tail.

use std::time::Duration;

use serde_json::json;

use crate::{Server, generated, pull, subscribe};

fn ack_ids(d: &[serde_json::Value]) -> Vec<String> {
    d.iter()
        .map(|d| d["ack_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pull_ack_nack_reject_and_the_dlq() {
    let s = Server::start().await;
    let sub = subscribe(&s, "coach", "post.generated", json!({"ordered": true})).await;
    // Defaults are filled in and shown.
    assert_eq!(sub["retry"]["max_attempts"], 3);
    assert_eq!(sub["max_in_flight"], 1000);
    let batch: Vec<_> = (0..3)
        .map(|i| generated(&format!("p{i}"), &format!("d{i}")))
        .collect();
    s.publish(&batch).await;
    // Ordered per userId: one at a time for the single user.
    let d = pull(&s, "coach", 10, 0).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["attempt"], 1);
    assert_eq!(d[0]["event"]["id"], "p0");
    let (status, v) = s
        .post(
            "/v1/subscriptions/coach/ack",
            &json!({"ack_ids": ack_ids(&d)}),
        )
        .await;
    assert_eq!(
        (status, v["results"][0]["status"].as_str()),
        (200, Some("ok"))
    );
    // Acking again: the lease is gone.
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/ack",
            &json!({"ack_ids": ack_ids(&d)}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "lease-lost");
    let d = pull(&s, "coach", 10, 1000).await;
    assert_eq!(d[0]["event"]["id"], "p1");
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/extend",
            &json!({"ack_ids": ack_ids(&d), "delay_ms": 5000}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "ok");
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/nack",
            &json!({"ack_ids": ack_ids(&d), "delay_ms": 10, "error": "busy"}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "ok");
    let d = pull(&s, "coach", 10, 2000).await;
    assert_eq!(
        (d[0]["event"]["id"].as_str(), d[0]["attempt"].as_u64()),
        (Some("p1"), Some(2))
    );
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/reject",
            &json!({"ack_ids": ack_ids(&d), "error": "poison"}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "ok");
    let (status, v) = s.get("/v1/subscriptions/coach/dlq").await;
    assert_eq!(status, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["reason"], "rejected");
    assert_eq!(v[0]["last_error"], "poison");
    assert_eq!(v[0]["event"]["id"], "p1");
    assert_eq!(v[0]["history"].as_array().unwrap().len(), 2, "{v}");
    let (status, v) = s.get("/v1/subscriptions/coach/dlq/p1").await;
    assert_eq!((status, v["event"]["id"].as_str()), (200, Some("p1")));
    let (_, v) = s.get("/v1/subscriptions/coach/dlq?reason=expired").await;
    assert!(v.as_array().unwrap().is_empty());
    let (status, v) = s.get("/v1/subscriptions/coach/dlq?reason=bogus").await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid-request")));
    // Status shows where the subscription stands.
    let (_, v) = s.get("/v1/subscriptions/coach").await;
    assert_eq!(v["dead_letters"], 1);
    // And so do the metrics: lag as the status counts it, the DLQ's depth.
    let pending = v["pending"].as_u64().unwrap();
    let (_, m) = s.get("/metrics").await;
    let m = m.as_str().unwrap();
    for needle in [
        format!("canon_consumer_lag_events{{subscription=\"coach\"}} {pending}\n"),
        "canon_dlq_depth_events{subscription=\"coach\"} 1\n".to_owned(),
    ] {
        assert!(m.contains(&needle), "{needle} missing from\n{m}");
    }
    // Redrive: dry run, then for real; the event comes back with a fresh attempt count.
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/dlq/redrive",
            &json!({"ids": ["p1"], "dry_run": true}),
        )
        .await;
    assert_eq!(
        (v["matched"][0].as_str(), v["count"].as_u64()),
        (Some("p1"), Some(0))
    );
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/dlq/redrive",
            &json!({"ids": ["p1"]}),
        )
        .await;
    assert_eq!(v["count"], 1);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let d = pull(&s, "coach", 10, 1000).await;
        if d.is_empty() {
            break;
        }
        seen.extend(d.iter().map(|x| {
            (
                x["event"]["id"].as_str().unwrap().to_owned(),
                x["attempt"].as_u64().unwrap(),
            )
        }));
        s.post(
            "/v1/subscriptions/coach/ack",
            &json!({"ack_ids": ack_ids(&d)}),
        )
        .await;
    }
    seen.sort();
    assert_eq!(seen, [("p1".to_owned(), 1), ("p2".to_owned(), 1)]);
    // Replay from the earliest: everything again, same ids.
    let (status, _) = s
        .post(
            "/v1/subscriptions/coach/replay",
            &json!({"from": "earliest"}),
        )
        .await;
    assert_eq!(status, 204);
    let d = pull(&s, "coach", 10, 1000).await;
    assert_eq!(d[0]["event"]["id"], "p0");
    let (status, v) = s
        .post(
            "/v1/subscriptions/coach/replay",
            &json!({"from": "whenever"}),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid-request")));
    // Purge: one entry in the DLQ; a filter that matches nothing keeps it, an empty one
    // (everything) removes it.
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/reject",
            &json!({"ack_ids": [d[0]["ack_id"]], "error": "poison again"}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "ok");
    let (_, v) = s.get("/v1/subscriptions/coach/dlq?reason=rejected").await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (_, v) = s
        .post(
            "/v1/subscriptions/coach/dlq/purge",
            &json!({"ids": ["not-there"]}),
        )
        .await;
    assert_eq!(v["count"], 0, "{v}");
    let (_, v) = s.get("/v1/subscriptions/coach/dlq").await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (_, v) = s
        .post("/v1/subscriptions/coach/dlq/purge", &json!({}))
        .await;
    assert_eq!(v["count"], 1, "{v}");
    let (_, v) = s.get("/v1/subscriptions/coach/dlq").await;
    assert!(v.as_array().unwrap().is_empty(), "{v}");
    // Delete.
    let (status, _, _) = s
        .send(
            reqwest::Method::DELETE,
            "/v1/subscriptions/coach",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 204);
    let (status, v) = s.get("/v1/subscriptions/coach").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not-found")));
    s.stop().await;
}

#[tokio::test]
async fn subscriptions_survive_a_restart_and_conflicting_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with(crate::config(dir.path()), None).await;
    subscribe(&s, "keep", "post.generated", json!({"ordered": false})).await;
    // The same definition again is fine; a different one is not.
    let (status, _) = s
        .post("/v1/subscriptions", &json!({"name": "keep", "topic": "post.generated", "lease_ms": 2000, "ordered": false,
            "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 200, "jitter": 0.0}}))
        .await;
    assert_eq!(status, 200);
    let (status, v) = s
        .post(
            "/v1/subscriptions",
            &json!({"name": "keep", "topic": "post.posted"}),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("already-exists")));
    let (status, v) = s
        .post("/v1/subscriptions", &json!({"name": "x", "topic": "nope"}))
        .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not-found")));
    let (status, v) = s
        .post(
            "/v1/subscriptions",
            &json!({"name": "x", "topic": "post.posted", "bogus": 1}),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("invalid-request")));
    s.publish(&[generated("k1", "d1")]).await;
    s.stop().await;
    let s = Server::with(crate::config(dir.path()), Some(dir)).await;
    let (_, v) = s.get("/v1/subscriptions").await;
    assert_eq!(v[0]["name"], "keep");
    assert_eq!(v[0]["pending"], 1);
    assert_eq!(pull(&s, "keep", 5, 0).await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn lookups_by_id_chain_and_correlation() {
    let s = Server::start().await;
    let events: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/events/coach.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for e in events.as_array().unwrap() {
        let (status, v) = s.publish(std::slice::from_ref(e)).await;
        assert_eq!(status, 200, "{v}");
    }
    let root = events[0]["id"].as_str().unwrap();
    let (status, v) = s.get(&format!("/v1/events/{root}/chain")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["event"]["event"]["id"], root);
    assert!(!v["effects"].as_array().unwrap().is_empty(), "{v}");
    let effect = v["effects"][0]["event"]["id"].as_str().unwrap().to_owned();
    let (_, v) = s.get(&format!("/v1/events/{effect}/chain")).await;
    assert_eq!(v["causes"][0]["event"]["id"], root);
    let (_, v) = s.get("/v1/correlations/corr-7f3a9c").await;
    assert!(v.as_array().unwrap().len() >= 2, "{v}");
    let (status, v) = s.get("/v1/events/nope").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not-found")));
    let (_, v) = s.get("/v1/catalog").await;
    assert_eq!(v.as_array().unwrap().len(), 8);
    let (status, v) = s.get("/v1/catalog/types/post.generated").await;
    assert_eq!(status, 200);
    assert!(
        v["schemas"].as_object().unwrap().values().next().unwrap()["properties"]["draftId"]
            .is_object(),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn tail_streams_from_an_offset_and_live_filtered_by_type() {
    let s = Server::start().await;
    s.publish(&[generated("t0", "d0")]).await;
    s.publish(&[generated("t1", "d1")]).await;
    let url = format!(
        "{}/v1/topics/post.generated/tail?from=2&type=post.generated",
        s.base
    );
    let mut res = s.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let publisher = {
        let base = s.base.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reqwest::Client::new()
                .post(format!("{base}/v1/events"))
                .header("content-type", "application/cloudevents+json")
                .body(serde_json::to_vec(&generated("t2", "d2")).unwrap())
                .send()
                .await
                .unwrap();
        })
    };
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains("\"t1\"") && text.contains("\"t2\""))
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(1), res.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    publisher.await.unwrap();
    assert!(text.contains("event: cloudevent"), "{text}");
    assert!(text.contains("id: 2"), "{text}");
    assert!(text.contains("\"t2\""), "{text}");
    assert!(!text.contains("\"t0\""), "from=2 skips the first: {text}");
    drop(res);
    s.stop().await;
}

/// The tail's filters on a topic of several types and subjects: only the named types, and of
/// those only the given subject.
#[tokio::test]
async fn tail_filters_by_type_and_subject() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.catalogs.clear();
    let s = Server::with(c, Some(dir)).await;
    let ev = |id: &str, ty: &str, subject: &str| {
        json!({"specversion": "1.0", "id": id, "source": "/tail", "type": ty,
               "subject": subject, "data": {"n": 1}})
    };
    let batch = [
        ev("a1", "a.x", "s1"),
        ev("a2", "a.x", "s2"),
        ev("b1", "b.y", "s1"),
        ev("c1", "c.z", "s1"),
        ev("a3", "a.x", "s1"),
    ];
    let (status, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/topics/mixed/events",
            &[("content-type", "application/cloudevents-batch+json")],
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let url = format!(
        "{}/v1/topics/mixed/tail?from=earliest&type=a.x,c.z&subject=s1",
        s.base
    );
    let mut res = s.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("\"a3\"") && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(1), res.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let ids: Vec<&str> = ["a1", "a2", "b1", "c1", "a3"]
        .into_iter()
        .filter(|id| text.contains(&format!("\"id\":\"{id}\"")))
        .collect();
    assert_eq!(ids, ["a1", "c1", "a3"], "{text}");
    drop(res);
    s.stop().await;
}

#[tokio::test]
async fn catalog_delivery_defaults_apply_to_new_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.catalogs = vec![
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/catalogs/lifeos.yaml"),
    ];
    let s = Server::with(c, Some(dir)).await;
    let (_, topics) = s.get("/v1/topics").await;
    let topic = topics[0]["name"].as_str().unwrap().to_owned();
    let (status, v) = s
        .post("/v1/subscriptions", &json!({"name": "d", "topic": topic}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["ordered"], true);
    assert_eq!(v["retry"]["max_attempts"], 5);
    assert_eq!(v["retry"]["initial_backoff_ms"], 200);
    assert_eq!(v["retry"]["max_backoff_ms"], 30000);
    s.stop().await;
}

/// A graceful shutdown does not wait out long polls and live tails: a pull waiting up to 30 s
/// is answered at once (nothing leased) and a tail's stream ends, so the server stops within
/// its grace period, and `/ready` says `shutting-down` while it drains.
#[tokio::test]
async fn a_shutdown_ends_long_polls_and_tails() {
    let s = Server::start().await;
    subscribe(&s, "waiting", "post.generated", json!({})).await;
    let base = s.base.clone();
    let poll = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(format!("{base}/v1/subscriptions/waiting/pull"))
            .header("content-type", "application/json")
            .body(r#"{"max": 10, "wait_ms": 30000}"#)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    let mut tail = s
        .http
        .get(format!("{}/v1/topics/post.generated/tail", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    // Time for the pull to reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), s.stop())
        .await
        .expect("the shutdown waited for the long poll or the tail");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["deliveries"], json!([]), "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = tail.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tail's stream ended");
}

/// A subscription's `dead_letter_topic`: a rejected event leaves the DLQ for that topic, same
/// id and data, where another service that consumes its type reads it (with credentials on, so
/// the topic's type rules apply). The topic must be schema-less with catalogs loaded, and not
/// the subscription's own.
#[tokio::test]
async fn dead_letters_are_forwarded_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::with_keys(crate::config(dir.path()));
    c.schemaless_topics = vec!["coach.dead".to_owned()];
    let s = Server::with(c, Some(dir)).await;
    let coach = s.as_token("coach-key");
    let analytics = s.as_token("analytics-key");
    for (dlt, why) in [
        ("post.generated", "its own topic"),
        ("post.posted", "a catalog topic"),
    ] {
        let (status, v) = coach
            .post(
                "/v1/subscriptions",
                &json!({"name": "bad-dlt", "topic": "post.generated", "dead_letter_topic": dlt}),
            )
            .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("invalid-request")),
            "{why}: {v}"
        );
    }
    let v = subscribe(
        &coach,
        "fwd",
        "post.generated",
        json!({"dead_letter_topic": "coach.dead"}),
    )
    .await;
    assert_eq!(v["dead_letter_topic"], "coach.dead");
    subscribe(&analytics, "triage", "coach.dead", json!({})).await;
    let (status, v) = s
        .as_token("backend-key")
        .publish(&[generated("dl-1", "d-dl-1")])
        .await;
    assert_eq!(status, 200, "{v}");
    let d = pull(&coach, "fwd", 1, 2000).await;
    let (_, v) = coach
        .post(
            "/v1/subscriptions/fwd/reject",
            &json!({"ack_ids": ack_ids(&d), "error": "cannot score"}),
        )
        .await;
    assert_eq!(v["results"][0]["status"], "ok");
    let forwarded = pull(&analytics, "triage", 10, 5000).await;
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!(forwarded[0]["event"]["id"], "dl-1");
    assert_eq!(forwarded[0]["event"]["data"]["draftId"], "d-dl-1");
    let mut left = 1;
    for _ in 0..50 {
        let (_, v) = coach.get("/v1/subscriptions/fwd/dlq").await;
        left = v.as_array().unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "forwarded dead letters leave the DLQ");
    let (_, v) = coach.get("/v1/topics/coach.dead").await;
    assert_eq!(v["last"], 1, "stored once: {v}");
    s.stop().await;
}
