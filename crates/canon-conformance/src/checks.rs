//! The checks, one per rule of docs/specs/delivery.md. Each takes a harness, opens the backend
//! on fresh storage, and panics with the rule's id when the backend breaks it.

use std::time::{Duration, Instant};

use canon_backend::{
    Backend, BackendError, DeadLetterFilter, DeadLetterReason, Delivery, GroupConfig, LeaseToken,
    PublishOutcome, PublishRequest, RedriveOptions, RetryPolicy, StartPosition, TopicConfig,
    causation_chain,
};
use canon_envelope::{CloudEvent, Data};

use crate::Harness;

const TOPIC: &str = "orders";
const NO_WAIT: Duration = Duration::ZERO;

fn event(id: &str) -> CloudEvent {
    let mut ev = CloudEvent::new(id, "/conformance", "order.placed");
    ev.data = Data::json(format!(r#"{{"id":"{id}"}}"#)).ok();
    ev
}

fn request(id: &str) -> PublishRequest {
    PublishRequest::new(event(id))
}

fn keyed(id: &str, key: &str) -> PublishRequest {
    PublishRequest {
        ordering_key: Some(key.to_owned()),
        ..request(id)
    }
}

/// A group with short leases and quick retries, so that checks run in milliseconds.
fn quick(ordered: bool) -> GroupConfig {
    GroupConfig {
        ordered,
        lease: Duration::from_millis(300),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(1),
            jitter: 0.0,
        },
        max_in_flight: 100,
    }
}

async fn setup<H: Harness>(h: &H, groups: &[(&str, GroupConfig)]) -> H::Backend {
    let b = h.open().await;
    b.create_topic(TopicConfig::new(TOPIC))
        .await
        .expect("create topic");
    for (name, config) in groups {
        b.create_group(TOPIC, name, config.clone())
            .await
            .expect("create group");
    }
    b
}

async fn publish<B: Backend>(b: &B, ids: &[&str]) -> Vec<PublishOutcome> {
    b.publish(TOPIC, ids.iter().map(|id| request(id)).collect())
        .await
        .expect("publish")
}

async fn pull<B: Backend>(b: &B, group: &str, max: usize) -> Vec<Delivery> {
    b.pull(TOPIC, group, "c1", max, NO_WAIT)
        .await
        .expect("pull")
}

/// Pulls until `n` deliveries arrived or `within` passed.
async fn pull_n<B: Backend>(b: &B, group: &str, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            b.pull(TOPIC, group, "c1", n - out.len(), Duration::from_millis(50))
                .await
                .expect("pull"),
        );
    }
    out
}

fn ids(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.event.event.id.as_str()).collect()
}

/// The ids of group `g`'s DLQ entries that match `filter`, in the backend's order.
async fn dlq_ids<B: Backend>(b: &B, filter: DeadLetterFilter) -> Vec<String> {
    b.dead_letters(TOPIC, "g", &filter)
        .await
        .expect("dlq")
        .into_iter()
        .map(|d| d.event.event.id)
        .collect()
}

/// P1: an acknowledged publish survives a restart.
pub async fn p1_acknowledged_publish_survives_restart<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b"]).await;
    drop(b);
    let b = h.open().await;
    let got = pull(&b, "g", 10).await;
    assert_eq!(
        ids(&got),
        ["a", "b"],
        "P1: acknowledged events must survive a restart"
    );
    assert_eq!(
        got[0].event.event,
        event("a"),
        "P1: the event comes back unchanged"
    );
}

/// P2 (visibility): no consumer sees part of a batch before all of it is stored. Batches of
/// ten are published while a consumer pulls three at a time; whenever it gets an event of a
/// batch, the whole batch must already be readable. (P2's other half, atomicity across a
/// crash, is the embedded backend's crash harness.)
pub async fn p2_no_consumer_sees_part_of_a_batch<H: Harness>(h: &H) {
    const BATCHES: usize = 20;
    const SIZE: usize = 10;
    let b = setup(h, &[("g", quick(false))]).await;
    let publisher = async {
        for k in 0..BATCHES {
            let batch = (0..SIZE).map(|i| request(&format!("{k}-{i}"))).collect();
            b.publish(TOPIC, batch).await.expect("publish");
        }
    };
    let consumer = async {
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen < BATCHES * SIZE && Instant::now() < deadline {
            let got = b
                .pull(TOPIC, "g", "c1", 3, Duration::from_millis(200))
                .await
                .expect("pull");
            for d in &got {
                let (_, i) = d.event.event.id.split_once('-').expect("k-i");
                let i: u64 = i.parse().expect("i");
                let first = d.event.seq - i;
                let whole = b.read(TOPIC, first, SIZE, NO_WAIT).await.expect("read");
                assert_eq!(
                    whole.len(),
                    SIZE,
                    "P2: {} delivered while its batch was stored in part",
                    d.event.event.id
                );
                b.ack(&d.token).await.expect("ack");
            }
            seen += got.len();
        }
        seen
    };
    let ((), seen) = tokio::join!(publisher, consumer);
    assert_eq!(seen, BATCHES * SIZE, "P2: every event delivered");
}

/// P3: sequences increase in publish order; a batch's events are consecutive.
pub async fn p3_sequences_increase_in_publish_order<H: Harness>(h: &H) {
    let b = setup(h, &[]).await;
    let first = publish(&b, &["a", "b", "c"]).await;
    let second = publish(&b, &["d"]).await;
    let seqs: Vec<u64> = first.iter().chain(&second).map(|o| o.seq()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "P3: {seqs:?}");
}

/// P4: the same (source, id) is stored once and answered as a duplicate of the original.
pub async fn p4_duplicate_source_and_id_is_not_stored_twice<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let first = publish(&b, &["a"]).await;
    let again = publish(&b, &["a", "b", "b"]).await;
    assert_eq!(
        again[0],
        PublishOutcome::Duplicate {
            seq: first[0].seq()
        },
        "P4: a resent event is a duplicate"
    );
    assert!(matches!(again[1], PublishOutcome::Stored { .. }));
    assert_eq!(
        again[2],
        PublishOutcome::Duplicate {
            seq: again[1].seq()
        },
        "P4: a duplicate within one batch"
    );
    let mut other_source = request("a");
    other_source.event.source = "/elsewhere".into();
    let out = b.publish(TOPIC, vec![other_source]).await.expect("publish");
    assert!(
        matches!(out[0], PublishOutcome::Stored { .. }),
        "P4: the same id from another source is another event"
    );
    assert_eq!(
        ids(&pull(&b, "g", 10).await),
        ["a", "b", "a"],
        "P4: duplicates are not delivered"
    );
}

