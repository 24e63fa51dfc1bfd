//! Who runs what: the registry of connected executors and the hand-out of leases.
//!
//! Executors dial in over the Work stream ([`crate::grpc`]); each connection is a session. A
//! target has at most one active lease at a time; when it is free and an executor serving it is
//! connected, the oldest highest-priority queued patch is leased (fresh fencing token, next
//! attempt) and assigned. A result is accepted only with the live fencing token. A lost session or
//! an expired lease puts the patch back in the queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ghost_core::{ApplyReport, Patch, Status};
use ghost_proto::executor::v1::{Assign, Cancel, RouterMessage, router_message};
use tokio::sync::{Mutex, Notify, mpsc};

use crate::error::RouterError;
use crate::store::{Inserted, PatchRecord, Store, now_ms};

/// Messages queued towards one executor session.
pub type SessionSender = mpsc::Sender<Result<RouterMessage, tonic::Status>>;

struct Session {
    id: u64,
    /// `<executor id>#<session id>`: the lease owner recorded in the store.
    owner: String,
    sender: SessionSender,
}

#[derive(Default)]
struct TargetSlot {
    sessions: Vec<Session>,
    /// The live lease of this target: (patch id, fencing token, session id).
    active: Option<(String, u64, u64)>,
}

/// The routing logic shared by the gRPC adapter and the background loops.
pub struct Routing {
    store: Store,
    slots: Mutex<HashMap<String, TargetSlot>>,
    /// Serialises lease hand-out so a target never gets two leases at once.
    dispatching: Mutex<()>,
    next_session: AtomicU64,
    lease: Duration,
    /// Woken when an outcome is waiting in the outbox.
    pub outbox_wake: Arc<Notify>,
}

