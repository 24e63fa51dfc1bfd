//! Storage health: a service whose disk refuses writes (full, I/O errors, a failed or stalled
//! fsync) is *degraded*, not broken. Its store reports each fault here and each write that
//! succeeds again; [`crate::serve`] turns the state into `/readyz` 503 with the reason and
//! `grpc.health.v1` NOT_SERVING, the gauge `ghost_storage_degraded{service}` and the counter
//! `ghost_storage_faults_total{service,kind}` follow it, and [`report_faults`] raises
//! `storage_unavailable/<service>` straight at the alerter (never through an outbox, which lives
//! on the failing disk), with the log as the fallback, and resolves it when the disk heals.
//!
//! The state is in memory on purpose: it describes this process's disk now, and a restarted
//! process finds out again with its first write.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::alerter::v1::{AlertRequest, Severity};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::propagation::TracedChannel;

/// The start of every gRPC `UNAVAILABLE` message a service sends because its storage is
/// degraded; what follows is the reason, written for people (no paths, no SQL).
pub const UNAVAILABLE_PREFIX: &str = "storage unavailable: ";

/// SQLite's primary result codes that mean the disk, not the query, failed.
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
/// `SQLITE_IOERR_FSYNC` and `SQLITE_IOERR_DIR_FSYNC` (extended codes).
const SQLITE_IOERR_FSYNC: i32 = SQLITE_IOERR | (4 << 8);
const SQLITE_IOERR_DIR_FSYNC: i32 = SQLITE_IOERR | (5 << 8);

/// What the disk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// No space left (ENOSPC, a quota, `SQLITE_FULL`).
    Full,
    /// A read or write failed (EIO, `SQLITE_IOERR_*`).
    Io,
    /// A flush to stable storage failed (`SQLITE_IOERR_FSYNC`): what was written may be lost.
    Fsync,
    /// A write or flush has not returned for longer than the service allows.
    Stall,
    /// The database server (PostgreSQL) does not answer: down, restarting, or out of reach.
    Unreachable,
}