/// P5: the same idempotency key is stored once, even with another id.
pub async fn p5_duplicate_idempotency_key_is_not_stored_twice<H: Harness>(h: &H) {
    let b = setup(h, &[]).await;
    let with_key = |id: &str| PublishRequest {
        idempotency_key: Some(r#"["streak.incremented","u1","2025-01-01"]"#.into()),
        ..request(id)
    };
    let first = b
        .publish(TOPIC, vec![with_key("a")])
        .await
        .expect("publish");
    let retry = b
        .publish(TOPIC, vec![with_key("b")])
        .await
        .expect("publish");
    assert_eq!(
        retry[0],
        PublishOutcome::Duplicate {
            seq: first[0].seq()
        },
        "P5: a retried award with a new id must not be stored twice"
    );
}

/// P4, P5: the dedup window is the topic's. Within it a resent id or idempotency key is a
/// duplicate; once it has passed, the same id, and the same key under a new id, are stored
/// again as new events. One second, because JetStream's message TTLs count in seconds.
pub async fn p4_p5_dedup_ends_with_the_window<H: Harness>(h: &H) {
    let b = h.open().await;
    b.create_topic(TopicConfig {
        dedup_window: Duration::from_secs(1),
        ..TopicConfig::new(TOPIC)
    })
    .await
    .expect("topic");
    let with_key = |id: &str| PublishRequest {
        idempotency_key: Some("award-u1".into()),
        ..request(id)
    };
    let first = b
        .publish(TOPIC, vec![request("a"), with_key("k1")])
        .await
        .expect("publish");
    let again = b
        .publish(TOPIC, vec![request("a"), with_key("k2")])
        .await
        .expect("publish");
    assert_eq!(
        again,
        [
            PublishOutcome::Duplicate {
                seq: first[0].seq()
            },
            PublishOutcome::Duplicate {
                seq: first[1].seq()
            }
        ],
        "P4, P5: within the window"
    );
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let later = b
        .publish(TOPIC, vec![request("a"), with_key("k3")])
        .await
        .expect("publish");
    assert!(
        later
            .iter()
            .all(|o| matches!(o, PublishOutcome::Stored { seq } if *seq > first[1].seq())),
        "P4, P5: after the window the same id and key are new events: {later:?}"
    );
}

/// P6: a stated expected sequence that differs from the aggregate's last is a conflict.
pub async fn p6_expected_sequence_mismatch_is_a_conflict<H: Harness>(h: &H) {
    let b = setup(h, &[]).await;
    let expect = |id: &str, seq: u64| PublishRequest {
        expected_sequence: Some(seq),
        ..keyed(id, "task-1")
    };
    let first = b
        .publish(TOPIC, vec![expect("a", 0)])
        .await
        .expect("P6: 0 expects a new aggregate");
    let seq = first[0].seq();
    b.publish(TOPIC, vec![expect("b", seq)])
        .await
        .expect("P6: the right expectation passes");
    let err = b
        .publish(TOPIC, vec![expect("c", seq)])
        .await
        .expect_err("P6: a stale expectation must be refused");
    assert_eq!(
        err,
        BackendError::Conflict {
            key: "task-1".into(),
            expected: seq,
            current: seq + 1
        },
        "P6: the conflict gives the current sequence"
    );
}

/// P7: a conflict refuses the whole batch.
pub async fn p7_a_conflict_refuses_the_whole_batch<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let bad = PublishRequest {
        expected_sequence: Some(42),
        ..keyed("b", "task-1")
    };
    let err = b.publish(TOPIC, vec![request("a"), bad]).await;
    assert!(
        matches!(err, Err(BackendError::Conflict { .. })),
        "P7: {err:?}"
    );
    assert!(
        pull(&b, "g", 10).await.is_empty(),
        "P7: no event of a refused batch is stored"
    );
    // Nor was its id remembered.
    assert!(
        matches!(publish(&b, &["a"]).await[0], PublishOutcome::Stored { .. }),
        "P7: a refused event is not a duplicate later"
    );
}

/// C1: every group gets every event.
pub async fn c1_groups_are_independent<H: Harness>(h: &H) {
    let b = setup(h, &[("g1", quick(false)), ("g2", quick(false))]).await;
    publish(&b, &["a", "b"]).await;
    for d in pull(&b, "g1", 10).await {
        b.ack(&d.token).await.expect("ack");
    }
    assert_eq!(
        ids(&pull(&b, "g2", 10).await),
        ["a", "b"],
        "C1: acks of one group do not affect another"
    );
}

/// C2: one event, one consumer at a time.
pub async fn c2_an_event_is_leased_to_one_consumer_at_a_time<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b", "c"]).await;
    let one = b.pull(TOPIC, "g", "c1", 2, NO_WAIT).await.expect("pull");
    let two = b.pull(TOPIC, "g", "c2", 10, NO_WAIT).await.expect("pull");
    assert_eq!(ids(&one), ["a", "b"]);
    assert_eq!(
        ids(&two),
        ["c"],
        "C2: leased events are not handed to another consumer"
    );
}

/// C3: an expired lease redelivers, with the attempt number increased.
pub async fn c3_an_expired_lease_redelivers_with_the_next_attempt<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    let first = pull(&b, "g", 1).await;
    assert_eq!(first[0].attempt, 1, "C7: the first delivery is attempt 1");
    let again = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert_eq!(ids(&again), ["a"], "C3: an expired lease must redeliver");
    assert_eq!(again[0].attempt, 2, "C3: with the next attempt number");
    assert_eq!(
        b.ack(&first[0].token).await,
        Err(BackendError::LeaseLost),
        "C3: the old lease is gone"
    );
}

/// C4: extend keeps the lease; once lost, extend fails.
pub async fn c4_extend_keeps_a_lease_and_fails_once_lost<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    let d = pull(&b, "g", 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        b.extend(&d[0].token, Duration::from_millis(300))
            .await
            .expect("C4: extend within the lease");
    }
    assert!(
        pull(&b, "g", 1).await.is_empty(),
        "C4: an extended lease is not redelivered"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.extend(&d[0].token, Duration::from_secs(1)).await,
        Err(BackendError::LeaseLost),
        "C4: an expired lease cannot be extended"
    );
}

/// C5: an acked event is not delivered again, even after a restart.
pub async fn c5_an_ack_holds_across_restart<H: Harness>(h: &H) {
    acks_hold_across_restart(h, "C5", Acks::Each).await;
}

/// C5a: unconfirmed acks have the effect of acks, with one answer per token in order (checked
/// across a clean restart; what a machine crash may undo cannot be checked here).
pub async fn c5a_unconfirmed_acks_are_acks<H: Harness>(h: &H) {
    acks_hold_across_restart(h, "C5a", Acks::Unconfirmed).await;
}

