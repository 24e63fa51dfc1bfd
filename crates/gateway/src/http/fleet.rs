//! The routes over targets and the fleet: list, pause and resume targets, the executors
//! connected now and the alerts active now.

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::{AppState, Problem};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::fleet::{AlertList, ExecutorList};
use crate::patches::TargetView;

/// Every known target with its queue.
#[utoipa::path(
    get, path = "/v1/targets", operation_id = "listTargets", tag = "targets",
    description = "Every known target: queue depth, paused flag, executor presence, running patch.",
    responses(
        (status = 200, description = "Targets", body = Vec<TargetView>),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The router does not list targets yet", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_targets(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<Vec<TargetView>>, GatewayError> {
    Ok(Json(state.patches.targets(&caller).await?))
}

/// Stop handing out work for a target.
#[utoipa::path(
    post, path = "/v1/targets/{target}/pause", operation_id = "pauseTarget", tag = "targets",
    description = "Stop handing out work for a target; queued patches wait until it is resumed. Needs the admin scope.",
    params(("target" = String, Path, description = "Target name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The target after pausing", body = TargetView),
        (status = 400, description = "Bad target name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(target = %target))]
pub(super) async fn pause_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(target): Path<String>,
) -> Result<Json<TargetView>, GatewayError> {
    Ok(Json(
        state.patches.set_paused(&caller, &target, true).await?,
    ))
}

/// Resume handing out work for a paused target.
#[utoipa::path(
    post, path = "/v1/targets/{target}/resume", operation_id = "resumeTarget", tag = "targets",
    description = "Resume handing out work for a paused target. Needs the admin scope.",
    params(("target" = String, Path, description = "Target name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The target after resuming", body = TargetView),
        (status = 400, description = "Bad target name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope or target not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(target = %target))]
pub(super) async fn resume_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(target): Path<String>,
) -> Result<Json<TargetView>, GatewayError> {
    Ok(Json(
        state.patches.set_paused(&caller, &target, false).await?,
    ))
}

/// Executors connected now.
#[utoipa::path(
    get, path = "/v1/executors", operation_id = "listExecutors", tag = "targets",
    description = "Executors connected to the router now: their targets, when they connected and were last heard from, and the patches they run.",
    responses(
        (status = 200, description = "Executors", body = ExecutorList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The router does not list executors", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_executors(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ExecutorList>, GatewayError> {
    Ok(Json(state.patches.executors(&caller).await?))
}

/// Alerts active now.
#[utoipa::path(
    get, path = "/v1/alerts", operation_id = "listAlerts", tag = "alerts",
    description = "Alerts active now (firing, acked or silenced), most severe first. 503 when the gateway has no alerter configured.",
    responses(
        (status = 200, description = "Alerts", body = AlertList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Scope not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The alerter does not list alerts", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No alerter configured, or it is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_alerts(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<AlertList>, GatewayError> {
    Ok(Json(state.patches.alerts(&caller).await?))
}
