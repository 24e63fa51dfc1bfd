//! Writes that meet a storage fault: retried with bounded backoff until stored, dispatches
//! retried after a failed lease, and the leases renewed once the store heals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ghost_runtime::storage::StorageHealth;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

use super::{Routing, storage_backoff};

impl Routing {
    pub(super) fn storage_degraded(&self) -> bool {
        self.storage
            .as_ref()
            .is_some_and(StorageHealth::is_degraded)
    }

    /// Runs `write` again, with backoff, for as long as it meets a storage fault: the write is
    /// never dropped. Other errors (and success) are returned at once.
    pub(super) async fn until_stored<T, F, Fut>(
        &self,
        what: &str,
        mut write: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut failures = 0_u32;
        loop {
            match write().await {
                Err(err @ StoreError::Unavailable { .. }) => {
                    let wait = storage_backoff(failures);
                    tracing::warn!(what, error = %err, retry_in = ?wait, "write not stored; retried");
                    tokio::time::sleep(wait).await;
                    failures = failures.saturating_add(1);
                }
                other => return other,
            }
        }
    }

    /// Notes that `target`'s lease could not be stored: it is dispatched again after a backoff.
    pub(super) fn retry_dispatch_later(&self, target: &str) {
        let mut due = self
            .retries
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failures = due.get(target).map_or(0, |(failures, _)| *failures);
        let wait = storage_backoff(failures);
        due.insert(
            target.to_owned(),
            (failures.saturating_add(1), Instant::now() + wait),
        );
        drop(due);
        self.retries.wake.notify_one();
    }

    /// A lease of `target` was stored (or there was nothing to lease): its backoff starts over.
    pub(super) fn dispatch_stored(&self, target: &str) {
        let mut due = self
            .retries
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if due.get(target).is_some_and(|(failures, _)| *failures > 0) {
            due.remove(target);
        }
    }

    /// Dispatches again, when their backoff is over, the targets whose lease could not be
    /// stored, until `shutdown`: a queued patch is never left waiting for an unrelated event.
    pub async fn run_dispatch_retries(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let (ready, next): (Vec<String>, Option<Instant>) = {
                let due = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let ready = due
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(target, _)| target.clone())
                    .collect();
                let next = due.values().map(|(_, at)| *at).filter(|at| *at > now).min();
                (ready, next)
            };
            // Marks a ready target as not due while it is tried (a failure schedules the next try).
            let trying = now + Duration::from_secs(3600);
            for target in &ready {
                if let Some(entry) = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(target)
                {
                    entry.1 = trying;
                }
                tracing::info!(%target, "dispatching again after a lease that was not stored");
                self.dispatch(target).await;
                // Still marked: the dispatch ended before the store (the target busy or no
                // executor), and the next event of the target dispatches it as usual.
                let mut due = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if due.get(target).is_some_and(|(_, at)| *at == trying) {
                    due.remove(target);
                }
            }
            if !ready.is_empty() {
                continue;
            }
            let sleep = next.map_or(Duration::from_secs(3600), |at| at - now);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.retries.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Hands out work on every served target at once after the store healed (rather than at
    /// each target's next retry).
    pub async fn dispatch_after_heal(&self) {
        self.dispatch_all().await;
    }

    /// Renews the live leases of the executors still connected (after the store healed: their
    /// renewals during the fault could not be stored, and they must not expire for it).
    pub async fn renew_live_leases(&self) -> Result<(), StoreError> {
        let held: Vec<(String, u64)> = {
            let slots = self.slots.lock().await;
            slots
                .values()
                .filter_map(|slot| {
                    let (_, token, session) = slot.active.as_ref()?;
                    let holder = slot.sessions.iter().find(|s| s.id == *session)?;
                    Some((holder.owner.clone(), *token))
                })
                .collect()
        };
        for (owner, token) in held {
            self.store
                .renew(owner, vec![token], self.lease_ms())
                .await?;
        }
        Ok(())
    }
}