/// C5b: `ack_many` acks each token, with one answer per token in order.
pub async fn c5b_many_acks_at_once_are_acks<H: Harness>(h: &H) {
    acks_hold_across_restart(h, "C5b", Acks::Many).await;
}

/// How a check acks.
#[derive(Clone, Copy)]
enum Acks {
    /// `ack`, one token at a time.
    Each,
    /// `ack_many`.
    Many,
    /// `ack_unconfirmed`.
    Unconfirmed,
}

/// Acks c and a of four events, restarts, and checks that only b and d come back; then acks d,
/// a stale token of b (from before the restart) and b: that one answer is `lease-lost`, and
/// nothing comes back after. The tokens go out of sequence order, so that a backend that
/// reorders a list to write it must still answer in the caller's order.
async fn acks_hold_across_restart<H: Harness>(h: &H, rule: &str, how: Acks) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b", "c", "d"]).await;
    let got = pull(&b, "g", 4).await;
    assert_eq!(ids(&got), ["a", "b", "c", "d"]);
    let first = [got[2].token.clone(), got[0].token.clone()];
    let answers = ack_all(&b, &first, how).await;
    assert_eq!(answers, [Ok(()), Ok(())], "{rule}: acks answered");
    let stale = got[1].token.clone();
    drop(got);
    drop(b);
    let b = h.open().await;
    // A backend whose leases outlive the process (shared storage) redelivers b and d once their
    // leases expire; one that keeps leases in memory at once.
    let again = pull_n(&b, "g", 2, Duration::from_secs(3)).await;
    assert_eq!(
        ids(&again),
        ["b", "d"],
        "{rule}: acked events stay acked across a restart"
    );
    let tokens = [again[1].token.clone(), stale, again[0].token.clone()];
    assert_eq!(
        ack_all(&b, &tokens, how).await,
        [Ok(()), Err(BackendError::LeaseLost), Ok(())],
        "{rule}: one answer per token, in order"
    );
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "{rule}: and nothing else comes back"
    );
}

/// Acks `tokens` as `how` says.
async fn ack_all<B: Backend>(
    b: &B,
    tokens: &[LeaseToken],
    how: Acks,
) -> Vec<Result<(), BackendError>> {
    match how {
        Acks::Each => {
            let mut answers = Vec::new();
            for t in tokens {
                answers.push(b.ack(t).await);
            }
            answers
        }
        Acks::Many => b.ack_many(tokens).await,
        Acks::Unconfirmed => b.ack_unconfirmed(tokens).await,
    }
}

/// C6: nack with a delay redelivers no earlier than the delay.
pub async fn c6_nack_with_delay_redelivers_no_earlier<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    let d = pull(&b, "g", 1).await;
    let nacked = Instant::now();
    b.nack(&d[0].token, Some(Duration::from_millis(400)), None)
        .await
        .expect("nack");
    assert!(
        pull(&b, "g", 1).await.is_empty(),
        "C6: not before the delay"
    );
    let again = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(400),
        "C6: redelivered after {:?}",
        nacked.elapsed()
    );
    assert_eq!((ids(&again), again[0].attempt), (vec!["a"], 2));
}

/// C8: events in flight when the process stops are delivered again after it restarts.
pub async fn c8_in_flight_events_survive_a_restart<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b"]).await;
    assert_eq!(pull(&b, "g", 2).await.len(), 2);
    drop(b);
    let b = h.open().await;
    assert_eq!(
        ids(&pull_n(&b, "g", 2, Duration::from_secs(3)).await),
        ["a", "b"],
        "C8: in-flight events are not lost"
    );
}

/// C9: at most `max` per pull, and a long poll returns when an event arrives.
pub async fn c9_pull_returns_at_most_max_and_waits_for_a_publish<H: Harness>(h: &H) {
    let b = std::sync::Arc::new(setup(h, &[("g", quick(false))]).await);
    publish(&*b, &["a", "b", "c"]).await;
    assert_eq!(pull(&*b, "g", 2).await.len(), 2, "C9: at most max");
    assert_eq!(pull(&*b, "g", 2).await.len(), 1);
    let started = Instant::now();
    let waiter = {
        let b = std::sync::Arc::clone(&b);
        async move {
            b.pull(TOPIC, "g", "c1", 1, Duration::from_secs(5))
                .await
                .expect("pull")
        }
    };
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(&*b, &["d"]).await;
    };
    let (got, ()) = tokio::join!(waiter, publisher);
    assert_eq!(
        ids(&got),
        ["d"],
        "C9: a long poll returns the published event"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "C9: without waiting out its timeout"
    );
}

/// O1: ordered groups lease at most one event per key, in sequence order.
pub async fn o1_ordered_groups_lease_one_event_per_key_in_order<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(true))]).await;
    b.publish(
        TOPIC,
        vec![
            keyed("a1", "a"),
            keyed("a2", "a"),
            keyed("b1", "b"),
            keyed("a3", "a"),
        ],
    )
    .await
    .expect("publish");
    let first = pull(&b, "g", 10).await;
    assert_eq!(ids(&first), ["a1", "b1"], "O1: one event per key in flight");
    b.ack(&first[0].token).await.expect("ack");
    let next = pull(&b, "g", 10).await;
    assert_eq!(ids(&next), ["a2"], "O1: the key's next event, in order");
    b.ack(&next[0].token).await.expect("ack");
    assert_eq!(ids(&pull(&b, "g", 10).await), ["a3"]);
}

/// O2: a key whose event is retrying holds back only its own later events.
pub async fn o2_a_retrying_key_holds_back_only_itself<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(true))]).await;
    b.publish(
        TOPIC,
        vec![
            keyed("a1", "a"),
            keyed("a2", "a"),
            keyed("b1", "b"),
            keyed("b2", "b"),
        ],
    )
    .await
    .expect("publish");
    let first = pull(&b, "g", 10).await;
    assert_eq!(ids(&first), ["a1", "b1"]);
    b.nack(
        &first[0].token,
        Some(Duration::from_secs(60)),
        Some("down".into()),
    )
    .await
    .expect("nack");
    b.ack(&first[1].token).await.expect("ack");
    assert_eq!(
        ids(&pull(&b, "g", 10).await),
        ["b2"],
        "O2: key b flows while a1 waits; a2 stays behind a1"
    );
}

