//! Requests of people on a patch or a target: cancel (queued or running), retry, pause and
//! resume.

use ghost_core::Status;
use ghost_proto::executor::v1::{Cancel, RouterMessage, router_message};

use crate::error::RouterError;
use crate::store::PatchRecord;

use super::{CANCEL_SEND_WAIT, Routing};

impl Routing {
    /// Cancels a queued patch, or asks the executor running it to stop (it kills the
    /// commands, rolls back and reports `cancelled`).
    pub async fn cancel(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let record = self
            .store
            .cancel_queued(id.clone(), actor.clone())
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if record.status == Status::Cancelled {
            self.waiters.ended(&id);
            // Its queued dependents were failed in the same transaction.
            self.waiters.maybe_ended_others();
            self.outbox_wake.notify_one();
            return Ok(record);
        }
        if record.status.is_terminal() {
            return Err(RouterError::FailedPrecondition(format!(
                "patch {id} already ended as {}",
                record.status
            )));
        }
        let sent = self
            .send_cancel(
                record.patch.target.as_str(),
                &id,
                record.fencing_token,
                format!("cancelled by {actor}"),
            )
            .await;
        if !sent && self.shared {
            // Its executor may be connected to another replica: that one sends the Cancel.
            self.store
                .publish_cancel(
                    id.clone(),
                    record.fencing_token,
                    format!("cancelled by {actor}"),
                )
                .await?;
        } else if !sent {
            tracing::warn!(patch_id = %id, "cannot deliver cancel to the executor; the lease will expire");
        }
        Ok(record)
    }

    /// Sends Cancel for the lease `token` of `id` to the session holding it, if connected.
    pub(super) async fn send_cancel(
        &self,
        target: &str,
        id: &str,
        token: u64,
        reason: String,
    ) -> bool {
        let slots = self.slots.lock().await;
        let Some(slot) = slots.get(target) else {
            return false;
        };
        let owner_session = slot
            .active
            .as_ref()
            .filter(|(_, t, _)| *t == token)
            .map(|(_, _, session)| *session);
        let session = match owner_session {
            Some(session) => slot.sessions.iter().find(|s| s.id == session),
            None => None,
        };
        let Some(session) = session else {
            return false;
        };
        let sender = session.sender.clone();
        drop(slots);
        let message = RouterMessage {
            kind: Some(router_message::Kind::Cancel(Cancel {
                patch_id: id.to_owned(),
                fencing_token: token,
                reason,
            })),
        };
        // Not try_send: a stream momentarily full (dry runs keep room for this, but heartbeat
        // answers and assignments share it) must not lose the cancel.
        matches!(
            tokio::time::timeout(CANCEL_SEND_WAIT, sender.send(Ok(message))).await,
            Ok(Ok(()))
        )
    }

    /// Queues a failed, cancelled or lost patch again.
    pub async fn retry(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let (record, requeued) = self
            .store
            .retry(id.clone(), actor)
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if !requeued {
            return Err(RouterError::FailedPrecondition(format!(
                "only patches that ended without success can be retried; {id} is {}",
                record.status
            )));
        }
        self.dispatch(record.patch.target.as_str()).await;
        Ok(record)
    }

    /// Pauses or resumes a target.
    pub async fn set_paused(&self, target: String, paused: bool) -> Result<(), RouterError> {
        self.store.set_paused(target.clone(), paused).await?;
        tracing::info!(%target, paused, "target pause flag set");
        if !paused {
            self.dispatch(&target).await;
        }
        Ok(())
    }
}
