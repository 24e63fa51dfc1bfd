//! What callers send and what a refusal looks like: the problem document, the request bodies,
//! headers and query parameters the OpenAPI document describes. A patch's schema is
//! ghost-core's own [`ghost_core::Patch`] (its `openapi` feature), not described here.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::GatewayError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Problem type, e.g. `/problems/invalid-patch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// HTTP reason phrase.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What is wrong, precisely.
    pub detail: String,
    /// JSON pointer of the offending field (invalid patches).
    pub pointer: Option<String>,
    /// 1-based line of a syntax error.
    pub line: Option<usize>,
    /// 1-based column of a syntax error.
    pub column: Option<usize>,
    /// The repeated key (duplicate keys).
    pub key: Option<String>,
    /// JSON pointers of the first and the repeated occurrence (duplicate keys).
    pub pointers: Option<Vec<String>>,
    /// Every known target (an unknown target's refusal).
    pub known_targets: Option<Vec<String>>,
    /// The known target nearest to the unknown one, when one is close ("did you mean").
    pub nearest: Option<String>,
    /// A refused revert: why, naming the files (the same text as `detail`).
    pub error: Option<String>,
    /// A refused revert: workspace-relative paths changed since the patch ended, sorted.
    pub conflicts: Option<Vec<String>>,
}

/// The body of `POST /v1/patches/{id}/revert`: empty, or an empty object.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertInput {}

/// Refuses a revert body other than nothing or `{}`.
pub(super) fn empty_object(body: &[u8]) -> Result<(), GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let refused = || {
        GatewayError::BadRequest(
            "the body of a revert is empty or {}: the patch is named in the path".to_owned(),
        )
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(members)) if members.is_empty() => Ok(()),
        _ => Err(refused()),
    }
}

/// Chat text whose fenced patch blocks are submitted.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageInput {
    /// The message, e.g. a model's answer with ```json blocks.
    pub text: String,
}

/// Filters of `GET /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this target.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub target: Option<String>,
    /// Only this status, e.g. `queued`, `failed`.
    // Documented as ghost-core's `Status` (the enum of every status by name); read as text so
    // that `ListFilter::parse`, shared with MCP, names an unknown one in its refusal.
    #[param(value_type = Option<ghost_core::Status>)]
    pub status: Option<String>,
    /// Page size, 1 to 500.
    #[param(minimum = 1, maximum = 500)]
    pub page_size: Option<u32>,
    /// Token from the previous page (`next_page_token`).
    #[param(pattern = "^[0-9]{1,18}$")]
    pub page_token: Option<String>,
}

/// Headers of `POST /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct SubmitHeaders {
    /// Optional; the patch id. A document with an id must carry this one (another id is a
    /// 409); a document without one takes this as its id (so `GET /v1/patches/{key}` finds
    /// it). A `p-` + 16 hex key must be the document's own derived id (400 otherwise). The
    /// same key with the same content again is a replay; with other content, a 409.
    #[serde(rename = "Idempotency-Key")]
    #[param(pattern = r"^[A-Za-z0-9_()+-][A-Za-z0-9._()+-]{0,127}$")]
    pub idempotency_key: Option<String>,
}

/// Query of `POST /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SubmitQuery {
    /// `true`: only check the patch. The executor plans every edit against the workspace as it
    /// is now and writes nothing; the answer is 200 with the unified diff it would apply and
    /// the matching rung of every edit (a patch that would not apply is still a 200, with
    /// `status` rejected or failed and the `error`). Nothing is queued or stored; commands and
    /// checks are not run; it does not wait behind the target's queue.
    pub dry_run: Option<bool>,
}

/// Query of `GET /v1/patches/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GetQuery {
    /// Long-poll: hold the answer until the patch ends (answered within 100 ms of its end),
    /// at most this long, then answer its current state. `30s`, `1500ms` or `30` (seconds),
    /// at most `60s`. A GPT Action may wait 45 s per call: use `wait=40s` or less. Each
    /// credential holds at most 16 waits at once (HTTP and MCP together); beyond, the current
    /// state is answered at once (poll again).
    #[param(
        pattern = r"^(([0-9]|[1-5][0-9]|60)s?|([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|60000)ms)$",
        example = "40s"
    )]
    pub wait: Option<String>,
}
