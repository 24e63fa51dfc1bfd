//! Intake and results: a submitted patch stored and dispatched, progress under a live lease,
//! and a completion (fencing token checked) stored with its outcome, waking the outbox, the
//! waiters and the targets of patches that depended on it.

use ghost_core::{ApplyReport, Patch, Status};

use crate::error::RouterError;
use crate::store::{Completed, Inserted, NewAlert, PatchRecord};

use super::{Reporter, Routing};

impl Routing {
    /// Stores a patch (idempotently) with the gateway's intake warnings and the name of the
    /// credential that submitted it, and assigns it if its target is free; its first event
    /// names `actor`. A replay keeps the warnings and key name stored first.
    pub async fn submit(
        &self,
        patch: Patch,
        actor: &str,
        traceparent: String,
        warnings: Vec<String>,
        key_name: String,
    ) -> Result<(PatchRecord, bool), RouterError> {
        let target = patch.target.to_string();
        let id = patch.id.to_string();
        match self
            .store
            .insert(patch, actor.to_owned(), traceparent, warnings, key_name)
            .await?
        {
            Inserted::Created(record) => {
                tracing::info!(patch_id = %id, %target, status = %record.status, "patch stored");
                metrics::counter!("ghost_patches_submitted_total", "target" => self.target_label(&target))
                    .increment(1);
                if record.status.is_terminal() {
                    self.waiters.ended(&id);
                    self.outbox_wake.notify_one();
                } else {
                    self.dispatch(&target).await;
                }
                Ok((record, true))
            }
            Inserted::Existing(record) => Ok((record, false)),
            Inserted::Conflict => Err(RouterError::Conflict(id)),
        }
    }

    /// Records `applying` / `validating` under a live lease held by `owner`; false when the
    /// lease is stale or not this session's.
    pub async fn progress(
        &self,
        id: String,
        owner: &str,
        token: u64,
        status: Status,
        detail: String,
    ) -> bool {
        match self
            .store
            .progress(id.clone(), owner.to_owned(), token, status, detail)
            .await
        {
            Ok(accepted) => accepted,
            Err(err) => {
                // Logged here; not a refusal of the executor's message.
                tracing::error!(patch_id = %id, error = %err, "cannot record progress");
                true
            }
        }
    }

    /// Accepts an attempt's report if `token` is the live lease and `reporter` holds it, then
    /// frees the target. An executor's `interrupted` report of an attempt the router already
    /// ended is kept as that attempt's fuller report when the same executor held it and still
    /// serves its target; any other stale or foreign result is refused.
    pub async fn complete(
        &self,
        reporter: &Reporter<'_>,
        id: String,
        attempt: u32,
        token: u64,
        report: ApplyReport,
    ) -> Result<(), RouterError> {
        let status = report.status;
        let duration_ms = report.duration_ms;
        let interrupted = status == Status::Interrupted;
        // The executor keeps the journal of a rollback that could not restore everything and
        // refuses the target's patches until it can: a person must look.
        let restore_error = report
            .rollback
            .as_ref()
            .map(|rollback| rollback.error.clone())
            .filter(|error| !error.is_empty());
        let late_report = report.clone();
        // A completion that was not stored is retried until it is: dropped, its lease would
        // expire and the patch run again.
        let stored = self
            .until_stored("complete", || {
                self.store
                    .complete(id.clone(), reporter.owner.to_owned(), token, report.clone())
            })
            .await?;
        let Some(Completed {
            record,
            dependent_targets,
        }) = stored
        else {
            if interrupted
                && self
                    .store
                    .record_interrupted(
                        id.clone(),
                        reporter.executor_id.to_owned(),
                        reporter.targets.to_vec(),
                        attempt,
                        late_report,
                    )
                    .await?
            {
                tracing::info!(patch_id = %id, attempt, "executor's report of an interrupted attempt kept");
                self.outbox_wake.notify_one();
                return Ok(());
            }
            return Err(RouterError::StaleLease(id));
        };
        self.waiters.ended(&id);
        if status != Status::Succeeded {
            // Its queued dependents were failed in the same transaction.
            self.waiters.maybe_ended_others();
        }
        let target = record.patch.target.to_string();
        self.free_target(&target, &id, token, status, restore_error.as_deref())
            .await;
        tracing::info!(patch_id = %id, %target, status = %status, "patch finished");
        metrics::counter!("ghost_patches_total", "target" => self.target_label(&target), "outcome" => status.as_str())
            .increment(1);
        metrics::histogram!("ghost_patch_stage_seconds", "stage" => "apply")
            .record(duration_ms as f64 / 1000.0);
        self.outbox_wake.notify_one();
        self.dispatch(&target).await;
        if status != Status::Succeeded {
            // Its dependents were failed in the same transaction: nothing became runnable.
            return Ok(());
        }
        // Elsewhere only patches that waited for this one can have become runnable (their
        // targets were read in the completion's transaction): trying every idle target here
        // cost a trip through the writer per target per completion.
        for other in dependent_targets.iter().filter(|other| **other != target) {
            self.dispatch(other).await;
        }
        Ok(())
    }

    /// Frees `target`'s slot from lease `token`, and raises `workspace_not_restored/<target>`
    /// when the attempt's rollback left the workspace changed (`restore_error`), or resolves it
    /// when a patch succeeded there since.
    async fn free_target(
        &self,
        target: &str,
        id: &str,
        token: u64,
        status: Status,
        restore_error: Option<&str>,
    ) {
        let mut was_unrestored = false;
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(target) {
                if slot.active.as_ref().is_some_and(|(_, t, _)| *t == token) {
                    slot.active = None;
                }
                was_unrestored = slot.unrestored;
                slot.unrestored =
                    restore_error.is_some() || (was_unrestored && status != Status::Succeeded);
            }
        }
        let restore_key = format!("workspace_not_restored/{target}");
        if let Some(error) = restore_error {
            let excerpt: String = error.chars().take(300).collect();
            self.raise(NewAlert {
                key: restore_key,
                severity: "critical",
                summary: format!(
                    "the workspace of {target} could not be restored after patch {id}; its \
                     executor refuses patches for {target} until it is: {excerpt}"
                ),
                labels: vec![
                    ("target".to_owned(), target.to_owned()),
                    ("patch_id".to_owned(), id.to_owned()),
                ],
            })
            .await;
        } else if was_unrestored && status == Status::Succeeded {
            self.resolve(
                restore_key,
                format!("patch {id} applied on {target}: its workspace is usable again"),
            )
            .await;
        }
    }
}
