//! The executor's errors. It serves no API of its own, so they end in logs and reconnects.

/// Why a session with the router ended or the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The router could not be reached.
    #[error("cannot reach the router: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The router refused or broke the stream.
    #[error("router stream failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// The executor's state dir failed: the session was ended to hand its leases back.
    #[error("the executor's state dir failed; its leases were handed back")]
    StorageDegraded,
    /// A standby target became active: the session is renewed to announce it.
    #[error("a workspace this executor was standby for is now its to serve")]
    TookOver,
    /// The router closed the stream.
    #[error("router closed the work stream")]
    Closed,
    /// The router URL or its CA file is unusable.
    #[error("{0}")]
    Router(String),
    /// A workspace in the config is unusable.
    #[error("workspace {target}: {message}")]
    Workspace {
        /// Its target name.
        target: String,
        /// What is wrong.
        message: String,
    },
}
