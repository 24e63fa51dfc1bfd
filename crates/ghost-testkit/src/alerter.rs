//! A recording alerter: a gRPC server speaking `AlerterService` that records every alert
//! change, for the tests of the services that raise alerts (the alerter has its own tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_server::{AlerterService, AlerterServiceServer};
use ghost_proto::alerter::v1::{AlertRequest, AlertResponse, NotifyRequest, NotifyResponse};
use tokio::sync::{Notify, oneshot};

use crate::grpc::serve_routes;

/// How long [`RecordingAlerter::wait_for`] waits for an alert change.
const PATIENCE: Duration = Duration::from_secs(10);

/// An alert change as the recording alerter received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAlert {
    /// The alert's key (`executor_lost/MAIN`).
    pub key: String,
    /// True when the change resolves the alert, false when it fires.
    pub resolved: bool,
    /// The labels sent with it.
    pub labels: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Recorder {
    alerts: Arc<Mutex<Vec<ReceivedAlert>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl AlerterService for Recorder {
    async fn notify(
        &self,
        _request: tonic::Request<NotifyRequest>,
    ) -> Result<tonic::Response<NotifyResponse>, tonic::Status> {
        Ok(tonic::Response::new(NotifyResponse { accepted: true }))
    }

    async fn alert(
        &self,
        request: tonic::Request<AlertRequest>,
    ) -> Result<tonic::Response<AlertResponse>, tonic::Status> {
        let request = request.into_inner();
        self.alerts.lock().unwrap().push(ReceivedAlert {
            key: request.key,
            resolved: request.resolved,
            labels: request.labels,
        });
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(AlertResponse { accepted: true }))
    }
}

/// A gRPC server speaking `AlerterService` on loopback that accepts every notification and
/// records every alert change; it stops when dropped.
pub struct RecordingAlerter {
    /// `http://127.0.0.1:PORT`, for a service's `alerter_url`.
    pub url: String,
    recorder: Recorder,
    _stop: oneshot::Sender<()>,
}

impl RecordingAlerter {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Starts on a given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorder = Recorder::default();
        let stop = serve_routes(
            tonic::service::Routes::new(AlerterServiceServer::new(recorder.clone())),
            listener,
        );
        Self {
            url,
            recorder,
            _stop: stop,
        }
    }

    /// Every alert change so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedAlert> {
        self.recorder.alerts.lock().unwrap().clone()
    }

    /// True once a change of `key` with `resolved` arrived.
    pub fn has(&self, key: &str, resolved: bool) -> bool {
        self.recorder
            .alerts
            .lock()
            .unwrap()
            .iter()
            .any(|alert| alert.key == key && alert.resolved == resolved)
    }

    /// Waits (10 s at most) until a change of `key` with `resolved` arrived.
    pub async fn wait_for(&self, key: &str, resolved: bool) -> ReceivedAlert {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let arrived = self.recorder.arrived.notified();
            if let Some(found) = self
                .received()
                .into_iter()
                .find(|alert| alert.key == key && alert.resolved == resolved)
            {
                return found;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "alert {key} (resolved={resolved}) never arrived; got {:?}",
                self.received()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), arrived).await;
        }
    }
}
