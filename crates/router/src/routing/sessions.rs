//! Executor sessions: connect, liveness, disconnect (their leases interrupted), heartbeats
//! renewing leases, and the `ListExecutors` view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::store::NewAlert;

use super::{ExecutorView, Routing, Session, SessionSender};

impl Routing {
    /// Registers a new executor session for `targets` (no duplicates), which gets no work
    /// once `cut` is cancelled, dry runs only if `capabilities` name `dry_run` and revert checks
    /// only if they name `revert`; returns its
    /// session id and owner name.
    pub async fn connect(
        &self,
        executor_id: &str,
        targets: &[String],
        capabilities: &[String],
        sender: SessionSender,
        cut: CancellationToken,
    ) -> (u64, String) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{executor_id}#{id}");
        let now = self.clock.now_ms();
        let session = Session {
            id,
            owner: owner.clone(),
            executor_id: executor_id.to_owned(),
            targets: targets.to_vec(),
            connected_ms: now,
            last_seen_ms: Arc::new(AtomicI64::new(now)),
            sender,
            cut,
            dry_run: capabilities.iter().any(|c| c == "dry_run"),
            revert: capabilities.iter().any(|c| c == "revert"),
        };
        // `unrestored` lives in memory: derive it from the stored alerts when a target's
        // executor connects, so a router restarted while it fired still resolves it on the
        // target's next success. (A read at connect, not at every completion.)
        let firing = match self.store.firing_alerts().await {
            Ok(firing) => firing,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the firing alerts");
                Vec::new()
            }
        };
        self.served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(targets.iter().cloned());
        {
            let mut slots = self.slots.lock().await;
            for target in targets {
                let slot = slots.entry(target.clone()).or_default();
                slot.unrestored |= firing
                    .iter()
                    .any(|key| *key == format!("workspace_not_restored/{target}"));
                slot.sessions.push(session.clone());
                metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                    .increment(1.0);
            }
        }
        tracing::info!(executor = ?owner, ?targets, "executor connected");
        for target in targets {
            self.resolve(
                format!("executor_lost/{target}"),
                format!("executor {owner} serves {target} again"),
            )
            .await;
            self.dispatch(target).await;
        }
        (id, owner)
    }

    /// Notes that a session is alive (any message counts).
    pub async fn seen(&self, session: u64) {
        let slots = self.slots.lock().await;
        let now = self.clock.now_ms();
        for slot in slots.values() {
            for s in slot.sessions.iter().filter(|s| s.id == session) {
                s.last_seen_ms.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Forgets a session, interrupts whatever it was running, and raises `executor_lost` for
    /// targets left with no executor.
    pub async fn disconnect(&self, session: u64, owner: &str) {
        let mut orphaned = Vec::new();
        {
            let mut slots = self.slots.lock().await;
            for (target, slot) in slots.iter_mut() {
                let before = slot.sessions.len();
                slot.sessions.retain(|s| s.id != session);
                if slot.sessions.len() != before {
                    metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                        .decrement(1.0);
                    if slot.sessions.is_empty() {
                        orphaned.push(target.clone());
                    }
                }
                if slot.active.as_ref().is_some_and(|(_, _, s)| *s == session) {
                    slot.active = None;
                }
            }
        }
        tracing::info!(executor = ?owner, "executor disconnected");
        self.dry_runs.forget_session(owner);
        for target in &orphaned {
            self.raise(NewAlert {
                key: format!("executor_lost/{target}"),
                severity: "critical",
                summary: format!("no executor serves {target}: {owner} disconnected"),
                labels: vec![
                    ("target".to_owned(), target.clone()),
                    ("executor".to_owned(), owner.to_owned()),
                ],
            })
            .await;
        }
        let ended = self
            .store
            .end_leases(
                Some(owner.to_owned()),
                format!("executor {owner} disconnected"),
                self.policy.max_attempts,
            )
            .await;
        self.after_leases_ended(ended).await;
    }

    /// Renews the leases an executor still holds (only leases this session holds: the store
    /// matches the owner; token 0, a queued patch's, never renews anything).
    pub async fn heartbeat(&self, owner: &str, mut tokens: Vec<u64>) {
        tokens.retain(|token| *token != 0);
        if tokens.is_empty() {
            return;
        }
        if let Err(err) = self
            .store
            .renew(owner.to_owned(), tokens, self.lease_ms())
            .await
        {
            tracing::error!(executor = ?owner, error = %err, "cannot renew leases");
        }
    }

    /// Every connected executor session.
    pub async fn executors(&self) -> Vec<ExecutorView> {
        let slots = self.slots.lock().await;
        let mut views: BTreeMap<u64, ExecutorView> = BTreeMap::new();
        for slot in slots.values() {
            for session in &slot.sessions {
                let view = views.entry(session.id).or_insert_with(|| ExecutorView {
                    executor_id: session.executor_id.clone(),
                    session: session.owner.clone(),
                    targets: session.targets.clone(),
                    connected_ms: session.connected_ms,
                    last_seen_ms: session.last_seen_ms.load(Ordering::Relaxed),
                    running: Vec::new(),
                });
                if let Some((patch, _, owner)) = &slot.active
                    && *owner == session.id
                {
                    view.running.push(patch.clone());
                }
            }
        }
        views.into_values().collect()
    }

    /// Ends every executor session (on shutdown), so their streams close.
    pub async fn close_sessions(&self) {
        self.slots.lock().await.clear();
    }
}
