//! The gateway's logic: accept a patch only once the router holds it, read patches back with
//! their summary, list, cancel, retry, and pick patches out of chat text. Talks to its
//! downstreams through the two ports below and checks every caller's scope and targets.
//!
//! This file holds the ports, [`Patches`] and the intake (submit, dry run, queueing); reading
//! back is in `reads`, operators' actions and fleet reads in `actions`, chat messages in
//! `message`, the answer types in `views`, the per-credential caps in `per_caller`.

use std::sync::Arc;

use ghost_core::{Format, LegacyOptions, Normalised, ParseBudget, PatchId, TargetName};

use crate::auth::{Principal, Scope};
use crate::dry_run::{DryRunReport, DryRunView};
use crate::error::GatewayError;
use crate::fleet::{AlertFeed, ExecutorList, Stats};
use crate::known_targets::KnownTargets;
use crate::report::ReportView;

mod actions;
#[cfg(test)]
pub(crate) mod fake;
mod message;
mod per_caller;
mod reads;
mod views;

pub use message::patch_blocks;
use per_caller::PerCaller;
pub use per_caller::{MAX_DRY_RUNS_PER_CALLER, MAX_LONG_POLLS_PER_CALLER, MAX_REVERTS_PER_CALLER};
pub use views::{
    Accepted, BlockOutcome, EventView, ListFilter, MessageOutcome, PatchDetail, PatchPage,
    PatchView, TargetView,
};

/// The router as the gateway needs it.
#[tonic::async_trait]
pub trait PatchQueue: Send + Sync {
    /// Stores the patch durably with what reading it forgave (`warnings`, repeated in its
    /// summary) and the name of the credential that submitted it (`key_name`, which the
    /// alerter may map to a Slack user); returns its state (`created` false for an identical
    /// replay).
    async fn submit(
        &self,
        patch: &ghost_core::Patch,
        warnings: &[String],
        key_name: &str,
    ) -> Result<PatchView, GatewayError>;
    /// One patch's state and its latest attempt's report, if one arrived.
    async fn get(&self, id: &PatchId) -> Result<(PatchView, Option<ReportView>), GatewayError>;
    /// One patch's state as soon as it has ended, or when `wait` is over (the router caps it
    /// at 60 s), with its latest report.
    async fn wait(
        &self,
        id: &PatchId,
        wait: std::time::Duration,
    ) -> Result<(PatchView, Option<ReportView>), GatewayError>;
    /// Plans the patch on an executor serving its target without writing or storing anything.
    async fn dry_run(&self, patch: &ghost_core::Patch) -> Result<DryRunReport, GatewayError>;
    /// Queues the revert of the succeeded patch `id` on behalf of `actor`, after its target's
    /// executor checked it (conflicts: nothing queued).
    async fn revert(&self, id: &PatchId, actor: &str) -> Result<Reverted, GatewayError>;
    /// One patch's audit trail.
    async fn events(&self, id: &PatchId) -> Result<Vec<EventView>, GatewayError>;
    /// A page of patches, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<PatchPage, GatewayError>;
    /// Cancels a patch on behalf of `actor`.
    async fn cancel(&self, id: &PatchId, actor: &str) -> Result<PatchView, GatewayError>;
    /// Queues another attempt on behalf of `actor`.
    async fn retry(&self, id: &PatchId, actor: &str) -> Result<PatchView, GatewayError>;
    /// Every known target.
    async fn targets(&self) -> Result<Vec<TargetView>, GatewayError>;
    /// Stops (`paused`) or resumes handing out work for `target` on behalf of `actor`.
    async fn set_paused(
        &self,
        target: &TargetName,
        paused: bool,
        actor: &str,
    ) -> Result<(), GatewayError>;
    /// Executors connected now.
    async fn executors(&self) -> Result<ExecutorList, GatewayError>;
    /// Dashboard aggregates of patches updated since `since_unix_ms`.
    async fn stats(
        &self,
        target: Option<&TargetName>,
        since_unix_ms: i64,
    ) -> Result<Stats, GatewayError>;
}

/// What the router answered a revert.
#[derive(Debug, Clone)]
pub enum Reverted {
    /// The revert patch, queued now (`created`) or earlier (a replay).
    Queued(PatchView),
    /// Files changed since the patch ended; nothing was queued.
    Conflicts {
        /// The executor's explanation, naming the files.
        error: String,
        /// Workspace-relative paths, sorted.
        conflicts: Vec<String>,
    },
}

