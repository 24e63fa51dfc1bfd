//! Claims on the outcomes outbox across router replicas on one PostgreSQL: a replica that dies
//! while delivering leaves its rows claimed; another replica leaves them alone until the claim
//! runs out (`outbox_claim_timeout`), then delivers each exactly once. PostgreSQL only (one
//! SQLite router has no replicas): skipped, with the reason printed, when it is not installed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::summarizer::v1::summarizer_service_server::{
    SummarizerService, SummarizerServiceServer,
};
use ghost_proto::summarizer::v1::{
    GetRequest, GetResponse, ListRequest, ListResponse, RecordRequest, RecordResponse,
};
use ghost_testkit::grpc::serve_routes;
use ghost_testkit::wait::wait_for;
use tokio::time::Instant;

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{CancelRequest, SubmitRequest};
use tonic::transport::Channel;

use crate::helpers::{POSTGRES, Postgres, config, outbox_settled, patch, spawn_router};

/// The claim timeout of both replicas in this test.
const CLAIM: Duration = Duration::from_secs(3);

/// A summarizer that never answers the first record of a patch (a delivery stalled until its
/// sender dies) and records the later ones; it counts every call, as it arrives.
#[derive(Clone, Default)]
struct StallingSummarizer {
    /// Calls per patch, and when the first came.
    calls: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
    /// Records answered per patch.
    recorded: Arc<Mutex<HashMap<String, u32>>>,
}

impl StallingSummarizer {
    fn calls(&self, id: &str) -> u32 {
        self.calls
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |(calls, _)| *calls)
    }

    fn recorded(&self) -> HashMap<String, u32> {
        self.recorded.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl SummarizerService for StallingSummarizer {
    async fn record(
        &self,
        request: tonic::Request<RecordRequest>,
    ) -> Result<tonic::Response<RecordResponse>, tonic::Status> {
        let id = request.into_inner().outcome.unwrap_or_default().patch_id;
        let first = {
            let mut calls = self.calls.lock().unwrap();
            let entry = calls.entry(id.clone()).or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.0 == 1
        };
        if first {
            std::future::pending::<()>().await;
        }
        *self.recorded.lock().unwrap().entry(id).or_default() += 1;
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

/// A router on a runtime of its own that is never told to stop: [`crash`] drops the runtime,
/// so nothing of it runs again (no drain, no claim released), as when its process dies.
async fn spawn_crashable_router(
    config: router::RouterConfig,
) -> (RouterServiceClient<Channel>, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the router");
    let (bound, address) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let app = router::App::build(config).await.expect("build router");
        let _ = bound.send(app.grpc_addr());
        let _ = app.run(std::future::pending::<()>()).await;
    });
    let addr = address.await.expect("the router bound its ports");
    let client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to router");
    (client, runtime)
}

/// Drops the runtime of a router from [`spawn_crashable_router`] without letting anything
/// of it run again.
fn crash(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_background();
}

/// Waits (bounded) until `done` holds, else fails naming `what` and what was recorded.
async fn wait_until(what: &str, summarizer: &StallingSummarizer, done: impl Fn() -> bool) {
    wait_for(what, async || {
        if done() {
            Ok(())
        } else {
            Err(summarizer.recorded())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_claimed_outcomes_are_taken_over_after_the_claim_timeout_once_each() {
    let Some(server) = Postgres::start_or_skip("outbox_claims::taken_over") else {
        return;
    };
    POSTGRES
        .scope(Some(server), dead_replica_claims_are_taken_over())
        .await;
}

async fn dead_replica_claims_are_taken_over() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = StallingSummarizer::default();
    let _stop = serve_routes(
        tonic::service::Routes::new(SummarizerServiceServer::new(summarizer.clone())),
        listener,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    cfg.outbox_claim_timeout = CLAIM;

    // Replica A claims the outcomes and sends them; the summarizer never answers.
    let (mut a, a_runtime) = spawn_crashable_router(cfg.clone()).await;
    let ids: Vec<String> = (0..4).map(|n| format!("claimed-{n}")).collect();
    for id in &ids {
        // Queued with no executor, then cancelled: each ends at once with an outcome.
        let submitted = SubmitRequest {
            patch: Some(patch(id, "IDLE")),
            ..Default::default()
        };
        a.submit(submitted).await.expect("submit accepted");
        let cancelled = CancelRequest {
            id: id.clone(),
            actor: "test".to_owned(),
        };
        a.cancel(cancelled).await.expect("cancel accepted");
    }
    wait_until("replica A sent every outcome", &summarizer, || {
        ids.iter().all(|id| summarizer.calls(id) == 1)
    })
    .await;
    let first_sent = summarizer
        .calls
        .lock()
        .unwrap()
        .values()
        .map(|(_, at)| *at)
        .min()
        .unwrap();
    // A dies with its deliveries out and its claims in the database.
    crash(a_runtime);

    // Replica B on the same database leaves them alone while A's claims hold ...
    let b = spawn_router(cfg).await;
    tokio::time::sleep_until(first_sent + CLAIM / 2).await;
    for id in &ids {
        assert_eq!(
            summarizer.calls(id),
            1,
            "{id} was sent again while replica A's claim held"
        );
    }
    // ... and delivers each once they ran out.
    wait_until(
        "replica B took over every claimed outcome",
        &summarizer,
        || summarizer.recorded().len() == ids.len(),
    )
    .await;
    // The claims were made just before the first sends (a margin for that).
    assert!(
        Instant::now() >= first_sent + CLAIM - CLAIM / 4,
        "taken over before the claim ran out"
    );
    // Settled as delivered: no row can be claimed, so nothing is sent a third time.
    outbox_settled(&b, "outcomes").await;
    let recorded = summarizer.recorded();
    for id in &ids {
        assert_eq!(recorded.get(id), Some(&1), "{id}: {recorded:?}");
        assert_eq!(summarizer.calls(id), 2, "{id}: sent by A, then once by B");
    }
    b.stop().await;
}
