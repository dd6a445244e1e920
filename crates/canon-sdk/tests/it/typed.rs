//! Typed events generated from the seed catalogs: names, versions, keys and validation
//! without strings, and the CLI's output equal to the macro's.

use canon_sdk::Event;

use crate::catalogs::{coach, lifeos};
use crate::coach_generated;

fn feedback() -> coach::CoachFeedbackGeneratedV1 {
    coach::CoachFeedbackGeneratedV1 {
        user_id: "u-1".into(),
        draft_id: "d-1".into(),
        scores: [("clarity".to_owned(), 0.8)].into_iter().collect(),
        suggestions: vec!["shorter".into()],
        warnings: vec![],
    }
}

#[test]
fn generated_types_carry_the_catalog_facts() {
    type T = coach::ChallengeCompleted;
    assert_eq!(T::TYPE, "challenge.completed");
    assert_eq!(T::VERSION, "1");
    assert_eq!(T::TOPIC, Some("challenge.completed"));
    const { assert!(T::PERSONAL_DATA) };
    assert_eq!(
        coach::StreakIncremented::RULES.must_not_emit,
        &["streak.incremented", "streak.missed"]
    );
    assert_eq!(
        lifeos::QuestCompleted::SEMVER,
        canon_sdk::Version::new(1, 0, 0)
    );
    assert_eq!(lifeos::JournalEntryCreated::CONSENT, Some("journaling"));
    assert_eq!(
        lifeos::QuestCompleted::RULES.may_emit.map(<[&str]>::len),
        Some(6)
    );
    let e = coach::ChallengeCompletedV1 {
        user_id: "u-1".into(),
        challenge_id: "c-9".into(),
        completed_at: "2026-11-22T10:00:00Z".into(),
        result: coach::ChallengeCompletedV1Result::Partial,
        ring_earned: None,
    };
    assert_eq!(e.aggregate_key().as_deref(), Some("u-1"));
    assert_eq!(
        e.idempotency_key().as_deref(),
        Some(r#"["challenge.completed","u-1","c-9","2026-11-22T10:00:00Z"]"#)
    );
    // The key is the one the catalog (and so the server) computes.
    let ty = &coach::catalog().types["challenge.completed"];
    let payload = serde_json::to_value(&e).expect("json");
    assert_eq!(
        ty.idempotency_key(&payload).expect("key"),
        e.idempotency_key()
    );
    assert_eq!(
        serde_json::to_value(&e).expect("json"),
        serde_json::json!({"userId": "u-1", "challengeId": "c-9",
            "completedAt": "2026-11-22T10:00:00Z", "result": "partial"})
    );
}

#[test]
fn generated_types_validate_against_their_catalog() {
    assert_eq!(feedback().validate(), Ok(()));
    let bad = coach::ChallengeCompletedV1 {
        user_id: "ada@example.com".into(),
        challenge_id: "c-9".into(),
        completed_at: "yesterday".into(),
        result: coach::ChallengeCompletedV1Result::Full,
        ring_earned: None,
    };
    let err = bad.validate().expect_err("invalid");
    let codes: Vec<&str> = err.0.iter().map(|v| v.code).collect();
    assert_eq!(codes, vec!["payload-format", "pii-raw-value"], "{err}");
    // Reading tolerates a field this version does not know (a newer minor version may add
    // one); validation applies the closed schema.
    let read: coach::StreakMissedV1 =
        serde_json::from_str(r#"{"userId":"u","missedDay":"2026-11-01","extra":1}"#)
            .expect("tolerant reader");
    assert_eq!(read.missed_day, "2026-11-01");
}

#[test]
fn the_printed_code_behaves_like_the_macro_code() {
    let a = feedback();
    let b = coach_generated::CoachFeedbackGeneratedV1 {
        user_id: "u-1".into(),
        draft_id: "d-1".into(),
        scores: [("clarity".to_owned(), 0.8)].into_iter().collect(),
        suggestions: vec!["shorter".into()],
        warnings: vec![],
    };
    assert_eq!(
        serde_json::to_string(&a).expect("a"),
        serde_json::to_string(&b).expect("b")
    );
    assert_eq!(a.idempotency_key(), b.idempotency_key());
    assert_eq!(b.validate(), Ok(()));
    assert_eq!(
        coach_generated::catalog().types.len(),
        coach::catalog().types.len()
    );
}