/// The refusal of a submitted document asking for a revert itself.
pub const REVERT_REFUSAL: &str = "a patch may not carry `revert`: ask for a revert with POST \
                                  /v1/patches/{id}/revert (MCP revert_patch, ghost revert ID)";

fn refuse_revert_member(value: &serde_json::Value) -> Result<(), GatewayError> {
    if value.get("revert").is_some() {
        return Err(GatewayError::BadRequest(REVERT_REFUSAL.to_owned()));
    }
    Ok(())
}

/// The summarizer as the gateway needs it.
#[tonic::async_trait]
pub trait SummaryStore: Send + Sync {
    /// The summary of a patch, if one was written yet.
    async fn markdown(&self, id: &PatchId) -> Result<Option<String>, GatewayError>;
}

fn key_conflict(key: &PatchId) -> GatewayError {
    GatewayError::Conflict(format!(
        "the patch id differs from the Idempotency-Key header {key}"
    ))
}

/// `normalised` under the id `key` names: a document without an id takes the key as its id
/// (an id of the derived form only if it is the document's own); a document with one must
/// already have that id.
fn keyed(mut normalised: Normalised, key: PatchId) -> Result<Normalised, GatewayError> {
    if normalised.patch.id == key {
        return Ok(normalised);
    }
    if !normalised.derived_id {
        return Err(key_conflict(&key));
    }
    normalised.patch.id = key;
    normalised.derived_id = false;
    ghost_core::check_explicit_id(&normalised.patch, "").map_err(|_| {
        GatewayError::BadRequest(format!("Idempotency-Key: {}", ghost_core::RESERVED_ID))
    })?;
    ghost_core::validate(&normalised.patch)?;
    Ok(normalised)
}

/// The gateway's logic over its ports.
#[derive(Clone)]
pub struct Patches {
    queue: Arc<dyn PatchQueue>,
    summaries: Arc<dyn SummaryStore>,
    summary_max_chars: usize,
    legacy: Arc<LegacyOptions>,
    budget: ParseBudget,
    alerts: Option<Arc<dyn AlertFeed>>,
    known_targets: Arc<KnownTargets>,
    max_wait: std::time::Duration,
    long_polls: PerCaller,
    dry_runs: PerCaller,
    reverts: PerCaller,
    /// The runtime keys, so a long poll of a key revoked meanwhile ends (401).
    revocations: Option<Arc<crate::api_keys::snapshot::KeyStore>>,
}

/// Bytes of `patch`'s canonical JSON, counted without building it.
fn json_len(patch: &ghost_core::Patch) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, patch) {
        Ok(()) => count.0,
        // A patch that cannot be written as JSON cannot be queued either: refuse it as large.
        Err(_) => usize::MAX,
    }
}

/// Reads a document on the blocking pool: even within its budget a YAML document can keep the
/// parser busy for a while, and that must never stall the async workers serving other calls.
async fn parse_off_the_workers(
    body: Vec<u8>,
    format: Format,
    budget: ParseBudget,
) -> Result<Result<ghost_core::Document, ghost_core::PatchError>, GatewayError> {
    tokio::task::spawn_blocking(move || ghost_core::read_document(&body, format, &budget))
        .await
        .map_err(|err| GatewayError::Internal(format!("the document reader failed: {err}")))
}

fn parse_id(raw: &str) -> Result<PatchId, GatewayError> {
    PatchId::parse(raw).map_err(|_| GatewayError::NotFound(raw.to_owned()))
}

impl Patches {
    /// Logic over the given ports.
    pub fn new(
        queue: Arc<dyn PatchQueue>,
        summaries: Arc<dyn SummaryStore>,
        summary_max_chars: usize,
        legacy: LegacyOptions,
        budget: ParseBudget,
    ) -> Self {
        Self {
            known_targets: Arc::new(KnownTargets::accept_all(Arc::clone(&queue))),
            queue,
            summaries,
            summary_max_chars,
            legacy: Arc::new(legacy),
            budget,
            alerts: None,
            max_wait: crate::long_poll::MAX_WAIT,
            long_polls: PerCaller::default(),
            dry_runs: PerCaller::default(),
            reverts: PerCaller::default(),
            revocations: None,
        }
    }

    /// The same logic ending a long poll (401) once the runtime key it runs for is revoked.
    #[must_use]
    pub fn with_revocations(mut self, keys: Arc<crate::api_keys::snapshot::KeyStore>) -> Self {
        self.revocations = Some(keys);
        self
    }

