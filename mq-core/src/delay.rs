//! Delayed delivery and retry back-off: RocketMQ's delay levels, any delay, a deliver-at time.

use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::error::MessageError;

/// RocketMQ's `messageDelayLevel`: `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
pub const DEFAULT_DELAY_LEVELS: [Duration; 18] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(3 * 60),
    Duration::from_secs(4 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(6 * 60),
    Duration::from_secs(7 * 60),
    Duration::from_secs(8 * 60),
    Duration::from_secs(9 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
];

/// RocketMQ 5's default longest delay (`timerMaxDelaySec`): 3 days.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3 * 24 * 3600);

/// When a delayed message becomes visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// A delay level, 1-based, from the broker's table (`1` is `1s`, `18` is `2h` by default).
    Level(u8),
    /// After this long.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

/// The delay table and the longest accepted delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayPolicy {
    /// Delay of each level, level 1 first.
    pub levels: Vec<Duration>,
    /// The longest accepted delay.
    pub max_delay: Duration,
}

impl Default for DelayPolicy {
    fn default() -> Self {
        DelayPolicy {
            levels: DEFAULT_DELAY_LEVELS.to_vec(),
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl DelayPolicy {
    /// The due time, in ms since the Unix epoch, of a message sent at `now_ms` with `delay`.
    pub fn due_ms(&self, delay: Delay, now_ms: u64) -> Result<u64, MessageError> {
        let after = match delay {
            Delay::Level(level) => *self.levels.get((level as usize).wrapping_sub(1)).ok_or(
                MessageError::InvalidDelay {
                    reason: format!("delay level {level} is outside 1..={}", self.levels.len()),
                },
            )?,
            Delay::After(d) => d,
            Delay::At(at) => {
                return {
                    // Rounded up, like `Clock::due_after`: never due before the instant asked.
                    let at_ms = Clock::to_ms_ceil(at);
                    let max = now_ms + self.max_delay.as_millis() as u64;
                    if at_ms > max {
                        Err(self.too_long(Duration::from_millis(at_ms - now_ms)))
                    } else {
                        Ok(at_ms.max(now_ms))
                    }
                };
            }
        };
        if after > self.max_delay {
            return Err(self.too_long(after));
        }
        Ok(now_ms + after.as_millis() as u64)
    }

    fn too_long(&self, asked: Duration) -> MessageError {
        MessageError::InvalidDelay {
            reason: format!(
                "a delay of {}s exceeds the maximum of {}s",
                asked.as_secs(),
                self.max_delay.as_secs()
            ),
        }
    }
}

/// Retry back-off of concurrent consumers: RocketMQ re-sends attempt `n` at delay level `n + 2`,
/// so `10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before retry `n` (1-based) is `steps[n - 1]`, the last step repeating.
    pub steps: Vec<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            steps: DEFAULT_DELAY_LEVELS[2..].to_vec(),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let i = (retry.max(1) as usize - 1).min(self.steps.len().saturating_sub(1));
        self.steps
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn levels_follow_rocketmq() {
        let p = DelayPolicy::default();
        assert_eq!(p.due_ms(Delay::Level(1), 1000).unwrap(), 2000);
        assert_eq!(p.due_ms(Delay::Level(18), 0).unwrap(), 7_200_000);
        assert!(p.due_ms(Delay::Level(0), 0).is_err());
        assert!(p.due_ms(Delay::Level(19), 0).is_err());
    }

    #[test]
    fn long_delays_are_refused_with_a_reason() {
        let p = DelayPolicy::default();
        let err = p
            .due_ms(Delay::After(Duration::from_secs(4 * 24 * 3600)), 0)
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
        let now = SystemTime::now();
        let now_ms = Clock::to_ms(now);
        assert!(p
            .due_ms(Delay::At(now + Duration::from_secs(4 * 24 * 3600)), now_ms)
            .is_err());
        // An instant between two milliseconds is due at the later one.
        let at = UNIX_EPOCH + Duration::from_micros(1_000_000_500);
        assert_eq!(p.due_ms(Delay::At(at), 0).unwrap(), 1_000_001);
        let at = UNIX_EPOCH + Duration::from_millis(1_000_000);
        assert_eq!(p.due_ms(Delay::At(at), 0).unwrap(), 1_000_000);
        // A time in the past is due now.
        assert_eq!(
            p.due_ms(Delay::At(now - Duration::from_secs(5)), now_ms)
                .unwrap(),
            now_ms
        );
    }

    #[test]
    fn backoff_is_levels_three_and_up() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_secs(10));
        assert_eq!(b.delay(2), Duration::from_secs(30));
        assert_eq!(b.delay(16), Duration::from_secs(7200));
        assert_eq!(b.delay(40), Duration::from_secs(7200));
    }
}
