//! The backend port: what every Canon backend (embedded, NATS JetStream, PostgreSQL, ...)
//! implements, written against the delivery contract in docs/specs/delivery.md.
//!
//! The port is shaped after pull consumers with leases, so that JetStream's pull consumers
//! (AckWait, `+WPI` progress, `-NAK` with delay, `+TERM`, `Nats-Msg-Id` dedup) and
//! Kafka-style groups map onto it natively. What a backend cannot do natively it declares in
//! [`Capabilities`]; Canon gives it on top or refuses the configuration at start-up.

mod error;
mod policy;
mod types;

pub use error::BackendError;
pub use policy::RetryPolicy;
pub use types::{
    Capabilities, Capability, DeadLetter, DeadLetterReason, Delivery, GroupConfig, LeaseToken,
    PublishOutcome, PublishRequest, StoredEvent, TopicConfig,
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

    /// Lists the group's DLQ without consuming it (R6), oldest first.
    fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, BackendError>> + Send;
}
