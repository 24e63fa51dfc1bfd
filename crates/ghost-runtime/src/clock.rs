//! Two kinds of "now", kept apart:
//!
//! - **Rule time** ([`Clock::now_ms`]) for leases, deadlines, timeouts, backoff, liveness and
//!   rate limits: Unix milliseconds read from the wall clock once, when the clock is made, then
//!   advanced by the monotonic clock only. A wall-clock jump (an NTP step, an operator's
//!   `date -s`, a VM resumed) neither expires nor extends anything measured in it. It is still
//!   Unix time, so a deadline written to a store survives a restart (the new process reads the
//!   wall clock again, once).
//! - **Wall time** ([`wall_ms`]) for timestamps shown to people (created, updated, event and
//!   delivery times), and for comparing with another party's wall clock (a signed request's
//!   timestamp).
//!
//! Until the wall clock jumps the two agree; after a jump they differ by the jump until the
//! process restarts.
//!
//! [`RuleClock`] is the injectable form: [`SystemClock`] in production (the process's
//! [`Clock`]), [`TokioClock`] in tests, which moves with tokio's clock, so a test pauses and
//! advances time (`tokio::time::pause`/`advance`, `start_paused = true`) instead of sleeping.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Rule time, injectable: what every rule (outbox backoff, claims, leases) reads "now" from
/// and sleeps on.
pub trait RuleClock: Send + Sync + 'static {
    /// Rule time now, in Unix milliseconds.
    fn now_ms(&self) -> i64;

    /// Sleeps until rule time `deadline_ms` (at once when it has passed). Both clocks here
    /// move with tokio's clock, so this is a tokio sleep: paused tokio time pauses it too.
    fn sleep_until_ms(&self, deadline_ms: i64) -> tokio::time::Sleep {
        let wait = deadline_ms.saturating_sub(self.now_ms()).max(0);
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
    }
}

/// A shared rule clock.
pub type SharedClock = Arc<dyn RuleClock>;

/// The process's rule clock ([`Clock::process`]), as a [`RuleClock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    #[must_use]
    pub fn shared() -> SharedClock {
        Arc::new(Self)
    }
}

impl RuleClock for SystemClock {
    fn now_ms(&self) -> i64 {
        Clock::process().now_ms()
    }
}

impl RuleClock for Clock {
    fn now_ms(&self) -> i64 {
        Clock::now_ms(self)
    }
}

/// A clock that moves with tokio's clock from a fixed start: pausing and advancing tokio time
/// moves it too (tests).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_ms` now.
    #[must_use]
    pub fn starting_at(start_ms: i64) -> Self {
        Self {
            start_ms,
            start: tokio::time::Instant::now(),
        }
    }

    /// [`TokioClock::starting_at`], shared.
    #[must_use]
    pub fn shared(start_ms: i64) -> SharedClock {
        Arc::new(Self::starting_at(start_ms))
    }
}

impl RuleClock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}

/// Rule time: the wall clock read once at [`Clock::starting_now`], advanced by the monotonic
/// clock. `Copy` and cheap: pass it where rules are computed.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_ms: i64,
    start: Instant,
}

impl Clock {
    /// A clock reading the wall clock now, and only now.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::starting_at(wall_ms())
    }

    /// A clock reading `start_ms` now (tests pin the start).
    #[must_use]
    pub fn starting_at(start_ms: i64) -> Self {
        Self {
            start_ms,
            start: Instant::now(),
        }
    }

    /// The process's rule clock, started at its first use: every rule in one process reads
    /// the same clock, so values they write and compare stay consistent.
    #[must_use]
    pub fn process() -> Self {
        static PROCESS: OnceLock<Clock> = OnceLock::new();
        *PROCESS.get_or_init(Self::starting_now)
    }

    /// Rule time now, in Unix milliseconds.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}

/// Wall time now, in Unix milliseconds: for timestamps shown to people only.
#[must_use]
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_time_starts_at_its_start_and_moves_forward_with_the_monotonic_clock() {
        let clock = Clock::starting_at(1_000);
        let first = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = clock.now_ms();
        assert!(first >= 1_000, "{first}");
        assert!(second >= first + 20, "{first} then {second}");
    }

    #[test]
    fn the_process_clock_is_one_clock_and_agrees_with_the_wall_until_a_jump() {
        let (a, b) = (Clock::process(), Clock::process());
        assert_eq!(a.start_ms, b.start_ms);
        // No jump during a unit test: within a second of each other.
        assert!((a.now_ms() - wall_ms()).abs() < 1_000);
        assert!((RuleClock::now_ms(&SystemClock) - wall_ms()).abs() < 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_only_with_tokio_time_and_sleeps_on_it() {
        let clock = TokioClock::shared(5_000);
        assert_eq!(clock.now_ms(), 5_000);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), 5_250);
        // Paused time auto-advances to the deadline, and not past it.
        clock.sleep_until_ms(6_000).await;
        assert_eq!(clock.now_ms(), 6_000);
        // A deadline passed already: at once.
        clock.sleep_until_ms(1_000).await;
        assert_eq!(clock.now_ms(), 6_000);
    }
}
