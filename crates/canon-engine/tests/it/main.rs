//! The engine over the embedded backend with the seed catalogs.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::path::PathBuf;
use std::time::Duration;

use canon_backend::{Backend, BackendError, GroupConfig, PublishOutcome};
use canon_catalog::Catalog;
use canon_embedded::{Durability, EmbeddedBackend};
use canon_engine::{Engine, EngineError, Submit};
use canon_envelope::{CloudEvent, Dialect};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn catalog(name: &str) -> Catalog {
    let text =
        std::fs::read_to_string(repo().join(format!("examples/catalogs/{name}.yaml"))).unwrap();
    Catalog::load(&text, name).catalog.unwrap()
}

fn example(name: &str, ty: &str) -> CloudEvent {
    let events: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join(format!("examples/events/{name}.json"))).unwrap(),
    )
    .unwrap();
    let c = catalog(name);
    events
        .iter()
        .map(|e| c.dialect.decode(e.to_string().as_bytes()).unwrap())
        .find(|e| e.ty == ty)
        .unwrap()
}

async fn engine(tag: &str) -> Engine<EmbeddedBackend> {
    let dir = std::env::temp_dir().join(format!("canon-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let backend = EmbeddedBackend::open(&dir, Durability::Sync).unwrap();
    Engine::new(
        backend,
        vec![catalog("coach"), catalog("todo"), catalog("go4u")],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_retried_award_is_stored_once() {
    // Seed 000: challenge.completed "must not double-award on retry". The retry has a new id;
    // the catalog's idempotency key (userId+challengeId+completedAt) catches it.
    let e = engine("award").await;
    let first = example("coach", "challenge.completed");
    let mut retry = first.clone();
    retry.id = "a-retry-with-a-new-id".into();
    let a = e
        .publish(vec![first.into()], Some("challenge-service"))
        .await
        .unwrap();
    let b = e
        .publish(vec![retry.into()], Some("challenge-service"))
        .await
        .unwrap();
    assert_eq!(b[0], PublishOutcome::Duplicate { seq: a[0].seq() });
}

#[tokio::test(flavor = "current_thread")]
async fn routes_types_to_catalog_topics_with_the_aggregate_as_ordering_key() {
    let e = engine("route").await;
    assert_eq!(e.topic_of("com.todo.task.created.v1"), Some("task-events"));
    let ev = example("todo", "com.todo.task.created.v1");
    e.publish(vec![ev.clone().into()], Some("chat-api"))
        .await
        .unwrap();
    e.backend()
        .create_group("task-events", "audit", GroupConfig::default())
        .await
        .unwrap();
    let got = e
        .backend()
        .pull("task-events", "audit", "a", 10, Duration::ZERO)
        .await
        .unwrap();
    let task_id = serde_json::from_slice::<serde_json::Value>(ev.data.as_ref().unwrap().as_bytes())
        .unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        got[0].event.ordering_key.as_deref(),
        Some(task_id.as_str()),
        "ordered by the catalog's aggregate key"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn refuses_invalid_events_unknown_types_and_foreign_producers() {
    let e = engine("refuse").await;
    let mut bad = example("coach", "post.generated");
    bad.data = canon_envelope::Data::json(r#"{"userId":"u"}"#).ok();
    let err = e
        .publish(
            vec![example("coach", "post.posted").into(), bad.into()],
            None,
        )
        .await
        .unwrap_err();
    let EngineError::Invalid { index, violations } = err else {
        panic!("{err}")
    };
    assert_eq!(index, 1);
    assert!(
        violations.iter().any(|v| v.code == "payload-required"),
        "{violations:?}"
    );
    let mut unknown = example("coach", "post.posted");
    unknown.ty = "post.deleted".into();
    assert!(matches!(
        e.publish(vec![unknown.into()], None).await,
        Err(EngineError::Invalid { .. })
    ));
    let err = e
        .publish(
            vec![example("coach", "post.posted").into()],
            Some("streak-service"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "streak-service is not a declared producer of post.posted"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_stays_on_one_topic_and_expected_sequences_guard_aggregates() {
    let e = engine("batch").await;
    let err = e
        .publish(
            vec![
                example("coach", "post.posted").into(),
                example("todo", "com.todo.task.created.v1").into(),
            ],
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::MixedTopics(..)), "{err}");
    // Seed 002's (aggregate_id, sequence) guard.
    let go4u = catalog("go4u");
    let confirmed = Dialect::Go4u
        .decode(br#"{"event_id":"01J00000000000000000000001","event_name":"task.deal.confirmed","event_version":1,"occurred_at":"2025-09-25T10:31:00Z","producer":"task-service","payload":{"task_id":"tsk_1","requester_id":"usr_1","agent_id":"usr_2","confirmed_at":"2025-09-25T10:31:00Z"}}"#)
        .unwrap();
    assert!(go4u.validate(&confirmed).is_empty());
    let first = e
        .publish(
            vec![Submit {
                event: confirmed.clone(),
                expected_sequence: Some(0),
            }],
            None,
        )
        .await
        .unwrap();
    // Another confirmation (not a retry: another time, so another idempotency key) that still
    // expects a new aggregate.
    let mut again = confirmed;
    again.id = "01J00000000000000000000002".into();
    again.data = canon_envelope::Data::json(r#"{"task_id":"tsk_1","requester_id":"usr_1","agent_id":"usr_2","confirmed_at":"2025-09-25T10:32:00Z"}"#).ok();
    let err = e
        .publish(
            vec![Submit {
                event: again,
                expected_sequence: Some(0),
            }],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Backend(BackendError::Conflict { current, .. }) if current == first[0].seq()),
        "{err}"
    );
}

/// K1: the catalogs' needs against what a backend declares. The seed catalogs need atomic
/// batches, idempotency keys (seed 000's award), expected sequences (types with an aggregate)
/// and ordered delivery (seed 002 orders its deliveries per aggregate by default); a backend
/// without one of them is refused by name.
#[test]
fn a_backend_lacking_what_the_catalogs_need_is_refused() {
    use canon_backend::{Capabilities, Capability};
    let catalogs = [catalog("coach"), catalog("todo"), catalog("go4u")];
    let needed = canon_engine::required_capabilities(&catalogs);
    for c in [
        Capability::AtomicBatch,
        Capability::IdempotencyKeys,
        Capability::OptimisticConcurrency,
        Capability::OrderedDelivery,
    ] {
        assert!(needed.contains(&c), "{c:?} in {needed:?}");
    }
    let all = Capabilities(vec![
        Capability::AtomicBatch,
        Capability::IdempotencyKeys,
        Capability::OptimisticConcurrency,
        Capability::OrderedDelivery,
    ]);
    canon_engine::check_capabilities(&all, &catalogs).unwrap();
    let without_keys = Capabilities(
        all.0
            .iter()
            .copied()
            .filter(|c| *c != Capability::IdempotencyKeys)
            .collect(),
    );
    assert!(matches!(
        canon_engine::check_capabilities(&without_keys, &catalogs),
        Err(BackendError::UnsupportedCapability("idempotency-keys"))
    ));
    // A catalog with nothing of the kind needs only atomic batches.
    assert_eq!(
        canon_engine::required_capabilities(&[]),
        [Capability::AtomicBatch]
    );
}
