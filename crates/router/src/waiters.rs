//! Long-poll waiters (`Wait`): callers parked until a patch ends, woken in memory by the
//! router's own terminal-transition commits, never by polling the store.
//!
//! Each waiting call holds a [`WaitGuard`] that subscribes to its patch's generation counter
//! *before* it reads the patch, so an end committed between the read and the wait is never
//! missed. A commit that may also have ended patches whose ids the router does not see (the
//! dependents a failed patch fails in the same transaction) bumps a shared counter; only the
//! waiters of patches that depend on others keep watching it ([`WaitGuard::ignore_others`]
//! for the rest, once their first read shows no dependency), so such a commit re-reads only
//! the patches it may have failed, not every waiting one.
//! Dropping the guard (the call ended, or its client went away and tonic dropped the future)
//! removes the registration; the count of waiters is capped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::RouterError;

/// Waiting calls at once; more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_WAITERS: usize = 10_000;
/// The longest wait one call may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

struct Entry {
    wake: watch::Sender<u64>,
    waiting: usize,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Entry>,
    total: usize,
}

/// The registry of waiting calls.
pub struct Waiters {
    registry: Mutex<Registry>,
    /// Bumped when patches may have ended whose ids are not known here.
    any: watch::Sender<u64>,
    limit: usize,
}

impl Default for Waiters {
    fn default() -> Self {
        Self::with_limit(MAX_WAITERS)
    }
}

impl Waiters {
    /// A registry that admits at most `limit` waiting calls at once.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            registry: Mutex::new(Registry::default()),
            any: watch::Sender::new(0),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a waiter for `id`; refused beyond the cap.
    pub fn register(&self, id: &str) -> Result<WaitGuard<'_>, RouterError> {
        let mut registry = self.lock();
        if registry.total >= self.limit {
            metrics::counter!("ghost_router_waiters_refused_total").increment(1);
            return Err(RouterError::ResourceExhausted(format!(
                "{} calls are waiting already (the limit); try again later or poll",
                self.limit
            )));
        }
        registry.total += 1;
        let entry = registry
            .by_id
            .entry(id.to_owned())
            .or_insert_with(|| Entry {
                wake: watch::Sender::new(0),
                waiting: 0,
            });
        entry.waiting += 1;
        let own = entry.wake.subscribe();
        let total = registry.total;
        drop(registry);
        metrics::gauge!("ghost_router_waiters").set(total as f64);
        Ok(WaitGuard {
            waiters: self,
            id: id.to_owned(),
            own,
            any: Some(self.any.subscribe()),
        })
    }

    /// Wakes the waiters of `id`: its end was just committed.
    pub fn ended(&self, id: &str) {
        let registry = self.lock();
        if let Some(entry) = registry.by_id.get(id) {
            entry.wake.send_modify(|generation| *generation += 1);
        }
    }

    /// Wakes every waiter: a commit may have ended patches not named here (dependents failed
    /// along with the patch they waited for).
    pub fn maybe_ended_others(&self) {
        if self.lock().total == 0 {
            return;
        }
        self.any.send_modify(|generation| *generation += 1);
    }

    /// Wakes every waiting call to read its patch again: with replicas sharing a store, the
    /// bounded poll behind the notes of the others (a note missed while the listening
    /// connection was down is caught up within a poll).
    pub fn wake_all(&self) {
        let registry = self.lock();
        for entry in registry.by_id.values() {
            entry.wake.send_modify(|generation| *generation += 1);
        }
    }

    /// Waiting calls now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lock().total
    }

    fn leave(&self, id: &str) {
        let mut registry = self.lock();
        registry.total = registry.total.saturating_sub(1);
        if let Some(entry) = registry.by_id.get_mut(id) {
            entry.waiting = entry.waiting.saturating_sub(1);
            if entry.waiting == 0 {
                registry.by_id.remove(id);
            }
        }
        let total = registry.total;
        drop(registry);
        metrics::gauge!("ghost_router_waiters").set(total as f64);
    }
}

/// One waiting call's registration; dropping it unregisters.
pub struct WaitGuard<'a> {
    waiters: &'a Waiters,
    id: String,
    own: watch::Receiver<u64>,
    /// None once the patch is known to depend on no other.
    any: Option<watch::Receiver<u64>>,
}

impl WaitGuard<'_> {
    /// Stops watching the ends of other patches: this patch depends on none, so no other
    /// patch's end can end it.
    pub fn ignore_others(&mut self) {
        self.any = None;
    }

    /// Resolves once a wake-up arrived after the registration or the previous call.
    pub async fn woken(&mut self) {
        tokio::select! {
            changed = self.own.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            changed = async {
                match self.any.as_mut() {
                    Some(any) => any.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.waiters.leave(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_end_after_registration_wakes_and_a_dropped_guard_is_forgotten() {
        let waiters = Waiters::with_limit(2);
        let mut first = waiters.register("a").expect("room");
        let _second = waiters.register("b").expect("room");
        assert!(matches!(
            waiters.register("c"),
            Err(RouterError::ResourceExhausted(_))
        ));
        waiters.ended("a");
        tokio::time::timeout(Duration::from_secs(5), first.woken())
            .await
            .expect("woken by the end of a");
        drop(first);
        assert_eq!(waiters.count(), 1);
        assert!(!waiters.lock().by_id.contains_key("a"), "entry of a kept");
        let _third = waiters.register("c").expect("room again");
    }

    #[tokio::test]
    async fn others_ending_wakes_only_waiters_of_dependent_patches() {
        let waiters = Waiters::default();
        let mut dependent = waiters.register("dependent").expect("room");
        let mut independent = waiters.register("independent").expect("room");
        independent.ignore_others();
        waiters.maybe_ended_others();
        tokio::time::timeout(Duration::from_secs(5), dependent.woken())
            .await
            .expect("woken");
        // The other is not woken: its own end wakes it, and it was never told of others'.
        tokio::select! {
            biased;
            () = independent.woken() => panic!("a waiter of an independent patch was woken"),
            () = std::future::ready(()) => {}
        }
        waiters.ended("independent");
        tokio::time::timeout(Duration::from_secs(5), independent.woken())
            .await
            .expect("woken by its own end");
    }
}
