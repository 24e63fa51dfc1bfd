//! The public HTTP API: thin axum handlers over [`Patches`], documented with utoipa so the
//! OpenAPI document is generated from the handlers themselves.
//!
//! This file builds the routes ([`api`]) and holds the patch and message handlers; the target
//! and fleet handlers are in `fleet`, the request types and the problem document in `inputs`.

mod fleet;
mod inputs;

use fleet::{
    __path_list_alerts, __path_list_executors, __path_list_targets, __path_pause_target,
    __path_resume_target, list_alerts, list_executors, list_targets, pause_target, resume_target,
};
use inputs::empty_object;
pub use inputs::{
    GetQuery, ListQuery, MessageInput, Problem, RevertInput, SubmitHeaders, SubmitQuery,
};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, middleware};
use ghost_core::Format;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_keys::{
    __path_create_api_key, __path_delete_api_key, __path_list_api_keys, create_api_key,
    delete_api_key, list_api_keys,
};
use crate::auth::Principal;
use crate::dry_run::DryRunView;
use crate::error::GatewayError;
use crate::executor_tokens::{
    __path_create_executor_token, __path_list_executor_tokens, __path_revoke_executor_token,
    ExecutorTokens, create_executor_token, list_executor_tokens, revoke_executor_token,
};
use crate::guard::{self, Guard};
use crate::patches::{
    Accepted, EventView, ListFilter, MessageOutcome, PatchDetail, PatchPage, PatchView, Patches,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The logic.
    pub patches: Patches,
    /// Authentication and limits.
    pub guard: Arc<Guard>,
    /// Body limit, for the error message.
    pub max_body_bytes: usize,
    /// Most patch blocks one message may carry.
    pub max_patches_per_message: usize,
    /// The router's executor-token service (`/v1/executor-tokens`).
    pub executor_tokens: ExecutorTokens,
    /// The router's API key service (`/v1/keys`).
    pub api_keys: crate::api_keys::RuntimeKeys,
}

/// The value of `name` in a raw query string (the first one), percent-decoding not needed for
/// the values accepted here.
pub(crate) fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn dry_run_flag(query: Option<&str>) -> Result<bool, GatewayError> {
    match query_value(query, "dry_run") {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(GatewayError::BadRequest(format!(
            "query parameter dry_run={other:?} is not a boolean; give true or false"
        ))),
    }
}

/// The API routes with their OpenAPI description.
pub fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let guard = Arc::clone(&state.guard);
    let max_body = state.max_body_bytes;
    let (router, openapi) = OpenApiRouter::new()
        .routes(routes!(submit_patch, list_patches))
        .routes(routes!(get_patch))
        .routes(routes!(patch_events))
        .routes(routes!(cancel_patch))
        .routes(routes!(retry_patch))
        .routes(routes!(revert_patch))
        .routes(routes!(submit_message))
        .routes(routes!(list_targets))
        .routes(routes!(pause_target))
        .routes(routes!(resume_target))
        .routes(routes!(list_executors))
        .routes(routes!(list_alerts))
        .routes(routes!(create_executor_token, list_executor_tokens))
        .routes(routes!(revoke_executor_token))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(delete_api_key))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&guard),
            guard::authenticate,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
        .split_for_parts();
    (router, openapi)
}

fn format_of(headers: &HeaderMap) -> Result<Format, GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let text = value.to_str().unwrap_or("");
    Format::from_media_type(text).ok_or_else(|| GatewayError::UnsupportedMediaType(text.to_owned()))
}

fn body_or_error(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<Bytes, GatewayError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::PayloadTooLarge(max_body_bytes)
        } else {
            GatewayError::BadRequest(rejection.body_text())
        }
    })
}

