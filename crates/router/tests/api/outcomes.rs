//! Terminal outcomes reach the summarizer several at a time (their settles share commits),
//! each exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::router::v1::CancelRequest;
use ghost_proto::summarizer::v1::summarizer_service_server::{
    SummarizerService, SummarizerServiceServer,
};
use ghost_proto::summarizer::v1::{
    GetRequest, GetResponse, ListRequest, ListResponse, RecordRequest, RecordResponse,
};
use tokio::sync::oneshot;

use crate::helpers::{PATIENCE, config, patch, spawn_router, submit};

/// A summarizer that takes its time over every record and notes how many were in flight.
#[derive(Clone, Default)]
struct SlowSummarizer {
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    recorded: Arc<Mutex<HashMap<(String, u32), u32>>>,
}

#[tonic::async_trait]
impl SummarizerService for SlowSummarizer {
    async fn record(
        &self,
        request: tonic::Request<RecordRequest>,
    ) -> Result<tonic::Response<RecordResponse>, tonic::Status> {
        let outcome = request.into_inner().outcome.unwrap_or_default();
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self
            .recorded
            .lock()
            .unwrap()
            .entry((outcome.patch_id, outcome.attempt))
            .or_default() += 1;
        Ok(tonic::Response::new(RecordResponse { created: true }))
    }

    async fn get(
        &self,
        _request: tonic::Request<GetRequest>,
    ) -> Result<tonic::Response<GetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn list(
        &self,
        _request: tonic::Request<ListRequest>,
    ) -> Result<tonic::Response<ListResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn outcomes_are_delivered_several_at_a_time_and_each_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = SlowSummarizer::default();
    let (_stop, stopped) = oneshot::channel::<()>();
    let service = SummarizerServiceServer::new(summarizer.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    let router = spawn_router(cfg).await;

    // Queued with no executor, then cancelled: each ends at once with an outcome to deliver.
    let ids: Vec<String> = (0..12).map(|n| format!("outcome-{n}")).collect();
    for id in &ids {
        submit(&router, patch(id, "IDLE")).await;
    }
    for id in &ids {
        router
            .client
            .clone()
            .cancel(CancelRequest {
                id: id.clone(),
                actor: "test".to_owned(),
            })
            .await
            .unwrap();
    }

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while summarizer.recorded.lock().unwrap().len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} recorded",
            summarizer.recorded.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled rows are not sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recorded = summarizer.recorded.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            recorded.get(&(id.clone(), 0)),
            Some(&1),
            "{id}: {recorded:?}"
        );
    }
    assert_eq!(recorded.len(), ids.len(), "{recorded:?}");
    assert!(
        summarizer.most_in_flight.load(Ordering::SeqCst) >= 2,
        "outcomes went one at a time"
    );
}
