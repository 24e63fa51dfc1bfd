//! The operations routes (`/healthz`, `/readyz`, `/metrics`) and the `grpc.health.v1` status
//! they agree with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tonic_health::ServingStatus;

use crate::storage::StorageHealth;

/// Readiness as both edges report it.
#[derive(Clone)]
pub(super) struct Readiness {
    /// False once draining.
    ready: Arc<AtomicBool>,
    /// The service's storage, when it has any: degraded storage is not ready either.
    storage: Option<StorageHealth>,
}

impl Readiness {
    /// Ready, as long as `storage` (when there is one) is healthy.
    pub(super) fn new(storage: Option<StorageHealth>) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(true)),
            storage,
        }
    }

    /// `/readyz` answers 503 `draining` from now on.
    pub(super) fn start_draining(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// `/healthz`, `/readyz` and `/metrics`, answering from `readiness`.
pub(super) fn routes(readiness: Readiness) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness)
}

/// Reports `status` in `grpc.health.v1` for the whole server (`""`) and each of `names`.
pub(super) async fn set_status(
    reporter: &tonic_health::server::HealthReporter,
    names: &[&'static str],
    status: ServingStatus,
) {
    for grpc_name in std::iter::once("").chain(names.iter().copied()) {
        reporter.set_service_status(grpc_name, status).await;
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    if !readiness.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned());
    }
    match readiness.storage.as_ref().and_then(StorageHealth::reason) {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {reason}"),
        ),
        None => (StatusCode::OK, "ready".to_owned()),
    }
}

/// Keeps `grpc.health.v1` in step with the storage health: NOT_SERVING while degraded, SERVING
/// again when it heals (the drain aborts this task before it reports NOT_SERVING for good).
pub(super) async fn follow_storage(
    storage: StorageHealth,
    reporter: tonic_health::server::HealthReporter,
    names: Vec<&'static str>,
) {
    let mut changes = storage.subscribe();
    loop {
        let status = if changes.borrow_and_update().is_some() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        set_status(&reporter, &names, status).await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::handle().render(),
    )
}
