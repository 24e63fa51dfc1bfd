//! The gateway's logic: accept a patch only once the router holds it, read patches back with
//! their summary, list, cancel, retry, and pick patches out of chat text. Talks to its
//! downstreams through the two ports below and checks every caller's scope and targets.

use std::collections::BTreeMap;
use std::sync::Arc;

use ghost_core::{Format, LegacyOptions, Normalised, ParseBudget, PatchId, Status, TargetName};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Principal, Scope};
use crate::dry_run::{DryRunReport, DryRunView};
use crate::error::GatewayError;
use crate::fleet::{AlertFeed, AlertList, ExecutorList, Stats};
use crate::known_targets::KnownTargets;
use crate::report::ReportView;

#[cfg(test)]
pub(crate) mod fake;

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

/// A patch as the public API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PatchView {
    /// The patch id.
    pub id: String,
    /// Its workspace.
    pub target: String,
    /// Lifecycle state, e.g. `queued`, `succeeded`.
    #[schema(value_type = String, example = "queued")]
    pub status: Status,
    /// Attempts started.
    pub attempt: u32,
    /// The submitter's description.
    pub description: String,
    /// Why it did not succeed (empty otherwise).
    pub error: String,
    /// Trace id to find it in Jaeger.
    pub trace_id: String,
    /// Creation time, Unix ms.
    pub created_unix_ms: i64,
    /// Last change, Unix ms.
    pub updated_unix_ms: i64,
    /// False when this submit replayed an identical earlier one.
    #[serde(skip)]
    pub created: bool,
}

/// A patch with its summary text, for `GET /v1/patches/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PatchDetail {
    /// State.
    #[serde(flatten)]
    pub view: PatchView,
    /// The summary, cut to the configured size; null until the patch has ended and been
    /// summarised.
    pub summary: Option<String>,
    /// What the latest attempt did; null until the patch ran.
    pub report: Option<ReportView>,
}

/// One lifecycle transition.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// The same instant to the microsecond, Unix µs.
    pub at_unix_us: i64,
    /// State entered.
    pub status: String,
    /// Who caused it.
    pub actor: String,
    /// Attempt number.
    pub attempt: u32,
    /// Details.
    pub detail: String,
}

/// What `GET /v1/patches` filters on.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this target.
    pub target: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Page size (0: router default).
    pub page_size: u32,
    /// Opaque token from the previous page.
    pub page_token: String,
}

impl ListFilter {
    /// Checks raw filter values as a caller gave them (REST query or MCP tool input); a value
    /// given must be valid, an empty one included. Every refusal names what is wrong.
    pub fn parse(
        target: Option<String>,
        status: Option<String>,
        page_size: Option<u32>,
        page_token: Option<String>,
    ) -> Result<Self, GatewayError> {
        let status = match status.as_deref() {
            None => None,
            Some(raw) => Some(
                raw.parse::<Status>()
                    .map_err(|_| GatewayError::BadRequest(format!("unknown status {raw:?}")))?,
            ),
        };
        if let Some(size) = page_size
            && !(1..=500).contains(&size)
        {
            return Err(GatewayError::BadRequest(
                "page_size must be between 1 and 500".to_owned(),
            ));
        }
        if let Some(target) = target.as_deref()
            && ghost_core::TargetName::parse(target).is_err()
        {
            return Err(GatewayError::BadRequest(format!(
                "invalid target {target:?}"
            )));
        }
        if let Some(token) = page_token.as_deref()
            && (token.is_empty() || token.len() > 18 || !token.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(GatewayError::BadRequest(
                "page_token must be a next_page_token from an earlier page".to_owned(),
            ));
        }
        Ok(Self {
            target,
            status,
            page_size: page_size.unwrap_or(0),
            page_token: page_token.unwrap_or_default(),
        })
    }
}

/// One page of patches.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PatchPage {
    /// Newest first.
    pub patches: Vec<PatchView>,
    /// Pass as `page_token` for the next page; empty on the last.
    pub next_page_token: String,
}

