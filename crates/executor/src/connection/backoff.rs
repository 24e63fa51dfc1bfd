//! Waits between reconnect attempts: exponential, capped, with full jitter (a random wait
//! between zero and the current cap), so executors cut off by one router restart do not all
//! dial back in the same instant.

use std::time::Duration;

/// The shortest first wait between reconnect attempts, whatever the config says.
pub const MIN_BASE: Duration = Duration::from_millis(100);

/// The reconnect schedule of one executor.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, doubling per failure up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        // A zero base would retry with no pause at all, each attempt costing the router a
        // handshake and a lookup: never below this.
        let base = base.max(MIN_BASE);
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The cap of the next wait: `base * 2^failures`, at most `max`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait after one more failure: uniform in `[0, cap]`, drawn from `random`.
    pub fn next_wait(&mut self, random: u64) -> Duration {
        let cap = self.cap();
        self.failures = self.failures.saturating_add(1);
        jittered(cap, random)
    }

    /// From now on every wait is drawn below `max` (a revoked token: no fast retries).
    pub fn hold_at_max(&mut self) {
        self.failures = u32::MAX;
    }

    /// After a session the router welcomed: start over from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A wait uniform in `[0, cap]` (millisecond steps).
fn jittered(cap: Duration, random: u64) -> Duration {
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % cap_ms.saturating_add(1))
}

/// A random number for the jitter; a fixed one if the OS has none to give (the wait is then
/// the cap's half, still bounded).
pub fn random() -> u64 {
    getrandom::u64().unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_base_still_waits() {
        let backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.cap(), MIN_BASE);
    }

    #[test]
    fn the_cap_doubles_up_to_the_max_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let caps: Vec<u64> = (0..7)
            .map(|_| {
                let cap = backoff.cap().as_secs();
                backoff.next_wait(0);
                cap
            })
            .collect();
        assert_eq!(caps, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.cap(), Duration::from_secs(1));
        backoff.hold_at_max();
        assert_eq!(backoff.cap(), Duration::from_secs(30));
    }

    #[test]
    fn every_wait_is_between_zero_and_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for random in [0, 1, 99, 100, 101, u64::MAX] {
            backoff.reset();
            let wait = backoff.next_wait(random);
            assert!(wait <= Duration::from_millis(100), "{wait:?}");
        }
        assert_eq!(backoff.next_wait(200), Duration::from_millis(200));
        assert_eq!(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_wait(150),
            Duration::from_millis(49)
        );
    }
}