/// O3: unordered groups lease events of one key in parallel.
pub async fn o3_unordered_groups_lease_in_parallel<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    b.publish(
        TOPIC,
        vec![keyed("a1", "a"), keyed("a2", "a"), keyed("a3", "a")],
    )
    .await
    .expect("publish");
    assert_eq!(
        pull(&b, "g", 10).await.len(),
        3,
        "O3: no per-key limit without ordering"
    );
}

/// R1: a retry without a delay waits the policy's backoff.
pub async fn r1_nack_without_delay_follows_the_retry_policy<H: Harness>(h: &H) {
    let mut config = quick(false);
    config.retry.initial_backoff = Duration::from_millis(300);
    let b = setup(h, &[("g", config)]).await;
    publish(&b, &["a"]).await;
    let d = pull(&b, "g", 1).await;
    let nacked = Instant::now();
    b.nack(&d[0].token, None, None).await.expect("nack");
    assert!(
        pull(&b, "g", 1).await.is_empty(),
        "R1: not before the backoff"
    );
    assert_eq!(pull_n(&b, "g", 1, Duration::from_secs(3)).await.len(), 1);
    assert!(
        nacked.elapsed() >= Duration::from_millis(300),
        "R1: redelivered after {:?}",
        nacked.elapsed()
    );
}

async fn fail_every_attempt<B: Backend>(b: &B, attempts: u32) {
    for attempt in 1..=attempts {
        let d = pull_n(b, "g", 1, Duration::from_secs(3)).await;
        assert_eq!(d.len(), 1, "attempt {attempt} must be delivered");
        assert_eq!(d[0].attempt, attempt, "C7: attempts are numbered");
        b.nack(
            &d[0].token,
            Some(Duration::ZERO),
            Some(format!("failure {attempt}")),
        )
        .await
        .expect("nack");
    }
}

/// R2: after the last failed attempt the event goes to the DLQ and is not delivered again.
pub async fn r2_the_last_failed_attempt_dead_letters<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    fail_every_attempt(&b, 3).await;
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "R2: no fourth attempt"
    );
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(dlq.len(), 1, "R2: the event is in the DLQ");
    assert_eq!(
        (dlq[0].reason, dlq[0].attempts, dlq[0].last_error.as_deref()),
        (DeadLetterReason::MaxAttempts, 3, Some("failure 3")),
        "R5"
    );
    let history: Vec<(&str, &str, Option<&str>)> = dlq[0]
        .history
        .iter()
        .map(|a| (a.consumer.as_str(), a.outcome.as_str(), a.error.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            ("c1", "retry", Some("failure 1")),
            ("c1", "retry", Some("failure 2")),
            ("c1", "retry", Some("failure 3"))
        ],
        "R5: every attempt is kept"
    );
    assert!(
        dlq[0].history.windows(2).all(|w| w[0].at <= w[1].at),
        "R5: in order"
    );
}

/// R2: an expired last lease dead-letters too.
pub async fn r2_the_last_expired_lease_dead_letters<H: Harness>(h: &H) {
    let mut config = quick(false);
    config.retry.max_attempts = 2;
    let b = setup(h, &[("g", config)]).await;
    publish(&b, &["a"]).await;
    assert_eq!(pull(&b, "g", 1).await.len(), 1);
    assert_eq!(
        pull_n(&b, "g", 1, Duration::from_secs(3)).await[0].attempt,
        2
    );
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(800))
            .await
            .is_empty(),
        "R2: no third attempt"
    );
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(
        (dlq.len(), dlq[0].reason),
        (1, DeadLetterReason::MaxAttempts),
        "R2: an expired last lease dead-letters"
    );
    assert_eq!(
        dlq[0]
            .history
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        ["lease-expired", "lease-expired"],
        "R5"
    );
}

/// R4: dead-letter now moves the event at once with the consumer's error.
pub async fn r4_dead_letter_now_keeps_the_error<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b"]).await;
    let d = pull(&b, "g", 2).await;
    b.dead_letter(&d[0].token, Some("malformed order".into()))
        .await
        .expect("dead-letter");
    b.ack(&d[1].token).await.expect("ack");
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        (dlq[0].reason, dlq[0].last_error.as_deref(), dlq[0].attempts),
        (DeadLetterReason::Rejected, Some("malformed order"), 1),
        "R4"
    );
    assert_eq!(
        dlq[0].event.event,
        event("a"),
        "R5: the event is kept unchanged"
    );
    assert_eq!(
        dlq[0]
            .history
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        ["dead-letter"],
        "R5: the rejecting attempt is recorded"
    );
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "R4: not delivered again"
    );
}

/// R5: the DLQ survives a restart.
pub async fn r5_dead_letters_survive_restart<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    let d = pull(&b, "g", 1).await;
    b.dead_letter(&d[0].token, Some("bad".into()))
        .await
        .expect("dead-letter");
    drop(d);
    drop(b);
    let b = h.open().await;
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(dlq.len(), 1, "R5: DLQ entries are durable");
    assert!(
        pull(&b, "g", 1).await.is_empty(),
        "R5: and stay out of the group's work"
    );
}

/// K1 (in part): unknown topics and groups are refused by name.
pub async fn k1_unknown_topics_and_groups_are_refused<H: Harness>(h: &H) {
    let b = setup(h, &[]).await;
    assert_eq!(
        b.publish("nope", vec![request("a")]).await,
        Err(BackendError::UnknownTopic("nope".into()))
    );
    let err = b.pull(TOPIC, "nope", "c1", 1, NO_WAIT).await;
    assert_eq!(
        err,
        Err(BackendError::UnknownGroup {
            topic: TOPIC.into(),
            group: "nope".into()
        })
    );
}

fn with_ext(id: &str, name: &str, value: &str) -> PublishRequest {
    let mut r = request(id);
    r.event.set_extension(name, value);
    r
}

fn rfc3339(t: std::time::SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .expect("a SystemTime formats as RFC 3339")
}

/// T1: an event with a not-before time is not delivered before it.
pub async fn t1_a_scheduled_event_waits_for_its_time<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    // Well past the 300 ms lease of "now": on a backend whose leases outlive a restart
    // (JetStream's AckWait), "now" comes back when its lease expires, and a busy machine once
    // made that later than a 600 ms not-before time.
    let at = std::time::SystemTime::now() + Duration::from_millis(1500);
    b.publish(
        TOPIC,
        vec![with_ext("later", "notbefore", &rfc3339(at)), request("now")],
    )
    .await
    .expect("publish");
    assert_eq!(
        ids(&pull(&b, "g", 10).await),
        ["now"],
        "T1: not before its time"
    );
    drop(b);
    let b = h.open().await;
    // "now" was in flight at the restart: it comes back first.
    let first = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert_eq!(ids(&first), ["now"]);
    b.ack(&first[0].token).await.expect("ack");
    let got = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    let now = std::time::SystemTime::now();
    assert!(
        now >= at,
        "T1: delivered {:?} early",
        at.duration_since(now)
    );
    assert_eq!(
        ids(&got),
        ["later"],
        "T1: delivered once due, across a restart"
    );
}

