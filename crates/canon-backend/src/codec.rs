//! JSON forms of the values every backend stores: a group's configuration, an event's failed
//! attempts and a dead letter's bookkeeping. One encoding, so that the backends read each
//! other's documentation alike and none of them writes these by hand.
//!
//! Times are integer milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::policy::RetryPolicy;
use crate::types::{AttemptRecord, DeadLetterReason, GroupConfig};

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds of a duration, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A group's configuration: `{"ordered", "lease_ms", "max_in_flight", "max_attempts",
/// "initial_backoff_ms", "multiplier", "max_backoff_ms", "jitter"}`.
pub fn group_config_json(config: &GroupConfig) -> Value {
    let r = &config.retry;
    json!({
        "ordered": config.ordered,
        "lease_ms": ms(config.lease),
        "max_in_flight": config.max_in_flight,
        "max_attempts": r.max_attempts,
        "initial_backoff_ms": ms(r.initial_backoff),
        "multiplier": r.multiplier,
        "max_backoff_ms": ms(r.max_backoff),
        "jitter": r.jitter,
    })
}

/// Reads [`group_config_json`]'s form; `None` if a member is missing or mistyped.
pub fn group_config_from_json(j: &Value) -> Option<GroupConfig> {
    let ms = |k: &str| j.get(k).and_then(Value::as_u64).map(Duration::from_millis);
    Some(GroupConfig {
        ordered: j.get("ordered")?.as_bool()?,
        lease: ms("lease_ms")?,
        max_in_flight: usize::try_from(j.get("max_in_flight")?.as_u64()?).ok()?,
        retry: RetryPolicy {
            max_attempts: u32::try_from(j.get("max_attempts")?.as_u64()?).ok()?,
            initial_backoff: ms("initial_backoff_ms")?,
            multiplier: j.get("multiplier")?.as_f64()?,
            max_backoff: ms("max_backoff_ms")?,
            jitter: j.get("jitter")?.as_f64()?,
        },
    })
}

/// Failed attempts, oldest first: `[{"at": ms, "consumer", "outcome", "error"}, ...]`.
pub fn history_json(history: &[AttemptRecord]) -> Value {
    Value::Array(
        history
            .iter()
            .map(|a| {
                json!({"at": millis(a.at), "consumer": a.consumer, "outcome": a.outcome, "error": a.error})
            })
            .collect(),
    )
}

/// Reads [`history_json`]'s form; `None` if an entry is malformed.
pub fn history_from_json(v: &Value) -> Option<Vec<AttemptRecord>> {
    v.as_array()?
        .iter()
        .map(|a| {
            Some(AttemptRecord {
                at: from_millis(a.get("at")?.as_u64()?),
                consumer: a.get("consumer")?.as_str()?.to_owned(),
                outcome: a.get("outcome")?.as_str()?.to_owned(),
                error: a.get("error").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect()
}

impl DeadLetterReason {
    /// The reason named by [`DeadLetterReason::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "max-attempts" => Some(DeadLetterReason::MaxAttempts),
            "rejected" => Some(DeadLetterReason::Rejected),
            "expired" => Some(DeadLetterReason::Expired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_configs_and_histories_round_trip() {
        let config = GroupConfig {
            ordered: true,
            lease: Duration::from_millis(1500),
            max_in_flight: 7,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(20),
                multiplier: 1.5,
                max_backoff: Duration::from_secs(9),
                jitter: 0.1,
            },
        };
        assert_eq!(
            group_config_from_json(&group_config_json(&config)),
            Some(config)
        );
        let history = vec![
            AttemptRecord {
                at: from_millis(1_000),
                consumer: "c1".into(),
                outcome: "retry".into(),
                error: Some("down".into()),
            },
            AttemptRecord {
                at: from_millis(2_000),
                consumer: "c2".into(),
                outcome: "lease-expired".into(),
                error: None,
            },
        ];
        assert_eq!(
            history_from_json(&history_json(&history)),
            Some(history.clone())
        );
        for r in [
            DeadLetterReason::MaxAttempts,
            DeadLetterReason::Rejected,
            DeadLetterReason::Expired,
        ] {
            assert_eq!(DeadLetterReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(history_from_json(&json!([{"at": 1}])), None);
    }
}
