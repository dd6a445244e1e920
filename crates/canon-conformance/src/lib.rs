//! The conformance suite of the delivery contract (docs/specs/delivery.md), generic over the
//! backend port. Each check is named after the rule it proves. A backend crate runs all of them
//! with [`suite!`], giving a [`Harness`] that opens its backend on fresh, isolated storage:
//!
//! ```ignore
//! canon_conformance::suite!(EmbeddedHarness::new());
//! ```

mod checks;

pub use checks::*;

use std::future::Future;

use canon_backend::Backend;

/// Opens a backend for one check. Each call of [`Harness::open`] returns a handle to the same
/// storage, so that a check can drop its backend and open it again (a restart).
pub trait Harness: Send + Sync {
    /// The backend under test.
    type Backend: Backend;
    /// Opens the backend on this harness's storage.
    fn open(&self) -> impl Future<Output = Self::Backend> + Send;

    /// Removes the harness's storage after a check that passed (a failed check leaves it for a
    /// look). Runs while the check's runtime still runs, so backends dropped by the check have
    /// finished their cleanup (rolled back, closed). The default does nothing.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Generates one `#[tokio::test]` per check, each with a fresh harness from `$harness`.
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::suite!(@tests $harness;
            p1_acknowledged_publish_survives_restart,
            p2_no_consumer_sees_part_of_a_batch,
            p3_sequences_increase_in_publish_order,
            p4_duplicate_source_and_id_is_not_stored_twice,
            p5_duplicate_idempotency_key_is_not_stored_twice,
            p4_p5_dedup_ends_with_the_window,
            p6_expected_sequence_mismatch_is_a_conflict,
            p7_a_conflict_refuses_the_whole_batch,
            c1_groups_are_independent,
            c2_an_event_is_leased_to_one_consumer_at_a_time,
            c3_an_expired_lease_redelivers_with_the_next_attempt,
            c4_extend_keeps_a_lease_and_fails_once_lost,
            c5_an_ack_holds_across_restart,
            c5a_unconfirmed_acks_are_acks,
            c5b_many_acks_at_once_are_acks,
            c6_nack_with_delay_redelivers_no_earlier,
            c8_in_flight_events_survive_a_restart,
            c9_pull_returns_at_most_max_and_waits_for_a_publish,
            o1_ordered_groups_lease_one_event_per_key_in_order,
            o2_a_retrying_key_holds_back_only_itself,
            o3_unordered_groups_lease_in_parallel,
            r1_nack_without_delay_follows_the_retry_policy,
            r2_the_last_failed_attempt_dead_letters,
            r2_the_last_expired_lease_dead_letters,
            r4_dead_letter_now_keeps_the_error,
            r5_dead_letters_survive_restart,
            k1_unknown_topics_and_groups_are_refused,
            t1_a_scheduled_event_waits_for_its_time,
            t2_an_expired_event_is_dead_lettered,
            r6_dead_letters_can_be_filtered,
            r6_a_large_dlq_is_listed_whole,
            r7_redrive_returns_events_with_fresh_attempts,
            r7_an_interrupted_redrive_resumes_without_duplicates,
            r8_purge_deletes_matching_entries,
            l1_reset_replays_from_a_position,
            l3_l4_events_are_found_by_id_correlation_and_causation,
            r4_consumer_answers_settle_deliveries,
            l2_retention_by_size_deletes_the_oldest_first,
            l2_retention_by_age_deletes_old_events,
            r3_retries_do_not_multiply_with_lease_expiry,
            c5_acks_behind_a_scheduled_event_hold,
            c10_groups_are_listed_and_deleted,
            l5_topics_are_read_without_consuming,
            s1_s2_key_value_with_compare_and_set,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "current_thread")]
            async fn $name() {
                let harness = $harness;
                $crate::$name(&harness).await;
                $crate::Harness::close(&harness).await;
            }
        )*
    };
}