/// T2: an expired event is dead-lettered with reason `expired`, never delivered.
pub async fn t2_an_expired_event_is_dead_lettered<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    b.publish(
        TOPIC,
        vec![
            with_ext("stale", "expiration", "2001-01-01T00:00:00Z"),
            request("fresh"),
        ],
    )
    .await
    .expect("publish");
    assert_eq!(
        ids(&pull(&b, "g", 10).await),
        ["fresh"],
        "T2: an expired event is not delivered"
    );
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(
        (dlq.len(), dlq[0].reason, dlq[0].event.event.id.as_str()),
        (1, DeadLetterReason::Expired, "stale"),
        "T2"
    );
}

async fn reject_all<B: Backend>(b: &B, n: usize) {
    for d in pull_n(b, "g", n, Duration::from_secs(3)).await {
        b.dead_letter(&d.token, Some(format!("bad {}", d.event.event.id)))
            .await
            .expect("dead-letter");
    }
}

/// R6: the DLQ can be filtered without consuming it.
pub async fn r6_dead_letters_can_be_filtered<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let mut other = request("b");
    other.event.ty = "order.cancelled".into();
    b.publish(TOPIC, vec![request("a"), other, request("c")])
        .await
        .expect("publish");
    reject_all(&b, 3).await;
    let by_type = DeadLetterFilter {
        types: vec!["order.cancelled".into()],
        ..DeadLetterFilter::default()
    };
    assert_eq!(dlq_ids(&b, by_type).await, ["b"], "R6: by type");
    let count = |filter| {
        let b = &b;
        async move { dlq_ids(b, filter).await.len() }
    };
    let limited = DeadLetterFilter {
        limit: 2,
        ..DeadLetterFilter::default()
    };
    assert_eq!(count(limited).await, 2, "R6: limit");
    let by_reason = |reason| DeadLetterFilter {
        reason: Some(reason),
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        (
            count(by_reason(DeadLetterReason::Rejected)).await,
            count(by_reason(DeadLetterReason::MaxAttempts)).await,
            count(by_reason(DeadLetterReason::Expired)).await,
        ),
        (3, 0, 0),
        "R6: by reason"
    );
    let all = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    let first = all.iter().map(|d| d.at).min().expect("entries");
    let later = all.iter().map(|d| d.at).max().expect("entries") + Duration::from_secs(1);
    assert_eq!(
        (
            count(DeadLetterFilter {
                since: Some(first),
                ..DeadLetterFilter::default()
            })
            .await,
            count(DeadLetterFilter {
                since: Some(later),
                ..DeadLetterFilter::default()
            })
            .await,
            count(DeadLetterFilter {
                until: Some(later),
                ..DeadLetterFilter::default()
            })
            .await,
            count(DeadLetterFilter {
                until: Some(first - Duration::from_secs(1)),
                ..DeadLetterFilter::default()
            })
            .await,
        ),
        (3, 0, 3, 0),
        "R6: by time (since is inclusive, until exclusive)"
    );
    assert_eq!(
        count(DeadLetterFilter::default()).await,
        3,
        "R6: listing consumes nothing"
    );
}

/// R6: a DLQ larger than a backend reads at once (JetStream's listing reads 1,000 entries a
/// request) is listed whole and in order, stops at its limit, finds an entry past the first
/// thousand, and purges whole.
pub async fn r6_a_large_dlq_is_listed_whole<H: Harness>(h: &H) {
    const N: usize = 1_100;
    let group = GroupConfig {
        lease: Duration::from_secs(60),
        max_in_flight: 200,
        ..quick(false)
    };
    let b = setup(h, &[("g", group)]).await;
    let names: Vec<String> = (0..N).map(|i| format!("e{i:04}")).collect();
    for chunk in names.chunks(100) {
        b.publish(TOPIC, chunk.iter().map(|id| request(id)).collect())
            .await
            .expect("publish");
    }
    // Dead-lettered one at a time in publish order, so that "oldest first" is one order
    // (`names`) whether a backend keeps its DLQ by event or by the time of the dead-lettering.
    let (mut dead, mut last_seq) = (0, 0);
    while dead < N {
        let mut got = pull_n(&b, "g", (N - dead).min(200), Duration::from_secs(5)).await;
        assert!(
            !got.is_empty(),
            "R6: {dead} of {N} dead-lettered, then nothing"
        );
        got.sort_by_key(|d| d.event.seq);
        for d in &got {
            assert!(
                d.event.seq > last_seq,
                "R6: events were leased out of publish order, so this check cannot fix one DLQ order"
            );
            last_seq = d.event.seq;
            b.dead_letter(&d.token, None).await.expect("dead-letter");
            dead += 1;
        }
    }
    assert_eq!(
        dlq_ids(&b, DeadLetterFilter::default()).await,
        names,
        "R6: whole, oldest first"
    );
    let limited = DeadLetterFilter {
        limit: 1_050,
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        dlq_ids(&b, limited).await,
        names[..1_050],
        "R6: a limit past the first thousand"
    );
    let one = DeadLetterFilter {
        ids: vec![names[1_080].clone()],
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        dlq_ids(&b, one).await,
        [names[1_080].clone()],
        "R6: an entry past the first thousand"
    );
    purge_whole(&b, N, "R8: a large DLQ").await;
}

/// Purges group `g`'s whole DLQ, and checks that it held `n` entries and holds none after.
async fn purge_whole<B: Backend>(b: &B, n: usize, what: &str) {
    assert_eq!(
        b.purge(TOPIC, "g", &DeadLetterFilter::default())
            .await
            .expect("purge"),
        n,
        "{what}: purges whole"
    );
    assert!(
        dlq_ids(b, DeadLetterFilter::default()).await.is_empty(),
        "{what}: empty after"
    );
}

