//! Seed 000 (the social-post coach) against a running `canon serve`: the streak service
//! consumes `challenge.completed` with the SDK's consumer runner and a PostgreSQL inbox, so a
//! retried completion awards the streak exactly once; push delivery into an axum app.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use canon_sdk::inbox::PgInbox;
use canon_sdk::remote::{Client, Consumer, PublishStatus, RemoteError, push_handler};
use canon_sdk::{CloudEvent, Dispatcher, Event, Reject};
use canon_server::config::{ApiKey, Config};
use serde_json::json;

use crate::catalogs::coach;

/// The PostgreSQL the tests use (`CANON_TEST_POSTGRES`, default the local trust-auth server).
pub(crate) fn postgres_url() -> String {
    std::env::var("CANON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:canon@127.0.0.1:5432/test".to_owned())
}

pub(crate) struct Server {
    pub(crate) running: Option<canon_server::Running>,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            listen: "127.0.0.1:0".to_owned(),
            data_dir: dir.path().to_path_buf(),
            catalogs: vec![
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../examples/catalogs/coach.yaml"),
            ],
            ..Config::default()
        };
        config.auth.api_keys = ["challenge-service", "streak-service", "analytics", "ops"]
            .iter()
            .map(|s| ApiKey {
                service: (*s).to_owned(),
                sha256: None,
                key: Some(format!("{s}-key")),
            })
            .collect();
        config.auth.admins = vec!["ops".to_owned()];
        let running = canon_server::start(config).await.expect("server starts");
        Server {
            base: format!("http://{}", running.addr),
            running: Some(running),
            _dir: dir,
        }
    }

    pub(crate) fn client(&self, service: &str) -> Client {
        Client::new(&self.base)
            .with_token(&format!("{service}-key"))
            .with_source(service)
    }

    /// `GET path` as `service`, the JSON answer.
    pub(crate) async fn get_json(&self, path: &str, service: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(format!("{service}-key"))
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("json")
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

fn completed(user: &str) -> coach::ChallengeCompletedV1 {
    coach::ChallengeCompletedV1 {
        user_id: user.into(),
        challenge_id: "c-42".into(),
        completed_at: "2026-11-22T08:30:00Z".into(),
        result: coach::ChallengeCompletedV1Result::Full,
        ring_earned: Some(true),
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_challenge_completion_awards_the_streak_exactly_once() {
    let server = Server::start().await;
    let challenges = server.client("challenge-service");
    let streaks = server.client("streak-service");
    let analytics = server.client("analytics");

    // The streak service's own table, beside the inbox, in one database.
    let (db, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (scripts/test starts it)");
    tokio::spawn(conn);
    let table = unique("coach_streaks");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (user_id text, day date, awards int, PRIMARY KEY (user_id, day))"
    ))
    .await
    .expect("table");
    let inbox = PgInbox::connect(
        &postgres_url(),
        &unique("streak-service"),
        Duration::from_secs(24 * 3600),
        4,
    )
    .await
    .expect("inbox");

    for (client, spec) in [
        (
            &streaks,
            json!({"name": "streak-awards", "topic": "challenge.completed", "lease_ms": 5000,
                   "retry": {"max_attempts": 5, "initial_backoff_ms": 20, "max_backoff_ms": 100}}),
        ),
        (
            &analytics,
            json!({"name": "analytics-streaks", "topic": "streak.incremented"}),
        ),
    ] {
        client.subscribe(&spec).await.expect("subscribe");
    }

    // The streak service: award once per completion (the inbox), emit streak.incremented.
    // Its first attempt dies after committing, before the ack: the event comes back.
    let d = Dispatcher::builder()
        .catalog(coach::catalog().clone())
        .dispatch_emitted(false)
        .build();
    let crash_once = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (inbox2, table2, crash, tries) = (
        inbox.clone(),
        table.clone(),
        crash_once.clone(),
        attempts.clone(),
    );
    d.on_async::<coach::ChallengeCompleted, _, _>("streak.award", "^1", move |c, cx| {
        let (inbox, table, crash, tries) =
            (inbox2.clone(), table2.clone(), crash.clone(), tries.clone());
        async move {
            tries.fetch_add(1, Ordering::SeqCst);
            let Some(tx) = inbox.begin(&cx).await? else {
                return Ok(()); // awarded already; what it emitted is emitted again
            };
            let day = c.completed_at.get(..10).unwrap_or_default().to_owned();
            tx.execute(
                &format!(
                    "INSERT INTO {table} VALUES ($1, $2::text::date, 1)
                     ON CONFLICT (user_id, day) DO UPDATE SET awards = {table}.awards + 1"
                ),
                &[&c.user_id, &day],
            )
            .await?;
            cx.emit(coach::StreakIncrementedV1 {
                user_id: c.user_id.clone(),
                streak_day: day,
                reason: coach::StreakIncrementedV1Reason::Challenge,
                protection_used: None,
            })?;
            tx.commit(&cx).await?;
            if crash.swap(false, Ordering::SeqCst) {
                return Err("connection lost after the commit".into());
            }
            Ok(())
        }
    })
    .expect("register");
    let consumer =
        Consumer::new(streaks.clone(), "streak-awards", d).wait(Duration::from_millis(200));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            consumer
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };

    // The challenge service publishes the completion, then retries it (a new event id).
    let first = challenges
        .publish(&completed("u-1"))
        .await
        .expect("publish");
    assert_eq!(first.status, PublishStatus::Stored);
    let retry = challenges.publish(&completed("u-1")).await.expect("retry");
    assert_eq!(retry.status, PublishStatus::Duplicate);
    assert_eq!(retry.sequence, first.sequence);

    eventually("the completion is acknowledged", async || {
        consumer.stats().acked == 1
    })
    .await;
    stop_tx.send(()).expect("stop");
    let stats = runner.await.expect("join").expect("run");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!((stats.delivered, stats.acked, stats.nacked), (2, 1, 1));

    let awards: i32 = db
        .query_one(
            &format!("SELECT awards FROM {table} WHERE user_id = 'u-1'"),
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(awards, 1, "the streak is awarded exactly once");

    // streak.incremented reached the server once, caused by the completion.
    let got = analytics
        .pull("analytics-streaks", 10, Duration::from_secs(2), "a")
        .await
        .expect("pull");
    assert_eq!(got.len(), 1);
    let ev = CloudEvent::from_json(got[0].event.get().as_bytes()).expect("event");
    assert_eq!(ev.ty, coach::StreakIncremented::TYPE);
    assert_eq!(ev.causation_id(), first.id.as_deref());
    assert_eq!(ev.correlation_id(), first.id.as_deref());
    let more = analytics
        .pull("analytics-streaks", 10, Duration::from_millis(300), "a")
        .await
        .expect("pull");
    assert!(more.is_empty(), "one streak.incremented only: {more:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_unhandled_events_go_to_the_dlq_and_refusals_are_problems() {
    let server = Server::start().await;
    let challenges = server.client("challenge-service");
    let streaks = server.client("streak-service");
    streaks
        .subscribe(&json!({"name": "strict", "topic": "challenge.completed"}))
        .await
        .expect("subscribe");
    let d = Dispatcher::builder().dispatch_emitted(false).build();
    d.on::<coach::ChallengeCompleted, _>("picky", "^1", |c, _| {
        if c.user_id == "banned" {
            return Err(Reject("user is banned".into()).into());
        }
        Ok(())
    })
    .expect("register");
    let consumer = Consumer::new(streaks.clone(), "strict", d).wait(Duration::from_millis(100));
    challenges
        .publish(&completed("banned"))
        .await
        .expect("publish");
    challenges
        .publish(&completed("fine"))
        .await
        .expect("publish");
    let run = consumer.run(tokio::time::sleep(Duration::from_millis(800)));
    let stats = run.await.expect("run");
    assert_eq!((stats.acked, stats.rejected), (1, 1));

    // The DLQ holds the rejected one with its reason.
    let dlq: serde_json::Value = server
        .get_json("/v1/subscriptions/strict/dlq", "streak-service")
        .await;
    let text = dlq.to_string();
    assert!(text.contains("user is banned"), "{text}");

    // A producer the catalog does not name is refused with the server's problem code.
    let err = streaks
        .publish(&completed("x"))
        .await
        .expect_err("streak-service does not produce challenge.completed");
    match err {
        RemoteError::Problem { status, code, .. } => {
            assert_eq!((status, code.as_str()), (403, "forbidden"));
        }
        other => panic!("unexpected {other}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_deliveries_reach_the_axum_handler() {
    let server = Server::start().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let d = Dispatcher::builder().dispatch_emitted(false).build();
    let h = handled.clone();
    d.on::<coach::ChallengeCompleted, _>("push", "^1", move |c, cx| {
        if c.user_id == "flaky" && h.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("first try fails".into());
        }
        cx.emit(coach::StreakIncrementedV1 {
            user_id: c.user_id.clone(),
            streak_day: "2026-11-22".into(),
            reason: coach::StreakIncrementedV1Reason::Challenge,
            protection_used: None,
        })?;
        h.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");
    let app: axum::Router =
        axum::Router::new().route("/events", push_handler(d, server.client("streak-service")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let analytics = server.client("analytics");
    analytics
        .subscribe(&json!({"name": "pushed-streaks", "topic": "streak.incremented"}))
        .await
        .expect("subscribe");
    let streaks = server.client("streak-service");
    streaks
        .subscribe(&json!({"name": "pushed", "topic": "challenge.completed",
            "retry": {"max_attempts": 5, "initial_backoff_ms": 20, "max_backoff_ms": 50},
            "push": {"url": format!("http://{addr}/events")}}))
        .await
        .expect("subscribe");
    let challenges = server.client("challenge-service");
    challenges
        .publish(&completed("flaky"))
        .await
        .expect("publish");
    eventually("the retried push succeeds", async || {
        handled.load(Ordering::SeqCst) >= 2
    })
    .await;
    eventually("the delivery is acknowledged", async || {
        let s = server
            .get_json("/v1/subscriptions/pushed", "streak-service")
            .await;
        s["pending"] == 0 && s["in_flight"] == 0
    })
    .await;
    let status = server
        .get_json("/v1/subscriptions/pushed", "streak-service")
        .await;
    assert_eq!(
        status["dead_letters"], 0,
        "the retried event was not dead-lettered"
    );
    // What the handler emitted was published by the push handler, once.
    let got = analytics
        .pull("pushed-streaks", 10, Duration::from_secs(2), "a")
        .await
        .expect("pull");
    assert_eq!(got.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_lease_and_shutdown_waits_for_it() {
    let server = Server::start().await;
    let streaks = server.client("streak-service");
    streaks
        .subscribe(&json!({"name": "slow", "topic": "challenge.completed", "lease_ms": 400}))
        .await
        .expect("subscribe");
    let attempts = Arc::new(AtomicUsize::new(0));
    let d = Dispatcher::builder().dispatch_emitted(false).build();
    let a = attempts.clone();
    d.on_async::<coach::ChallengeCompleted, _, _>("slow", "^1", move |_, _| {
        let a = a.clone();
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            // Three times the lease: the runner extends it meanwhile.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok(())
        }
    })
    .expect("register");
    server
        .client("challenge-service")
        .publish(&completed("u-slow"))
        .await
        .expect("publish");
    let consumer = Consumer::new(streaks.clone(), "slow", d).wait(Duration::from_millis(100));
    let started = std::time::Instant::now();
    // Shutdown is asked for while the handler works; the run ends only after it settles.
    let stats = consumer
        .run(tokio::time::sleep(Duration::from_millis(300)))
        .await
        .expect("run");
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!((stats.delivered, stats.acked), (1, 1));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "no redelivery while extended"
    );
    let s: serde_json::Value = server
        .get_json("/v1/subscriptions/slow", "streak-service")
        .await;
    assert_eq!(
        (s["pending"].as_u64(), s["in_flight"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_publishes_batches_atomically() {
    use canon_sdk::Event as _;
    let server = Server::start().await;
    let challenges = server.client("challenge-service");
    let meta = canon_sdk::Meta::root();
    let events: Vec<CloudEvent> = ["b-1", "b-2"]
        .iter()
        .map(|u| {
            let e = completed(u);
            let mut ce = CloudEvent::new(
                format!("{u}-id"),
                "challenge-service",
                coach::ChallengeCompleted::TYPE,
            );
            ce.data = canon_envelope::Data::json(serde_json::to_string(&e).expect("json")).ok();
            ce.set_extension("correlationid", meta.correlation_id.to_string());
            ce
        })
        .collect();
    let results = challenges.publish_batch(&events).await.expect("batch");
    assert_eq!(
        results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![PublishStatus::Stored, PublishStatus::Stored]
    );
    // One invalid event: the whole batch is refused with per-event reasons, nothing stored.
    let mut bad = events.clone();
    bad[0].id = "b-3-id".into();
    bad[1].id = "b-4-id".into();
    bad[1].data = canon_envelope::Data::json(r#"{"userId":"x"}"#).ok();
    match challenges.publish_batch(&bad).await {
        Err(RemoteError::Problem {
            status, code, body, ..
        }) => {
            assert_eq!((status, code.as_str()), (422, "rejected"));
            assert_eq!(body["results"][0]["status"], "not-stored");
            assert_eq!(body["results"][1]["status"], "rejected");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.stop().await;
}
