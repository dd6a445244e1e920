//! Errors of backend operations.

use std::time::Duration;

/// What can go wrong talking to a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The topic does not exist. Create it first.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The group does not exist on that topic. Create it first.
    #[error("unknown group {group} on topic {topic}")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// An event stated the expected last sequence of its aggregate and it differs (P6). Read the
    /// aggregate again and retry.
    #[error("conflict on aggregate {key}: expected sequence {expected}, current is {current}")]
    Conflict {
        /// The aggregate's ordering key.
        key: String,
        /// What the publisher expected.
        expected: u64,
        /// The aggregate's last stored sequence (0: none).
        current: u64,
    },
    /// A publish request states an expected sequence but has no ordering key to check it on.
    #[error("expected_sequence needs an ordering key")]
    ExpectedSequenceWithoutKey,
    /// The lease is no longer held: it expired, or the event was acked or redelivered (C4). The
    /// work done under it may be repeated by another consumer.
    #[error("lease lost")]
    LeaseLost,
    /// A configuration needs a capability this backend lacks (K1).
    #[error("unsupported capability: {0}")]
    UnsupportedCapability(&'static str),
    /// A key-value write stated the revision it expected and the key is at another one (0: the
    /// key does not exist). Read it again and retry.
    #[error("revision mismatch: the key is at revision {current}")]
    RevisionMismatch {
        /// The key's revision now (0: absent).
        current: u64,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The storage failed; the operation did not take effect. Retry after `retry_after` if given.
    #[error("storage failure: {message}")]
    Storage {
        /// What failed.
        message: String,
        /// When retrying may help.
        retry_after: Option<Duration>,
    },
}

impl BackendError {
    /// A storage failure from any displayable error.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        BackendError::Storage {
            message: e.to_string(),
            retry_after: None,
        }
    }
}