/// R7: redrive puts events back with their ids and fresh attempts; a dry run moves nothing.
pub async fn r7_redrive_returns_events_with_fresh_attempts<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b"]).await;
    reject_all(&b, 2).await;
    let only_a = DeadLetterFilter {
        ids: vec!["a".into()],
        ..DeadLetterFilter::default()
    };
    let dry = b
        .redrive(
            TOPIC,
            "g",
            &only_a,
            RedriveOptions {
                dry_run: true,
                per_second: 0,
            },
        )
        .await
        .expect("redrive");
    assert_eq!(
        (dry.matched.clone(), dry.redriven),
        (vec!["a".to_owned()], 0),
        "R7: a dry run moves nothing"
    );
    assert_eq!(
        b.dead_letters(TOPIC, "g", &DeadLetterFilter::default())
            .await
            .expect("dlq")
            .len(),
        2
    );
    let done = b
        .redrive(
            TOPIC,
            "g",
            &only_a,
            RedriveOptions {
                dry_run: false,
                per_second: 100,
            },
        )
        .await
        .expect("redrive");
    assert_eq!(done.redriven, 1);
    let again = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert_eq!(
        (ids(&again), again[0].attempt),
        (vec!["a"], 1),
        "R7: same id, fresh attempts"
    );
    b.ack(&again[0].token).await.expect("ack");
    let left = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(
        left.iter()
            .map(|d| d.event.event.id.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "R7: moved out of the DLQ"
    );
    drop(again);
    drop(b);
    let b = h.open().await;
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "R7: a redriven, acked event stays done across a restart"
    );
}

/// R7: a redrive that stops half way leaves every event in exactly one place, and running it
/// again finishes the job.
pub async fn r7_an_interrupted_redrive_resumes_without_duplicates<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a", "b", "c", "d"]).await;
    reject_all(&b, 4).await;
    // Redrive slowly and stop (drop) it part way, as a crash would.
    let all = DeadLetterFilter::default();
    let slow = b.redrive(
        TOPIC,
        "g",
        &all,
        RedriveOptions {
            dry_run: false,
            per_second: 2,
        },
    );
    let _ = tokio::time::timeout(Duration::from_millis(1_200), slow).await;
    drop(b);
    let b = h.open().await;
    let in_dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq")
        .len();
    // Four moves at two a second take 1.5 s at least: the rate limit kept some back, and the
    // first had 1.2 s to go.
    assert!(
        (1..4).contains(&in_dlq),
        "R7: the redrive stopped half way ({in_dlq} of 4 still in the DLQ)"
    );
    let back = pull_n(&b, "g", 4 - in_dlq, Duration::from_secs(3)).await;
    assert_eq!(
        in_dlq + back.len(),
        4,
        "R7: each event is in the DLQ or back, never both"
    );
    let report = b
        .redrive(
            TOPIC,
            "g",
            &DeadLetterFilter::default(),
            RedriveOptions::default(),
        )
        .await
        .expect("redrive");
    assert_eq!(
        report.redriven, in_dlq,
        "R7: the second run moves only what is left"
    );
    let rest = pull_n(&b, "g", in_dlq, Duration::from_secs(3)).await;
    let mut all: Vec<&str> = ids(&back).into_iter().chain(ids(&rest)).collect();
    all.sort_unstable();
    assert_eq!(all, ["a", "b", "c", "d"], "R7: every event exactly once");
}

/// R8: purge deletes matching entries: by type, by id, by sequence, then all.
pub async fn r8_purge_deletes_matching_entries<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let mut other = request("x");
    other.event.ty = "order.cancelled".into();
    b.publish(TOPIC, vec![request("a"), request("b"), other])
        .await
        .expect("publish");
    reject_all(&b, 3).await;
    let by_type = DeadLetterFilter {
        types: vec!["order.cancelled".into()],
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        b.purge(TOPIC, "g", &by_type).await.expect("purge"),
        1,
        "R8: by type"
    );
    let only_a = DeadLetterFilter {
        ids: vec!["a".into()],
        ..DeadLetterFilter::default()
    };
    assert_eq!(b.purge(TOPIC, "g", &only_a).await.expect("purge"), 1);
    let left = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(
        left.iter()
            .map(|d| d.event.event.id.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "R8: by id"
    );
    let by_seq = |seq: u64| DeadLetterFilter {
        seqs: vec![seq],
        ..DeadLetterFilter::default()
    };
    let b_seq = left[0].event.seq;
    assert_eq!(
        b.purge(TOPIC, "g", &by_seq(b_seq + 1_000))
            .await
            .expect("purge"),
        0,
        "R8: by sequence, another"
    );
    assert_eq!(
        b.purge(TOPIC, "g", &by_seq(b_seq)).await.expect("purge"),
        1,
        "R8: by sequence"
    );
    publish(&b, &["c"]).await;
    reject_all(&b, 1).await;
    purge_whole(&b, 1, "R8: everything").await;
}

/// L1: a group can be reset to the earliest, the latest, a time or an event id; replayed
/// events keep their ids and sequences.
pub async fn l1_reset_replays_from_a_position<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let first = publish(&b, &["a", "b"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&b, &["c"]).await;
    for d in pull(&b, "g", 10).await {
        b.ack(&d.token).await.expect("ack");
    }
    b.reset(TOPIC, "g", StartPosition::Earliest)
        .await
        .expect("reset");
    let replay = pull(&b, "g", 10).await;
    assert_eq!(ids(&replay), ["a", "b", "c"], "L1: earliest");
    assert_eq!(replay[0].event.seq, first[0].seq(), "L1: same sequence");
    b.reset(TOPIC, "g", StartPosition::EventId("b".into()))
        .await
        .expect("reset");
    assert_eq!(
        ids(&pull(&b, "g", 10).await),
        ["b", "c"],
        "L1: from an event id; old leases are gone"
    );
    b.reset(TOPIC, "g", StartPosition::Time(middle))
        .await
        .expect("reset");
    assert_eq!(ids(&pull(&b, "g", 10).await), ["c"], "L1: from a time");
    b.reset(TOPIC, "g", StartPosition::Latest)
        .await
        .expect("reset");
    publish(&b, &["d"]).await;
    assert_eq!(ids(&pull(&b, "g", 10).await), ["d"], "L1: latest");
}

