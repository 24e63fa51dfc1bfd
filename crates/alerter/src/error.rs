//! [`AlerterError`] and its single mapping to `tonic::Status`.

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
    /// The delivery queue is closed because the service is stopping.
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
            AlerterError::ShuttingDown => Self::unavailable(err.to_string()),
        }
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
    }
}
