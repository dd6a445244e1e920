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
    // `b` claims a key now: with the one-second window, so the claim has expired when the
    // same key comes again 3.5 s later (JetStream's message TTLs count in seconds), and the
    // second event is stored. With the hour `b` read first, it would be a duplicate.
    let claimed = b
        .publish("w", vec![keyed("e1", "k1")])
        .await
        .expect("publish");
    assert!(matches!(claimed[0], PublishOutcome::Stored { .. }));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let again = b
        .publish("w", vec![keyed("e2", "k1")])
        .await
        .expect("publish");
    assert!(
        matches!(again[0], PublishOutcome::Stored { .. }),
        "the key's claim outlived the window another server set: {again:?}"
    );
    assert_eq!(
        b.topic_info("w").await.expect("info").config.dedup_window,
        Duration::from_secs(1),
        "the topic's description reads the window from the stream"
    );
    h.close().await;
}