impl Routing {
    /// Routing over `store`, with leases of length `lease`.
    pub fn new(store: Store, lease: Duration) -> Self {
        Self {
            store,
            slots: Mutex::new(HashMap::new()),
            dispatching: Mutex::new(()),
            next_session: AtomicU64::new(1),
            lease,
            outbox_wake: Arc::new(Notify::new()),
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Stores a patch (idempotently) and assigns it if its target is free.
    pub async fn submit(
        &self,
        patch: Patch,
        traceparent: String,
    ) -> Result<(PatchRecord, bool), RouterError> {
        let target = patch.target.to_string();
        let id = patch.id.to_string();
        match self.store.insert(patch, traceparent).await? {
            Inserted::Created(record) => {
                tracing::info!(patch_id = %id, %target, "patch queued");
                metrics::counter!("ghost_patches_submitted_total", "target" => target.clone())
                    .increment(1);
                self.dispatch(&target).await;
                Ok((record, true))
            }
            Inserted::Existing(record) => Ok((record, false)),
            Inserted::Conflict => Err(RouterError::Conflict(id)),
        }
    }

    /// Registers a new executor session for `targets`; returns its session id.
    pub async fn connect(
        &self,
        executor_id: &str,
        targets: &[String],
        sender: SessionSender,
    ) -> (u64, String) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{executor_id}#{id}");
        {
            let mut slots = self.slots.lock().await;
            for target in targets {
                slots
                    .entry(target.clone())
                    .or_default()
                    .sessions
                    .push(Session {
                        id,
                        owner: owner.clone(),
                        sender: sender.clone(),
                    });
                metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                    .increment(1.0);
            }
        }
        tracing::info!(executor = %owner, ?targets, "executor connected");
        for target in targets {
            self.dispatch(target).await;
        }
        (id, owner)
    }

    /// Forgets a session and requeues whatever it was running.
    pub async fn disconnect(&self, session: u64, owner: &str) {
        let mut freed = Vec::new();
        {
            let mut slots = self.slots.lock().await;
            for (target, slot) in slots.iter_mut() {
                let before = slot.sessions.len();
                slot.sessions.retain(|s| s.id != session);
                if slot.sessions.len() != before {
                    metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                        .decrement(1.0);
                }
                if slot.active.as_ref().is_some_and(|(_, _, s)| *s == session) {
                    slot.active = None;
                    freed.push(target.clone());
                }
            }
        }
        tracing::info!(executor = %owner, "executor disconnected");
        match self
            .store
            .requeue(
                Some(owner.to_owned()),
                format!("executor {owner} disconnected"),
            )
            .await
        {
            Ok(requeued) => {
                for (id, target) in requeued {
                    tracing::warn!(patch_id = %id, %target, "requeued after executor loss");
                    freed.push(target);
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot requeue after executor loss"),
        }
        freed.sort();
        freed.dedup();
        for target in freed {
            self.dispatch(&target).await;
        }
    }

    /// Leases and assigns the next queued patch of `target` if it is free and served.
    pub async fn dispatch(&self, target: &str) {
        let _serial = self.dispatching.lock().await;
        let (session_id, owner, sender) = {
            let slots = self.slots.lock().await;
            let Some(slot) = slots.get(target) else {
                return;
            };
            if slot.active.is_some() {
                return;
            }
            let Some(session) = slot.sessions.first() else {
                return;
            };
            (session.id, session.owner.clone(), session.sender.clone())
        };
        let record = match self
            .store
            .lease_next(target.to_owned(), owner.clone(), self.lease_ms())
            .await
        {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(%target, error = %err, "cannot lease the next patch");
                return;
            }
        };
        let id = record.patch.id.to_string();
        let assign = Assign {
            patch: Some(ghost_proto::router::v1::Patch::from(&record.patch)),
            attempt: record.attempt,
            fencing_token: record.fencing_token,
            deadline_unix_ms: now_ms() + self.lease_ms(),
            traceparent: record.traceparent.clone(),
        };
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(target) {
                slot.active = Some((id.clone(), record.fencing_token, session_id));
            }
        }
        let message = RouterMessage {
            kind: Some(router_message::Kind::Assign(assign)),
        };
        if sender.send(Ok(message)).await.is_err() {
            tracing::warn!(patch_id = %id, executor = %owner, "executor gone before assignment");
            // The session's reader notices the closed stream and requeues via `disconnect`.
            return;
        }
        tracing::info!(patch_id = %id, executor = %owner, attempt = record.attempt, "patch assigned");
    }

    /// Renews the leases an executor still holds.
    pub async fn heartbeat(&self, owner: &str, tokens: Vec<u64>) {
        if let Err(err) = self
            .store
            .renew(owner.to_owned(), tokens, self.lease_ms())
            .await
        {
            tracing::error!(executor = %owner, error = %err, "cannot renew leases");
        }
    }

    /// Records `applying` / `validating` under a live lease.
    pub async fn progress(&self, id: String, token: u64, status: Status, detail: String) {
        match self.store.progress(id.clone(), token, status, detail).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(patch_id = %id, token, "progress for a stale lease ignored")
            }
            Err(err) => tracing::error!(patch_id = %id, error = %err, "cannot record progress"),
        }
    }

    /// Accepts an attempt's report if `token` is the live lease, then frees the target.
    pub async fn complete(
        &self,
        id: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<(), RouterError> {
        let status = report.status;
        let Some(record) = self.store.complete(id.clone(), token, report).await? else {
            tracing::warn!(patch_id = %id, token, "result with a stale fencing token refused");
            return Err(RouterError::StaleLease(id));
        };
        let target = record.patch.target.to_string();
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(&target)
                && slot.active.as_ref().is_some_and(|(_, t, _)| *t == token)
            {
                slot.active = None;
            }
        }
        tracing::info!(patch_id = %id, %target, status = %status, "patch finished");
        metrics::counter!("ghost_patches_total", "target" => target.clone(), "outcome" => status.as_str())
            .increment(1);
        self.outbox_wake.notify_one();
        self.dispatch(&target).await;
        Ok(())
    }

    /// Cancels a queued patch, or asks the executor running it to stop.
    pub async fn cancel(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let record = self
            .store
            .cancel_queued(id.clone(), actor.clone())
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if record.status == Status::Cancelled {
            self.outbox_wake.notify_one();
            return Ok(record);
        }
        if record.status.is_terminal() {
            return Err(RouterError::FailedPrecondition(format!(
                "patch {id} already ended as {}",
                record.status
            )));
        }
        let slots = self.slots.lock().await;
        if let Some(slot) = slots.get(record.patch.target.as_str())
            && let Some((_, token, session)) = &slot.active
            && let Some(running) = slot.sessions.iter().find(|s| s.id == *session)
        {
            let message = RouterMessage {
                kind: Some(router_message::Kind::Cancel(Cancel {
                    patch_id: id.clone(),
                    fencing_token: *token,
                    reason: format!("cancelled by {actor}"),
                })),
            };
            if running.sender.try_send(Ok(message)).is_err() {
                tracing::warn!(patch_id = %id, "cannot deliver cancel to the executor");
            }
        }
        Ok(record)
    }

    /// Queues a failed or cancelled patch again.
    pub async fn retry(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let record = self
            .store
            .retry(id.clone(), actor)
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if record.status != Status::Queued {
            return Err(RouterError::FailedPrecondition(format!(
                "only failed, cancelled or lost patches can be retried; {id} is {}",
                record.status
            )));
        }
        self.dispatch(record.patch.target.as_str()).await;
        Ok(record)
    }

    /// Pauses or resumes a target.
    pub async fn set_paused(&self, target: String, paused: bool) -> Result<(), RouterError> {
        self.store.set_paused(target.clone(), paused).await?;
        if !paused {
            self.dispatch(&target).await;
        }
        Ok(())
    }

    /// Requeues patches whose lease expired and tells their executors to stop.
    pub async fn expire_leases(&self) {
        let requeued = match self.store.requeue(None, "lease expired".to_owned()).await {
            Ok(requeued) => requeued,
            Err(err) => {
                tracing::error!(error = %err, "cannot expire leases");
                return;
            }
        };
        for (id, target) in requeued {
            tracing::warn!(patch_id = %id, %target, "lease expired; patch requeued");
            {
                let mut slots = self.slots.lock().await;
                if let Some(slot) = slots.get_mut(&target)
                    && slot
                        .active
                        .as_ref()
                        .is_some_and(|(active, _, _)| *active == id)
                {
                    slot.active = None;
                }
            }
            self.dispatch(&target).await;
        }
    }

    /// Ends every executor session (on shutdown), so their streams close.
    pub async fn close_sessions(&self) {
        self.slots.lock().await.clear();
    }
}