/// Submit a patch (JSON or YAML, v1 or a legacy shape). 202 only once the router has stored it.
#[utoipa::path(
    post, path = "/v1/patches", operation_id = "submitPatch", tag = "patches",
    description = "Submit a patch as JSON or YAML (v1 or legacy). 202 once the router stored it; same id and content again: 202 replayed, other content 409. No id: the Idempotency-Key, else derived (see 202). Trailing commas and comments are forgiven (`warnings`). `dry_run=true`: 200 with the diff, nothing queued.",
    request_body(content(
        (ghost_core::Patch = "application/json"),
        (ghost_core::Patch = "application/yaml"),
    )),
    params(SubmitHeaders, SubmitQuery),
    responses(
        (status = 200, description = "`dry_run=true`: what the patch would do. Nothing was written, queued or stored. `status` succeeded when every edit would apply, else rejected or failed with the `error` (still a 200: the check itself worked).", body = DryRunView),
        (status = 202, description = "Stored and queued. A document without an id gets `p-` and the first 16 lowercase hex digits of the SHA-256 of the normalised patch's canonical JSON without its id (fields in a fixed order, defaults spelled out, no whitespace): the same content, however spelled, gets the same id and is a replay. `warnings` lists what reading the document forgave (always present, empty when nothing), and the patch's summary repeats it.", body = Accepted),
        (status = 400, description = "Malformed document, a document carrying `revert`, or an id (or Idempotency-Key) starting with `revert-` in any letter case (reserved for the router's reverts)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed (a dry run needs both the submit and the read scope: it shows the workspace)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Same id, other content; for a dry run: no executor serving the target is connected now (the detail names it)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid patch (names the field; an explicit id of the derived form `p-` + 16 hex that is not the document's own derived id is refused), a duplicate key (names the key and both pointers) or nothing to do", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, too many failed credentials from this address, or (dry run) the credential has 2 dry runs running already", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable; nothing stored. For a dry run also: the executor did not answer in time, or too many dry runs at once (the detail says which)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(patch_id))]
async fn submit_patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let dry_run = dry_run_flag(query.as_deref())?;
    let format = format_of(&headers)?;
    let body = body_or_error(body, state.max_body_bytes)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if dry_run {
        let checked = state.patches.dry_run(&caller, &body, format, key).await?;
        return Ok((StatusCode::OK, Json(checked)).into_response());
    }
    let accepted = state
        .patches
        .submit(&caller, &body, format, key, None)
        .await?;
    let location = format!("/v1/patches/{}", accepted.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(accepted),
    )
        .into_response())
}

/// One patch: status, attempts, and its summary once it has ended.
#[utoipa::path(
    get, path = "/v1/patches/{id}", operation_id = "getPatch", tag = "patches",
    description = "One patch: status, attempts, error, and once it has ended its summary (at most 100,000 characters). With `wait` (e.g. `wait=40s`, at most 60s) the answer is held until the patch ends, so one call gets the result; when the wait is over first, the current state is answered.",
    params(("id" = String, Path, description = "Patch id"), GetQuery),
    responses(
        (status = 200, description = "The patch (with `wait`: as soon as it ended, or its current state when the wait was over; the summary may still be null for a moment after the end)", body = PatchDetail),
        (status = 400, description = "A `wait` that is not a duration of at most 60s", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patch", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(patch_id = %id))]
async fn get_patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    no_wait: Option<Extension<crate::guard::NoWait>>,
) -> Result<Json<PatchDetail>, GatewayError> {
    let Some(raw) = query_value(query.as_deref(), "wait") else {
        return Ok(Json(state.patches.detail(&caller, &id).await?));
    };
    let wait = crate::long_poll::parse_wait("wait", raw)?;
    // Every long-poll place was taken: the current state at once.
    let wait = if no_wait.is_some() {
        std::time::Duration::ZERO
    } else {
        wait
    };
    // Dropped with the request when the client goes away: the router call is cancelled and
    // its waiter freed.
    Ok(Json(
        state.patches.detail_waiting(&caller, &id, wait).await?,
    ))
}

/// The audit trail of one patch.
#[utoipa::path(
    get, path = "/v1/patches/{id}/events", operation_id = "getPatchEvents", tag = "patches",
    description = "Every lifecycle transition of one patch with time, actor and attempt.",
    params(("id" = String, Path, description = "Patch id")),
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<EventView>),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patch", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn patch_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventView>>, GatewayError> {
    Ok(Json(state.patches.events(&caller, &id).await?))
}

/// Patches, newest first, filtered and paginated.
#[utoipa::path(
    get, path = "/v1/patches", operation_id = "listPatches", tag = "patches",
    description = "Patches, newest first, optionally filtered by target and status; pass next_page_token back as page_token for the next page.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page", body = PatchPage),
        (status = 400, description = "Bad filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_patches(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PatchPage>, GatewayError> {
    let Query(query) = query.map_err(|err| GatewayError::BadRequest(err.body_text()))?;
    let filter = ListFilter::parse(
        query.target,
        query.status,
        query.page_size,
        query.page_token,
    )?;
    Ok(Json(state.patches.list(&caller, &filter).await?))
}

