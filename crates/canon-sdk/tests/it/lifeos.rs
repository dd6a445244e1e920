//! Seed 003 (Life OS) in process: the quest -> experience -> achievement workflow across
//! bounded contexts, with consent for journaling and an audit trail of personal data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canon_sdk::inbox::MemoryInbox;
use canon_sdk::{AuditOutcome, Dispatcher, EventLog, MemoryAudit, Meta};

use crate::catalogs::lifeos::{self, *};

const NOW: &str = "2026-11-22T09:00:00Z";

/// The core context: experience totals per user, awarded once per quest completion.
#[derive(Default)]
struct Core {
    totals: Mutex<HashMap<i64, i64>>,
}

fn level_of(total: i64) -> i64 {
    1 + total / 100
}

/// Wires the contexts of seed 003 into one dispatcher, as the modular monolith does.
fn life_os(log: &EventLog, audit: &MemoryAudit, consented: Arc<Mutex<Vec<i64>>>) -> Dispatcher {
    let d = Dispatcher::builder()
        .catalog(lifeos::catalog().clone())
        .validate(true)
        .log(log.clone())
        .audit(audit.clone())
        .consent(move |purpose: &str, ev: &canon_sdk::EventView<'_>| {
            purpose == "journaling"
                && ev
                    .aggregate_key()
                    .and_then(|k| k.parse::<i64>().ok())
                    .is_some_and(|u| consented.lock().expect("lock").contains(&u))
        })
        .build();
    let core = Arc::new(Core::default());
    let inbox = MemoryInbox::new(Duration::from_secs(3600));

    // core: a completed quest awards its experience exactly once, and may level the user up.
    let c = Arc::clone(&core);
    d.on::<QuestCompleted, _>(
        "core.award_quest_experience",
        ">=1.0.0, <2.0.0",
        move |q, cx| {
            let Some(claim) = inbox.claim(&cx.inbox_key())? else {
                return Ok(()); // already awarded for this completion
            };
            let total = {
                let mut totals = c.totals.lock().expect("lock");
                let t = totals.entry(q.user_id).or_default();
                *t += q.experience_reward;
                *t
            };
            cx.emit(ExperienceAwardedV1_0_0 {
                user_id: q.user_id,
                amount: q.experience_reward,
                source: ExperienceAwardedV1_0_0Source::Quest,
                source_id: q.quest_id,
                total_experience: total,
                awarded_at: q.completion_timestamp.clone(),
            })?;
            claim.commit();
            Ok(())
        },
    )
    .expect("register");

    // core: experience crossing a level threshold levels up.
    d.on::<ExperienceAwarded, _>("core.level", "^1", |x, cx| {
        let (before, after) = (
            level_of(x.total_experience - x.amount),
            level_of(x.total_experience),
        );
        if after > before {
            cx.emit(LevelUpV1_0_0 {
                user_id: x.user_id,
                previous_level: before,
                new_level: after,
                total_experience: x.total_experience,
                leveled_up_at: x.awarded_at.clone(),
            })?;
        }
        Ok(())
    })
    .expect("register");

    // achievements: the first experience ever unlocks "first steps".
    d.on::<ExperienceAwarded, _>("achievements.first_steps", "^1", |x, cx| {
        if x.total_experience == x.amount {
            cx.emit(AchievementUnlockedV1_0_0 {
                user_id: x.user_id,
                achievement_id: 1,
                achievement_key: "first_steps".into(),
                tier: AchievementUnlockedV1_0_0Tier::Bronze,
                unlocked_at: x.awarded_at.clone(),
            })?;
        }
        Ok(())
    })
    .expect("register");

    // achievements: a new level earns a title.
    d.on::<LevelUp, _>("achievements.titles", "^1", |l, cx| {
        cx.emit(TitleUnlockedV1_0_0 {
            user_id: l.user_id,
            title_id: l.new_level,
            title_name: format!("Level {}", l.new_level),
            source: TitleUnlockedV1_0_0Source::Level,
            unlocked_at: l.leveled_up_at.clone(),
        })?;
        Ok(())
    })
    .expect("register");

    // notifications and the dashboard read the results.
    for ty in ["AchievementUnlocked", "TitleUnlocked"] {
        d.on_json("notifications.push", ty, "^1", |_, _| Ok(()))
            .expect("register");
    }
    d.on::<JournalEntryCreated, _>("journal.insights", "^1", |_, _| Ok(()))
        .expect("register");
    d
}

fn quest(user: i64, quest: i64, reward: i64) -> QuestCompletedV1_0_0 {
    QuestCompletedV1_0_0 {
        user_id: user,
        quest_id: quest,
        quest_type: QuestCompletedV1_0_0QuestType::Daily,
        experience_reward: reward,
        completion_timestamp: NOW.into(),
        auto_completed: false,
    }
}

