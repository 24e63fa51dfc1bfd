//! Hand-out of leases: one lease per target at a time, to a live session serving it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ghost_proto::executor::v1::{Assign, RouterMessage, router_message};

use crate::store::now_ms;

use super::{Routing, Session, SessionSender};

/// The session a lease goes to.
struct Picked {
    session_id: u64,
    owner: String,
    sender: SessionSender,
    takes_reverts: bool,
}

impl Routing {
    /// Leases and assigns the next runnable patch of `target` if it is free and served.
    pub async fn dispatch(&self, target: &str) {
        let lock = Arc::clone(
            self.dispatching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(target.to_owned())
                .or_default(),
        );
        let _serial = lock.lock().await;
        let Some(Picked {
            session_id,
            owner,
            sender,
            takes_reverts,
        }) = self.pick_session(target).await
        else {
            return;
        };
        let record = match self
            .store
            .lease_next(
                target.to_owned(),
                owner.clone(),
                self.lease_ms(),
                takes_reverts,
            )
            .await
        {
            Ok(Some(record)) => {
                self.dispatch_stored(target);
                record
            }
            Ok(None) => {
                self.dispatch_stored(target);
                return;
            }
            Err(err) => {
                // Nothing was leased: the patch is still first in its queue. Try again soon.
                tracing::error!(%target, error = %err, "cannot lease the next patch; retried");
                self.retry_dispatch_later(target);
                return;
            }
        };
        let id = record.patch.id.to_string();
        let assign = Assign {
            patch: Some(ghost_proto::router::v1::Patch::from(&record.patch)),
            attempt: record.attempt,
            fencing_token: record.fencing_token,
            deadline_unix_ms: self.clock.now_ms() + self.lease_ms(),
            traceparent: record.traceparent.clone(),
        };
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(target) {
                slot.active = Some((id.clone(), record.fencing_token, session_id));
            }
        }
        metrics::histogram!("ghost_patch_stage_seconds", "stage" => "queued")
            .record((now_ms() - record.created_ms).max(0) as f64 / 1000.0);
        let message = RouterMessage {
            kind: Some(router_message::Kind::Assign(assign)),
        };
        if sender.send(Ok(message)).await.is_err() {
            tracing::warn!(patch_id = %id, executor = ?owner, "executor gone before assignment");
            // The session's reader notices the closed stream and interrupts via `disconnect`.
            return;
        }
        tracing::info!(patch_id = %id, executor = ?owner, attempt = record.attempt, "patch assigned");
    }

    /// The session of `target` to lease to, if the target is free: a live one (not cut, heard
    /// from within a lease period), preferring one that can apply revert patches.
    async fn pick_session(&self, target: &str) -> Option<Picked> {
        let slots = self.slots.lock().await;
        let slot = slots.get(target)?;
        if slot.active.is_some() {
            return None;
        }
        // An executor that has sent nothing for a whole lease period (no heartbeat) is
        // presumed stuck: it gets no new work until it speaks again.
        let alive_since = self.clock.now_ms() - self.lease_ms();
        let alive = |s: &&Session| {
            !s.cut.is_cancelled() && s.last_seen_ms.load(Ordering::Relaxed) >= alive_since
        };
        // A session that can apply revert patches first: an older executor is never
        // handed one (it would not know what to restore), it gets the other patches.
        let session = slot
            .sessions
            .iter()
            .filter(alive)
            .find(|s| s.revert)
            .or_else(|| slot.sessions.iter().find(alive))?;
        Some(Picked {
            session_id: session.id,
            owner: session.owner.clone(),
            sender: session.sender.clone(),
            takes_reverts: session.revert,
        })
    }

    /// Tries every served target: after an outcome, a patch elsewhere may have become runnable.
    pub(super) async fn dispatch_all(&self) {
        let targets: Vec<String> = self.slots.lock().await.keys().cloned().collect();
        for target in targets {
            self.dispatch(&target).await;
        }
    }
}