/// L3, L4: lookup by id, by correlation id, and the causation chain both ways.
pub async fn l3_l4_events_are_found_by_id_correlation_and_causation<H: Harness>(h: &H) {
    let b = setup(h, &[]).await;
    let mut root = with_ext("root", "correlationid", "req-1");
    root.event.set_extension("causationid", "outside");
    let mut child = with_ext("child", "correlationid", "req-1");
    child.event.set_extension("causationid", "root");
    let mut grandchild = with_ext("grandchild", "correlationid", "req-1");
    grandchild.event.set_extension("causationid", "child");
    b.publish(TOPIC, vec![root, child, grandchild, request("unrelated")])
        .await
        .expect("publish");
    let found = b.events_by_id(TOPIC, "child").await.expect("by id");
    assert_eq!(found.len(), 1, "L3");
    assert_eq!(found[0].event.causation_id(), Some("root"));
    let corr = b
        .events_by_correlation(TOPIC, "req-1")
        .await
        .expect("by correlation");
    assert_eq!(
        corr.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(),
        ["root", "child", "grandchild"],
        "L4: correlation"
    );
    let (causes, effects) = causation_chain(&b, &[TOPIC.to_owned()], "child")
        .await
        .expect("chain");
    assert_eq!(
        causes
            .iter()
            .map(|(_, e)| e.event.id.as_str())
            .collect::<Vec<_>>(),
        ["root"],
        "L4: causes"
    );
    assert_eq!(
        effects
            .iter()
            .map(|(_, e)| e.event.id.as_str())
            .collect::<Vec<_>>(),
        ["grandchild"],
        "L4: effects"
    );
    let (_, all_effects) = causation_chain(&b, &[TOPIC.to_owned()], "root")
        .await
        .expect("chain");
    assert_eq!(
        all_effects
            .iter()
            .map(|(_, e)| e.event.id.as_str())
            .collect::<Vec<_>>(),
        ["child", "grandchild"],
        "L4: effects, transitively"
    );
}

/// R4: the consumer's answers: success and drop ack (drop leaves no DLQ entry), retry
/// redelivers, dead-letter moves at once.
pub async fn r4_consumer_answers_settle_deliveries<H: Harness>(h: &H) {
    use canon_backend::{Outcome, settle};
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["ok", "drop", "retry", "dead"]).await;
    for d in pull(&b, "g", 4).await {
        let outcome = match d.event.event.id.as_str() {
            "ok" => Outcome::Success,
            "drop" => Outcome::Drop,
            "retry" => Outcome::Retry(Some(Duration::ZERO)),
            _ => Outcome::DeadLetter,
        };
        settle(&b, &d.token, outcome, Some("because".into()))
            .await
            .expect("settle");
    }
    let again = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert_eq!(
        (ids(&again), again[0].attempt),
        (vec!["retry"], 2),
        "R4: retry redelivers"
    );
    let dlq = b
        .dead_letters(TOPIC, "g", &DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(
        dlq.iter()
            .map(|d| d.event.event.id.as_str())
            .collect::<Vec<_>>(),
        ["dead"],
        "R4: only dead-letter goes to the DLQ"
    );
}

/// L2: retention by size deletes the oldest events first, never newer ones.
pub async fn l2_retention_by_size_deletes_the_oldest_first<H: Harness>(h: &H) {
    let b = h.open().await;
    b.create_topic(TopicConfig {
        max_bytes: Some(4_000),
        ..TopicConfig::new(TOPIC)
    })
    .await
    .expect("topic");
    let ids: Vec<String> = (0..40).map(|i| format!("e{i:02}")).collect();
    // Events of over 200 bytes, so that 40 of them exceed 4,000 bytes however a backend counts.
    let padded = |id: &str| {
        let mut r = request(id);
        r.event.data = Data::json(format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(200))).ok();
        r
    };
    for chunk in ids.chunks(4) {
        b.publish(TOPIC, chunk.iter().map(|id| padded(id)).collect())
            .await
            .expect("publish");
    }
    b.create_group(TOPIC, "late", quick(false))
        .await
        .expect("group");
    let kept_ids = drain(&b, "late").await;
    assert!(
        !kept_ids.is_empty() && kept_ids.len() < 40,
        "L2: some but not all events are kept ({})",
        kept_ids.len()
    );
    let expected: Vec<String> = ids[40 - kept_ids.len()..].to_vec();
    assert_eq!(
        kept_ids, expected,
        "L2: the newest are kept, the oldest go first"
    );
    assert!(
        b.events_by_id(TOPIC, "e00")
            .await
            .expect("lookup")
            .is_empty(),
        "L2: a deleted event is gone"
    );
}

/// L2: retention by age deletes events older than the limit.
pub async fn l2_retention_by_age_deletes_old_events<H: Harness>(h: &H) {
    let b = h.open().await;
    b.create_topic(TopicConfig {
        max_age: Some(Duration::from_millis(300)),
        ..TopicConfig::new(TOPIC)
    })
    .await
    .expect("topic");
    publish(&b, &["old"]).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    publish(&b, &["new"]).await;
    b.create_group(TOPIC, "late", quick(false))
        .await
        .expect("group");
    assert_eq!(
        drain(&b, "late").await,
        ["new"],
        "L2: older than the limit is gone"
    );
}

/// Pulls and acks until nothing is left; the ids in delivery order.
async fn drain<B: Backend>(b: &B, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = b
            .pull(TOPIC, group, "c1", 100, Duration::from_millis(100))
            .await
            .expect("pull");
        if got.is_empty() {
            return out;
        }
        for d in got {
            b.ack(&d.token).await.expect("ack");
            out.push(d.event.event.id);
        }
    }
}

/// R3: a retry is one attempt, whoever redelivers: a nacked event is not also redelivered by
/// its old lease expiring, and attempts count up by one.
pub async fn r3_retries_do_not_multiply_with_lease_expiry<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    publish(&b, &["a"]).await;
    let first = pull(&b, "g", 1).await;
    b.nack(&first[0].token, Some(Duration::from_millis(800)), None)
        .await
        .expect("nack");
    // Longer than the lease: an expiry must not redeliver what the nack already scheduled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pull(&b, "g", 1).await.is_empty(),
        "R3: no delivery before the nack's delay"
    );
    let second = pull_n(&b, "g", 1, Duration::from_secs(3)).await;
    assert_eq!(second[0].attempt, 2, "R3: the retry is attempt 2");
    b.ack(&second[0].token).await.expect("ack");
    assert!(
        pull_n(&b, "g", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "R3: and nothing more"
    );
}

/// C5: acks hold when the group's progress passes them while it reads the log: acked events
/// after a scheduled one are not delivered again once the scheduled one is acked (found by the
/// crash harness).
pub async fn c5_acks_behind_a_scheduled_event_hold<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let at = std::time::SystemTime::now() + Duration::from_millis(200);
    b.publish(
        TOPIC,
        vec![
            with_ext("s", "notbefore", &rfc3339(at)),
            request("a"),
            request("b"),
        ],
    )
    .await
    .expect("publish");
    let first = pull(&b, "g", 10).await;
    assert_eq!(ids(&first), ["a", "b"]);
    for d in &first {
        b.ack(&d.token).await.expect("ack");
    }
    drop(first);
    drop(b);
    let b = h.open().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = pull(&b, "g", 1).await;
    assert_eq!(ids(&s), ["s"]);
    b.ack(&s[0].token).await.expect("ack");
    assert!(
        pull(&b, "g", 10).await.is_empty(),
        "C5: acked events must not come back"
    );
}

