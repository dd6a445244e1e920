//! The retry policy shared by every backend (R1): exponential backoff with jitter and a cap, and
//! a maximum number of attempts.

use std::time::Duration;

/// How a group retries failed deliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries before the event is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Growth factor per attempt (at least 1).
    pub multiplier: f64,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
    /// Randomness: each delay is multiplied by a factor in `[1 - jitter, 1 + jitter]` (0 to 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 8 attempts, 1 s doubling to at most 5 min, 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1 for the first delivery), jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
        self.delay_with(attempt, factor)
    }

    /// The delay after failed attempt `attempt` with a given jitter factor, for tests and for
    /// callers with their own randomness.
    pub fn delay_with(&self, attempt: u32, factor: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped * factor.max(0.0)).unwrap_or(self.max_backoff)
    }

    /// Whether attempt `attempt` was the last one allowed.
    pub fn is_last(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(500),
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert!(!p.is_last(4));
        assert!(p.is_last(5));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..1000 {
            let d = p.delay(1).as_secs_f64();
            assert!((0.5..=1.5).contains(&d), "{d}");
        }
        assert_eq!(p.delay_with(1, 1.5), Duration::from_millis(1500));
    }
}
