//! [`SummarizerError`] and its single mapping to `tonic::Status`.

use std::path::PathBuf;

use ghost_runtime::storage::FaultKind;

/// What can go wrong in the summarizer.
#[derive(Debug, thiserror::Error)]
pub enum SummarizerError {
    /// The caller sent something invalid; `field` names it.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The request field, e.g. `outcome.patch_id`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No summary exists for this patch.
    #[error("no summary for patch {0}")]
    NotFound(String),
    /// A summary file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored summary is not valid JSON for this version.
    #[error("cannot parse {path}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The SQLite index failed.
    #[error("summary index failed")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL index failed (a query, or the server is gone).
    #[error("summary database failed")]
    Pg(#[from] sqlx::Error),
    /// The store cannot be used as configured (a bad `store.url`, a schema newer than this
    /// binary).
    #[error("{0}")]
    Store(String),
    /// A blocking task died (panicked or was cancelled).
    #[error("storage task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The disk under the store refuses writes (full, I/O errors, a failed fsync): the service
    /// is degraded; the reason is for people (no paths, no SQL).
    #[error("{prefix}{0}", prefix = ghost_runtime::storage::UNAVAILABLE_PREFIX)]
    Unavailable(String),
}

impl SummarizerError {
    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The storage fault behind this error, if the disk (not the request) failed.
    pub fn storage_fault(&self) -> Option<FaultKind> {
        match self {
            Self::Db(rusqlite::Error::SqliteFailure(failure, _)) => {
                FaultKind::from_sqlite_code(failure.extended_code)
            }
            Self::Io { source, .. } => FaultKind::from_io(source),
            Self::Pg(err) => pg_fault(err),
            _ => None,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The storage fault a PostgreSQL error reports: the server gone or refusing connections
/// (`Unreachable`: "the summarizer's database is unreachable"), out of disk (`Full`); a failed
/// query of ours is no storage fault.
fn pg_fault(err: &sqlx::Error) -> Option<FaultKind> {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(FaultKind::Unreachable),
        sqlx::Error::Database(db) => FaultKind::from_postgres_code(&db.code().unwrap_or_default()),
        _ => None,
    }
}

impl From<SummarizerError> for tonic::Status {
    fn from(err: SummarizerError) -> Self {
        match &err {
            SummarizerError::InvalidArgument { .. } => Self::invalid_argument(err.to_string()),
            SummarizerError::NotFound(_) => Self::not_found(err.to_string()),
            SummarizerError::Unavailable(_) => Self::unavailable(err.to_string()),
            SummarizerError::Pg(_) if err.storage_fault().is_some() => {
                tracing::warn!(error = ?anyhow::Error::from(err), "summary database unavailable");
                Self::unavailable(format!(
                    "{}the summary database is unreachable",
                    ghost_runtime::storage::UNAVAILABLE_PREFIX
                ))
            }
            SummarizerError::Io { .. }
            | SummarizerError::Corrupt { .. }
            | SummarizerError::Db(_)
            | SummarizerError::Pg(_)
            | SummarizerError::Store(_)
            | SummarizerError::Task(_) => {
                tracing::error!(error = ?anyhow::Error::from(err), "summarizer internal error");
                Self::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_without_leaking_internals() {
        let status = tonic::Status::from(SummarizerError::invalid("outcome.patch_id", "bad"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("outcome.patch_id"));
        let status = tonic::Status::from(SummarizerError::NotFound("p1".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        let status = tonic::Status::from(SummarizerError::io(
            "/secret/place",
            std::io::Error::other("disk on fire"),
        ));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn a_postgres_server_gone_is_unreachable_not_a_disk_fault() {
        for gone in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert_eq!(pg_fault(&gone), Some(FaultKind::Unreachable), "{gone}");
        }
        assert_eq!(pg_fault(&sqlx::Error::RowNotFound), None);
    }
}
