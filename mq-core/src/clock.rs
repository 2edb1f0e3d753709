//! Wall-clock time as the broker sees it: anchored once to the system clock and advanced by
//! tokio's clock, so that a test on a paused tokio clock drives delays, back-off and check-back
//! without waiting, and a wall-clock jump does not reorder due times inside one run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, advancing with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Nanoseconds since the Unix epoch at `anchor`: whole milliseconds would put the clock up
    /// to a millisecond behind and make every timer up to that much late.
    anchor_ns: u128,
    anchor: Instant,
}

impl Clock {
    /// A clock anchored now. Must be created inside a tokio runtime.
    pub fn new() -> Self {
        Clock {
            anchor_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            anchor: Instant::now(),
        }
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.now_ns() / 1_000_000) as u64
    }

    /// The due time, in ms since the Unix epoch, of something `after` from now: the first whole
    /// millisecond at or after that instant. `now_ms() + after` would fall due up to a
    /// millisecond early, since `now_ms` rounds down.
    pub fn due_after(&self, after: Duration) -> u64 {
        let ms = (self.now_ns() + after.as_nanos()).div_ceil(1_000_000);
        ms.min(u128::from(u64::MAX)) as u64
    }

    fn now_ns(&self) -> u128 {
        self.anchor_ns + self.anchor.elapsed().as_nanos()
    }

    /// The tokio instant at which this clock shows `ms` (now, if that is past).
    pub fn instant_at(&self, ms: u64) -> Instant {
        let target_ns = u128::from(ms) * 1_000_000;
        let wait = target_ns.saturating_sub(self.now_ns());
        Instant::now() + Duration::from_nanos(wait.min(u128::from(u64::MAX)) as u64)
    }

    /// Milliseconds since the Unix epoch of `time`, rounded up (0 before the epoch): the first
    /// millisecond at which `time` has passed.
    pub fn to_ms_ceil(time: SystemTime) -> u64 {
        time.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64)
            .unwrap_or(0)
    }

    /// Milliseconds since the Unix epoch of `time`, rounded down (0 before the epoch).
    pub fn to_ms(time: SystemTime) -> u64 {
        time.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sub-millisecond phase of the clock, a due time never comes before its
    /// delay has passed, and never more than a millisecond after.
    #[tokio::test(start_paused = true)]
    async fn due_times_never_come_early() {
        let clock = Clock::new();
        let delay = Duration::from_millis(100);
        for _ in 0..1000 {
            let now = Instant::now();
            let at = clock.instant_at(clock.due_after(delay));
            assert!(at >= now + delay, "early by {:?}", now + delay - at);
            assert!(at < now + delay + Duration::from_millis(1));
            // 1 000 steps of 1.001 us visit every phase of a millisecond.
            tokio::time::advance(Duration::from_nanos(1001)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_tokio_clock() {
        let clock = Clock::new();
        let t0 = clock.now_ms();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now_ms() - t0, 10_000);
        let at = clock.instant_at(t0 + 15_000);
        let wait = at - Instant::now();
        assert!(
            wait <= Duration::from_secs(5) && wait > Duration::from_millis(4999),
            "{wait:?}"
        );
    }
}
