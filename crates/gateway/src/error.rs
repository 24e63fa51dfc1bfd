//! The gateway's errors and their single mapping to HTTP problem documents (RFC 9457).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything the public API can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No or wrong API key.
    #[error("a valid API key is required (Authorization: Bearer <key> or X-Api-Key)")]
    Unauthorized,
    /// A signed webhook whose signature, timestamp or id is not acceptable.
    #[error("webhook refused: {0}")]
    BadSignature(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller's rate limit is spent.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    TooManyRequests {
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// Too many requests in flight, or one took too long: shed rather than queued in memory.
    #[error("the gateway is busy ({0}); retry later")]
    Overloaded(&'static str),
    /// The body is not well-formed JSON or YAML.
    #[error("malformed document at line {line}, column {column}: {message}")]
    MalformedBody {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The request could not be read at all.
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well-formed but invalid.
    #[error("{message}")]
    InvalidPatch {
        /// JSON pointer of the offending value.
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// One object of the document names the same key twice.
    #[error(
        "duplicate key {key:?}: first at {first:?}, again at {second:?} (line {line}, column {column}); each key may appear once"
    )]
    DuplicateKey {
        /// The key.
        key: String,
        /// JSON pointer of its first occurrence.
        first: String,
        /// JSON pointer of the repeat.
        second: String,
        /// 1-based line of the repeat.
        line: usize,
        /// 1-based column of the repeat.
        column: usize,
    },
    /// The patch names a target that is neither configured nor served by an executor.
    #[error("{0}")]
    UnknownTarget(crate::known_targets::UnknownTarget),
    /// Wrong content type.
    #[error("unsupported content type {0:?}; send application/json or application/yaml")]
    UnsupportedMediaType(String),
    /// Body over the limit.
    #[error("request body over the {0} byte limit")]
    PayloadTooLarge(usize),
    /// A document that would cost more than its parse budget (expanded size, aliases, depth).
    #[error("{0}")]
    DocumentTooLarge(String),
    /// A message carrying more patch blocks than one call may.
    #[error(
        "the message has {found} JSON/YAML blocks; at most {cap} are accepted per message, send the rest in another"
    )]
    TooManyPatches {
        /// Blocks found.
        found: usize,
        /// The configured cap (`max_patches_per_message`).
        cap: usize,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// A request body field is well-formed but not acceptable (names the JSON pointer).
    #[error("{message}")]
    InvalidRequest {
        /// JSON pointer of the offending value.
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// No such patch.
    #[error("patch {0} not found")]
    NotFound(String),
    /// No runtime API key has this name.
    #[error("api key {0} not found")]
    NoSuchApiKey(String),
    /// No executor token has this name.
    #[error("executor token {0} not found")]
    NoSuchExecutorToken(String),
    /// The id is taken by a patch with other content, or the patch is in the wrong state.
    #[error("{0}")]
    Conflict(String),
    /// A revert refused because files changed since the patch ended (nothing was queued).
    #[error("{error}")]
    RevertConflicts {
        /// The executor's explanation, naming the files.
        error: String,
        /// Workspace-relative paths changed since, sorted.
        conflicts: Vec<String>,
    },
    /// A feature needs an upstream the gateway was not configured with (names the setting).
    #[error("this gateway has no {0} configured; set it to enable this")]
    NotConfigured(&'static str),
    /// The router does not implement this yet.
    #[error("{0} is not available from this router version")]
    NotImplemented(&'static str),
    /// The router could not durably accept the patch; nothing was stored. When the router
    /// said why (its disk is full or failing), the detail says it too.
    #[error(
        "the patch queue is unavailable{}; nothing was stored, retry later",
        public_reason(.0)
    )]
    Unavailable(String),
    /// An unknown API key before the gateway's first snapshot of the runtime keys: it may be
    /// one the gateway has not learnt yet, so 503 (retry), not 401.
    #[error("the runtime api keys are not learnt from the router yet; retry shortly")]
    KeysNotLearnt,
    /// Nobody can answer a dry run now (no executor serving the target, too many at once, it
    /// did not answer in time); says which. Nothing was stored either way.
    #[error("{0}")]
    DryRunUnavailable(String),
    /// The router's answer to a revert was cut (the connection lost, the deadline passed):
    /// the revert may have been queued, so it is not "nothing was stored"; asking again is
    /// safe (a replay when it was). Says which revert.
    #[error("{0}")]
    RevertCut(String),
    /// A bug or an unexpected upstream answer.
    #[error("internal error")]
    Internal(String),
}

/// The part of an upstream failure a client may read: the reason a service gave for its
/// degraded storage (`: the router's disk is full`), written for people by that service;
/// nothing otherwise (an upstream's other messages stay in the log).
fn public_reason(detail: &str) -> String {
    let Some(at) = detail.find(ghost_runtime::storage::UNAVAILABLE_PREFIX) else {
        return String::new();
    };
    let reason: String = detail[at + ghost_runtime::storage::UNAVAILABLE_PREFIX.len()..]
        .chars()
        .take_while(|c| *c != ';' && !c.is_control())
        .take(200)
        .collect();
    format!(" ({})", reason.trim())
}

impl GatewayError {
    /// The HTTP status this error is answered with (JSON and dashboard alike).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MalformedBody { .. } | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidPatch { .. }
            | Self::InvalidRequest { .. }
            | Self::DuplicateKey { .. }
            | Self::UnknownTarget(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) | Self::DocumentTooLarge(_) | Self::TooManyPatches { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound(_) | Self::NoSuchExecutorToken(_) | Self::NoSuchApiKey(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) | Self::RevertConflicts { .. } => StatusCode::CONFLICT,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unavailable(_)
            | Self::DryRunUnavailable(_)
            | Self::RevertCut(_)
            | Self::KeysNotLearnt => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::BadSignature(_) => "bad-signature",
            Self::Forbidden(_) => "forbidden",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::Overloaded(_) => "overloaded",
            Self::MalformedBody { .. } => "malformed-document",
            Self::BadRequest(_) => "bad-request",
            Self::InvalidPatch { .. } => "invalid-patch",
            Self::InvalidRequest { .. } => "invalid-request",
            Self::DuplicateKey { .. } => "duplicate-key",
            Self::UnknownTarget(_) => "unknown-target",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::PayloadTooLarge(_) | Self::DocumentTooLarge(_) => "payload-too-large",
            Self::TooManyPatches { .. } => "too-many-patches",
            Self::BodyTimeout(_) => "body-timeout",
            Self::NotFound(_) | Self::NoSuchExecutorToken(_) | Self::NoSuchApiKey(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::RevertConflicts { .. } => "revert-conflicts",
            Self::NotImplemented(_) => "not-implemented",
            Self::NotConfigured(_) => "not-configured",
            Self::Unavailable(_) => "unavailable",
            Self::KeysNotLearnt => "keys-not-learnt",
            Self::DryRunUnavailable(_) => "dry-run-unavailable",
            Self::RevertCut(_) => "revert-cut",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<ghost_core::PatchError> for GatewayError {
    fn from(err: ghost_core::PatchError) -> Self {
        match err {
            ghost_core::PatchError::Syntax {
                line,
                column,
                message,
            } => Self::MalformedBody {
                line,
                column,
                message,
            },
            ghost_core::PatchError::Invalid { pointer, message } => {
                Self::InvalidPatch { pointer, message }
            }
            err @ ghost_core::PatchError::OverBudget { .. } => {
                Self::DocumentTooLarge(err.to_string())
            }
            ghost_core::PatchError::DuplicateKey {
                key,
                first,
                second,
                line,
                column,
            } => Self::DuplicateKey {
                key,
                first,
                second,
                line,
                column,
            },
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "type": format!("/problems/{}", self.slug()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        match &self {
            Self::InvalidPatch { pointer, .. } | Self::InvalidRequest { pointer, .. } => {
                body["pointer"] = json!(pointer)
            }
            Self::DuplicateKey {
                key,
                first,
                second,
                line,
                column,
            } => {
                body["pointer"] = json!(second);
                body["key"] = json!(key);
                body["pointers"] = json!([first, second]);
                body["line"] = json!(line);
                body["column"] = json!(column);
            }
            Self::UnknownTarget(unknown) => {
                body["pointer"] = json!("/target");
                body["known_targets"] = json!(unknown.known);
                body["nearest"] = json!(unknown.nearest);
            }
            Self::MalformedBody { line, column, .. } => {
                body["line"] = json!(line);
                body["column"] = json!(column);
            }
            Self::RevertConflicts { error, conflicts } => {
                body["error"] = json!(error);
                body["conflicts"] = json!(conflicts);
            }
            Self::Unavailable(detail) | Self::RevertCut(detail) => {
                tracing::warn!(error = %detail, "upstream unavailable");
            }
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unavailable(_)
            | Self::DryRunUnavailable(_)
            | Self::RevertCut(_)
            | Self::KeysNotLearnt => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Self::Overloaded(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TooManyRequests { retry_after_s } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
            }
            Self::Unauthorized | Self::BadSignature(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Maps an upstream gRPC failure for patch `id`.
pub fn from_upstream(id: &str, status: &tonic::Status) -> GatewayError {
    use tonic::Code;
    match status.code() {
        Code::AlreadyExists => GatewayError::Conflict(format!(
            "patch {id} already exists with different content; choose a new id"
        )),
        Code::Unimplemented => GatewayError::NotImplemented("this operation"),
        Code::NotFound => GatewayError::NotFound(id.to_owned()),
        Code::InvalidArgument => GatewayError::InvalidPatch {
            pointer: String::new(),
            message: status.message().to_owned(),
        },
        Code::FailedPrecondition => {
            GatewayError::Conflict(format!("patch {id}: {}", status.message()))
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            GatewayError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
        }
        other => GatewayError::Internal(format!("{other:?}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_router_with_a_full_disk_is_a_503_saying_why_with_retry_after() {
        let status = tonic::Status::unavailable(format!(
            "{}the router's disk is full",
            ghost_runtime::storage::UNAVAILABLE_PREFIX
        ));
        let response = from_upstream("p-1", &status).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            problem["detail"],
            "the patch queue is unavailable (the router's disk is full); nothing was stored, \
             retry later"
        );
    }

    #[test]
    fn other_upstream_failures_keep_their_text_out_of_the_detail() {
        let status = tonic::Status::unavailable("tcp connect error: 127.0.0.1:50051 refused");
        assert_eq!(
            from_upstream("p-1", &status).to_string(),
            "the patch queue is unavailable; nothing was stored, retry later"
        );
    }
}
