//! [`Clock`]: the one source of "now" for every time rule in the alerter (signature windows,
//! grouping, repeat, escalation, silences, backoff), so tests can pin or pause it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Time in Unix milliseconds for the alerter's rules: rule time in production (see
/// [`SystemClock`]), pinned or paused in tests.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, as rule time ([`ghost_runtime::clock::Clock::process`]): the wall clock
/// read once at start, then the monotonic clock, so a wall-clock jump of an hour neither fires
/// every repeat and escalation at once nor silences alerts for an hour.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        ghost_runtime::clock::Clock::process().now_ms()
    }
}

/// A clock that moves with tokio's clock from a fixed start: pausing and advancing tokio time
/// (`tokio::time::pause`/`advance`) moves it too.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_ms` now.
    pub fn starting_at(start_ms: i64) -> Self {
        Self {
            start_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock pinned at `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        Self {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
