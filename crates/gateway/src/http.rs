//! The public HTTP API: thin axum handlers over [`Patches`], behind API-key authentication.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::patches::Patches;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The logic.
    pub patches: Patches,
    /// SHA-256 of the API key; compared in constant time.
    pub api_key_hash: [u8; 32],
    /// Body limit, for the error message.
    pub max_body_bytes: usize,
}

/// The public routes.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/v1/patches", post(submit))
        .route("/v1/patches/{id}", get(get_patch))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The presented key: `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(key) = value.strip_prefix("Bearer ")
    {
        return Some(key.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = presented_key(request.headers()) else {
        return GatewayError::Unauthorized.into_response();
    };
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if !bool::from(digest.ct_eq(&state.api_key_hash)) {
        tracing::warn!("request with a wrong API key refused");
        return GatewayError::Unauthorized.into_response();
    }
    next.run(request).await
}

fn check_content_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType(text.to_owned()))
    }
}

#[tracing::instrument(skip_all, fields(patch_id))]
async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    check_content_type(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::PayloadTooLarge(state.max_body_bytes)
        } else {
            GatewayError::BadRequest(rejection.body_text())
        }
    })?;
    let view = state.patches.submit_json(&body).await?;
    let location = format!("/v1/patches/{}", view.id);
    let body = json!({
        "id": view.id,
        "status": view.status,
        "attempt": view.attempt,
        "trace_id": view.trace_id,
        "replayed": !view.created,
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

#[tracing::instrument(skip_all, fields(patch_id = %id))]
async fn get_patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let detail = state.patches.detail(&id).await?;
    Ok(Json(detail).into_response())
}
