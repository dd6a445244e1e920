//! The values that cross the port.

use std::time::{Duration, SystemTime};

use canon_envelope::CloudEvent;

use crate::error::BackendError;
use crate::policy::RetryPolicy;

/// A topic's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// The topic's name.
    pub name: String,
    /// How long event ids and idempotency keys are remembered for dedup (P4, P5).
    pub dedup_window: Duration,
    /// Delete events older than this (L2). `None`: keep them.
    pub max_age: Option<Duration>,
    /// Delete the oldest events while the topic holds more than this many bytes (L2).
    pub max_bytes: Option<u64>,
}

impl TopicConfig {
    /// A topic with the default 24 h dedup window.
    pub fn new(name: impl Into<String>) -> Self {
        TopicConfig {
            name: name.into(),
            dedup_window: Duration::from_secs(24 * 3600),
            max_age: None,
            max_bytes: None,
        }
    }
}

/// One event to publish, with what Canon computed from the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// The event.
    pub event: CloudEvent,
    /// The ordering key (the catalog's aggregate key, else `partitionkey`).
    pub ordering_key: Option<String>,
    /// The catalog's idempotency key, for types that declare one.
    pub idempotency_key: Option<String>,
    /// Refuse the batch unless the ordering key's last stored sequence is this (0: none yet).
    pub expected_sequence: Option<u64>,
}

impl PublishRequest {
    /// A request with no keys.
    pub fn new(event: CloudEvent) -> Self {
        PublishRequest {
            event,
            ordering_key: None,
            idempotency_key: None,
            expected_sequence: None,
        }
    }
}

/// What happened to one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored at this sequence.
    Stored {
        /// The event's sequence in its topic.
        seq: u64,
    },
    /// Already stored (same source and id, or same idempotency key): not stored again.
    Duplicate {
        /// The sequence of the stored original.
        seq: u64,
    },
}

impl PublishOutcome {
    /// The sequence of the stored event (new or original).
    pub fn seq(self) -> u64 {
        match self {
            PublishOutcome::Stored { seq } | PublishOutcome::Duplicate { seq } => seq,
        }
    }
}

/// A stored event as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The sequence in its topic.
    pub seq: u64,
    /// When it was stored.
    pub published_at: SystemTime,
    /// Its ordering key.
    pub ordering_key: Option<String>,
    /// The event, unchanged.
    pub event: CloudEvent,
}

/// A consumer group's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// At most one event per ordering key in flight, in sequence order (O1).
    pub ordered: bool,
    /// How long a delivery is leased before it is redelivered (C3).
    pub lease: Duration,
    /// How failed deliveries are retried (R1, R2).
    pub retry: RetryPolicy,
    /// At most this many events leased at once across the group's consumers.
    pub max_in_flight: usize,
}

impl Default for GroupConfig {
    /// Unordered, 30 s leases, the default retry policy, 1,000 in flight.
    fn default() -> Self {
        GroupConfig {
            ordered: false,
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_in_flight: 1000,
        }
    }
}

/// Names one lease: what a consumer acks, nacks or extends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// The event's sequence.
    pub seq: u64,
    /// Which lease of that event (backend-specific; a later lease of the same event has
    /// another handle).
    pub handle: u64,
}

/// One hand-over of an event to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event.
    pub event: StoredEvent,
    /// 1 for the first delivery (C7).
    pub attempt: u32,
    /// The lease.
    pub token: LeaseToken,
    /// When the lease expires unless extended.
    pub leased_until: SystemTime,
}

/// Why an event is in a DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Its last attempt failed or its last lease expired (R2).
    MaxAttempts,
    /// A consumer answered dead-letter (R4).
    Rejected,
    /// It expired before delivery (T2).
    Expired,
}

impl DeadLetterReason {
    /// The stable name: `max-attempts`, `rejected`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MaxAttempts => "max-attempts",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
        }
    }
}

/// An entry of a group's DLQ.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The event, unchanged.
    pub event: StoredEvent,
    /// Why.
    pub reason: DeadLetterReason,
    /// The last error a consumer gave.
    pub last_error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Every failed attempt, oldest first (R5).
    pub history: Vec<AttemptRecord>,
    /// When it was dead-lettered.
    pub at: SystemTime,
}

