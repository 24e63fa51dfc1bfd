//! What the gateway answers about patches: the views of a patch, its events, a page of them,
//! a target's queue, an accepted submission and a chat message's outcome, and the list filter
//! the REST API and MCP share. Data only; the logic that fills them is in [`super::Patches`].

use std::collections::BTreeMap;

use ghost_core::Status;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::GatewayError;
use crate::report::ReportView;

/// A patch as the public API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PatchView {
    /// The patch id.
    pub id: String,
    /// Its workspace.
    pub target: String,
    /// Lifecycle state, e.g. `queued`, `succeeded`.
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
