//! Retry policy for transient failures: exponential backoff with full jitter, so a retried commit
//! conflict does not collide again in lockstep. Data errors are never retried.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before attempt `attempt + 1` (attempts count from 1): a uniformly random duration
    /// up to `base * 2^(attempt-1)`, capped at `max_delay`.
    pub fn delay_after(&self, attempt: u32, random: u64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let ceiling_ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(random % (ceiling_ms + 1))
    }
}

/// A cheap non-cryptographic random number for jitter.
pub(crate) fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        // With the largest possible random draw, the delay is the ceiling itself.
        assert_eq!(policy.delay_after(1, 100), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2, 200), Duration::from_millis(200));
        assert_eq!(policy.delay_after(3, 400), Duration::from_millis(400));
        assert_eq!(policy.delay_after(9, 1000), Duration::from_millis(1000));
        for attempt in 1..10 {
            for random in [0, 7, 12345, u64::MAX] {
                assert!(policy.delay_after(attempt, random) <= Duration::from_millis(1000));
            }
        }
    }
}
