//! The router's errors and their single mapping to gRPC status codes.

use crate::store::StoreError;

/// Everything that can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The request is malformed; names the field.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such patch.
    #[error("patch {0} not found")]
    NotFound(String),
    /// The id is taken by a patch with other content.
    #[error("patch {0} already exists with different content")]
    Conflict(String),
    /// The operation does not fit the patch's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A result arrived for a lease that is no longer live.
    #[error("stale lease for patch {0}")]
    StaleLease(String),
    /// The executor did not prove it may take work; says why.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credential is valid but may not do this; says what.
    #[error("{0}")]
    PermissionDenied(String),
    /// A live executor token already has this name.
    #[error("a live executor token named {0} exists; revoke it first or choose another name")]
    TokenExists(String),
    /// No executor token has this name.
    #[error("executor token {0} not found")]
    TokenNotFound(String),
    /// The executor token was revoked already.
    #[error("executor token {0} is already revoked")]
    TokenRevoked(String),
    /// A runtime API key (or a gateway's config key) already has this name.
    #[error("a key named {0:?} exists already; names are unique")]
    ApiKeyExists(String),
    /// No runtime API key has this name.
    #[error("no api key is named {0:?}")]
    ApiKeyNotFound(String),
    /// The name is a key from the calling gateway's config.
    #[error("key {0:?} comes from the gateway's config; remove it there")]
    ApiKeyReserved(String),
    /// An import names keys whose secrets were revoked.
    #[error("api keys {0} were revoked: a revoked secret is never imported again")]
    ApiKeyRevoked(String),
    /// Too many calls of this kind at once; says which limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Nobody can serve the call now (no executor for the target, it went away); says why.
    #[error("{0}")]
    Unavailable(String),
    /// The call's own deadline passed; says what did not answer.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something the router needs is missing (no randomness, …).
    #[error("{0}")]
    Internal(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ghost_proto::convert::ConversionError> for RouterError {
    fn from(err: ghost_proto::convert::ConversionError) -> Self {
        Self::InvalidArgument {
            field: err.field,
            message: err.message,
        }
    }
}

impl From<RouterError> for tonic::Status {
    fn from(err: RouterError) -> Self {
        match &err {
            RouterError::InvalidArgument { .. } => Self::invalid_argument(err.to_string()),
            RouterError::NotFound(_) => Self::not_found(err.to_string()),
            RouterError::Conflict(_) => Self::already_exists(err.to_string()),
            RouterError::FailedPrecondition(_) | RouterError::StaleLease(_) => {
                Self::failed_precondition(err.to_string())
            }
            RouterError::Unauthenticated(_) => Self::unauthenticated(err.to_string()),
            RouterError::PermissionDenied(_) => Self::permission_denied(err.to_string()),
            RouterError::TokenExists(_) => Self::already_exists(err.to_string()),
            RouterError::TokenNotFound(_) => Self::not_found(err.to_string()),
            RouterError::TokenRevoked(_) => Self::failed_precondition(err.to_string()),
            RouterError::ApiKeyExists(_) => Self::already_exists(err.to_string()),
            RouterError::ApiKeyNotFound(_) => Self::not_found(err.to_string()),
            RouterError::ApiKeyReserved(_) | RouterError::ApiKeyRevoked(_) => {
                Self::failed_precondition(err.to_string())
            }
            RouterError::ResourceExhausted(_) => Self::resource_exhausted(err.to_string()),
            RouterError::Unavailable(_) => Self::unavailable(err.to_string()),
            RouterError::DeadlineExceeded(_) => Self::deadline_exceeded(err.to_string()),
            RouterError::Internal(inner) => {
                tracing::error!(error = %inner, "router internal error");
                Self::internal(err.to_string())
            }
            RouterError::Store(StoreError::Unavailable { reason, .. }) => Self::unavailable(
                format!("{}{reason}", ghost_runtime::storage::UNAVAILABLE_PREFIX),
            ),
            RouterError::Store(inner) => {
                tracing::error!(error = %inner, "router storage failed");
                Self::internal("internal storage error")
            }
        }
    }
}
