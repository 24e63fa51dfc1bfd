//! The one outbox engine: rows owed to a receiver are claimed from a durable store, sent by a
//! [`Sink`], and every result of a round is settled in one store write; a failed row is tried
//! again after [`Backoff`], and dead-lettered by the [`GiveUp`] rule or a permanent error.
//!
//! - **Claims.** [`Store::claim`] marks the rows it returns as this process's
//!   ([`Claim::claimant`]) until [`Claim::until_ms`]: another replica on the same database does
//!   not take them until then, so each row is sent once in normal operation, and a dead
//!   replica's rows are taken over once its claims run out. Rows claimed but not sent (order
//!   held back, shutdown) are settled as [`Outcome::Release`].
//! - **Delivery.** [`Delivery::Ordered`] sends one row at a time and stops a round at the first
//!   that is not delivered (nothing overtakes it); [`Delivery::Parallel`] keeps up to `at_once`
//!   sends in flight; [`Delivery::Continuous`] too, but starts new rows while others are still
//!   out (claimed again at every wake-up, poll or settled write; rows it still holds are not
//!   sent twice even when the store returns them again). Either way a round sends at most one row per [`Row::key`] (per-key heads:
//!   the store returns only the first pending row of a key), and with [`Policy::pacing`] at
//!   most one per [`Row::gate`], which then stays closed for the pacing (a `Retry-After` closes
//!   it too); closed gates are passed to the next claim.
//! - **Settling.** One write per round; a store error is retried until it succeeds or the
//!   outbox shuts down (then the rows stay claimed until their claim runs out: sent again,
//!   never dropped; receivers deduplicate).
//! - **Waiting.** After a round: at once if the batch was full and all went, else until the
//!   next row is due ([`Store::next_due`]), a gate opens, a wake-up, or [`Policy::poll`].
//! - **Time.** Every "now" and every sleep comes from the injected [`RuleClock`], so tests run
//!   on paused tokio time.
//! - **Metrics.** `ghost_outbox_depth{outbox}` and `ghost_outbox_oldest_age_seconds{outbox}`
//!   from [`Store::backlog`] after every pass.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;

/// Failed tries after which each further failure is logged as an error, not a warning.
const LOUD_AFTER: u32 = 5;

/// One pending row, as the engine sees it.
pub trait Row: Send + Sync + 'static {
    /// Its id in its table.
    fn id(&self) -> i64;
    /// Failed tries so far.
    fn tries(&self) -> u32;
    /// When it was first tried (Unix ms), if it was: [`GiveUp::after`] counts from there.
    fn first_try_ms(&self) -> Option<i64> {
        None
    }
    /// Rows of one key go one at a time, in order (a patch's attempts, a Slack thread).
    fn key(&self) -> Option<&str> {
        None
    }
    /// Rows of one gate are paced ([`Policy::pacing`]) and held by a `Retry-After` (a Slack
    /// channel).
    fn gate(&self) -> Option<&str> {
        None
    }
    /// A name for logs (never a payload or a secret).
    fn describe(&self) -> String {
        self.id().to_string()
    }
}

/// The one retry schedule: `initial` doubling per failure, at most `max`; with `jitter`, a
/// random part of up to half of each wait is taken off, so many rows' retries spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Take a random part of up to half off each wait.
    pub jitter: bool,
}

impl Backoff {
    /// Exponential, without jitter.
    #[must_use]
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: false,
        }
    }

    /// The wait after `tries` failures (1 = the first), before jitter.
    #[must_use]
    pub fn delay(&self, tries: u32) -> Duration {
        let factor = 1_u32 << tries.saturating_sub(1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait after `tries` failures, jittered when asked.
    #[must_use]
    pub fn wait(&self, tries: u32) -> Duration {
        let delay = self.delay(tries);
        if self.jitter { jittered(delay) } else { delay }
    }
}

/// `delay` less a random part of up to half of it.
#[must_use]
pub fn jittered(delay: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let half = delay / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random.checked_rem(nanos.max(1)).unwrap_or(0))
}

/// A name for this process's claims: distinct per process and per start.
#[must_use]
pub fn claimant() -> Arc<str> {
    use std::hash::BuildHasher as _;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    Arc::from(format!("{}-{random:016x}", std::process::id()))
}

/// How rows of one outbox go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One at a time; a row not delivered holds back the rest of the round (and the store's
    /// claim keeps the order across rounds: it stops at the first row not due).
    Ordered,
    /// Up to `at_once` sends in flight.
    Parallel {
        /// Most sends in flight (at least 1).
        at_once: usize,
    },
    /// Up to `at_once` sends in flight, and a new row starts as soon as a place frees up: no
    /// round waits for its slowest send, and results are settled in the background, one write
    /// for all that came in since the last (see [`Outbox::run`]).
    Continuous {
        /// Most sends in flight (at least 1).
        at_once: usize,
    },
}

/// When a row that keeps failing is dead-lettered (both unset: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GiveUp {
    /// After this many failed tries.
    pub after_tries: Option<u32>,
    /// When a try fails this long after the first try.
    pub after: Option<Duration>,
}