/// Cancel a queued or running patch.
#[utoipa::path(
    post, path = "/v1/patches/{id}/cancel", operation_id = "cancelPatch", tag = "patches",
    description = "Cancel a queued or running patch; a running one is stopped and rolled back. Needs the admin scope.",
    params(("id" = String, Path, description = "Patch id")),
    responses(
        (status = 200, description = "State after cancelling", body = PatchView),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn cancel_patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<PatchView>, GatewayError> {
    Ok(Json(state.patches.cancel(&caller, &id).await?))
}

/// Queue a finished patch for another attempt.
#[utoipa::path(
    post, path = "/v1/patches/{id}/retry", operation_id = "retryPatch", tag = "patches",
    description = "Queue a failed, cancelled or lost patch for another attempt. Needs the admin scope.",
    params(("id" = String, Path, description = "Patch id")),
    responses(
        (status = 200, description = "State after requeueing", body = PatchView),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not retryable now", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn retry_patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<PatchView>, GatewayError> {
    Ok(Json(state.patches.retry(&caller, &id).await?))
}

/// Queue a patch restoring the pre-images of a succeeded patch.
#[utoipa::path(
    post, path = "/v1/patches/{id}/revert", operation_id = "revertPatch", tag = "patches",
    description = "Undo a succeeded patch: queues `revert-<id>`, restoring the files it changed, once the target's executor checked none changed since. Body empty or {}. Admin scope, or submit scope on the patch's target.",
    params(("id" = String, Path, description = "The succeeded patch to undo")),
    request_body(content = RevertInput, content_type = "application/json", description = "{} (an empty body is taken as {} too)"),
    responses(
        (status = 200, description = "The revert was queued before (`replayed` true): its current state", body = Accepted),
        (status = 202, description = "The revert patch `revert-<id>`, stored and queued; Location names it", body = Accepted,
            headers(("Location" = String, description = "/v1/patches/revert-<id>"))),
        (status = 400, description = "A body other than nothing or {}", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the admin nor the submit scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patch (or one on a target the credential may not touch)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Files changed since the patch ended (`conflicts` names them, `error` says why; nothing queued); or the patch did not succeed, or no executor of its target can check a revert now (the detail says which)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, too many failed credentials from this address, or the credential has 2 reverts being checked already", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The executor did not answer the check in time (nothing queued); or the router's answer was cut (`revert-cut`: the revert may have been queued; ask again, which answers it if it was)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(patch_id = %id))]
async fn revert_patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body_or_error(body, state.max_body_bytes)?;
    empty_object(&body)?;
    let accepted = state.patches.revert(&caller, &id).await?;
    let code = if accepted.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/patches/{}", accepted.id);
    Ok((code, [(header::LOCATION, location)], Json(accepted)).into_response())
}

/// Submit every fenced patch block of a chat message.
#[utoipa::path(
    post, path = "/v1/messages", operation_id = "submitMessage", tag = "patches",
    description = "Chat text in: every fenced ```json or ```yaml block holding a patch is submitted; others are reported as skipped, invalid ones as refused. Each block costs one unit of the rate limit, charged at once: a message that does not fit is refused whole (429); over the block cap, 413.",
    request_body(content = MessageInput, content_type = "application/json"),
    responses(
        (status = 200, description = "What became of every block", body = MessageOutcome),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large, or more JSON/YAML blocks than one message may carry (the cap is named); nothing queued", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is not {text}", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn submit_message(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MessageOutcome>, GatewayError> {
    if format_of(&headers)? != Format::Json {
        return Err(GatewayError::UnsupportedMediaType(
            "send application/json {\"text\": ...}".to_owned(),
        ));
    }
    let body = body_or_error(body, state.max_body_bytes)?;
    let input: MessageInput = serde_json::from_slice(&body).map_err(|err| {
        if err.is_data() {
            GatewayError::InvalidPatch {
                pointer: "/text".to_owned(),
                message: "expected an object {\"text\": \"...\"}".to_owned(),
            }
        } else {
            GatewayError::MalformedBody {
                line: err.line(),
                column: err.column(),
                message: err.to_string(),
            }
        }
    })?;
    let blocks = crate::patches::patch_blocks(&input.text);
    // Never more than the burst: such a message could not be charged at all.
    let cap = state.max_patches_per_message.min(state.guard.burst());
    if blocks > cap {
        return Err(GatewayError::TooManyPatches { found: blocks, cap });
    }
    // The guard charged the request one unit; every further patch costs one more, charged at
    // once so that a message is queued whole or not at all (its patches may depend on each
    // other, and a caller retries a refused message as it is).
    state
        .guard
        .charge_more(&caller.name, blocks.saturating_sub(1))?;
    Ok(Json(
        state.patches.submit_message(&caller, &input.text).await?,
    ))
}
