//! Spawning the real summarizer on loopback, and a recording fake alerter.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_server::{AlerterService, AlerterServiceServer};
use ghost_proto::alerter::v1::{NotifyRequest, NotifyResponse};
use ghost_proto::router::v1::{ApplyReport, CommandReport, EditReport, PatchStatus};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::config::ServerConfig;
use summarizer::{App, SummarizerConfig};
use tokio::sync::{Notify, oneshot};
use tonic::transport::Channel;

/// A running summarizer; stops when dropped.
pub struct TestApp {
    pub client: SummarizerServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        (&mut self.task)
            .await
            .expect("summarizer task")
            .expect("summarizer run");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// Builds and runs the real summarizer over `data_dir` on ephemeral ports.
pub async fn spawn_summarizer(data_dir: &Path, alerter_url: Option<String>) -> TestApp {
    let config = SummarizerConfig {
        server: ServerConfig::ephemeral(),
        data_dir: data_dir.to_owned(),
        alerter_url,
        jaeger_url_template: "http://jaeger.test/trace/{trace_id}".to_owned(),
        ..SummarizerConfig::default()
    };
    let app = App::build(config).await.expect("build summarizer");
    let addr = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = SummarizerServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to summarizer");
    TestApp {
        client,
        stop: Some(stop),
        task,
    }
}

/// A record request for `patch_id` on MAIN.
pub fn record(patch_id: &str, attempt: u32, status: PatchStatus) -> RecordRequest {
    let succeeded = status == PatchStatus::Succeeded;
    RecordRequest {
        outcome: Some(Outcome {
            patch_id: patch_id.to_owned(),
            target: "MAIN".to_owned(),
            attempt,
            description: "make login faster".to_owned(),
            report: Some(ApplyReport {
                status: status as i32,
                error: if succeeded {
                    String::new()
                } else {
                    "validation failed: tsc exited 2".to_owned()
                },
                edits: vec![EditReport {
                    op: "replace".to_owned(),
                    path: "src/login.ts".to_owned(),
                    match_step: "exact".to_owned(),
                    added: 4,
                    removed: 2,
                    ..Default::default()
                }],
                commands: vec![CommandReport {
                    command: "tsc --noEmit".to_owned(),
                    exit_code: Some(if succeeded { 0 } else { 2 }),
                    duration_ms: 812,
                    output_tail: "done".to_owned(),
                    ..Default::default()
                }],
                duration_ms: 1_234,
                ..Default::default()
            }),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            created_unix_ms: 1_700_000_000_000,
            finished_unix_ms: 1_700_000_000_000 + i64::from(attempt) * 1_000,
        }),
    }
}

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<NotifyRequest>>,
    arrived: Notify,
}

#[derive(Clone, Default)]
struct RecordingAlerter {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl AlerterService for RecordingAlerter {
    async fn notify(
        &self,
        request: tonic::Request<NotifyRequest>,
    ) -> Result<tonic::Response<NotifyResponse>, tonic::Status> {
        self.received
            .requests
            .lock()
            .unwrap()
            .push(request.into_inner());
        self.received.arrived.notify_waiters();
        Ok(tonic::Response::new(NotifyResponse { accepted: true }))
    }

    async fn alert(
        &self,
        _request: tonic::Request<ghost_proto::alerter::v1::AlertRequest>,
    ) -> Result<tonic::Response<ghost_proto::alerter::v1::AlertResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the summarizer never raises system alerts",
        ))
    }
}

/// A fake alerter on a free loopback port that records every Notify; stops when dropped.
pub struct FakeAlerter {
    pub url: String,
    received: Arc<Received>,
    _stop: oneshot::Sender<()>,
}

impl FakeAlerter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let alerter = RecordingAlerter::default();
        let received = alerter.received.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AlerterServiceServer::new(alerter))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            url,
            received,
            _stop: stop,
        }
    }

    /// Waits (bounded) until at least `n` notifications arrived; returns what arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<NotifyRequest> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.received.arrived.notified();
            let now = self.received.requests.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.received.requests.lock().unwrap().clone();
            }
        }
    }
}
