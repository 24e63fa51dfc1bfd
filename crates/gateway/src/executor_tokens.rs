//! `/v1/executor-tokens`: the admin API over the router's `ExecutorTokenService`. Issues
//! per-executor tokens scoped to targets (the secret is in the 201 answer only), lists them
//! without secrets, and revokes them (the router cuts their live Work streams). Admin scope
//! only; the caller's key name is the actor the router audits.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ghost_proto::router::v1 as wire;
use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
use ghost_runtime::propagation::TracedChannel;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::http::{AppState, Problem};

/// The router's token service over gRPC.
#[derive(Clone)]
pub struct ExecutorTokens {
    /// Client on the router's channel.
    pub client: ExecutorTokenServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

/// A target a token may serve.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$", example = "MAIN")]
pub struct TokenTarget(pub String);

/// `POST /v1/executor-tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "alice-laptop", "targets": ["MAIN"]}))]
pub struct NewExecutorToken {
    /// Unique among live tokens: letters, digits, `.`, `_`, `-`; at most 64.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "alice-laptop")]
    pub name: String,
    /// The targets the executor may serve (1 to 64).
    #[schema(min_items = 1, max_items = 64)]
    pub targets: Vec<TokenTarget>,
}

/// `201` of `POST /v1/executor-tokens`: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "alice-laptop", "token": "gx_3f1c…", "targets": ["MAIN"], "created_at": "2026-12-06T05:00:00Z"}))]
pub struct IssuedExecutorToken {
    /// Its name.
    pub name: String,
    /// The token: give it to the executor (`ghost executor --token`). Never shown again.
    pub token: String,
    /// The targets it may serve.
    pub targets: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// A token without its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "alice-laptop", "targets": ["MAIN"], "created_at": "2026-12-06T05:00:00Z", "revoked_at": null, "last_used_at": "2026-12-06T05:01:00Z", "created_by": "admin", "live_streams": 1}))]
pub struct ExecutorTokenView {
    /// Its name.
    pub name: String,
    /// The targets it may serve.
    pub targets: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while live.
    pub revoked_at: Option<String>,
    /// Last accepted connection, RFC 3339; null: never used.
    pub last_used_at: Option<String>,
    /// The API key that created it.
    pub created_by: String,
    /// Work streams open with it now.
    pub live_streams: u32,
}

/// `GET /v1/executor-tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutorTokenList {
    /// Every token, live and revoked, oldest first.
    pub tokens: Vec<ExecutorTokenView>,
}

/// Unix ms as RFC 3339 (UTC); also the runtime API keys' times.
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn optional_time(unix_ms: i64) -> Option<String> {
    (unix_ms > 0).then(|| rfc3339(unix_ms))
}

fn view(token: wire::ExecutorToken) -> ExecutorTokenView {
    ExecutorTokenView {
        created_at: rfc3339(token.created_unix_ms),
        revoked_at: optional_time(token.revoked_unix_ms),
        last_used_at: optional_time(token.last_used_unix_ms),
        name: token.name,
        targets: token.targets,
        created_by: token.created_by,
        live_streams: token.live_streams,
    }
}

/// The JSON pointer of a field the router named (`name`, `targets[2]`).
fn pointer_of(message: &str) -> String {
    let field = message
        .strip_prefix("invalid ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or("");
    match field.split_once('[') {
        Some((list, index)) => format!("/{list}/{}", index.trim_end_matches(']')),
        None if field.is_empty() => String::new(),
        None => format!("/{field}"),
    }
}

/// The router's refusals of a token call, as the API answers them.
fn from_router(name: &str, status: &tonic::Status) -> GatewayError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => GatewayError::InvalidRequest {
            pointer: pointer_of(status.message()),
            message: status.message().to_owned(),
        },
        Code::AlreadyExists | Code::FailedPrecondition => {
            GatewayError::Conflict(status.message().to_owned())
        }
        Code::NotFound => GatewayError::NoSuchExecutorToken(name.to_owned()),
        Code::Unimplemented => GatewayError::NotImplemented("executor tokens"),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            GatewayError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
        }
        other => GatewayError::Internal(format!("{other:?}: {}", status.message())),
    }
}

fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads the body of `POST /v1/executor-tokens`.
fn new_token(body: Result<Bytes, BytesRejection>) -> Result<NewExecutorToken, GatewayError> {
    let body = body.map_err(|rejection| GatewayError::BadRequest(rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => GatewayError::InvalidRequest {
            pointer: String::new(),
            message: err.to_string(),
        },
        _ => GatewayError::MalformedBody {
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        },
    })
}

/// Issue an executor token.
#[utoipa::path(
    post, path = "/v1/executor-tokens", operation_id = "createExecutorToken", tag = "executor-tokens",
    description = "Admin only, with a Bearer API key. Issue a token for an executor, scoped to targets. The token is in this answer only; the router keeps its hash. Needs the admin scope.",
    request_body(content = NewExecutorToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued; `token` is shown only now", body = IssuedExecutorToken),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key, or a target the key may not touch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A live token has this name", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name or targets (names the field)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The router does not issue executor tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name))]
