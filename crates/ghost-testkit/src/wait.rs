//! Waiting in a test for something to become true, bounded in time: one poll loop for every
//! test, instead of a hand-written `deadline`/`sleep` loop in each.
//!
//! ```ignore
//! let ready = wait_until("the executor is online", TEST_TIMEOUT, POLL_INTERVAL, async || {
//!     let targets = client.targets().await;
//!     if targets.main_online { Ok(targets) } else { Err(targets) }
//! })
//! .await;
//! ```
//!
//! The check returns `Ok(value)` when the condition holds (the wait returns the value) or
//! `Err(seen)` with what it observed; on timeout the panic names the description and the last
//! observation, so a failing test says what it was waiting for and how far it got.

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

/// How long a test waits for anything by default (a service ready, a patch finished, a
/// message delivered): long enough for a loaded CI machine, short enough to fail usefully.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`wait_until`] checks by default.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A wait that ran out of time, with the last observation (`None`: no check finished).
#[derive(Debug)]
pub struct TimedOut<Seen> {
    /// What was waited for.
    pub what: String,
    /// How long it was waited for.
    pub timeout: Duration,
    /// What the last check that finished observed.
    pub last: Option<Seen>,
}

impl<Seen: Debug> std::fmt::Display for TimedOut<Seen> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "waited {:?} for {}; ", self.timeout, self.what)?;
        match &self.last {
            Some(last) => write!(f, "last seen: {last:?}"),
            None => write!(f, "no check finished in time"),
        }
    }
}

/// Runs `check` every `every` until it returns `Ok`, and returns that value; panics after
/// `timeout` naming `what` and the last `Err` observed. A check still running at the deadline
/// is abandoned (a hung peer cannot hold the test past its bound).
pub async fn wait_until<T, Seen: Debug>(
    what: &str,
    timeout: Duration,
    every: Duration,
    check: impl AsyncFnMut() -> Result<T, Seen>,
) -> T {
    match try_wait_until(what, timeout, every, check).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out}"),
    }
}

/// [`wait_until`] with [`TEST_TIMEOUT`] and [`POLL_INTERVAL`].
pub async fn wait_for<T, Seen: Debug>(
    what: &str,
    check: impl AsyncFnMut() -> Result<T, Seen>,
) -> T {
    wait_until(what, TEST_TIMEOUT, POLL_INTERVAL, check).await
}

/// [`wait_until`] that returns the timeout instead of panicking, for a test that expects the
/// condition never to hold or reports it otherwise.
pub async fn try_wait_until<T, Seen: Debug>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, Seen>,
) -> Result<T, TimedOut<Seen>> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last = Some(seen),
            Err(_) => break,
        }
        if Instant::now() + every > deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    Err(TimedOut {
        what: what.to_owned(),
        timeout,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_check_holds() {
        let mut calls = 0;
        let value = wait_until("three calls", TEST_TIMEOUT, Duration::ZERO, async || {
            calls += 1;
            if calls == 3 {
                Ok(calls * 10)
            } else {
                Err(calls)
            }
        })
        .await;
        assert_eq!((value, calls), (30, 3));
    }

    #[tokio::test]
    async fn a_timeout_names_what_was_awaited_and_the_last_observation() {
        let mut calls = 0;
        let timed_out = try_wait_until(
            "the impossible",
            Duration::from_millis(100),
            Duration::from_millis(10),
            async || -> Result<(), u32> {
                calls += 1;
                Err(calls)
            },
        )
        .await
        .expect_err("never holds");
        assert_eq!(timed_out.last, Some(calls));
        let text = timed_out.to_string();
        assert!(text.contains("the impossible"), "{text}");
        assert!(text.contains(&format!("last seen: {calls}")), "{text}");
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_abandoned_at_the_deadline() {
        let started = std::time::Instant::now();
        let timed_out = try_wait_until(
            "a hung peer",
            Duration::from_millis(100),
            POLL_INTERVAL,
            async || -> Result<(), ()> { std::future::pending().await },
        )
        .await
        .expect_err("never answers");
        assert!(timed_out.last.is_none());
        assert!(started.elapsed() < Duration::from_secs(10), "bounded");
        assert!(timed_out.to_string().contains("no check finished"));
    }

    #[tokio::test]
    #[should_panic(expected = "waited 50ms for a flag; last seen: false")]
    async fn wait_until_panics_with_the_description() {
        wait_until(
            "a flag",
            Duration::from_millis(50),
            Duration::from_millis(10),
            async || -> Result<(), bool> { Err(false) },
        )
        .await;
    }
}
