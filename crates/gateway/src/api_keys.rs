//! API keys created at runtime: `POST /v1/keys` (the secret in the 201 answer only),
//! `GET /v1/keys` (never a secret; the keys from config listed read-only with
//! `source: "config"`) and `DELETE /v1/keys/{name}`. Admin scope and a Bearer API key only
//! (a webhook-signed request cannot manage keys, so no replay cache ever holds a secret); a
//! key is never created with more scopes or targets than its creator holds, and one created
//! without `targets` by a key limited to targets gets the creator's targets.
//!
//! The router keeps the keys (`ghost.router.v1.ApiKeyService`, SHA-256 hashes only), so
//! every gateway replica shares them: these routes are a thin adapter over it, and
//! authentication looks keys up in [`snapshot::KeyStore`], kept in step with the router by a
//! long poll (a revocation through any gateway is refused by every gateway within a round
//! trip). A keys file left by an older gateway (`<data_dir>/api-keys.json`) is imported
//! once at start ([`import`]). The router audits every change and refusal.

pub mod import;
pub mod snapshot;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ghost_core::TargetName;
use ghost_proto::router::v1::{self as wire, api_key_service_client::ApiKeyServiceClient};
use ghost_runtime::propagation::TracedChannel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::executor_tokens::rfc3339;
use crate::http::{AppState, Problem};

/// Largest answer about runtime keys the gateway decodes from the router (16 MiB), far above
/// the router's bound on the whole set.
pub const MAX_KEYS_MESSAGE: usize = 16 * 1024 * 1024;

/// Targets one key may name at most.
const MAX_TARGETS: usize = 64;

/// The router's API key service over gRPC.
#[derive(Clone)]
pub struct RuntimeKeys {
    /// Client on the router's channel.
    pub client: ApiKeyServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "chatgpt-3f1c", "scopes": ["submit", "read"], "targets": ["MAIN"]}))]
pub struct NewApiKey {
    /// Unique among every key (config and runtime): a letter or digit, then letters, digits,
    /// `.`, `_`, `-`; at most 64.
    #[schema(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        example = "chatgpt-3f1c"
    )]
    pub name: String,
    /// What the key may do (1 to 3; `admin` implies the others).
    #[schema(min_items = 1, max_items = 3)]
    pub scopes: Vec<Scope>,
    /// The targets it may touch (at most 64); left out: every target the creator may touch.
    #[schema(max_items = 64)]
    pub targets: Option<Vec<crate::executor_tokens::TokenTarget>>,
}

/// `201` of `POST /v1/keys`: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "chatgpt-3f1c", "key": "gr_Zm9v…", "scopes": ["submit", "read"], "targets": [], "created_at": "2026-12-06T05:00:00Z", "created_by": "api_key", "source": "runtime"}))]
pub struct IssuedApiKey {
    /// Its name.
    pub name: String,
    /// The secret (`gr_` and 43 characters): send it as `Authorization: Bearer <key>`. Never
    /// shown again; the router keeps only its SHA-256.
    pub key: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    pub targets: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The key that created it.
    pub created_by: String,
    /// Always `runtime`.
    pub source: String,
}

/// A key without its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "chatgpt-3f1c", "scopes": ["submit", "read"], "targets": [], "created_at": "2026-12-06T05:00:00Z", "created_by": "api_key", "source": "runtime", "imported": false}))]
pub struct KeyView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    pub targets: Vec<String>,
    /// RFC 3339; null for a key from config.
    pub created_at: Option<String>,
    /// The key that created it; null for a key from config.
    pub created_by: Option<String>,
    /// `config` (read-only: change the gateway's config) or `runtime` (`POST /v1/keys`).
    pub source: String,
    /// True for a runtime key imported from an older gateway's keys file rather than made
    /// through `POST /v1/keys`.
    pub imported: bool,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys from config first, then the runtime ones, oldest first.
    pub keys: Vec<KeyView>,
}

fn scope_of(raw: &str) -> Option<Scope> {
    match raw {
        "submit" => Some(Scope::Submit),
        "read" => Some(Scope::Read),
        "admin" => Some(Scope::Admin),
        _ => None,
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Submit => "submit",
        Scope::Read => "read",
        Scope::Admin => "admin",
    }
}

