//! The PostgreSQL inbox on the real server: the processed key commits with the handler's own
//! writes, concurrent deliveries of one key do the work once, a rolled-back attempt frees the
//! key, and keys expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canon_sdk::Dispatcher;
use canon_sdk::inbox::PgInbox;

use crate::catalogs::coach;
use crate::remote::postgres_url;

async fn db() -> tokio_postgres::Client {
    let (db, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (scripts/test starts it)");
    tokio::spawn(conn);
    db
}

fn name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

fn completion(challenge: &str) -> coach::ChallengeCompletedV1 {
    coach::ChallengeCompletedV1 {
        user_id: "u-1".into(),
        challenge_id: challenge.into(),
        completed_at: "2026-11-22T08:30:00Z".into(),
        result: coach::ChallengeCompletedV1Result::Full,
        ring_earned: None,
    }
}

/// A dispatcher whose handler adds one row per completion through the inbox; `fail` makes
/// the handler fail after its write (so the transaction rolls back).
async fn setup(ttl: Duration) -> (Dispatcher, tokio_postgres::Client, String, Arc<AtomicBool>) {
    let db = db().await;
    let table = name("awards");
    db.batch_execute(&format!("CREATE TABLE {table} (challenge text)"))
        .await
        .expect("table");
    let inbox = PgInbox::connect(&postgres_url(), &name("consumer"), ttl, 4)
        .await
        .expect("inbox");
    let fail = Arc::new(AtomicBool::new(false));
    let d = Dispatcher::new();
    let (t, f) = (table.clone(), fail.clone());
    d.on_async::<coach::ChallengeCompleted, _, _>("award", "^1", move |c, cx| {
        let (inbox, table, fail) = (inbox.clone(), t.clone(), f.clone());
        async move {
            let Some(tx) = inbox.begin(&cx).await? else {
                return Ok(());
            };
            tx.execute(
                &format!("INSERT INTO {table} VALUES ($1)"),
                &[&c.challenge_id],
            )
            .await?;
            // Hold the transaction a moment so concurrent deliveries overlap.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fail.load(Ordering::SeqCst) {
                return Err("failed before the commit".into());
            }
            tx.commit(&cx).await?;
            Ok(())
        }
    })
    .expect("register");
    (d, db, table, fail)
}

async fn rows(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_key_do_the_work_once() {
    let (d, db, table, _) = setup(Duration::from_secs(60)).await;
    let reports =
        futures_util::future::join_all((0..4).map(|_| d.publish_async(completion("c-1")))).await;
    assert!(reports.iter().all(canon_sdk::Report::is_ok));
    assert_eq!(rows(&db, &table).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_attempt_frees_the_key_for_the_next_delivery() {
    let (d, db, table, fail) = setup(Duration::from_secs(60)).await;
    fail.store(true, Ordering::SeqCst);
    let r = d.publish_async(completion("c-2")).await;
    assert_eq!(r.failures.len(), 1);
    assert_eq!(
        rows(&db, &table).await,
        0,
        "the write rolled back with the key"
    );
    fail.store(false, Ordering::SeqCst);
    assert!(d.publish_async(completion("c-2")).await.is_ok());
    assert!(d.publish_async(completion("c-2")).await.is_ok());
    assert_eq!(rows(&db, &table).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_may_be_processed_again_after_its_time_to_live() {
    let (d, db, table, _) = setup(Duration::from_millis(200)).await;
    assert!(d.publish_async(completion("c-3")).await.is_ok());
    assert!(d.publish_async(completion("c-3")).await.is_ok());
    assert_eq!(rows(&db, &table).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.publish_async(completion("c-3")).await.is_ok());
    assert_eq!(rows(&db, &table).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handler_of_an_event_has_its_own_key() {
    let db = db().await;
    let table = name("effects");
    db.batch_execute(&format!("CREATE TABLE {table} (handler text)"))
        .await
        .expect("table");
    let inbox = PgInbox::connect(&postgres_url(), &name("shared"), Duration::from_secs(60), 4)
        .await
        .expect("inbox");
    let d = Dispatcher::new();
    for handler in ["streaks", "momentum"] {
        let (inbox, table) = (inbox.clone(), table.clone());
        d.on_async::<coach::ChallengeCompleted, _, _>(handler, "^1", move |_, cx| {
            let (inbox, table) = (inbox.clone(), table.clone());
            async move {
                let Some(tx) = inbox.begin(&cx).await? else {
                    return Ok(());
                };
                tx.execute(
                    &format!("INSERT INTO {table} VALUES ($1)"),
                    &[&cx.handler()],
                )
                .await?;
                tx.commit(&cx).await?;
                Ok(())
            }
        })
        .expect("register");
    }
    assert!(d.publish_async(completion("c-4")).await.is_ok());
    assert!(d.publish_async(completion("c-4")).await.is_ok());
    let mut done: Vec<String> = db
        .query(&format!("SELECT handler FROM {table}"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    done.sort();
    assert_eq!(done, vec!["momentum", "streaks"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_forgotten_and_pruned() {
    let db = db().await;
    let consumer = name("pruned");
    let inbox = PgInbox::connect(&postgres_url(), &consumer, Duration::from_millis(100), 2)
        .await
        .expect("inbox");
    let d = Dispatcher::new();
    let key = Arc::new(std::sync::Mutex::new(String::new()));
    let (i, k) = (inbox.clone(), key.clone());
    d.on_async::<coach::ChallengeCompleted, _, _>("award", "^1", move |_, cx| {
        let (inbox, key) = (i.clone(), k.clone());
        async move {
            *key.lock().expect("lock") = cx.inbox_key();
            if let Some(tx) = inbox.begin(&cx).await? {
                tx.commit(&cx).await?;
            }
            Ok(())
        }
    })
    .expect("register");
    assert!(d.publish_async(completion("c-5")).await.is_ok());
    let k = key.lock().expect("lock").clone();
    assert!(k.starts_with("award "), "{k}");
    assert!(inbox.processed(&k).await.expect("processed"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!inbox.processed(&k).await.expect("processed"), "expired");
    assert!(inbox.prune().await.expect("prune") >= 1);
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM canon_inbox WHERE consumer = $1",
            &[&consumer],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}
