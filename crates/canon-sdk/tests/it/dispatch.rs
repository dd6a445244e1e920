//! The in-process dispatcher: version ranges, isolation, reporting, the event log,
//! registration, sync and async handlers, causation and the catalog's side-effect rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use canon_sdk::{
    AsyncContext, Context, Dispatcher, EmitError, Event, EventLog, HandlerResult, RawEvent, Rule,
};
use serde::{Deserialize, Serialize};

use crate::catalogs::coach;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[canon(type = "order.placed", version = "1.0")]
struct OrderPlacedV1 {
    #[canon(aggregate, idempotency)]
    order_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[canon(type = "order.placed", version = "2.1")]
struct OrderPlacedV2 {
    #[canon(aggregate, idempotency)]
    order_id: String,
    #[canon(idempotency)]
    amount_cents: i64,
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(c: &Arc<AtomicUsize>) -> usize {
    c.load(Ordering::SeqCst)
}

#[test]
fn derived_events_know_their_name_version_and_keys() {
    let v2 = OrderPlacedV2 {
        order_id: "o-1".into(),
        amount_cents: 1250,
    };
    assert_eq!(OrderPlacedV2::TYPE, "order.placed");
    assert_eq!(OrderPlacedV2::VERSION, "2.1");
    assert_eq!(OrderPlacedV2::SEMVER, canon_sdk::Version::new(2, 1, 0));
    assert_eq!(v2.aggregate_key().as_deref(), Some("o-1"));
    assert_eq!(
        v2.idempotency_key().as_deref(),
        Some(r#"["order.placed","o-1",1250]"#)
    );
}

#[test]
fn handlers_receive_only_the_versions_their_range_accepts() {
    let d = Dispatcher::new();
    let (v1, v2, any) = (counter(), counter(), counter());
    let c = v1.clone();
    d.on::<OrderPlacedV1, _>("v1", ">=1.0, <2.0", move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");
    let c = v2.clone();
    d.on::<OrderPlacedV2, _>("v2", "^2", move |e, _| {
        assert_eq!(e.amount_cents, 1250);
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");
    // A v1 reader accepting every version reads v2 events too (decoded into its own type).
    let c = any.clone();
    d.on::<OrderPlacedV1, _>("any", "*", move |e, _| {
        assert_eq!(e.order_id, "o-1");
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");

    let r = d.publish(OrderPlacedV1 {
        order_id: "o-1".into(),
    });
    assert_eq!((r.handled, r.is_ok()), (2, true));
    let r = d.publish(OrderPlacedV2 {
        order_id: "o-1".into(),
        amount_cents: 1250,
    });
    assert_eq!((r.handled, r.is_ok()), (2, true));
    assert_eq!((count(&v1), count(&v2), count(&any)), (1, 1, 2));
}

#[test]
fn an_event_no_range_accepts_is_reported_not_dropped() {
    let log = EventLog::new();
    let d = Dispatcher::builder().log(log.clone()).build();
    d.on::<OrderPlacedV1, _>("v1", "^1", |_, _| Ok(()))
        .expect("register");
    let r = d.publish(OrderPlacedV2 {
        order_id: "o-2".into(),
        amount_cents: 1,
    });
    assert!(r.unhandled);
    assert!(!r.is_ok());
    assert_eq!(r.handled, 0);
    assert_eq!(r.version, "2.1");
    let entries = log.entries();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].outcome.unhandled);
}

#[test]
fn a_bad_range_is_refused_at_registration() {
    let d = Dispatcher::new();
    let err = d
        .on::<OrderPlacedV1, _>("bad", "about 1", |_, _| Ok(()))
        .expect_err("refused");
    assert!(err.to_string().contains("\"about 1\""), "{err}");
    assert_eq!(d.handlers_of("order.placed"), 0);
}

#[test]
fn a_failing_or_panicking_handler_never_stops_the_others() {
    let d = Dispatcher::new();
    let ran = counter();
    d.on::<OrderPlacedV1, _>("fails", "*", |_, _| Err("database is down".into()))
        .expect("register");
    d.on::<OrderPlacedV1, _>("panics", "*", |_, _| panic!("boom"))
        .expect("register");
    let c = ran.clone();
    d.on::<OrderPlacedV1, _>("works", "*", move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");
    let r = d.publish(OrderPlacedV1 {
        order_id: "o-3".into(),
    });
    assert_eq!(count(&ran), 1);
    assert_eq!(r.handled, 1);
    assert!(!r.is_ok());
    let failures: Vec<(String, String, bool)> = r
        .failures
        .iter()
        .map(|f| (f.handler.to_string(), f.error.to_string(), f.panicked))
        .collect();
    assert_eq!(
        failures,
        vec![
            ("fails".into(), "database is down".into(), false),
            ("panics".into(), "handler panicked: boom".into(), true),
        ]
    );
}

#[test]
fn handlers_can_be_unregistered_and_cleared() {
    let d = Dispatcher::new();
    let a = d
        .on::<OrderPlacedV1, _>("a", "*", |_, _| Ok(()))
        .expect("register");
    d.on::<OrderPlacedV1, _>("b", "*", |_, _| Ok(()))
        .expect("register");
    assert_eq!(d.handlers_of("order.placed"), 2);
    assert!(d.off(a));
    assert!(!d.off(a));
    let r = d.publish(OrderPlacedV1 {
        order_id: "x".into(),
    });
    assert_eq!(r.handled, 1);
    d.clear();
    assert_eq!(d.handlers_of("order.placed"), 0);
    assert!(
        d.publish(OrderPlacedV1 {
            order_id: "x".into()
        })
        .unhandled
    );
}

#[test]
fn the_event_log_records_what_was_dispatched() {
    let log = EventLog::new();
    let d = Dispatcher::builder().log(log.clone()).build();
    d.on::<OrderPlacedV1, _>("ok", "*", |_, _| Ok(()))
        .expect("register");
    d.on::<OrderPlacedV1, _>("no", "*", |_, _| Err("nope".into()))
        .expect("register");
    let _ = d.publish(OrderPlacedV1 {
        order_id: "o-9".into(),
    });
    assert_eq!(log.types(), vec!["order.placed"]);
    assert_eq!(
        log.of_type::<OrderPlacedV1>(),
        vec![OrderPlacedV1 {
            order_id: "o-9".into()
        }]
    );
    let e = &log.entries()[0];
    assert_eq!(e.outcome.handled_by, vec![Arc::<str>::from("ok")]);
    assert_eq!(
        e.outcome.failed,
        vec![(Arc::<str>::from("no"), "nope".to_owned())]
    );
    log.clear();
    assert!(log.is_empty());
}

fn streak(day: &str) -> coach::StreakIncrementedV1 {
    coach::StreakIncrementedV1 {
        user_id: "u-1".into(),
        streak_day: day.into(),
        reason: coach::StreakIncrementedV1Reason::Challenge,
        protection_used: None,
    }
}

fn completed() -> coach::ChallengeCompletedV1 {
    coach::ChallengeCompletedV1 {
        user_id: "u-1".into(),
        challenge_id: "c-7".into(),
        completed_at: "2026-11-22T10:00:00Z".into(),
        result: coach::ChallengeCompletedV1Result::Full,
        ring_earned: Some(true),
    }
}

#[test]
fn emitted_events_carry_causation_and_correlation() {
    let log = EventLog::new();
    let d = Dispatcher::builder().log(log.clone()).build();
    d.on::<coach::ChallengeCompleted, _>("streak", "^1", |e, cx| {
        cx.emit(coach::StreakIncrementedV1 {
            user_id: e.user_id.clone(),
            ..streak("2026-11-22")
        })?;
        Ok(())
    })
    .expect("register");
    d.on::<coach::StreakIncremented, _>("analytics", "^1", |_, _| Ok(()))
        .expect("register");
    let r = d.publish(completed());
    assert!(r.is_ok(), "{r:?}");
    let entries = log.entries();
    assert_eq!(
        log.types(),
        vec!["challenge.completed", "streak.incremented"]
    );
    let (root, child) = (&entries[0].meta, &entries[1].meta);
    assert_eq!(root.correlation_id, root.id);
    assert_eq!(child.causation_id.as_ref(), Some(&root.id));
    assert_eq!(child.correlation_id, root.id);
    assert_eq!(r.emitted.len(), 1);
    assert_eq!(r.emitted[0].meta.id, child.id);
    assert_eq!(r.emitted[0].report.as_ref().map(|r| r.handled), Some(1));
}

#[test]
fn a_handler_of_streak_incremented_cannot_emit_a_streak_mutation() {
    let d = Dispatcher::new();
    let refusal = Arc::new(std::sync::Mutex::new(None));
    let seen = refusal.clone();
    d.on::<coach::StreakIncremented, _>("greedy", "*", move |e, cx| {
        let err = cx
            .emit(streak(&e.streak_day))
            .expect_err("seed 000 forbids streak mutations here");
        *seen.lock().expect("lock") = Some(err.to_string());
        match err {
            EmitError::Forbidden(ref b) => assert_eq!(b.rule, Rule::MustNotEmit),
            ref other => panic!("unexpected {other}"),
        }
        Err(err.into())
    })
    .expect("register");
    let r = d.publish(streak("2026-11-22"));
    assert_eq!(r.failures.len(), 1);
    assert!(r.emitted.is_empty());
    let message = refusal.lock().expect("lock").clone().expect("refused");
    assert_eq!(
        message,
        "a handler of streak.incremented must not emit streak.incremented (rule handlers.must_not_emit of streak.incremented): No additional streak mutations; emit analytics only."
    );
}

#[test]
fn emits_of_a_failing_handler_are_not_released() {
    let d = Dispatcher::new();
    let downstream = counter();
    d.on::<coach::ChallengeCompleted, _>("half-done", "*", |_, cx| {
        cx.emit(streak("2026-11-22"))?;
        Err("crashed after emitting".into())
    })
    .expect("register");
    let c = downstream.clone();
    d.on::<coach::StreakIncremented, _>("analytics", "*", move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .expect("register");
    let r = d.publish(completed());
    assert!(r.emitted.is_empty());
    assert_eq!(count(&downstream), 0);
}

#[test]
fn a_handler_loop_stops_at_the_depth_limit() {
    #[derive(Debug, Serialize, Deserialize, Event)]
    #[canon(type = "ping", version = "1")]
    struct Ping {}
    #[derive(Debug, Serialize, Deserialize, Event)]
    #[canon(type = "pong", version = "1")]
    struct Pong {}
    let d = Dispatcher::builder().max_depth(5).build();
    d.on::<Ping, _>("ping", "*", |_, cx| {
        cx.emit(Pong {}).map(drop).map_err(Into::into)
    })
    .expect("register");
    d.on::<Pong, _>("pong", "*", |_, cx| {
        cx.emit(Ping {}).map(drop).map_err(Into::into)
    })
    .expect("register");
    let r = d.publish(Ping {});
    let all = r.walk();
    assert_eq!(all.len(), 7);
    let last = all.last().expect("last");
    assert_eq!(last.handled, 0);
    assert!(last.failures[0].error.to_string().contains("deeper than 5"));
    assert!(!r.is_ok());
}

#[tokio::test]
async fn async_handlers_run_concurrently_and_beside_sync_ones() {
    let d = Dispatcher::new();
    // Four handlers that each wait for all four: run one after another, they would never
    // finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    for i in 0..4 {
        let b = barrier.clone();
        d.on_async::<OrderPlacedV1, _, _>(&format!("meet-{i}"), "*", move |_, cx| {
            let b = b.clone();
            async move {
                b.wait().await;
                assert!(cx.handler().starts_with("meet-"));
                Ok(())
            }
        })
        .expect("register");
    }
    d.on::<OrderPlacedV1, _>("sync", "*", |_, _: &mut Context<'_>| Ok(()))
        .expect("register");
    d.on_async::<OrderPlacedV1, _, _>("fails", "*", |_, _| async {
        Err::<(), _>("async failure".into())
    })
    .expect("register");
    d.on_async::<OrderPlacedV1, _, _>("panics", "*", |_, _| async { panic!("async boom") })
        .expect("register");
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        d.publish_async(OrderPlacedV1 {
            order_id: "o-4".into(),
        }),
    )
    .await
    .expect("the async handlers ran concurrently");
    assert_eq!(r.handled, 5);
    let mut errors: Vec<String> = r.failures.iter().map(|f| f.error.to_string()).collect();
    errors.sort();
    assert_eq!(
        errors,
        vec!["async failure", "handler panicked: async boom"]
    );
}

#[test]
fn the_synchronous_mode_drives_async_handlers_too() {
    let d = Dispatcher::new();
    let ran = counter();
    let c = ran.clone();
    d.on_async::<OrderPlacedV1, _, _>("async", "^1", move |e, cx| {
        let c = c.clone();
        async move {
            assert_eq!(e.order_id, "o-5");
            cx.emit(OrderPlacedV2 {
                order_id: "o-5".into(),
                amount_cents: 5,
            })?;
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .expect("register");
    d.on::<OrderPlacedV2, _>("v2", "^2", |_, _| Ok(()))
        .expect("register");
    let r = d.publish(OrderPlacedV1 {
        order_id: "o-5".into(),
    });
    assert_eq!(count(&ran), 1);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.emitted[0].report.as_ref().map(|r| r.handled), Some(1));
}

#[test]
fn raw_events_from_the_wire_get_typed_handlers_and_their_catalog_rules() {
    let catalog = crate::catalogs::coach::catalog().clone();
    let d = Dispatcher::builder().catalog(catalog.clone()).build();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    d.on::<coach::StreakIncremented, _>("raw-reader", "^1", move |e, cx| {
        g.lock().expect("lock").push(e.streak_day.clone());
        assert!(cx.emit(streak("2026-11-23")).is_err());
        Ok(())
    })
    .expect("register");
    let ce = canon_sdk::CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"e-1","source":"streak-service","type":"streak.incremented",
            "correlationid":"corr-1","data":{"userId":"u-1","streakDay":"2026-11-22","reason":"post"}}"#,
    )
    .expect("event");
    let r = d.dispatch_blocking(RawEvent::new(ce, &[catalog]));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.event_id.to_string(), "e-1");
    assert_eq!(*got.lock().expect("lock"), vec!["2026-11-22".to_owned()]);
}

#[test]
fn json_handlers_serve_types_named_at_run_time() {
    let d = Dispatcher::new();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    d.on_json("dyn", "order.placed", "^1", move |payload, _| {
        *s.lock().expect("lock") = payload.get("order_id").cloned();
        Ok(())
    })
    .expect("register");
    let r = d.publish(OrderPlacedV1 {
        order_id: "o-6".into(),
    });
    assert_eq!(r.handled, 1);
    assert_eq!(
        seen.lock().expect("lock").clone(),
        Some(serde_json::json!("o-6"))
    );
}

struct Totals(std::sync::Mutex<i64>);

impl canon_sdk::Handler<OrderPlacedV2> for Arc<Totals> {
    fn handle(&self, e: &OrderPlacedV2, _: &mut Context<'_>) -> HandlerResult {
        *self.0.lock().expect("lock") += e.amount_cents;
        Ok(())
    }
}

struct AsyncTotals(Arc<Totals>);

impl canon_sdk::AsyncHandler<OrderPlacedV2> for AsyncTotals {
    async fn handle(&self, e: Arc<OrderPlacedV2>, _: AsyncContext) -> HandlerResult {
        tokio::task::yield_now().await;
        *self.0.0.lock().expect("lock") += 1000 * e.amount_cents;
        Ok(())
    }
}

#[tokio::test]
async fn handlers_can_be_types_implementing_the_handler_traits() {
    let totals = Arc::new(Totals(std::sync::Mutex::new(0)));
    let d = Dispatcher::new();
    d.register::<OrderPlacedV2>("sum", "^2", totals.clone())
        .expect("register");
    d.register_async::<OrderPlacedV2>("sum-async", "^2", AsyncTotals(totals.clone()))
        .expect("register");
    let r = d
        .publish_async(OrderPlacedV2 {
            order_id: "o-7".into(),
            amount_cents: 3,
        })
        .await;
    assert_eq!(r.handled, 2);
    assert_eq!(*totals.0.lock().expect("lock"), 3003);
}

#[test]
fn an_emit_outside_may_emit_is_refused_naming_the_rule() {
    use crate::catalogs::lifeos;
    let d = Dispatcher::new();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s = seen.clone();
    d.on::<lifeos::QuestCompleted, _>("cheat", "*", move |q, cx| {
        let err = cx
            .emit(lifeos::LevelUpV1_0_0 {
                user_id: q.user_id,
                previous_level: 1,
                new_level: 2,
                total_experience: 100,
                leveled_up_at: q.completion_timestamp.clone(),
            })
            .expect_err("LevelUp is not in QuestCompleted's may_emit");
        if let EmitError::Forbidden(b) = &err {
            assert_eq!(b.rule, Rule::MayEmit);
        }
        *s.lock().expect("lock") = err.to_string();
        Ok(())
    })
    .expect("register");
    let _ = d.publish(lifeos::QuestCompletedV1_0_0 {
        user_id: 1,
        quest_id: 2,
        quest_type: lifeos::QuestCompletedV1_0_0QuestType::Side,
        experience_reward: 5,
        completion_timestamp: "2026-11-22T09:00:00Z".into(),
        auto_completed: true,
    });
    assert!(
        seen.lock()
            .expect("lock")
            .starts_with("a handler of QuestCompleted may not emit LevelUp: it is not in handlers.may_emit of QuestCompleted"),
        "{}",
        seen.lock().expect("lock")
    );
}

#[test]
fn with_validation_an_invalid_emit_is_refused_even_for_a_derived_type() {
    #[derive(Debug, Serialize, Deserialize, Event)]
    #[canon(type = "streak.incremented", version = "1")]
    struct HandMade {
        #[serde(rename = "userId")]
        user_id: String,
        #[serde(rename = "streakDay")]
        streak_day: String,
        reason: String,
    }
    let d = Dispatcher::builder()
        .catalog(coach::catalog().clone())
        .validate(true)
        .build();
    d.on::<coach::ChallengeCompleted, _>("streak", "*", |c, cx| {
        let err = cx
            .emit(HandMade {
                user_id: c.user_id.clone(),
                streak_day: "not a date".into(),
                reason: "luck".into(),
            })
            .expect_err("invalid");
        let EmitError::Invalid(invalid) = err else {
            panic!("expected a validation error, got {err}");
        };
        let codes: Vec<&str> = invalid.0.iter().map(|v| v.code).collect();
        assert_eq!(codes, vec!["payload-enum", "payload-format"]);
        Ok(())
    })
    .expect("register");
    assert!(d.publish(completed()).is_ok());
}

#[test]
fn without_a_consent_provider_handlers_needing_consent_do_not_run() {
    #[derive(Debug, Serialize, Deserialize, Event)]
    #[canon(
        type = "diary.written",
        version = "1",
        consent = "journaling",
        personal_data
    )]
    struct DiaryWritten {
        text: String,
    }
    let audit = canon_sdk::MemoryAudit::new();
    let d = Dispatcher::builder().audit(audit.clone()).build();
    d.on::<DiaryWritten, _>("insights", "*", |_, _| Ok(()))
        .expect("register");
    let r = d.publish(DiaryWritten {
        text: "dear diary".into(),
    });
    assert_eq!((r.handled, r.skipped.as_deref()), (0, Some("journaling")));
    // The same for the event arriving raw, with no catalog: the typed handler's facts apply.
    let ce = canon_sdk::CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"d-1","source":"s","type":"diary.written","data":{"text":"x"}}"#,
    )
    .expect("event");
    let r = d.dispatch_blocking(RawEvent::new(ce, &[]));
    assert_eq!((r.handled, r.skipped.as_deref()), (0, Some("journaling")));
    assert_eq!(audit.records().len(), 2);
}

#[test]
fn a_failed_handler_is_audited_with_its_error() {
    let audit = canon_sdk::MemoryAudit::new();
    let d = Dispatcher::builder().audit(audit.clone()).build();
    d.on::<coach::ChallengeCompleted, _>("award", "*", |_, _| Err("db down".into()))
        .expect("register");
    let _ = d.publish(completed());
    let records = audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(&*records[0].handler, "award");
    assert_eq!(
        records[0].outcome,
        canon_sdk::AuditOutcome::Failed("db down".into())
    );
}

#[test]
fn a_type_with_a_version_suffix_reaches_the_handlers_of_its_declared_name() {
    use crate::catalogs::bme;
    let d = Dispatcher::builder()
        .catalog(bme::catalog().clone())
        .build();
    let got = Arc::new(std::sync::Mutex::new(None));
    let g = got.clone();
    d.on::<bme::MoneyTransactionCreated, _>("insights", "^1", move |t, _| {
        *g.lock().expect("lock") = Some(t.amount);
        Ok(())
    })
    .expect("register");
    let ce = canon_sdk::CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"t-1","source":"money-service","type":"money.TransactionCreated.v1",
            "data":{"id":"tx-1","date":"2026-11-22","type":"expense","amount":12.5,"currency":"EUR","category":"food"}}"#,
    )
    .expect("event");
    let r = d.dispatch_blocking(RawEvent::new(ce, d.catalogs()));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(*got.lock().expect("lock"), Some(12.5));
}

#[test]
fn two_handlers_of_a_type_may_not_share_a_name() {
    let d = Dispatcher::new();
    d.on::<OrderPlacedV1, _>("same", "*", |_, _| Ok(()))
        .expect("register");
    let err = d
        .on::<OrderPlacedV2, _>("same", "*", |_, _| Ok(()))
        .expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "a handler named same is already registered for order.placed"
    );
}
