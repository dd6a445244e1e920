//! The backend port: what every Canon backend (embedded, NATS JetStream, PostgreSQL, ...)
//! implements, written against the delivery contract in docs/specs/delivery.md.
//!
//! The port is shaped after pull consumers with leases, so that JetStream's pull consumers
//! (AckWait, `+WPI` progress, `-NAK` with delay, `+TERM`, `Nats-Msg-Id` dedup) and
//! Kafka-style groups map onto it natively. What a backend cannot do natively it declares in
//! [`Capabilities`]; Canon gives it on top or refuses the configuration at start-up.

pub mod codec;
mod error;
mod policy;
mod types;

pub use error::BackendError;
pub use policy::RetryPolicy;
pub use types::{
    AttemptRecord, Capabilities, Capability, DeadLetter, DeadLetterFilter, DeadLetterReason,
    Delivery, GroupConfig, GroupInfo, KvEntry, LeaseToken, PublishOutcome, PublishRequest,
    RedriveOptions, RedriveReport, StartPosition, StoredEvent, TopicConfig, TopicInfo,
};

use std::future::Future;
use std::time::Duration;

/// A storage and delivery backend.
///
/// Every method is safe to call concurrently. Durability and ordering guarantees are those of
/// docs/specs/delivery.md; the conformance suite (`canon-conformance`) checks them.
pub trait Backend: Send + Sync + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates a topic, or updates its configuration if it exists.
    fn create_topic(
        &self,
        config: TopicConfig,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Publishes a batch atomically (P2): every event is stored or none is. Duplicates are
    /// answered per event (P4, P5); an optimistic-concurrency conflict refuses the batch (P6, P7).
    fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> impl Future<Output = Result<Vec<PublishOutcome>, BackendError>> + Send;

    /// Publishes every event on its own, not as one atomic batch: each answer is that event's
    /// outcome (P3 to P6 hold per event), and a refusal of one refuses only that one. For callers
    /// that asked for partial acceptance; a backend whose atomic batches cost more than single
    /// events (JetStream) implements it without them. The default publishes each event as a
    /// batch of one, concurrently.
    fn publish_each(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> impl Future<Output = Vec<Result<PublishOutcome, BackendError>>> + Send {
        let singles = batch.into_iter().map(move |r| async move {
            self.publish(topic, vec![r]).await.and_then(|mut o| {
                o.pop()
                    .ok_or_else(|| BackendError::storage("a publish of one event answered nothing"))
            })
        });
        futures_util::future::join_all(singles)
    }

    /// Creates a consumer group on a topic, or updates its configuration if it exists. A new group
    /// starts at the beginning of the topic.
    fn create_group(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Leases up to `max` events of the group to `consumer`, waiting up to `wait` for the first.
    fn pull(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, BackendError>> + Send;

    /// Acknowledges a delivery: the event is done for this group (C5).
    fn ack(&self, token: &LeaseToken) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Acknowledges many deliveries, with one answer per token in order; each answered success
    /// is an `ack` (C5b), durable when answered. A backend that can commit them together
    /// overrides this (one sync for all); the default acks each token.
    fn ack_many(
        &self,
        tokens: &[LeaseToken],
    ) -> impl Future<Output = Vec<Result<(), BackendError>>> + Send {
        futures_util::future::join_all(tokens.iter().map(|t| self.ack(t)))
    }

    /// Acknowledges deliveries for a caller that tells nobody it did, with one answer per token
    /// in order. The answer may come before the acks are durable against a machine crash, after
    /// which the group may get those events again (as at-least-once allows for deliveries that
    /// were never acknowledged). Push delivery acks this way: the subscriber's answer was the
    /// acknowledgment, and nothing waits on Canon's record of it. Otherwise each is an `ack`
    /// (C5a). A backend without a cheaper way keeps this default, `ack_many`: its promise is the
    /// stronger one.
    fn ack_unconfirmed(
        &self,
        tokens: &[LeaseToken],
    ) -> impl Future<Output = Vec<Result<(), BackendError>>> + Send {
        self.ack_many(tokens)
    }

    /// Gives a delivery back to be retried after `delay`, or after the group's retry policy delay
    /// when `None` (C6, R1). A last attempt goes to the DLQ instead (R2).
    fn nack(
        &self,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Extends a lease to now + `by` (C4).
    fn extend(
        &self,
        token: &LeaseToken,
        by: Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Moves a delivery to the group's DLQ now (R4).
    fn dead_letter(
        &self,
        token: &LeaseToken,
        error: Option<String>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Lists the group's DLQ entries that match `filter`, without consuming them (R6), oldest
    /// first.
    fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, BackendError>> + Send;

    /// Puts matching DLQ entries back into the group's work (R7), one at a time, each move atomic,
    /// at most `options.per_second` a second. A dry run reports what would move.
    fn redrive(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
        options: RedriveOptions,
    ) -> impl Future<Output = Result<RedriveReport, BackendError>> + Send;

    /// Deletes matching DLQ entries (R8); returns how many.
    fn purge(
        &self,
        topic: &str,
        group: &str,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<usize, BackendError>> + Send;

    /// Moves the group to a position (L1): events after it are delivered again, with their ids
    /// and sequences. Leases held in the group are lost.
    fn reset(
        &self,
        topic: &str,
        group: &str,
        position: StartPosition,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The retained events with this id (one per source that used it) (L3).
    fn events_by_id(
        &self,
        topic: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BackendError>> + Send;

    /// The retained events whose `correlationid` is this, in sequence order (L4).
    fn events_by_correlation(
        &self,
        topic: &str,
        correlation_id: &str,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BackendError>> + Send;

    /// The retained events whose `causationid` is this event id: its direct effects (L4).
    fn effects_of(
        &self,
        topic: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BackendError>> + Send;

    /// The topics that exist, by name.
    fn topics(&self) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;

    /// What a topic holds (L5).
    fn topic_info(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<TopicInfo, BackendError>> + Send;

    /// Reads retained events in sequence order from sequence `from` on, up to `max`, waiting up
    /// to `wait` for the first one to be stored (L5). Reading consumes nothing.
    fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BackendError>> + Send;

    /// The first sequence at or after a position (L5): what [`Backend::read`] should start
    /// from to see the events a group reset to that position would see.
    fn locate(
        &self,
        topic: &str,
        position: &StartPosition,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// The groups of a topic, by name.
    fn groups(&self, topic: &str)
    -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;

    /// Where a group stands (L5).
    fn group_info(
        &self,
        topic: &str,
        group: &str,
    ) -> impl Future<Output = Result<GroupInfo, BackendError>> + Send;

    /// Deletes a group with its state and DLQ (C9). Its leases are lost; creating it again
    /// starts from the beginning of the topic.
    fn delete_group(
        &self,
        topic: &str,
        group: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// A key of a key-value bucket (S1).
    fn kv_get(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<KvEntry>, BackendError>> + Send;

    /// Writes a key (S1). With `expect`, only if the key is at that revision (0: absent), else
    /// [`BackendError::RevisionMismatch`] (S2). Returns the new revision.
    fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// Deletes a key (S1), with the same `expect` rule as [`Backend::kv_put`]. Returns whether
    /// it existed.
    fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
        expect: Option<u64>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Every key of a bucket with its entry, in key order (S1).
    fn kv_list(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Vec<(String, KvEntry)>, BackendError>> + Send;
}

/// An event with the topic it was found on.
pub type Located = (String, StoredEvent);

/// The first retained event with this id on any of `topics`.
async fn find<B: Backend>(
    backend: &B,
    topics: &[String],
    id: &str,
) -> Result<Option<Located>, BackendError> {
    for t in topics {
        if let Some(e) = backend.events_by_id(t, id).await?.into_iter().next() {
            return Ok(Some((t.clone(), e)));
        }
    }
    Ok(None)
}

/// The causation chain of an event across `topics` (L4): the events that caused it, nearest
/// first, following `causationid`, and every event it caused, directly or not, in
/// breadth-first order.
pub async fn causation_chain<B: Backend>(
    backend: &B,
    topics: &[String],
    id: &str,
) -> Result<(Vec<Located>, Vec<Located>), BackendError> {
    let mut seen = std::collections::HashSet::new();
    seen.insert(id.to_owned());
    let mut causes = Vec::new();
    let mut current = find(backend, topics, id).await?;
    while let Some(cause) = current
        .as_ref()
        .and_then(|(_, e)| e.event.causation_id().map(str::to_owned))
    {
        if !seen.insert(cause.clone()) {
            break;
        }
        current = find(backend, topics, &cause).await?;
        causes.extend(current.clone());
    }
    let mut effects = Vec::new();
    let mut frontier = std::collections::VecDeque::from([id.to_owned()]);
    while let Some(next) = frontier.pop_front() {
        for t in topics {
            for e in backend.effects_of(t, &next).await? {
                if seen.insert(e.event.id.clone()) {
                    frontier.push_back(e.event.id.clone());
                    effects.push((t.clone(), e));
                }
            }
        }
    }
    Ok((causes, effects))
}

/// What a consumer says about a delivery (the Dapr answers, and Canon's dead-letter-now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: ack.
    Success,
    /// Try again: after this delay, or the group's backoff when `None` (R1).
    Retry(Option<Duration>),
    /// Not wanted: ack without a DLQ entry (R4).
    Drop,
    /// Never going to work: to the DLQ now (R4).
    DeadLetter,
}

/// Settles a delivery with a consumer's answer; `error` is kept with retries and dead letters.
pub async fn settle<B: Backend>(
    backend: &B,
    token: &LeaseToken,
    outcome: Outcome,
    error: Option<String>,
) -> Result<(), BackendError> {
    match outcome {
        Outcome::Success | Outcome::Drop => backend.ack(token).await,
        Outcome::Retry(delay) => backend.nack(token, delay, error).await,
        Outcome::DeadLetter => backend.dead_letter(token, error).await,
    }
}
