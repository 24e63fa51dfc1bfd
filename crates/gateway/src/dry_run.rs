//! What a dry run answers (`POST /v1/patches?dry_run=true`, MCP `check_patch`,
//! `ghost submit --dry-run`): the executor's plan of the patch against the workspace as it is
//! now, with the unified diff it would apply and the matching rung of every edit.
//!
//! A dry run that finds a problem is still a successful dry run (200 with `status` rejected or
//! failed and the `error`); only refusals of the request itself (auth, a bad document, an
//! unknown target, no executor online) are problems. Nothing is queued, stored or audited: a
//! later real submit of the same id is created fresh. It does not wait behind the target's
//! queue (it writes nothing, and answers at once about the workspace as it is now; a patch
//! queued ahead of it may change the outcome when it runs), but the executor does wait for a
//! patch it is applying at that moment on that target, so it never plans against a
//! half-written workspace. Commands and checks are not run.

use ghost_proto::router::v1 as wire;
use serde::Serialize;
use utoipa::ToSchema;

use crate::report::{EditView, status_name};

/// The deadline of the gateway's call to the router for a dry run: past the router's 30 s
/// wait for the executor (which itself gives up at 25 s).
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(35);
/// The deadline of a dry run's HTTP request, past [`CALL_DEADLINE`].
pub const HTTP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(40);

/// Said in every dry run answer.
pub const NOTE: &str = "dry run: nothing was written, queued or stored; commands and checks \
                        were not run. It planned against the workspace as it is now: patches \
                        queued ahead of a real submit may change the outcome.";

/// The executor's answer, as the gateway's port returns it.
#[derive(Debug, Clone)]
pub struct DryRunReport {
    /// `succeeded` (every edit would apply), `rejected` or `failed`.
    pub status: String,
    /// Why it would not apply (empty when it would).
    pub error: String,
    /// The unified diff it would apply.
    pub diff: String,
    /// One row per edit, with the rung that matched.
    pub edits: Vec<EditView>,
}

/// The answer of `POST /v1/patches?dry_run=true`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRunView {
    /// Always true.
    pub dry_run: bool,
    /// The patch id (the document's, or derived as for a submit).
    pub id: String,
    /// Its target.
    pub target: String,
    /// `succeeded` when every edit would apply; `rejected` (not allowed: a path, a policy, a
    /// stale `base`) or `failed` (does not fit the workspace: text not found, file missing).
    pub status: String,
    /// Why it would not apply (empty when it would).
    pub error: String,
    /// The unified diff (git format: `a/` `b/` headers, `/dev/null` for created and deleted
    /// files, mode changes, renames; binary files named, not shown). Cut at 1 MiB with a last
    /// line `# diff cut at ...` saying so.
    pub diff: String,
    /// True when the diff was cut.
    pub diff_truncated: bool,
    /// One row per edit: `op`, `path`, `match_step` (the rung that matched: `exact`,
    /// `trailing_whitespace`, `trim`, `punctuation`, `indentation`, ...), lines added and removed.
    pub edits: Vec<EditView>,
    /// What a dry run does not do.
    pub note: String,
    /// The shape the document had (`v1` or a legacy shape).
    pub shape: String,
    /// What reading the document forgave (as for a submit).
    pub warnings: Vec<String>,
}

impl From<wire::ApplyReport> for DryRunReport {
    fn from(report: wire::ApplyReport) -> Self {
        Self {
            status: status_name(report.status),
            error: report.error,
            diff: report.diff,
            edits: report.edits.into_iter().map(EditView::from).collect(),
        }
    }
}