fn view(key: &wire::ApiKey) -> KeyView {
    KeyView {
        name: key.name.clone(),
        scopes: key.scopes.iter().filter_map(|s| scope_of(s)).collect(),
        targets: key.targets.clone(),
        created_at: Some(rfc3339(key.created_unix_ms)),
        created_by: Some(key.created_by.clone()),
        source: "runtime".to_owned(),
        imported: key.imported,
    }
}

/// A name from a request as it may appear in a log line: at most 64 characters, control and
/// invisible characters escaped.
pub(crate) fn loggable(raw: &str) -> String {
    let mut out = String::new();
    for (index, ch) in raw.chars().enumerate() {
        if index == 64 {
            out.push('…');
            break;
        }
        if ch.is_control() || ghost_core::invisible::is_invisible(ch) {
            out.extend(ch.escape_unicode());
        } else {
            out.push(ch);
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn invalid(pointer: &str, message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        pointer: pointer.to_owned(),
        message,
    }
}

fn new_key(body: Result<Bytes, BytesRejection>) -> Result<NewApiKey, GatewayError> {
    let body = body.map_err(|rejection| GatewayError::BadRequest(rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => invalid("", err.to_string()),
        _ => GatewayError::MalformedBody {
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        },
    })
}

/// True when the caller may touch every one of `targets` (empty: all targets).
fn covers(caller: &Principal, targets: &[String]) -> bool {
    if targets.is_empty() {
        return !caller.is_limited();
    }
    targets.iter().all(|target| caller.may_touch(target))
}

/// The key routes take a Bearer API key only: a webhook-signed request could otherwise have
/// its answer (holding a secret) kept for replays.
fn require_api_key(caller: &Principal) -> Result<(), GatewayError> {
    if caller.is_signed_webhook() {
        tracing::warn!(target: "audit", caller = %caller.name, "api key route refused: a webhook signature, not an API key");
        return Err(GatewayError::Forbidden(format!(
            "credential {:?} is a webhook sender; API keys are managed with an admin API key (Authorization: Bearer) only",
            caller.name
        )));
    }
    caller.require(Scope::Admin)
}

/// The JSON pointer of a field the router named (`name`, `targets[2]`, `scopes[0]`).
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

/// The router's refusals of a key call, as the API answers them.
fn from_router(name: &str, status: &tonic::Status) -> GatewayError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => {
            invalid(&pointer_of(status.message()), status.message().to_owned())
        }
        Code::AlreadyExists | Code::FailedPrecondition | Code::ResourceExhausted => {
            GatewayError::Conflict(status.message().to_owned())
        }
        Code::NotFound => GatewayError::NoSuchApiKey(loggable(name)),
        Code::PermissionDenied => GatewayError::Forbidden(status.message().to_owned()),
        Code::Unimplemented => GatewayError::NotImplemented("runtime api keys"),
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

/// After a change: this gateway's snapshot holds it before the answer goes out, so the
/// caller can use (or no longer use) the key here at once.
async fn catch_up(state: &AppState) {
    let keys = &state.api_keys;
    if let Err(status) =
        snapshot::refresh(state.guard.credentials.store(), &keys.client, keys.timeout).await
    {
        tracing::warn!(code = ?status.code(), "runtime api keys: cannot refresh after a change; the long poll will");
    }
}

/// The scopes of a new key, sorted and once each: at least one, none its creator lacks.
fn granted_scopes(
    caller: &Principal,
    name: &str,
    requested: Vec<Scope>,
) -> Result<Vec<Scope>, GatewayError> {
    let mut scopes = requested;
    scopes.sort_by_key(|scope| *scope as u8);
    scopes.dedup();
    if scopes.is_empty() {
        return Err(invalid(
            "/scopes",
            "give at least one scope: submit, read or admin".to_owned(),
        ));
    }
    for scope in &scopes {
        caller.require(*scope).map_err(|_| {
            tracing::warn!(target: "audit", caller = %caller.name, key_name = %name, scope = ?scope, "api key refused: a scope its creator lacks");
            GatewayError::Forbidden(format!(
                "credential {:?} cannot create a key with the {scope:?} scope it lacks",
                caller.name
            ))
        })?;
    }
    Ok(scopes)
}

/// The targets of a new key, once each: the requested ones (left out, the creator's), valid
/// names, at most [`MAX_TARGETS`], each one its creator may touch.
fn granted_targets(
    caller: &Principal,
    name: &str,
    requested: Option<Vec<String>>,
) -> Result<Vec<String>, GatewayError> {
    let mut targets: Vec<String> = match requested {
        Some(targets) => targets,
        // Left out by a key limited to targets: the creator's targets, never "all".
        None => caller
            .targets()
            .map(|own| own.iter().map(|t| t.as_str().to_owned()).collect())
            .unwrap_or_default(),
    };
    let mut seen = std::collections::HashSet::new();
    targets.retain(|target| seen.insert(target.clone()));
    if targets.len() > MAX_TARGETS {
        return Err(invalid(
            "/targets",
            format!("at most {MAX_TARGETS} targets, got {}", targets.len()),
        ));
    }
    for (index, target) in targets.iter().enumerate() {
        TargetName::parse(target).map_err(|err| {
            invalid(
                &format!("/targets/{index}"),
                format!("target {:?}: {err}", loggable(target)),
            )
        })?;
    }
    if !covers(caller, &targets) {
        tracing::warn!(target: "audit", caller = %caller.name, key_name = %name, targets = ?targets, "api key refused: targets its creator may not touch");
        return Err(GatewayError::Forbidden(format!(
            "credential {:?} may touch only some targets; the new key must name targets, each one it may touch",
            caller.name
        )));
    }
    Ok(targets)
}

/// Create an API key.
#[utoipa::path(
    post, path = "/v1/keys", operation_id = "createApiKey", tag = "keys",
    description = "Admin only, with a Bearer API key. Create an API key with scopes and targets (left out: the creator's). The secret (`gr_…`) is in this answer only; every gateway knows the key. Never more scopes or targets than the creating key holds. At most 1,000 runtime keys.",
    request_body(content = NewApiKey, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = IssuedApiKey),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin API key, or more scopes or targets than the creating key holds", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A key has this name, or 1,000 runtime keys exist", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, scopes or targets (names the field)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name))]
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    require_api_key(&caller)?;
    let request = new_key(body)?;
    if !valid_name(&request.name) {
        return Err(invalid(
            "/name",
            format!(
                "name {:?} must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                loggable(&request.name)
            ),
        ));
    }
    tracing::Span::current().record("name", request.name.as_str());
    let scopes = granted_scopes(&caller, &request.name, request.scopes)?;
    let requested = request
        .targets
        .map(|targets| targets.into_iter().map(|target| target.0).collect());
    let targets = granted_targets(&caller, &request.name, requested)?;
    let keys = &state.api_keys;
    let answer = keys
        .client
        .clone()
        .create_api_key(with_deadline(
            wire::CreateApiKeyRequest {
                name: request.name.clone(),
                scopes: scopes.iter().map(|s| scope_name(*s).to_owned()).collect(),
                targets,
                actor: caller.name.clone(),
                reserved_names: state.guard.credentials.config_names(),
            },
            keys.timeout,
        ))
        .await
        .map_err(|status| from_router(&request.name, &status))?
        .into_inner();
    let key = answer
        .key
        .ok_or_else(|| GatewayError::Internal("router answered without a key".to_owned()))?;
    catch_up(&state).await;
    tracing::info!(
        target: "audit",
        caller = %caller.name,
        key_name = %key.name,
        scopes = ?key.scopes,
        targets = ?key.targets,
        "api key created"
    );
    let listed = view(&key);
    let issued = IssuedApiKey {
        name: listed.name,
        key: answer.secret,
        scopes: listed.scopes,
        targets: listed.targets,
        created_at: listed.created_at.unwrap_or_default(),
        created_by: key.created_by,
        source: "runtime".to_owned(),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Every API key, without secrets.
#[utoipa::path(
    get, path = "/v1/keys", operation_id = "listApiKeys", tag = "keys",
    description = "Admin only, with a Bearer API key. Every API key the caller may manage, never a secret: the keys from config (`source: config`, read-only) then the runtime ones (`source: runtime`). A key limited to targets sees only keys within them.",
    responses(
        (status = 200, description = "Keys", body = KeyList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin API key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<KeyList>, GatewayError> {
    require_api_key(&caller)?;
    let keys = &state.api_keys;
    let answer = keys
        .client
        .clone()
        .list_api_keys(with_deadline(wire::ListApiKeysRequest {}, keys.timeout))
        .await
        .map_err(|status| from_router("", &status))?
        .into_inner();
    let credentials = &state.guard.credentials;
    let keys = credentials
        .config_views()
        .into_iter()
        .chain(answer.keys.iter().map(view))
        .filter(|key| covers(&caller, &key.targets))
        .collect();
    Ok(Json(KeyList { keys }))
}

/// Delete (revoke) an API key.
#[utoipa::path(
    delete, path = "/v1/keys/{name}", operation_id = "deleteApiKey", tag = "keys",
    description = "Admin only, with a Bearer API key. Revoke a runtime key at every gateway: within 2 s requests with it are refused (401) and its long polls end. Keys from config cannot be deleted here (409). Needs every target of the key. Refusals are audited.",
    params(("name" = String, Path, description = "Key name", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses(
        (status = 200, description = "The deleted key", body = KeyView),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin API key, or the key has targets the caller may not touch", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No key has this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A key from config", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Router unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name = %loggable(&name)))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<KeyView>, GatewayError> {
    require_api_key(&caller)?;
    let keys = &state.api_keys;
    // The router checks and audits every refusal (a config key, an unknown name, a key wider
    // than the caller) in the same place as the revocation.
    let answer = keys
        .client
        .clone()
        .revoke_api_key(with_deadline(
            wire::RevokeApiKeyRequest {
                name: name.clone(),
                actor: caller.name.clone(),
                actor_limited: caller.is_limited(),
                actor_targets: caller
                    .targets()
                    .map(|own| own.iter().map(|t| t.as_str().to_owned()).collect())
                    .unwrap_or_default(),
                reserved_names: state.guard.credentials.config_names(),
            },
            keys.timeout,
        ))
        .await
        .map_err(|status| {
            tracing::warn!(target: "audit", caller = %caller.name, key_name = %loggable(&name), code = ?status.code(), "api key deletion refused");
            match status.code() {
                // Not a key name: no key has it.
                tonic::Code::InvalidArgument => GatewayError::NoSuchApiKey(loggable(&name)),
                _ => from_router(&name, &status),
            }
        })?
        .into_inner();
    let key = answer
        .key
        .ok_or_else(|| GatewayError::Internal("router answered without a key".to_owned()))?;
    catch_up(&state).await;
    tracing::info!(target: "audit", caller = %caller.name, key_name = %key.name, "api key deleted");
    Ok(Json(view(&key)))
}

/// A key from config, as listed.
pub(crate) fn config_view(principal: &Principal) -> KeyView {
    KeyView {
        name: principal.name.clone(),
        scopes: principal.scopes().to_vec(),
        targets: principal
            .targets()
            .map(|targets| targets.iter().map(|t| t.as_str().to_owned()).collect())
            .unwrap_or_default(),
        created_at: None,
        created_by: None,
        source: "config".to_owned(),
        imported: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("chatgpt-3f1c"));
        assert!(valid_name("a.b_c"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn names_in_logs_are_bounded_and_escaped() {
        assert_eq!(loggable("a\nb\u{202e}"), "a\\u{a}b\\u{202e}");
        assert_eq!(loggable(&"x".repeat(10_000)).chars().count(), 65);
    }

    #[test]
    fn router_fields_become_json_pointers() {
        assert_eq!(pointer_of("invalid name: required"), "/name");
        assert_eq!(pointer_of("invalid targets[2]: bad"), "/targets/2");
    }
}