impl FaultKind {
    /// The `kind` label and the alert's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Io => "io",
            Self::Fsync => "fsync",
            Self::Stall => "stall",
            Self::Unreachable => "unreachable",
        }
    }

    /// What happened, for people: completes "the <service>'s disk ...".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Full => "is full",
            Self::Io => "returns I/O errors",
            Self::Fsync => "failed to flush a write (fsync)",
            Self::Stall => "has not finished a write for several seconds",
            Self::Unreachable => "is unreachable",
        }
    }

    /// What holds the state: `disk` for the local faults, `database` for a server gone.
    pub fn medium(self) -> &'static str {
        match self {
            Self::Unreachable => "database",
            Self::Full | Self::Io | Self::Fsync | Self::Stall => "disk",
        }
    }

    /// The whole sentence for people: `the router's disk is full`, `the alerter's database is
    /// unreachable`.
    pub fn sentence(self, service: &str) -> String {
        format!("the {service}'s {} {}", self.medium(), self.describe())
    }

    /// The fault an SQLite extended result code reports, if it is a storage fault.
    pub fn from_sqlite_code(extended: i32) -> Option<Self> {
        match extended {
            SQLITE_IOERR_FSYNC | SQLITE_IOERR_DIR_FSYNC => Some(Self::Fsync),
            code if code & 0xff == SQLITE_FULL => Some(Self::Full),
            code if code & 0xff == SQLITE_IOERR => Some(Self::Io),
            _ => None,
        }
    }

    /// The fault a PostgreSQL SQLSTATE reports, if it is a storage fault: 53100 disk_full is
    /// `Full`; class 08 (connection exception), 57P01..57P03 (the server shutting down, crashed
    /// or starting) and 53300 (too many connections) are `Unreachable`; any other code is a
    /// failed query, not a fault of the storage.
    pub fn from_postgres_code(code: &str) -> Option<Self> {
        if code == "53100" {
            Some(Self::Full)
        } else if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
            Some(Self::Unreachable)
        } else {
            None
        }
    }

    /// The fault an I/O error reports, if it is a storage fault (ENOSPC, EDQUOT, EIO, EROFS).
    pub fn from_io(err: &std::io::Error) -> Option<Self> {
        if err.kind() == std::io::ErrorKind::StorageFull
            || err.kind() == std::io::ErrorKind::QuotaExceeded
        {
            return Some(Self::Full);
        }
        // EIO (5) and EROFS (30): a device that failed, or a file system remounted read-only
        // after an error.
        match err.raw_os_error() {
            Some(5 | 30) => Some(Self::Io),
            _ => None,
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fault a degraded service is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What the disk did first.
    pub kind: FaultKind,
    /// The underlying error, for logs and operators (may name paths; never sent to clients).
    pub detail: String,
    /// When the service became degraded (unix ms).
    pub since_ms: i64,
}

/// A service's storage health, shared by its store, its probes and its alert reporter. Cheap
/// to clone.
#[derive(Clone)]
pub struct StorageHealth {
    service: &'static str,
    state: Arc<watch::Sender<Option<Fault>>>,
}

impl std::fmt::Debug for StorageHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHealth")
            .field("service", &self.service)
            .field("fault", &*self.state.borrow())
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl StorageHealth {
    /// Healthy storage of `service`.
    pub fn new(service: &'static str) -> Self {
        metrics::gauge!("ghost_storage_degraded", "service" => service).set(0.0);
        Self {
            service,
            state: Arc::new(watch::Sender::new(None)),
        }
    }

    /// The service this is about.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Records a fault; true when it made the service degraded (it was healthy).
    pub fn fault(&self, kind: FaultKind, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        metrics::counter!("ghost_storage_faults_total", "service" => self.service, "kind" => kind.as_str())
            .increment(1);
        let newly = self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(Fault {
                kind,
                detail: detail.clone(),
                since_ms: now_ms(),
            });
            true
        });
        if newly {
            metrics::gauge!("ghost_storage_degraded", "service" => self.service).set(1.0);
            tracing::error!(
                service = self.service,
                kind = kind.as_str(),
                error = %detail,
                "storage fault: the service is degraded until a write succeeds again"
            );
        } else {
            tracing::warn!(service = self.service, kind = kind.as_str(), error = %detail, "storage fault");
        }
        newly
    }

    /// Records a write that reached stable storage; true when it ended a degraded state.
    pub fn healed(&self) -> bool {
        let mut ended = None;
        self.state.send_if_modified(|state| {
            ended = state.take();
            ended.is_some()
        });
        let Some(fault) = ended else {
            return false;
        };
        metrics::gauge!("ghost_storage_degraded", "service" => self.service).set(0.0);
        tracing::info!(
            service = self.service,
            kind = fault.kind.as_str(),
            degraded_ms = now_ms() - fault.since_ms,
            "storage healed: writes succeed again"
        );
        true
    }

    /// The fault the service is in, if degraded.
    pub fn fault_now(&self) -> Option<Fault> {
        self.state.borrow().clone()
    }

    /// True while degraded.
    pub fn is_degraded(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Changes of the state, for readiness and the alert reporter.
    pub fn subscribe(&self) -> watch::Receiver<Option<Fault>> {
        self.state.subscribe()
    }

    /// Why the service is degraded, for people and clients: `the router's disk is full`.
    pub fn reason(&self) -> Option<String> {
        self.fault_now()
            .map(|fault| fault.kind.sentence(self.service))
    }

    /// The gRPC `UNAVAILABLE` status a degraded service answers writes with, if degraded.
    pub fn unavailable(&self) -> Option<tonic::Status> {
        self.reason()
            .map(|reason| tonic::Status::unavailable(format!("{UNAVAILABLE_PREFIX}{reason}")))
    }
}

/// Where [`report_faults`] sends `storage_unavailable/<service>`.
pub type AlerterClient = AlerterServiceClient<TracedChannel>;