/// One failed attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it failed.
    pub at: SystemTime,
    /// The consumer that held the lease.
    pub consumer: String,
    /// `retry` (the consumer asked), `lease-expired`, or `dead-letter` (the consumer rejected it).
    pub outcome: String,
    /// The consumer's error, if it gave one.
    pub error: Option<String>,
}

/// A capability a configuration may need (K1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Per-key ordered delivery (O1, O2).
    OrderedDelivery,
    /// Atomic batches (P2).
    AtomicBatch,
    /// Expected-sequence checks per aggregate (P6).
    OptimisticConcurrency,
    /// Dedup by idempotency key (P5).
    IdempotencyKeys,
}

impl Capability {
    /// The stable name used in `unsupported-capability` errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::OrderedDelivery => "ordered-delivery",
            Capability::AtomicBatch => "atomic-batch",
            Capability::OptimisticConcurrency => "optimistic-concurrency",
            Capability::IdempotencyKeys => "idempotency-keys",
        }
    }
}

/// What a backend supports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities(pub Vec<Capability>);

impl Capabilities {
    /// Fails with `unsupported-capability` unless `capability` is supported.
    pub fn require(&self, capability: Capability) -> Result<(), BackendError> {
        if self.0.contains(&capability) {
            Ok(())
        } else {
            Err(BackendError::UnsupportedCapability(capability.as_str()))
        }
    }
}

/// Which DLQ entries an operation applies to. Empty fields match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadLetterFilter {
    /// Only these event ids.
    pub ids: Vec<String>,
    /// Only these event types.
    pub types: Vec<String>,
    /// Only the entries of these events, by sequence in the topic: exactly the entries a
    /// listing returned, as ids are unique only per source.
    pub seqs: Vec<u64>,
    /// Only this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only entries dead-lettered at or after this time.
    pub since: Option<SystemTime>,
    /// Only entries dead-lettered before this time.
    pub until: Option<SystemTime>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

impl DeadLetterFilter {
    /// Whether an entry matches (the limit aside).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        (self.ids.is_empty() || self.ids.contains(&d.event.event.id))
            && (self.types.is_empty() || self.types.contains(&d.event.event.ty))
            && (self.seqs.is_empty() || self.seqs.contains(&d.event.seq))
            && self.reason.is_none_or(|r| r == d.reason)
            && self.since.is_none_or(|s| d.at >= s)
            && self.until.is_none_or(|u| d.at < u)
    }
}

/// How a redrive runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RedriveOptions {
    /// Report what would move; move nothing.
    pub dry_run: bool,
    /// At most this many events a second (0: no limit).
    pub per_second: u32,
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedriveReport {
    /// Ids of the entries that matched.
    pub matched: Vec<String>,
    /// How many were moved back (0 in a dry run).
    pub redriven: usize,
}

/// Where a group (re)starts (L1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained event.
    Earliest,
    /// After the newest event: only events published from now on.
    Latest,
    /// The first event stored at or after this time.
    Time(SystemTime),
    /// This event (by id) and everything after it.
    EventId(String),
}

/// What a topic holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its configuration.
    pub config: TopicConfig,
    /// The oldest retained sequence (greater than `last` when the topic is empty).
    pub first: u64,
    /// The newest stored sequence (0: none yet).
    pub last: u64,
    /// Bytes of the retained events, as the backend counts them (0 when it does not).
    pub bytes: u64,
}

/// Where a consumer group stands.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// Its configuration.
    pub config: GroupConfig,
    /// Every event at or below this sequence is done (acked or dead-lettered).
    pub acked_through: u64,
    /// Events stored but not yet done, in flight included: the group's lag.
    pub pending: u64,
    /// Events leased right now.
    pub in_flight: u64,
    /// Entries in the group's DLQ.
    pub dead_letters: u64,
}

/// A value in a key-value bucket, with its revision (for compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value.
    pub value: Vec<u8>,
    /// Increases with every write of the key; never 0.
    pub revision: u64,
}
