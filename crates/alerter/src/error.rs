//! [`AlerterError`] and its single mapping to `tonic::Status`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::signing::SignatureError;
use crate::store::StoreError;

/// What can go wrong in the alerter's API.
#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    /// The caller sent something invalid; `field` names it.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The request field, e.g. `patch_id`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No active alert has this key.
    #[error("no active alert {key}")]
    UnknownAlert {
        /// The key asked for.
        key: String,
    },
    /// The database failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StoreError),
    /// A Slack request failed signature verification.
    #[error("slack signature refused: {0}")]
    Signature(#[from] SignatureError),
    /// The service is stopping.
    #[error("the alerter is shutting down")]
    ShuttingDown,
}

impl AlerterError {
    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<AlerterError> for tonic::Status {
    fn from(err: AlerterError) -> Self {
        match &err {
            AlerterError::InvalidArgument { .. } => Self::invalid_argument(err.to_string()),
            AlerterError::UnknownAlert { .. } => Self::not_found(err.to_string()),
            AlerterError::Storage(inner @ StoreError::Unavailable(_)) => {
                Self::unavailable(inner.to_string())
            }
            AlerterError::Storage(_) => {
                tracing::error!(error = %err, "alerter storage failed");
                Self::internal("internal error")
            }
            AlerterError::Signature(_) => Self::unauthenticated(err.to_string()),
            AlerterError::ShuttingDown => Self::unavailable(err.to_string()),
        }
    }
}

impl IntoResponse for AlerterError {
    fn into_response(self) -> Response {
        let status = match &self {
            AlerterError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            AlerterError::UnknownAlert { .. } => StatusCode::NOT_FOUND,
            AlerterError::Signature(_) => StatusCode::UNAUTHORIZED,
            AlerterError::Storage(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            AlerterError::Storage(_) => {
                tracing::error!(error = %self, "alerter storage failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
            }
            AlerterError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let status = tonic::Status::from(AlerterError::invalid("patch_id", "bad"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("patch_id"));
        let status = tonic::Status::from(AlerterError::ShuttingDown);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let status = tonic::Status::from(AlerterError::UnknownAlert { key: "k".into() });
        assert_eq!(status.code(), tonic::Code::NotFound);
        let status = tonic::Status::from(AlerterError::Storage(StoreError::Corrupt(
            serde_json::from_str::<u8>("x").unwrap_err(),
        )));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