/// A target's queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetView {
    /// Name.
    pub target: String,
    /// Patches waiting.
    pub queued: u32,
    /// Paused by an operator.
    pub paused: bool,
    /// An executor is connected.
    pub executor_online: bool,
    /// Creation of the oldest queued patch, Unix ms (0: none).
    pub oldest_queued_unix_ms: i64,
    /// The patch running now (empty: none).
    pub running_patch_id: String,
    /// Patches in each terminal status, by status name.
    pub finished: BTreeMap<String, u32>,
}

impl TargetView {
    /// A target the router holds nothing about: empty, not paused, no executor.
    pub fn empty(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            queued: 0,
            paused: false,
            executor_online: false,
            oldest_queued_unix_ms: 0,
            running_patch_id: String::new(),
            finished: BTreeMap::new(),
        }
    }
}

/// What `submit` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    /// The patch id: the document's own, or, when it named none, `p-` and 16 lowercase hex
    /// digits of the SHA-256 of the normalised patch's canonical JSON without its id (the same
    /// content always gets the same id, so sending it again is a replay).
    pub id: String,
    /// The target it was queued for.
    pub target: String,
    /// State after queueing.
    #[schema(value_type = String, example = "queued")]
    pub status: Status,
    /// Attempt count.
    pub attempt: u32,
    /// Trace id.
    pub trace_id: String,
    /// True when an identical patch had been submitted before (nothing new was queued).
    pub replayed: bool,
    /// The shape the document had (`v1` or a legacy shape).
    pub shape: String,
    /// Legacy fields without a v1 meaning, left out (JSON pointers).
    pub ignored: Vec<String>,
    /// What reading this document forgave, each "line L, column C: what": trailing commas and
    /// `//` or `/* */` comments in JSON. Always present; empty when nothing was forgiven. The
    /// patch's summary repeats the warnings of its first submission.
    pub warnings: Vec<String>,
    /// True when the document named no id and `id` was derived from its content.
    pub id_derived: bool,
}

/// One fenced block of a chat message and what became of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockOutcome {
    /// 1-based line of its opening fence.
    pub line: usize,
    /// Its language tag.
    pub lang: String,
    /// `submitted`, `refused` or `skipped` (not a patch).
    pub outcome: String,
    /// The submitted patch, when submitted.
    pub patch: Option<Accepted>,
    /// Why it was refused or skipped.
    pub reason: Option<String>,
}

/// What `POST /v1/messages` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageOutcome {
    /// Patches submitted.
    pub submitted: usize,
    /// Every fenced block, in order.
    pub blocks: Vec<BlockOutcome>,
}

/// The format of a fenced block that may hold a patch; None for other blocks (skipped).
fn block_format(block: &ghost_core::FencedBlock) -> Option<Format> {
    match block.lang.as_str() {
        "json" | "jsonc" | "json5" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        "" if block.body.trim_start().starts_with('{') => Some(Format::Json),
        _ => None,
    }
}