pub async fn create_executor_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    caller.require(Scope::Admin)?;
    let request = new_token(body)?;
    // An admin key limited to targets issues tokens for those targets only.
    for target in &request.targets {
        caller.allow_target(&target.0)?;
    }
    tracing::Span::current().record("name", request.name.as_str());
    let tokens = &state.executor_tokens;
    let answer = tokens
        .client
        .clone()
        .create_executor_token(with_deadline(
            wire::CreateExecutorTokenRequest {
                name: request.name.clone(),
                targets: request.targets.into_iter().map(|t| t.0).collect(),
                actor: caller.name.clone(),
            },
            tokens.timeout,
        ))
        .await
        .map_err(|status| from_router(&request.name, &status))?
        .into_inner();
    let token = answer
        .token
        .ok_or_else(|| GatewayError::Internal("router answered without a token".to_owned()))?;
    tracing::info!(name = %token.name, actor = %caller.name, "executor token issued");
    let issued = IssuedExecutorToken {
        created_at: rfc3339(token.created_unix_ms),
        name: token.name,
        token: answer.secret,
        targets: token.targets,
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Every executor token, without secrets.
#[utoipa::path(
    get, path = "/v1/executor-tokens", operation_id = "listExecutorTokens", tag = "executor-tokens",
    description = "Admin only, with a Bearer API key. Every executor token, live and revoked, with its targets, last use and open streams. Never a secret. Needs the admin scope.",
    responses(
        (status = 200, description = "Tokens", body = ExecutorTokenList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key, or a target the key may not touch", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The router does not issue executor tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_executor_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ExecutorTokenList>, GatewayError> {
    caller.require(Scope::Admin)?;
    let tokens = &state.executor_tokens;
    let answer = tokens
        .client
        .clone()
        .list_executor_tokens(with_deadline(
            wire::ListExecutorTokensRequest {},
            tokens.timeout,
        ))
        .await
        .map_err(|status| from_router("", &status))?
        .into_inner();
    // An admin key limited to targets sees only the tokens whose every target it may touch.
    Ok(Json(ExecutorTokenList {
        tokens: answer
            .tokens
            .into_iter()
            .filter(|token| token.targets.iter().all(|target| caller.may_touch(target)))
            .map(view)
            .collect(),
    }))
}

/// Revoke an executor token.
#[utoipa::path(
    delete, path = "/v1/executor-tokens/{name}", operation_id = "revokeExecutorToken", tag = "executor-tokens",
    description = "Admin only, with a Bearer API key. Revoke a token: new connections with it are refused and its live streams are cut, their leases going to other executors. Needs the admin scope.",
    params(("name" = String, Path, description = "Token name", pattern = r"^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "The revoked token", body = ExecutorTokenView),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key, or a target the key may not touch", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No token has this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a token name", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or too many failed credentials from this address", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The router does not issue executor tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn revoke_executor_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<ExecutorTokenView>, GatewayError> {
    caller.require(Scope::Admin)?;
    let tokens = &state.executor_tokens;
    if caller.is_limited() {
        // An admin key limited to targets revokes only tokens whose every target it may touch.
        let listed = tokens
            .client
            .clone()
            .list_executor_tokens(with_deadline(
                wire::ListExecutorTokensRequest {},
                tokens.timeout,
            ))
            .await
            .map_err(|status| from_router(&name, &status))?
            .into_inner();
        let token = listed
            .tokens
            .iter()
            .find(|token| token.name == name && token.revoked_unix_ms == 0)
            .or_else(|| listed.tokens.iter().find(|token| token.name == name))
            .ok_or_else(|| GatewayError::NoSuchExecutorToken(name.clone()))?;
        for target in &token.targets {
            caller.allow_target(target)?;
        }
    }
    let answer = tokens
        .client
        .clone()
        .revoke_executor_token(with_deadline(
            wire::RevokeExecutorTokenRequest {
                name: name.clone(),
                actor: caller.name.clone(),
            },
            tokens.timeout,
        ))
        .await
        .map_err(|status| from_router(&name, &status))?
        .into_inner();
    let token = answer
        .token
        .ok_or_else(|| GatewayError::Internal("router answered without a token".to_owned()))?;
    tracing::info!(name = %token.name, actor = %caller.name, streams_cut = answer.streams_cut, "executor token revoked");
    Ok(Json(view(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_fields_become_json_pointers() {
        assert_eq!(pointer_of("invalid name: required"), "/name");
        assert_eq!(pointer_of("invalid targets[2]: bad"), "/targets/2");
        assert_eq!(pointer_of("invalid targets: at most 64"), "/targets");
        assert_eq!(pointer_of("something else"), "");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(optional_time(0), None);
    }
}
