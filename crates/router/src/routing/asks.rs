//! Questions to an executor that wait for its answer: `Wait` for a patch to end, a dry run
//! of a submitted patch and the check of a revert patch.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ghost_core::{ApplyReport, Patch};
use ghost_proto::executor::v1::{DryRun, RouterMessage, router_message};

use crate::dry_runs::DRY_RUN_DEADLINE;
use crate::error::RouterError;
use crate::store::PatchRecord;
use crate::waiters::MAX_WAIT;

use super::{Ask, RESERVED_FOR_CANCEL, Routing, Session};

impl Routing {
    /// The patch `id` as soon as it is terminal (at once if it is already), else its state
    /// when `wait` (capped at [`MAX_WAIT`]) is over. Woken by the router's own commits of
    /// terminal transitions, not by reading the store again and again.
    pub async fn wait(&self, id: String, wait: Duration) -> Result<PatchRecord, RouterError> {
        // Registered before the first read: an end committed after it wakes this call.
        let mut guard = self.waiters.register(&id)?;
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let record = self
                .store
                .get(id.clone())
                .await?
                .ok_or_else(|| RouterError::NotFound(id.clone()))?;
            if record.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            if record.patch.depends_on.is_empty() {
                // Only a patch depending on others can be ended by another's failure.
                guard.ignore_others();
            }
            tokio::select! {
                () = guard.woken() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Asks a connected executor serving the patch's target to plan it without writing
    /// anything, and returns its report (`dry_run` set, the diff it would apply). Nothing is
    /// stored, queued or leased. The dry run does not wait behind the target's queue; the
    /// executor waits only for a patch it is applying on that target at that moment.
    pub async fn dry_run(&self, patch: &Patch) -> Result<ApplyReport, RouterError> {
        self.ask_dry_run(patch, Ask::DryRun).await
    }

    /// Asks a connected executor serving the revert patch's target, one advertising the
    /// `revert` capability, whether it can restore the pre-images (a dry run of the revert
    /// patch: the diff it would apply, or `rejected` with the conflicts). Refused with
    /// `FAILED_PRECONDITION` naming the target when no such executor is connected.
    pub async fn check_revert(&self, patch: &Patch) -> Result<ApplyReport, RouterError> {
        self.ask_dry_run(patch, Ask::Revert).await
    }

    pub(super) async fn ask_dry_run(
        &self,
        patch: &Patch,
        ask: Ask,
    ) -> Result<ApplyReport, RouterError> {
        let target = patch.target.to_string();
        let (owner, sender) = {
            let slots = self.slots.lock().await;
            let alive_since = self.clock.now_ms() - self.lease_ms();
            let alive = |s: &&Session| {
                !s.cut.is_cancelled() && s.last_seen_ms.load(Ordering::Relaxed) >= alive_since
            };
            let sessions = slots.get(&target).map(|slot| slot.sessions.as_slice());
            let any_alive = sessions.is_some_and(|sessions| sessions.iter().any(|s| alive(&s)));
            let session = sessions.and_then(|sessions| {
                sessions.iter().filter(alive).find(|s| match ask {
                    Ask::DryRun => s.dry_run,
                    Ask::Revert => s.revert,
                })
            });
            match (ask, any_alive, session) {
                (_, _, Some(session)) => (session.owner.clone(), session.sender.clone()),
                (Ask::DryRun, false, None) => {
                    return Err(RouterError::Unavailable(format!(
                        "no executor serving target {target} is connected; a dry run needs one \
                         to read the workspace"
                    )));
                }
                (Ask::DryRun, true, None) => {
                    return Err(RouterError::Unavailable(format!(
                        "the executor serving target {target} does not do dry runs (its Hello \
                         does not advertise the dry_run capability: an older executor); upgrade it"
                    )));
                }
                (Ask::Revert, false, None) => {
                    return Err(RouterError::FailedPrecondition(format!(
                        "no executor serving target {target} is connected; a revert needs one \
                         to check that the patch's files did not change since"
                    )));
                }
                (Ask::Revert, true, None) => {
                    return Err(RouterError::FailedPrecondition(format!(
                        "the executor serving target {target} cannot revert (its Hello does not \
                         advertise the revert capability: an older executor); upgrade it"
                    )));
                }
            }
        };
        // Room is kept on the session's stream for what must not be lost (a Cancel).
        if sender.capacity() <= RESERVED_FOR_CANCEL {
            return Err(RouterError::Unavailable(format!(
                "the executor serving target {target} cannot take a dry run now (its stream is \
                 nearly full); try again"
            )));
        }
        let mut ticket = self.dry_runs.register(&owner)?;
        let message = RouterMessage {
            kind: Some(router_message::Kind::DryRun(DryRun {
                request_id: ticket.request_id,
                patch: Some(ghost_proto::router::v1::Patch::from(patch)),
            })),
        };
        if sender.try_send(Ok(message)).is_err() {
            return Err(RouterError::Unavailable(format!(
                "the executor serving target {target} cannot take a dry run now (its stream is \
                 full or closed); try again"
            )));
        }
        tracing::info!(patch_id = %patch.id, %target, executor = ?owner, request_id = ticket.request_id, "dry run sent");
        ticket.answer(DRY_RUN_DEADLINE).await
    }
}
