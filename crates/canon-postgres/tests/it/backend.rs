//! What the PostgreSQL backend does beyond the shared contract: migrations, and several
//! backends (processes) on one schema.

use std::collections::HashSet;
use std::time::Duration;

use canon_backend::{Backend, BackendError, GroupConfig, PublishRequest, TopicConfig};
use canon_conformance::Harness;
use canon_envelope::{CloudEvent, Data};
use canon_postgres::PgBackend;

use crate::{PgHarness, url};

async fn sql(statement: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running");
    tokio::spawn(conn);
    client.query(statement, &[]).await.expect("query")
}

#[tokio::test]
async fn concurrent_opens_apply_each_migration_once() {
    let h = PgHarness::new();
    let (a, b) = tokio::join!(h.open(), h.open());
    let rows = sql(&format!(
        "SELECT version FROM {}.schema_migrations ORDER BY version",
        a.schema()
    ))
    .await;
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1, 2]);
    drop((a, b));
    h.close().await;
}

#[tokio::test]
async fn a_schema_from_a_newer_canon_is_refused() {
    let h = PgHarness::new();
    let b = h.open().await;
    sql(&format!(
        "INSERT INTO {}.schema_migrations (version) VALUES (999)",
        b.schema()
    ))
    .await;
    drop(b);
    let err = PgBackend::open_with(h.config())
        .await
        .expect_err("a newer schema must be refused");
    assert!(
        matches!(&err, BackendError::InvalidConfig(m) if m.contains("999") && m.contains("upgrade Canon")),
        "{err}"
    );
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_schema_share_a_group_without_double_delivery() {
    let h = PgHarness::new();
    let one = h.open().await;
    let two = h.open().await;
    one.create_topic(TopicConfig::new("t"))
        .await
        .expect("topic");
    one.create_group("t", "g", GroupConfig::default())
        .await
        .expect("group");
    let batch: Vec<PublishRequest> = (0..500)
        .map(|i| {
            let mut e = CloudEvent::new(format!("e{i}"), "/test", "t.happened");
            e.data = Data::json(format!(r#"{{"i":{i}}}"#)).ok();
            PublishRequest::new(e)
        })
        .collect();
    for chunk in batch.chunks(50) {
        two.publish("t", chunk.to_vec()).await.expect("publish");
    }
    let consume = |b: PgBackend, name: &'static str| async move {
        let mut got = Vec::new();
        loop {
            let ds = b
                .pull("t", "g", name, 20, Duration::from_millis(300))
                .await
                .expect("pull");
            if ds.is_empty() {
                return got;
            }
            for d in ds {
                b.ack(&d.token).await.expect("ack of a held lease");
                got.push(d.event.event.id);
            }
        }
    };
    let (a, b) = tokio::join!(consume(one.clone(), "c1"), consume(two.clone(), "c2"));
    assert!(!a.is_empty() && !b.is_empty(), "both share the work");
    let all: HashSet<&String> = a.iter().chain(&b).collect();
    assert_eq!(a.len() + b.len(), 500, "no event delivered twice");
    assert_eq!(all.len(), 500, "every event delivered");
    drop((one, two));
    h.close().await;
}

/// The lease of the ack tests' groups: short, so that a test can wait for one to run out.
const LEASE: Duration = Duration::from_millis(300);

/// Topic `t` with the given groups, each leasing for `LEASE`.
async fn topic_with_groups(b: &PgBackend, groups: &[&str]) {
    b.create_topic(TopicConfig::new("t")).await.expect("topic");
    let config = GroupConfig {
        lease: LEASE,
        ..GroupConfig::default()
    };
    for g in groups {
        b.create_group("t", g, config.clone()).await.expect("group");
    }
}

/// Acks of several groups and the same lease twice, sent at once so that they usually meet in
/// one round of the ack queue: each group's ack lands, the repeat changes nothing (it answers
/// Ok when it met the first in the round, LeaseLost when a later round found the lease gone),
/// and nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ack_round_settles_several_groups_and_a_repeated_lease() {
    let h = PgHarness::new();
    let b = h.open().await;
    topic_with_groups(&b, &["a", "b"]).await;
    let batch: Vec<PublishRequest> = (0..20)
        .map(|i| PublishRequest::new(CloudEvent::new(format!("e{i}"), "/test", "t.happened")))
        .collect();
    b.publish("t", batch).await.expect("publish");
    let a = b
        .pull("t", "a", "c", 20, Duration::ZERO)
        .await
        .expect("pull a");
    let bs = b
        .pull("t", "b", "c", 20, Duration::ZERO)
        .await
        .expect("pull b");
    assert_eq!((a.len(), bs.len()), (20, 20));
    // All at once, so that they meet in one round of the ack queue; every lease of `a` twice.
    let acks = a.iter().chain(&bs).chain(&a).map(|d| b.ack(&d.token));
    let results = futures_util::future::join_all(acks).await;
    let (first, repeats) = results.split_at(40);
    assert!(first.iter().all(Result::is_ok), "{results:?}");
    assert!(
        repeats
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(BackendError::LeaseLost))),
        "{results:?}"
    );
    // Past the leases: nothing was left leased to come back.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    for g in ["a", "b"] {
        let again = b.pull("t", g, "c", 20, Duration::ZERO).await.expect("pull");
        assert!(
            again.is_empty(),
            "group {g} got {} events again",
            again.len()
        );
        let info = b.group_info("t", g).await.expect("info");
        assert_eq!(
            (info.pending, info.in_flight, info.acked_through),
            (0, 0, 20)
        );
    }
    h.close().await;
}

/// A stale token (its lease expired and the event leased again) acked beside the fresh one:
/// the fresh ack lands, the stale one is refused, whether or not they meet in one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_acked_beside_the_fresh_one_is_refused() {
    let h = PgHarness::new();
    let b = h.open().await;
    topic_with_groups(&b, &["g"]).await;
    b.publish(
        "t",
        vec![PublishRequest::new(CloudEvent::new(
            "e",
            "/test",
            "t.happened",
        ))],
    )
    .await
    .expect("publish");
    let old = b
        .pull("t", "g", "c", 1, Duration::ZERO)
        .await
        .expect("pull");
    assert_eq!(old.len(), 1);
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let fresh = b
        .pull("t", "g", "c", 1, Duration::from_secs(2))
        .await
        .expect("pull again");
    assert_eq!(fresh.len(), 1, "the expired lease must come back");
    assert_ne!(old[0].token.handle, fresh[0].token.handle);
    let (stale, ok) = tokio::join!(b.ack(&old[0].token), b.ack(&fresh[0].token));
    assert!(matches!(stale, Err(BackendError::LeaseLost)), "{stale:?}");
    assert!(matches!(ok, Ok(())), "{ok:?}");
    let info = b.group_info("t", "g").await.expect("info");
    assert_eq!((info.in_flight, info.acked_through), (0, 1));
    h.close().await;
}