/// C10: groups are listed with where they stand; a deleted group loses its state and DLQ, and
/// comes back from the beginning.
pub async fn c10_groups_are_listed_and_deleted<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false)), ("h", quick(false))]).await;
    publish(&b, &["a", "b", "c"]).await;
    assert_eq!(
        b.groups(TOPIC).await.expect("groups"),
        ["g", "h"],
        "C10: groups are listed"
    );
    let d = pull(&b, "g", 2).await;
    b.ack(&d[0].token).await.expect("ack");
    b.dead_letter(&d[1].token, Some("bad".into()))
        .await
        .expect("dead letter");
    let _leased = pull(&b, "g", 1).await;
    let info = b.group_info(TOPIC, "g").await.expect("group info");
    assert_eq!(info.acked_through, 2, "C10: acked through");
    assert_eq!(
        (info.pending, info.in_flight, info.dead_letters),
        (1, 1, 1),
        "C10: pending, in flight, dead letters"
    );
    let fresh = b.group_info(TOPIC, "h").await.expect("group info");
    assert_eq!(
        (fresh.acked_through, fresh.pending),
        (0, 3),
        "C10: untouched group"
    );
    b.delete_group(TOPIC, "g").await.expect("delete");
    assert_eq!(
        b.groups(TOPIC).await.expect("groups"),
        ["h"],
        "C10: deleted"
    );
    assert!(
        matches!(
            b.pull(TOPIC, "g", "c1", 1, NO_WAIT).await,
            Err(BackendError::UnknownGroup { .. })
        ),
        "C10: a deleted group is unknown"
    );
    drop(b);
    let b = h.open().await;
    assert_eq!(
        b.groups(TOPIC).await.expect("groups"),
        ["h"],
        "C10: deletion is durable"
    );
    b.create_group(TOPIC, "g", quick(false))
        .await
        .expect("again");
    let again = pull(&b, "g", 10).await;
    assert_eq!(
        again.len(),
        3,
        "C10: a re-created group starts at the beginning"
    );
    assert!(
        b.dead_letters(TOPIC, "g", &DeadLetterFilter::default())
            .await
            .expect("dlq")
            .is_empty(),
        "C10: the old DLQ is gone"
    );
}

/// L5: reading a topic consumes nothing; positions translate to sequences; topics are listed.
pub async fn l5_topics_are_read_without_consuming<H: Harness>(h: &H) {
    let b = setup(h, &[("g", quick(false))]).await;
    let empty = b.topic_info(TOPIC).await.expect("info");
    assert_eq!(empty.last, 0, "L5: an empty topic");
    assert!(
        empty.first > empty.last,
        "L5: an empty topic has first > last"
    );
    publish(&b, &["a", "b", "c"]).await;
    let info = b.topic_info(TOPIC).await.expect("info");
    assert_eq!((info.first, info.last), (1, 3), "L5: first and last");
    assert_eq!(b.topics().await.expect("topics"), [TOPIC], "L5: topics");
    let read = b.read(TOPIC, 2, 10, NO_WAIT).await.expect("read");
    let ids: Vec<&str> = read.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"], "L5: read from a sequence");
    assert_eq!(
        b.read(TOPIC, 1, 2, NO_WAIT).await.expect("read").len(),
        2,
        "L5: at most max"
    );
    assert_eq!(
        pull(&b, "g", 10).await.len(),
        3,
        "L5: reading consumed nothing"
    );
    assert_eq!(
        b.locate(TOPIC, &StartPosition::Earliest)
            .await
            .expect("locate"),
        1
    );
    assert_eq!(
        b.locate(TOPIC, &StartPosition::Latest)
            .await
            .expect("locate"),
        4,
        "L5: latest is after the newest"
    );
    assert_eq!(
        b.locate(TOPIC, &StartPosition::EventId("b".into()))
            .await
            .expect("locate"),
        2
    );
    let (waiter, publisher) = tokio::join!(b.read(TOPIC, 4, 10, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        publish(&b, &["d"]).await
    });
    let waited = waiter.expect("read");
    assert_eq!(waited.len(), 1, "L5: a long read wakes on a publish");
    assert_eq!(waited[0].seq, publisher[0].seq());
}

/// S1, S2: a key-value bucket with revisions and compare-and-set.
pub async fn s1_s2_key_value_with_compare_and_set<H: Harness>(h: &H) {
    let b = h.open().await;
    assert_eq!(b.kv_get("subs", "a").await.expect("get"), None);
    let r1 = b
        .kv_put("subs", "a", b"one".to_vec(), Some(0))
        .await
        .expect("create");
    assert!(r1 > 0, "S1: revisions are positive");
    assert_eq!(
        b.kv_put("subs", "a", b"x".to_vec(), Some(0)).await,
        Err(BackendError::RevisionMismatch { current: r1 }),
        "S2: create-only refuses an existing key"
    );
    let r2 = b
        .kv_put("subs", "a", b"two".to_vec(), Some(r1))
        .await
        .expect("update");
    assert!(r2 > r1, "S1: every write raises the revision");
    b.kv_put("subs", "b", b"bee".to_vec(), None)
        .await
        .expect("put");
    b.kv_put("other", "a", b"elsewhere".to_vec(), None)
        .await
        .expect("put");
    assert!(
        matches!(
            b.kv_delete("subs", "a", Some(r1)).await,
            Err(BackendError::RevisionMismatch { .. })
        ),
        "S2: delete with a stale revision"
    );
    drop(b);
    let b = h.open().await;
    let list = b.kv_list("subs").await.expect("list");
    let keys: Vec<(&str, &[u8])> = list
        .iter()
        .map(|(k, e)| (k.as_str(), e.value.as_slice()))
        .collect();
    assert_eq!(
        keys,
        [("a", &b"two"[..]), ("b", &b"bee"[..])],
        "S1: durable, in key order"
    );
    assert!(b.kv_delete("subs", "a", Some(r2)).await.expect("delete"));
    assert!(!b.kv_delete("subs", "a", None).await.expect("delete again"));
    assert_eq!(b.kv_get("subs", "a").await.expect("get"), None);
    // Two writers expecting the same revision: one wins.
    let r = b
        .kv_put("race", "k", b"0".to_vec(), None)
        .await
        .expect("put");
    let (x, y) = tokio::join!(
        b.kv_put("race", "k", b"x".to_vec(), Some(r)),
        b.kv_put("race", "k", b"y".to_vec(), Some(r))
    );
    assert_eq!(
        usize::from(x.is_ok()) + usize::from(y.is_ok()),
        1,
        "S2: one of two concurrent writes with the same expectation"
    );
}