/// How one outbox runs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The `outbox` label of its metrics and logs.
    pub name: &'static str,
    /// Ordered or parallel.
    pub delivery: Delivery,
    /// The retry schedule.
    pub backoff: Backoff,
    /// The dead-letter rule.
    pub give_up: GiveUp,
    /// Rows claimed per round.
    pub batch: usize,
    /// Looks at the store at least this often.
    pub poll: Duration,
    /// How long a claim keeps other replicas off a row: longer than one send can take.
    pub claim_timeout: Duration,
    /// Least time between two sends through one gate; zero: no pacing.
    pub pacing: Duration,
    /// Wait after a store error before trying again.
    pub store_retry: Duration,
}

impl Policy {
    /// A parallel outbox (16 at once) named `name` retrying on `backoff`, never giving up.
    #[must_use]
    pub fn new(name: &'static str, backoff: Backoff) -> Self {
        Self {
            name,
            delivery: Delivery::Parallel { at_once: 16 },
            backoff,
            give_up: GiveUp::default(),
            batch: 32,
            poll: Duration::from_secs(1),
            claim_timeout: Duration::from_secs(60),
            pacing: Duration::ZERO,
            store_retry: Duration::from_secs(1),
        }
    }
}

/// What [`Store::claim`] is asked for.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Rule time now: rows due at or before it, whose claim (if any) ran out by it.
    pub now_ms: i64,
    /// Most rows.
    pub limit: usize,
    /// Who claims them (this process).
    pub claimant: Arc<str>,
    /// Claimed until then.
    pub until_ms: i64,
    /// Gates closed now: none of their rows.
    pub closed: Vec<String>,
}

/// What became of one claimed row, settled by [`Store::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<R> {
    /// Sent: forget the row (the receipt says what the receiver answered).
    Delivered {
        /// Row id.
        id: i64,
        /// What the sink returned.
        receipt: R,
    },
    /// Failed: count the try, try again at `next_at_ms`, drop the claim.
    Retry {
        /// Row id.
        id: i64,
        /// Not before then (Unix ms, rule time).
        next_at_ms: i64,
        /// When this try was made (the first try's time is kept).
        tried_ms: i64,
        /// Why it failed.
        error: String,
    },
    /// Given up: move the row to the dead letters.
    Dead {
        /// Row id.
        id: i64,
        /// When.
        at_ms: i64,
        /// Tries made, this one included.
        tries: u32,
        /// Why.
        reason: String,
    },
    /// Claimed but not sent: drop the claim only.
    Release {
        /// Row id.
        id: i64,
    },
}

impl<R> Outcome<R> {
    /// The row's id.
    pub fn id(&self) -> i64 {
        match self {
            Self::Delivered { id, .. }
            | Self::Retry { id, .. }
            | Self::Dead { id, .. }
            | Self::Release { id } => *id,
        }
    }
}

/// An outbox's backlog, for its gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows still owed.
    pub depth: u64,
    /// When the oldest was queued (Unix ms, rule time).
    pub oldest_created_ms: Option<i64>,
}

/// Where an outbox's rows live.
pub trait Store: Send + Sync + 'static {
    /// A pending row.
    type Row: Row;
    /// What a delivered row's sink returned.
    type Receipt: Send + Sync + 'static;
    /// A store error.
    type Error: std::fmt::Display + Send + Sync + 'static;

    /// Claims up to `claim.limit` rows due and unclaimed (or whose claim ran out), first in
    /// line for their key, in the order they may be sent.
    fn claim(
        &self,
        claim: Claim,
    ) -> impl Future<Output = Result<Vec<Self::Row>, Self::Error>> + Send;

    /// When the next row is due, if known.
    fn next_due(&self) -> impl Future<Output = Result<Option<i64>, Self::Error>> + Send {
        async { Ok(None) }
    }

    /// Records a round in one write; only rows `claimant` still holds are retried or released.
    fn settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<Self::Receipt>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The backlog for `ghost_outbox_depth` and `ghost_outbox_oldest_age_seconds`; `None`:
    /// this outbox publishes no such gauges.
    fn backlog(&self) -> impl Future<Output = Result<Option<Backlog>, Self::Error>> + Send {
        async { Ok(None) }
    }

    /// After every pass (other gauges, pruning).
    fn after_pass(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A store call failed (e.g. to degrade the service's storage health).
    fn failed(&self, _err: &Self::Error) {}
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again: after the backoff, or after `after` when the receiver said so.
    Retry {
        /// Why.
        reason: String,
        /// The receiver's `Retry-After`; also closes the row's gate until then.
        after: Option<Duration>,
    },
    /// Trying again cannot help: dead-letter it now.
    Permanent(String),
}

impl SendError {
    /// A retryable failure without a `Retry-After`.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

/// Where an outbox's rows go.
pub trait Sink: Send + Sync + 'static {
    /// A pending row.
    type Row: Row;
    /// What a delivery returns.
    type Receipt: Send + Sync + 'static;

    /// Sends one row (with its own deadline).
    fn send(
        &self,
        row: &Self::Row,
    ) -> impl Future<Output = Result<Self::Receipt, SendError>> + Send;

    /// Called with each row's outcome before it is settled (service metrics and logs).
    fn observe(&self, _row: &Self::Row, _outcome: &Outcome<Self::Receipt>) {}
}

mod continuous;
mod engine;

pub use self::engine::Outbox;

#[cfg(test)]
mod tests;