    /// The same logic holding a long poll at most `max_wait` (itself at most 60 s).
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: std::time::Duration) -> Self {
        self.max_wait = max_wait.min(crate::long_poll::MAX_WAIT);
        self
    }

    /// The same logic refusing patches to targets `known` does not know (without: any target).
    #[must_use]
    pub fn with_known_targets(mut self, known: KnownTargets) -> Self {
        self.known_targets = Arc::new(known);
        self
    }

    /// The same logic with an alerter to list alerts from.
    #[must_use]
    pub fn with_alerts(mut self, alerts: Arc<dyn AlertFeed>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// The legacy normalisation options (aliases, roots, default target).
    pub fn legacy(&self) -> &LegacyOptions {
        &self.legacy
    }

    /// The budget every submitted document is read within.
    pub fn budget(&self) -> &ParseBudget {
        &self.budget
    }

    /// Parses (JSON or YAML, v1 or legacy), checks the caller may, and durably queues.
    ///
    /// `idempotency_key`, when given, must equal the patch id (409 otherwise): the router's
    /// idempotency by id and content hash then makes a retried request a replay. A document
    /// without an id takes the key as its id (so `GET /v1/patches/{key}` finds it); with no
    /// key either, its id is derived from its content, which makes a retry a replay by itself.
    pub async fn submit(
        &self,
        caller: &Principal,
        body: &[u8],
        format: Format,
        idempotency_key: Option<&str>,
        options: Option<&LegacyOptions>,
    ) -> Result<Accepted, GatewayError> {
        let normalised = self
            .intake(caller, body, format, idempotency_key, options)
            .await?;
        self.queue_normalised(caller, normalised).await
    }

    /// Plans a patch on an executor serving its target, as a submit of the same request
    /// would be checked (scope, every accepted format, target), and stores nothing.
    pub async fn dry_run(
        &self,
        caller: &Principal,
        body: &[u8],
        format: Format,
        idempotency_key: Option<&str>,
    ) -> Result<DryRunView, GatewayError> {
        // A dry run shows what is in the workspace (the context of every change): it needs the
        // read scope as well as the submit scope.
        caller.require(Scope::Read)?;
        let normalised = self
            .intake(caller, body, format, idempotency_key, None)
            .await?;
        self.dry_run_normalised(caller, normalised).await
    }

    /// Dry-runs an already normalised patch after the checks a submit makes.
    pub async fn dry_run_normalised(
        &self,
        caller: &Principal,
        normalised: Normalised,
    ) -> Result<DryRunView, GatewayError> {
        caller.require(Scope::Submit)?;
        caller.require(Scope::Read)?;
        self.admit(caller, &normalised).await?;
        let Some(_place) = self.dry_runs.take(&caller.name, MAX_DRY_RUNS_PER_CALLER) else {
            tracing::warn!(caller = %caller.name, "dry runs of one credential at their cap; refused");
            return Err(GatewayError::TooManyRequests { retry_after_s: 1 });
        };
        let paths: Vec<&str> = normalised
            .patch
            .edits
            .iter()
            .flat_map(|edit| match edit {
                ghost_core::Edit::Rename { from, to } => vec![from.as_str(), to.as_str()],
                other => vec![other.path().as_str()],
            })
            .collect();
        tracing::info!(
            caller = %caller.name,
            target = %normalised.patch.target,
            patch_id = %normalised.patch.id,
            paths = ?paths,
            "dry run: the workspace is read for this caller"
        );
        let report = self.queue.dry_run(&normalised.patch).await?;
        Ok(DryRunView {
            dry_run: true,
            id: normalised.patch.id.to_string(),
            target: normalised.patch.target.to_string(),
            status: report.status,
            error: report.error,
            diff_truncated: report.diff.contains("\n# diff cut at ")
                || report.diff.starts_with("# diff cut at "),
            diff: report.diff,
            edits: report.edits,
            note: crate::dry_run::NOTE.to_owned(),
            shape: normalised.shape.as_str().to_owned(),
            warnings: normalised.warnings,
        })
    }

    /// Reads and normalises a submitted document (JSON or YAML, v1 or legacy) for `caller`.
    async fn intake(
        &self,
        caller: &Principal,
        body: &[u8],
        format: Format,
        idempotency_key: Option<&str>,
        options: Option<&LegacyOptions>,
    ) -> Result<Normalised, GatewayError> {
        caller.require(Scope::Submit)?;
        let options = options.unwrap_or(&self.legacy);
        let document = parse_off_the_workers(body.to_vec(), format, self.budget).await??;
        let value = document.value;
        refuse_revert_member(&value)?;
        let key = idempotency_key
            .map(|key| {
                PatchId::parse(key).map_err(|err| {
                    GatewayError::BadRequest(format!(
                        "Idempotency-Key is not a valid patch id: {err}"
                    ))
                })
            })
            .transpose()?;
        if let Some(key) = &key
            && let Some(id) = value.get("id")
            && id.as_str() != Some(key.as_str())
        {
            return Err(key_conflict(key));
        }
        // A legacy id as written (`x.json`) may normalise to another (`x`): the key named it.
        let named_by_key = key
            .as_ref()
            .is_some_and(|key| value.get("id").and_then(|id| id.as_str()) == Some(key.as_str()));
        let mut normalised = ghost_core::normalise(value, options)?;
        normalised.warnings = document.warnings;
        if let Some(key) = key
            && !named_by_key
        {
            normalised = keyed(normalised, key)?;
        }
        Ok(normalised)
    }

    /// The checks every normalised patch passes before it reaches the router: its size, the
    /// caller's targets, a known target.
    async fn admit(&self, caller: &Principal, normalised: &Normalised) -> Result<(), GatewayError> {
        let patch = &normalised.patch;
        tracing::Span::current().record("patch_id", patch.id.as_str());
        // Only the router builds a revert patch (`Revert`), from the patch it undoes.
        if patch.revert.is_some() {
            return Err(GatewayError::BadRequest(REVERT_REFUSAL.to_owned()));
        }
        // Nor takes an id of the form its reverts get: `revert-X` stored ahead of time would
        // block the revert of X (and be answered as it).
        if ghost_core::is_revert_form(patch.id.as_str()) {
            return Err(GatewayError::BadRequest(format!(
                "id {}: {}",
                patch.id,
                ghost_core::RESERVED_REVERT_ID
            )));
        }
        // Normalising a legacy shape can multiply a document (every element of an aliased
        // array becomes a line of the task), so the result is held to the same budget.
        let size = json_len(patch);
        if size > self.budget.max_bytes {
            return Err(GatewayError::DocumentTooLarge(format!(
                "the normalised patch is {size} bytes of JSON, over the {} byte limit",
                self.budget.max_bytes
            )));
        }
        caller.allow_target(patch.target.as_str())?;
        self.known_targets.check(&patch.target).await
    }

    /// Queues an already normalised patch after the caller's target check.
    pub async fn queue_normalised(
        &self,
        caller: &Principal,
        normalised: Normalised,
    ) -> Result<Accepted, GatewayError> {
        self.admit(caller, &normalised).await?;
        let Normalised {
            patch,
            shape,
            ignored,
            warnings,
            derived_id,
        } = normalised;
        let view = self.queue.submit(&patch, &warnings, &caller.name).await?;
        Ok(Accepted {
            id: view.id,
            target: view.target,
            status: view.status,
            attempt: view.attempt,
            trace_id: view.trace_id,
            replayed: !view.created,
            shape: shape.as_str().to_owned(),
            ignored,
            warnings,
            id_derived: derived_id,
        })
    }
}

/// Shortens `text` to at most `max` characters by cutting its middle, keeping head and tail.
pub fn cut_middle(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let marker = format!("\n\n[… {} characters cut …]\n\n", count.saturating_sub(max));
    let keep = max.saturating_sub(marker.chars().count());
    let head: String = text.chars().take(keep / 2).collect();
    let tail: String = text.chars().skip(count - (keep - keep / 2)).collect();
    format!("{head}{marker}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(cut_middle("hello", 10), "hello");
    }

    #[test]
    fn long_text_keeps_head_and_tail_within_budget() {
        let text = format!("HEAD{}TAIL", "x".repeat(10_000));
        let cut = cut_middle(&text, 500);
        assert!(cut.chars().count() <= 500, "{}", cut.chars().count());
        assert!(cut.starts_with("HEAD"));
        assert!(cut.ends_with("TAIL"));
        assert!(cut.contains("characters cut"));
    }

    #[test]
    fn cutting_respects_multibyte_characters() {
        let text = "é".repeat(1000);
        let cut = cut_middle(&text, 100);
        assert!(cut.chars().count() <= 100);
    }
}
