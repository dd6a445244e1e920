//! Servers sharing a JetStream: a topic's dedup window changed by one server is taken up by
//! another that has the topic open, for idempotency keys too (their claims expire with it).

use std::time::Duration;

use canon_backend::{Backend, PublishOutcome, PublishRequest, TopicConfig};
use canon_conformance::Harness;
use canon_envelope::CloudEvent;
use canon_nats::WINDOW_FRESH;

use crate::NatsHarness;

fn keyed(id: &str, key: &str) -> PublishRequest {
    PublishRequest {
        idempotency_key: Some(key.to_owned()),
        ..PublishRequest::new(CloudEvent::new(id, "/test", "order.placed"))
    }
}

fn window(d: Duration) -> TopicConfig {
    TopicConfig {
        dedup_window: d,
        ..TopicConfig::new("w")
    }
}

#[tokio::test]
async fn a_window_changed_by_another_server_is_taken_up() {
    let h = NatsHarness::new();
    let (a, b) = (h.open().await, h.open().await);
    a.create_topic(window(Duration::from_secs(3600)))
        .await
        .expect("topic");
    // `b` opens the topic while its window is an hour.
    let first = b
        .publish("w", vec![keyed("e0", "k0")])
        .await
        .expect("publish");
    assert!(matches!(first[0], PublishOutcome::Stored { .. }));

    a.create_topic(window(Duration::from_secs(1)))
        .await
        .expect("reconfigure");
    tokio::time::sleep(WINDOW_FRESH + Duration::from_millis(500)).await;
    // `b` claims a key now: with the one-second window, so the claim expires and the same key
    // is stored again within seconds (JetStream expires messages in steps of about a second,
    // so the test asks every 250 ms for up to 15 s). With the hour `b` read first, the second
    // event would stay a duplicate.
    let claimed = b
        .publish("w", vec![keyed("e1", "k1")])
        .await
        .expect("publish");
    assert!(matches!(claimed[0], PublishOutcome::Stored { .. }));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let again = b
            .publish("w", vec![keyed("e2", "k1")])
            .await
            .expect("publish");
        if matches!(again[0], PublishOutcome::Stored { .. }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key's claim outlived the window another server set: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        b.topic_info("w").await.expect("info").config.dedup_window,
        Duration::from_secs(1),
        "the topic's description reads the window from the stream"
    );
    h.close().await;
}

#[tokio::test]
async fn a_window_of_zero_is_refused_not_turned_into_two_minutes() {
    let h = NatsHarness::new();
    let b = h.open().await;
    for config in [
        window(Duration::ZERO),
        TopicConfig {
            max_age: Some(Duration::ZERO),
            ..TopicConfig::new("w")
        },
    ] {
        let err = b.create_topic(config).await.expect_err("a window of 0");
        assert!(
            matches!(err, canon_backend::BackendError::InvalidConfig(ref m) if m.contains("2 minutes")),
            "{err:?}"
        );
    }
    assert!(
        b.topics().await.expect("topics").is_empty(),
        "nothing half-made"
    );
    h.close().await;
}