/// The first wait before sending an alert change again; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two tries of an alert change.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Raises `storage_unavailable/<service>` at the alerter each time the service becomes
/// degraded and resolves it when it heals, straight over gRPC (no outbox: it would sit on the
/// failing disk), retrying with backoff until the alerter has it; every change is logged
/// first, so with no alerter (or none reachable) the log still says it. Runs until `shutdown`.
pub async fn report_faults(
    health: StorageHealth,
    alerter: Option<AlerterClient>,
    shutdown: CancellationToken,
) {
    let mut changes = health.subscribe();
    let key = format!("storage_unavailable/{}", health.service);
    // What the alerter was last told: (firing, at_ms).
    let mut told_firing = false;
    let mut retry = FIRST_RETRY;
    loop {
        let fault = changes.borrow_and_update().clone();
        if fault.is_some() != told_firing {
            let request = alert_request(&health, &key, fault.as_ref());
            if fault.is_some() {
                tracing::error!(alert = %key, summary = %request.summary, "storage alert raised");
            } else {
                tracing::info!(alert = %key, summary = %request.summary, "storage alert resolved");
            }
            let sent = match &alerter {
                None => Ok(()),
                Some(client) => client.clone().alert(request).await.map(|_| ()),
            };
            match sent {
                Ok(()) => {
                    told_firing = fault.is_some();
                    retry = FIRST_RETRY;
                }
                Err(status) => {
                    tracing::warn!(alert = %key, error = %status, retry_in = ?retry, "cannot reach the alerter; the storage alert is retried");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                        // A change meanwhile is sent at once (a resolve need not wait).
                        _ = changes.changed() => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

fn alert_request(health: &StorageHealth, key: &str, fault: Option<&Fault>) -> AlertRequest {
    let service = health.service;
    match fault {
        Some(fault) => AlertRequest {
            key: key.to_owned(),
            resolved: false,
            severity: Severity::Critical as i32,
            summary: format!(
                "{}: it refuses new work (readiness 503) and retries its writes until they \
                 succeed",
                fault.kind.sentence(service)
            ),
            labels: [
                ("service".to_owned(), service.to_owned()),
                ("kind".to_owned(), fault.kind.as_str().to_owned()),
            ]
            .into_iter()
            .collect(),
            source: service.to_owned(),
            at_unix_ms: fault.since_ms,
        },
        None => AlertRequest {
            key: key.to_owned(),
            resolved: true,
            severity: Severity::Critical as i32,
            summary: format!("the {service}'s disk accepts writes again"),
            labels: [("service".to_owned(), service.to_owned())]
                .into_iter()
                .collect(),
            source: service.to_owned(),
            at_unix_ms: now_ms(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_of_a_full_disk_or_a_server_gone_are_faults_a_bad_query_is_not() {
        assert_eq!(
            FaultKind::from_postgres_code("53100"),
            Some(FaultKind::Full)
        );
        for gone in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert_eq!(
                FaultKind::from_postgres_code(gone),
                Some(FaultKind::Unreachable)
            );
        }
        for ours in ["22021", "23505", "42P01", ""] {
            assert_eq!(FaultKind::from_postgres_code(ours), None, "{ours}");
        }
        assert_eq!(
            FaultKind::Unreachable.sentence("router"),
            "the router's database is unreachable"
        );
    }

    #[test]
    fn sqlite_codes_that_are_storage_faults() {
        assert_eq!(FaultKind::from_sqlite_code(13), Some(FaultKind::Full));
        assert_eq!(FaultKind::from_sqlite_code(10), Some(FaultKind::Io));
        // SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC, SQLITE_IOERR_DIR_FSYNC.
        assert_eq!(
            FaultKind::from_sqlite_code(10 | (3 << 8)),
            Some(FaultKind::Io)
        );
        assert_eq!(FaultKind::from_sqlite_code(1034), Some(FaultKind::Fsync));
        assert_eq!(FaultKind::from_sqlite_code(1290), Some(FaultKind::Fsync));
        // SQLITE_CONSTRAINT, SQLITE_BUSY: the query's or another writer's, not the disk's.
        assert_eq!(FaultKind::from_sqlite_code(19), None);
        assert_eq!(FaultKind::from_sqlite_code(5), None);
    }

    #[test]
    fn io_errors_that_are_storage_faults() {
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(FaultKind::from_io(&full), Some(FaultKind::Full));
        let eio = std::io::Error::from_raw_os_error(5);
        assert_eq!(FaultKind::from_io(&eio), Some(FaultKind::Io));
        let missing = std::io::Error::from_raw_os_error(2);
        assert_eq!(FaultKind::from_io(&missing), None);
    }

    #[test]
    fn a_fault_degrades_once_and_a_write_heals() {
        let health = StorageHealth::new("router");
        assert!(!health.is_degraded());
        assert!(health.fault(FaultKind::Full, "database or disk is full"));
        assert!(
            !health.fault(FaultKind::Io, "disk I/O error"),
            "already degraded"
        );
        assert_eq!(health.fault_now().map(|f| f.kind), Some(FaultKind::Full));
        assert_eq!(
            health.reason().as_deref(),
            Some("the router's disk is full")
        );
        let status = health.unavailable().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().starts_with(UNAVAILABLE_PREFIX),
            "{status:?}"
        );
        assert!(health.healed());
        assert!(!health.healed(), "healed once");
        assert!(health.unavailable().is_none());
    }
}