/// Fenced JSON/YAML blocks in chat text: the patches a message may submit, counted before
/// any is parsed so a message over the cap costs no parsing.
pub fn patch_blocks(text: &str) -> usize {
    ghost_core::fenced_blocks(text)
        .iter()
        .filter(|block| block_format(block).is_some())
        .count()
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

/// Long polls (HTTP `?wait=`, MCP `get_patch` with `wait`, `submit_patch` following) one
/// credential may hold at once; beyond, the current state is answered at once.
pub const MAX_LONG_POLLS_PER_CALLER: usize = 16;
/// Dry runs (HTTP `?dry_run=true`, MCP `check_patch`) one credential may have running at
/// once; beyond, 429.
pub const MAX_DRY_RUNS_PER_CALLER: usize = 2;
/// Reverts (HTTP `POST /v1/patches/{id}/revert`, MCP `revert_patch`) one credential may have
/// waiting for an executor's check at once; beyond, 429.
pub const MAX_REVERTS_PER_CALLER: usize = 2;

/// Places per credential name, shared by the HTTP API and MCP (whose tools run past the HTTP
/// guard's limits once the SSE answer has started).
#[derive(Clone, Default)]
struct PerCaller {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One place taken in a [`PerCaller`]; given back when dropped.
struct CallerPlace {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    name: String,
}

impl PerCaller {
    /// A place for `name`, or None when it holds `max` already.
    fn take(&self, name: &str, max: usize) -> Option<CallerPlace> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = counts.entry(name.to_owned()).or_default();
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(CallerPlace {
            counts: Arc::clone(&self.counts),
            name: name.to_owned(),
        })
    }
}

impl Drop for CallerPlace {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&self.name) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.name);
            }
        }
    }
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

    /// Every fenced JSON/YAML patch block of a chat message submitted; the others reported.
    pub async fn submit_message(
        &self,
        caller: &Principal,
        text: &str,
    ) -> Result<MessageOutcome, GatewayError> {
        caller.require(Scope::Submit)?;
        let mut blocks = Vec::new();
        let mut submitted = 0;
        let mut remaining = self.budget.max_bytes;
        for block in ghost_core::fenced_blocks(text) {
            let format = block_format(&block);
            let skipped = |reason: &str| BlockOutcome {
                line: block.line,
                lang: block.lang.clone(),
                outcome: "skipped".to_owned(),
                patch: None,
                reason: Some(reason.to_owned()),
            };
            let Some(format) = format else {
                blocks.push(skipped("not a JSON or YAML block"));
                continue;
            };
            // One budget for the whole message: each block spends from what the earlier ones
            // left, so twenty blocks cannot expand to twenty budgets.
            let budget = ParseBudget {
                max_bytes: remaining,
                ..self.budget
            };
            let parsed =
                parse_off_the_workers(block.body.clone().into_bytes(), format, budget).await?;
            remaining = remaining.saturating_sub(match &parsed {
                Ok(document) => document.spent,
                Err(_) => block.body.len(),
            });
            let document = match parsed {
                Ok(document) => document,
                Err(_) if !block.closed => {
                    blocks.push(skipped("unterminated block"));
                    continue;
                }
                Err(err) => {
                    blocks.push(BlockOutcome {
                        outcome: "refused".to_owned(),
                        reason: Some(err.to_string()),
                        ..skipped("")
                    });
                    continue;
                }
            };
            // Chat text quotes JSON for many reasons: a block that names neither an id nor a
            // target is a patch only in a legacy shape, with that shape's own markers; a bare
            // `{"commands": [...]}` is an example, not an order.
            let is_patch = match ghost_core::detect_shape(&document.value) {
                None => false,
                Some(ghost_core::Shape::V1) => {
                    document.value.get("id").is_some() || document.value.get("target").is_some()
                }
                Some(_) => true,
            };
            if !is_patch {
                blocks.push(skipped("not a patch"));
                continue;
            }
            let result = match refuse_revert_member(&document.value).and_then(|()| {
                ghost_core::normalise(document.value, &self.legacy).map_err(Into::into)
            }) {
                Ok(mut normalised) => {
                    normalised.warnings = document.warnings;
                    self.queue_normalised(caller, normalised).await
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(accepted) => {
                    submitted += 1;
                    blocks.push(BlockOutcome {
                        outcome: "submitted".to_owned(),
                        patch: Some(accepted),
                        reason: None,
                        ..skipped("")
                    });
                }
                // A transient failure (the router lost, overloaded or failing) must not look
                // like a refused block: the whole message is 503, so a webhook delivery is not
                // committed and the sender's retry queues the patch.
                Err(
                    err @ (GatewayError::Unavailable(_)
                    | GatewayError::Overloaded(_)
                    | GatewayError::Internal(_)),
                ) => {
                    tracing::warn!(error = %err, "transient failure inside a message; the message is refused whole");
                    return Err(GatewayError::Unavailable(err.to_string()));
                }
                Err(err) => blocks.push(BlockOutcome {
                    outcome: "refused".to_owned(),
                    reason: Some(err.to_string()),
                    ..skipped("")
                }),
            }
        }
        Ok(MessageOutcome { submitted, blocks })
    }

    async fn visible(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        let id = parse_id(raw_id)?;
        let (view, report) = self.queue.get(&id).await?;
        if !caller.may_touch(&view.target) {
            // Do not reveal patches of targets the caller cannot see.
            return Err(GatewayError::NotFound(raw_id.to_owned()));
        }
        Ok((view, report))
    }

    /// A patch and, once it has ended, its summary.
    pub async fn detail(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<PatchDetail, GatewayError> {
        caller.require(Scope::Read)?;
        let (view, report) = self.visible(caller, raw_id).await?;
        self.with_summary(raw_id, view, report).await
    }

    /// A patch as soon as it has ended (with its summary when the summarizer has written it),
    /// or its current state when `wait` is over. The caller must be able to see the patch
    /// before anything waits.
    pub async fn detail_waiting(
        &self,
        caller: &Principal,
        raw_id: &str,
        wait: std::time::Duration,
    ) -> Result<PatchDetail, GatewayError> {
        caller.require(Scope::Read)?;
        // A runtime key revoked since the request was authenticated gets nothing more (an MCP
        // follow calls this once per slice, also when its long polls are at their cap).
        if let (Some(keys), Some(hash)) = (&self.revocations, caller.runtime_key())
            && !keys.holds(&hash)
        {
            tracing::info!(caller = %caller.name, patch_id = %raw_id, "read refused: its api key was revoked");
            return Err(GatewayError::Unauthorized);
        }
        let (view, report) = self.visible(caller, raw_id).await?;
        let wait = wait.min(self.max_wait);
        if view.status.is_terminal() || wait.is_zero() {
            return self.with_summary(raw_id, view, report).await;
        }
        let Some(_place) = self
            .long_polls
            .take(&caller.name, MAX_LONG_POLLS_PER_CALLER)
        else {
            // Over the caller's share: the current state now, which is a valid answer to a
            // wait (the caller polls again), rather than an error it must handle.
            tracing::info!(caller = %caller.name, patch_id = %raw_id, "long polls of one credential at their cap; answered at once");
            return self.with_summary(raw_id, view, report).await;
        };
        let id = parse_id(raw_id)?;
        let waiting = self.queue.wait(&id, wait);
        let (view, report) = match (&self.revocations, caller.runtime_key()) {
            (Some(keys), Some(hash)) => tokio::select! {
                answer = waiting => answer?,
                () = keys.revoked(hash) => {
                    tracing::info!(caller = %caller.name, patch_id = %raw_id, "long poll ended: its api key was revoked");
                    return Err(GatewayError::Unauthorized);
                }
            },
            _ => waiting.await?,
        };
        self.with_summary(raw_id, view, report).await
    }

    async fn with_summary(
        &self,
        raw_id: &str,
        view: PatchView,
        report: Option<ReportView>,
    ) -> Result<PatchDetail, GatewayError> {
        let summary = if view.status.is_terminal() {
            let id = parse_id(raw_id)?;
            match self.summaries.markdown(&id).await {
                Ok(text) => text.map(|text| cut_middle(&text, self.summary_max_chars)),
                // The patch's state is the router's and is known; a summarizer that cannot be
                // reached only means no summary yet, not a failed read.
                Err(GatewayError::Unavailable(detail)) => {
                    tracing::warn!(patch_id = %id, error = %detail, "summarizer unavailable; answered without the summary");
                    None
                }
                Err(err) => return Err(err),
            }
        } else {
            None
        };
        Ok(PatchDetail {
            view,
            summary,
            report,
        })
    }

    /// The audit trail of a patch.
    pub async fn events(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<Vec<EventView>, GatewayError> {
        caller.require(Scope::Read)?;
        self.visible(caller, raw_id).await?;
        self.queue.events(&parse_id(raw_id)?).await
    }

    /// A filtered page of patches the caller may see.
    pub async fn list(
        &self,
        caller: &Principal,
        filter: &ListFilter,
    ) -> Result<PatchPage, GatewayError> {
        caller.require(Scope::Read)?;
        if let Some(target) = &filter.target {
            caller.allow_target(target)?;
        }
        let mut page = self.queue.list(filter).await?;
        page.patches.retain(|patch| caller.may_touch(&patch.target));
        Ok(page)
    }

    /// Cancels a patch.
    pub async fn cancel(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<PatchView, GatewayError> {
        caller.require(Scope::Admin)?;
        self.visible(caller, raw_id).await?;
        self.queue
            .cancel(&parse_id(raw_id)?, &format!("gateway:{}", caller.name))
            .await
    }

    /// Queues another attempt of a finished patch.
    pub async fn retry(&self, caller: &Principal, raw_id: &str) -> Result<PatchView, GatewayError> {
        caller.require(Scope::Admin)?;
        self.visible(caller, raw_id).await?;
        self.queue
            .retry(&parse_id(raw_id)?, &format!("gateway:{}", caller.name))
            .await
    }

    /// Queues the revert of a succeeded patch: admin scope, or submit scope on the patch's
    /// target. A patch on a target the caller may not touch is answered 404 like `GET`, so its
    /// existence is not revealed. The router asks the target's executor first (at most
    /// [`MAX_REVERTS_PER_CALLER`] such calls per credential at once); files changed since the
    /// patch ended refuse it ([`GatewayError::RevertConflicts`]). The answer has the shape of a
    /// submit's, `replayed` when the revert was queued before.
    pub async fn revert(&self, caller: &Principal, raw_id: &str) -> Result<Accepted, GatewayError> {
        caller.require(Scope::Submit)?;
        let (original, _) = self.visible(caller, raw_id).await?;
        let Some(_place) = self.reverts.take(&caller.name, MAX_REVERTS_PER_CALLER) else {
            tracing::warn!(caller = %caller.name, "reverts of one credential at their cap; refused");
            return Err(GatewayError::TooManyRequests { retry_after_s: 1 });
        };
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            target_name = %original.target,
            patch_id = %raw_id,
            "revert requested: the workspace is checked for this caller"
        );
        let actor = format!("gateway:{}", caller.name);
        let answer = self.queue.revert(&parse_id(raw_id)?, &actor).await;
        let (outcome, error) = match &answer {
            Ok(Reverted::Queued(view)) if view.created => ("queued", String::new()),
            Ok(Reverted::Queued(_)) => ("replay", String::new()),
            Ok(Reverted::Conflicts { error, .. }) => ("conflict", error.clone()),
            Err(err) => ("refused", err.to_string()),
        };
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            target_name = %original.target,
            patch_id = %raw_id,
            outcome,
            error = %error,
            "revert answered"
        );
        match answer? {
            Reverted::Queued(view) => Ok(Accepted {
                id: view.id,
                target: view.target,
                status: view.status,
                attempt: view.attempt,
                trace_id: view.trace_id,
                replayed: !view.created,
                shape: "v1".to_owned(),
                ignored: Vec::new(),
                warnings: Vec::new(),
                id_derived: false,
            }),
            Reverted::Conflicts { error, conflicts } => {
                Err(GatewayError::RevertConflicts { error, conflicts })
            }
        }
    }

    /// Targets the caller may see.
    pub async fn targets(&self, caller: &Principal) -> Result<Vec<TargetView>, GatewayError> {
        caller.require(Scope::Read)?;
        let mut targets = self.queue.targets().await?;
        targets.retain(|target| caller.may_touch(&target.target));
        Ok(targets)
    }

    /// Pauses (`paused`) or resumes a target; answers its queue afterwards.
    pub async fn set_paused(
        &self,
        caller: &Principal,
        raw_target: &str,
        paused: bool,
    ) -> Result<TargetView, GatewayError> {
        caller.require(Scope::Admin)?;
        let target = TargetName::parse(raw_target).map_err(|err| {
            GatewayError::BadRequest(format!("invalid target {raw_target:?}: {err}"))
        })?;
        caller.allow_target(target.as_str())?;
        self.queue
            .set_paused(&target, paused, &format!("gateway:{}", caller.name))
            .await?;
        let view = self
            .queue
            .targets()
            .await?
            .into_iter()
            .find(|view| view.target == target.as_str())
            .unwrap_or_else(|| TargetView::empty(target.as_str()));
        Ok(view)
    }

    /// Executors connected now that serve a target the caller may see.
    pub async fn executors(&self, caller: &Principal) -> Result<ExecutorList, GatewayError> {
        caller.require(Scope::Read)?;
        let mut list = self.queue.executors().await?;
        list.executors
            .retain(|executor| executor.targets.iter().any(|t| caller.may_touch(t)));
        Ok(list)
    }

    /// Alerts active now, from the alerter; 503 when none is configured.
    pub async fn alerts(&self, caller: &Principal) -> Result<AlertList, GatewayError> {
        caller.require(Scope::Read)?;
        let feed = self
            .alerts
            .as_ref()
            .ok_or(GatewayError::NotConfigured("alerter_url"))?;
        let mut list = feed.alerts().await?;
        list.alerts.retain(|alert| {
            alert
                .labels
                .get("target")
                .is_none_or(|target| caller.may_touch(target))
        });
        if caller.is_limited() {
            list.slack_backlog.clear();
        }
        Ok(list)
    }

    /// Chart aggregates since `since_unix_ms` (0: the router's default window).
    pub async fn stats(
        &self,
        caller: &Principal,
        target: Option<&str>,
        since_unix_ms: i64,
    ) -> Result<Stats, GatewayError> {
        caller.require(Scope::Read)?;
        let target = target
            .map(|raw| {
                caller.allow_target(raw)?;
                TargetName::parse(raw).map_err(|err| {
                    GatewayError::BadRequest(format!("invalid target {raw:?}: {err}"))
                })
            })
            .transpose()?;
        self.queue.stats(target.as_ref(), since_unix_ms).await
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

#[cfg(test)]
mod message_tests {
    use super::fake::FakeRouter;
    use super::*;

    #[tokio::test]
    async fn a_failing_router_makes_the_whole_message_unavailable_not_a_refused_block() {
        let patches = Patches::new(
            Arc::new(FakeRouter::failing()),
            Arc::new(FakeRouter::failing()),
            1000,
            LegacyOptions::default(),
            ParseBudget::new(1 << 20),
        );
        let target = TargetName::parse("MAIN").expect("target");
        let text = "```json\n{\"id\":\"p1\",\"target\":\"MAIN\",\"edits\":[{\"op\":\"write\",\"path\":\"a.txt\",\"contents\":\"x\"}]}\n```\n";
        let outcome = patches
            .submit_message(&Principal::inbox(&target), text)
            .await;
        assert!(
            matches!(outcome, Err(GatewayError::Unavailable(_))),
            "{outcome:?}"
        );
    }
}

#[cfg(test)]
mod filter_tests {
    use super::ListFilter;

    fn refusal(
        target: Option<&str>,
        status: Option<&str>,
        size: Option<u32>,
        token: Option<&str>,
    ) -> String {
        ListFilter::parse(
            target.map(str::to_owned),
            status.map(str::to_owned),
            size,
            token.map(str::to_owned),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn rest_and_mcp_filters_are_checked_alike() {
        assert!(refusal(None, Some("done"), None, None).contains("unknown status \"done\""));
        assert!(refusal(None, None, Some(0), None).contains("page_size"));
        assert!(refusal(None, None, Some(501), None).contains("page_size"));
        assert!(refusal(Some("../x"), None, None, None).contains("invalid target"));
        assert!(refusal(None, None, None, Some("abc")).contains("page_token"));
        assert!(refusal(Some(""), None, None, None).contains("invalid target"));
        assert!(refusal(None, None, None, Some("")).contains("page_token"));
        let filter = ListFilter::parse(
            Some("MAIN".to_owned()),
            Some("failed".to_owned()),
            Some(20),
            Some("40".to_owned()),
        )
        .unwrap();
        assert_eq!(filter.target.as_deref(), Some("MAIN"));
        assert_eq!(filter.page_size, 20);
        assert_eq!(filter.page_token, "40");
    }
}
