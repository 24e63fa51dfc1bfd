//! `Revert`: queues a patch restoring the pre-images of a succeeded patch.
//!
//! The revert patch is built here, not by the caller: id `revert-<id>` (deterministic, so
//! asking twice is a replay), the original's target, priority high, only `revert: {of,
//! commit}`, and a git commit when the original made one. Before anything is stored, an
//! executor of the target advertising `revert` checks it (a dry run of the revert patch):
//! files changed since the original ended are conflicts, and then nothing is stored. A
//! checked revert goes through the normal submit path. Reverts of one id are checked one at a
//! time, so two at once store one patch and the second answers it with `created = false`.

use std::collections::HashMap;
use std::sync::Arc;

use ghost_core::{CommitSpec, OnFailure, Patch, PatchId, Priority, RevertSpec, Status, revert_id};

use crate::error::RouterError;
use crate::routing::Routing;
use crate::store::PatchRecord;

/// Longest description of a revert patch, in characters ("Revert X: " and the original's).
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest first line of the original's commit message quoted in the revert's, in characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// What `Revert` answers.
#[derive(Debug)]
pub enum Reverted {
    /// The revert patch, stored (`created`) or found stored already.
    Queued {
        /// Its record.
        record: Box<PatchRecord>,
        /// False when it existed already.
        created: bool,
    },
    /// Files changed since the original ended; nothing was stored.
    Conflicts {
        /// Workspace-relative paths, sorted.
        conflicts: Vec<String>,
        /// The executor's explanation naming them.
        error: String,
    },
}

/// Reverts being checked, one at a time per revert id.
#[derive(Default)]
pub struct Reverts {
    in_flight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A caller's hold on the lock entry of one revert id: the entry is forgotten when the last
/// holder drops it, so a call cancelled at any await (its client gone, the gateway's deadline)
/// cannot leave it behind.
struct Entry<'a> {
    reverts: &'a Reverts,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.reverts.in_flight();
        // The map's reference and ours: nobody else holds or waits for it.
        if Arc::strong_count(&self.lock) <= 2 {
            in_flight.remove(&self.key);
        }
        checking(in_flight.len());
    }
}

/// Publishes how many revert ids are being checked (or waited for) now.
fn checking(entries: usize) {
    metrics::gauge!("ghost_router_reverts_checking").set(entries as f64);
}

impl Reverts {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock entry of revert id `key`, held until the returned value is dropped.
    fn enter(&self, key: &str) -> Entry<'_> {
        let mut in_flight = self.in_flight();
        let lock = Arc::clone(in_flight.entry(key.to_owned()).or_default());
        checking(in_flight.len());
        Entry {
            reverts: self,
            key: key.to_owned(),
            lock,
        }
    }
}

/// `text` cut to `max` characters, "…" added when it was longer.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The commit the original made, when its report names a well-formed one.
fn commit_of(record: &PatchRecord) -> Option<String> {
    let sha = record
        .report
        .as_ref()?
        .commit_sha
        .trim()
        .to_ascii_lowercase();
    if sha.is_empty() {
        return None;
    }
    let well_formed = (7..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_hexdigit());
    if !well_formed {
        tracing::warn!(patch_id = %record.patch.id, commit = %sha, "the report's commit is not a git hash; the revert makes no commit");
        return None;
    }
    Some(sha)
}