#[test]
fn a_completed_quest_awards_experience_levels_up_and_unlocks_achievements() {
    let (log, audit) = (EventLog::new(), MemoryAudit::new());
    let d = life_os(&log, &audit, Arc::default());
    let mut meta = Meta::root();
    meta.actor = Some("user:123".into());
    // The seed's own example: user 123 completes daily quest 456 for 25 experience...
    let r = d.publish_with(quest(123, 456, 25), meta);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        log.types(),
        vec!["QuestCompleted", "ExperienceAwarded", "AchievementUnlocked"]
    );
    // ...then a bigger one crosses level 2.
    let r = d.publish(quest(123, 457, 80));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        &log.types()[3..],
        &[
            "QuestCompleted",
            "ExperienceAwarded",
            "LevelUp",
            "TitleUnlocked"
        ]
    );
    let levels = log.of_type::<LevelUp>();
    assert_eq!((levels[0].previous_level, levels[0].new_level), (1, 2));
    assert_eq!(log.of_type::<TitleUnlocked>()[0].title_name, "Level 2");

    // One correlation per user action; each event caused by the one before it.
    let entries = log.entries();
    let second = &entries[3..];
    for pair in second.windows(2) {
        assert_eq!(pair[1].meta.correlation_id, second[0].meta.id);
    }
    assert_eq!(
        second[1].meta.causation_id.as_ref(),
        Some(&second[0].meta.id)
    );
    assert_eq!(
        second[2].meta.causation_id.as_ref(),
        Some(&second[1].meta.id)
    );
    assert_eq!(
        second[3].meta.causation_id.as_ref(),
        Some(&second[2].meta.id)
    );
    // The actor travels down the chain.
    assert_eq!(entries[2].meta.actor.as_deref(), Some("user:123"));

    // Every handler run on these personal-data events is audited, with who and the outcome.
    let records = audit.records();
    assert!(records.len() >= 8);
    assert!(records.iter().all(|r| r.outcome == AuditOutcome::Processed));
    assert!(
        records
            .iter()
            .any(|r| &*r.handler == "core.award_quest_experience"
                && r.actor.as_deref() == Some("user:123"))
    );
}

#[test]
fn a_redelivered_quest_completion_awards_experience_once() {
    let (log, audit) = (EventLog::new(), MemoryAudit::new());
    let d = life_os(&log, &audit, Arc::default());
    assert!(d.publish(quest(7, 1, 30)).is_ok());
    // The same completion again (a retry with a new event id): same idempotency key.
    assert!(d.publish(quest(7, 1, 30)).is_ok());
    let awards = log.of_type::<ExperienceAwarded>();
    assert_eq!(awards.len(), 1);
    assert_eq!(awards[0].total_experience, 30);
}

#[test]
fn journal_entries_reach_handlers_only_with_consent_and_skips_are_reported() {
    let (log, audit) = (EventLog::new(), MemoryAudit::new());
    let consented = Arc::new(Mutex::new(vec![1]));
    let d = life_os(&log, &audit, consented);
    let entry = |user| JournalEntryCreatedV1_0_0 {
        user_id: user,
        entry_id: user * 10,
        content: "a good day".into(),
        mood: Some(JournalEntryCreatedV1_0_0Mood::Good),
        tags: None,
        word_count: 3,
        created_at: NOW.into(),
    };
    let r = d.publish(entry(1));
    assert_eq!((r.handled, r.skipped.as_deref()), (1, None));
    let r = d.publish(entry(2));
    assert_eq!((r.handled, r.skipped.as_deref()), (0, Some("journaling")));
    let logged = log.entries();
    assert_eq!(logged[1].outcome.skipped.as_deref(), Some("journaling"));
    let outcomes: Vec<AuditOutcome> = audit.records().into_iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            AuditOutcome::Processed,
            AuditOutcome::Skipped {
                purpose: "journaling".into()
            }
        ]
    );
}

#[test]
fn an_event_that_breaks_its_catalog_runs_no_handler() {
    let (log, audit) = (EventLog::new(), MemoryAudit::new());
    let d = life_os(&log, &audit, Arc::default());
    let mut bad = quest(5, 5, 10);
    bad.completion_timestamp = "soon".into();
    let r = d.publish(bad);
    assert_eq!(r.handled, 0);
    let invalid = r.invalid.expect("invalid");
    assert_eq!(invalid.0[0].code, "payload-format");
    assert!(log.of_type::<ExperienceAwarded>().is_empty());
}