/// The revert patch of the succeeded `original`.
pub fn revert_patch(original: &PatchRecord) -> Patch {
    let of = original.patch.id.clone();
    let commit = commit_of(original);
    let message = commit.as_ref().map(|sha| {
        let source = original
            .patch
            .commit
            .as_ref()
            .map_or(original.patch.description.as_str(), |spec| {
                spec.message.as_str()
            });
        let subject = bounded(
            source.lines().next().unwrap_or("").trim(),
            MAX_SUBJECT_CHARS,
        );
        CommitSpec {
            message: format!("Revert \"{subject}\"\n\nThis reverts commit {sha}."),
        }
    });
    Patch {
        id: revert_id(&of),
        target: original.patch.target.clone(),
        description: bounded(
            &format!("Revert {of}: {}", original.patch.description),
            MAX_DESCRIPTION_CHARS,
        ),
        priority: Priority::High,
        depends_on: Vec::new(),
        base: None,
        edits: Vec::new(),
        patch: None,
        commands: Vec::new(),
        validate: Vec::new(),
        timeout_s: None,
        on_failure: OnFailure::Rollback,
        commit: message,
        agent: None,
        revert: Some(RevertSpec { of, commit }),
        notify: original.patch.notify.clone(),
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("ghost_router_reverts_total", "outcome" => outcome).increment(1);
}

impl Routing {
    /// Queues the revert of the succeeded patch `id` on behalf of `actor` (see the module
    /// documentation): NOT_FOUND for an unknown patch, FAILED_PRECONDITION unless it
    /// succeeded or when no executor can check the revert, the stored revert patch when it
    /// exists already (without asking an executor), the conflicts when files changed since.
    pub async fn revert(
        &self,
        id: PatchId,
        actor: String,
        traceparent: String,
    ) -> Result<Reverted, RouterError> {
        let reverting = revert_id(&id);
        let key = reverting.to_string();
        let answer = {
            // Dropped in reverse order, also when this call is cancelled: the lock first,
            // then the entry.
            let entry = self.reverts.enter(&key);
            let _one_at_a_time = entry.lock.lock().await;
            self.revert_locked(id, reverting, actor, traceparent).await
        };
        match &answer {
            Ok(Reverted::Queued { created: true, .. }) => count("queued"),
            Ok(Reverted::Queued { created: false, .. }) => {}
            Ok(Reverted::Conflicts { .. }) => count("conflict"),
            Err(_) => count("refused"),
        }
        answer
    }

    async fn revert_locked(
        &self,
        id: PatchId,
        reverting: PatchId,
        actor: String,
        traceparent: String,
    ) -> Result<Reverted, RouterError> {
        let original = self
            .store()
            .get(id.to_string())
            .await?
            .ok_or_else(|| RouterError::NotFound(id.to_string()))?;
        if original.status != Status::Succeeded {
            return Err(RouterError::FailedPrecondition(format!(
                "patch {id} is {}: only a succeeded patch can be reverted",
                original.status
            )));
        }
        if let Some(record) = self.store().get(reverting.to_string()).await? {
            // A submitted patch may have taken the id: it is not this revert.
            if record
                .patch
                .revert
                .as_ref()
                .is_none_or(|revert| revert.of != id)
            {
                return Err(RouterError::FailedPrecondition(format!(
                    "patch {id} cannot be reverted: the id {reverting} is taken by another patch"
                )));
            }
            return Ok(Reverted::Queued {
                record: Box::new(record),
                created: false,
            });
        }
        let patch = revert_patch(&original);
        ghost_core::validate(&patch).map_err(|err| {
            RouterError::Internal(format!("the revert patch of {id} is not valid: {err}"))
        })?;
        let report = self.check_revert(&patch).await?;
        if !report.conflicts.is_empty() {
            let mut conflicts = report.conflicts;
            conflicts.sort();
            conflicts.dedup();
            let error = if report.error.is_empty() {
                format!(
                    "files changed since patch {id} ended: {}",
                    conflicts.join(", ")
                )
            } else {
                report.error
            };
            tracing::info!(patch_id = %id, conflicts = conflicts.len(), "revert refused: conflicts");
            return Ok(Reverted::Conflicts { conflicts, error });
        }
        if report.status != Status::Succeeded {
            let why = if report.error.is_empty() {
                format!("the executor's check ended {}", report.status)
            } else {
                report.error
            };
            return Err(RouterError::FailedPrecondition(format!(
                "patch {id} cannot be reverted: {why}"
            )));
        }
        // Its first event names who asked, not the gateway that carried the request.
        let (record, created) = self
            .submit(patch, &actor, traceparent, Vec::new(), actor.clone())
            .await?;
        if created {
            let detail = format!("revert requested by {actor}: {reverting}");
            match self
                .store()
                .note(id.to_string(), actor.clone(), detail)
                .await
            {
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(patch_id = %id, error = %err, "cannot record the revert on the original patch")
                }
            }
            tracing::info!(target: "audit", patch_id = %id, revert_id = %reverting, %actor, "revert queued");
        }
        Ok(Reverted::Queued {
            record: Box::new(record),
            created,
        })
    }
}
