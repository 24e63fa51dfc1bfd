//! `Wait`: answers as soon as a patch ends (woken by the router's own commit), the current
//! state when the wait is over, NOT_FOUND for an unknown patch; a cancelled call frees its
//! waiter. And `DryRun`: sent to a session serving the target, answered only by that session,
//! nothing stored.

use std::time::{Duration, Instant};

use ghost_proto::executor::v1::{DryRunResult, executor_message, router_message};
use ghost_proto::router::v1::{
    ApplyReport, DryRunRequest, EventsRequest, GetRequest, PatchState, PatchStatus, WaitRequest,
};

use crate::helpers::{
    PATIENCE, TestExecutor, TestRouter, cancel, config, metric_becomes, patch, spawn_router, submit,
};

crate::on_both_stores!(
    a_waiting_call_answers_the_terminal_state_as_soon_as_the_patch_ends,
    a_wait_that_runs_out_answers_the_current_state_and_unknown_ids_are_not_found,
    a_dependent_failed_with_its_dependency_wakes_its_waiter,
    a_call_given_up_by_its_client_frees_its_waiter,
    a_dry_run_is_answered_by_the_asked_session_only_and_stores_nothing,
    a_dry_run_goes_only_to_an_executor_that_advertises_it,
);

async fn wait(router: &TestRouter, id: &str, wait_ms: u32) -> Result<PatchState, tonic::Status> {
    let answer = tokio::time::timeout(
        PATIENCE + Duration::from_secs(60),
        router.client.clone().wait(WaitRequest {
            id: id.to_owned(),
            wait_ms,
        }),
    )
    .await
    .expect("wait answers within its own bound");
    answer.map(|response| response.into_inner().state.expect("state"))
}

/// The `ghost_router_waiters` gauge, polled (bounded) until it reads `expected`.
async fn waiters_become(router: &TestRouter, expected: f64) {
    metric_becomes(router.http, "ghost_router_waiters", expected).await;
}

async fn a_waiting_call_answers_the_terminal_state_as_soon_as_the_patch_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut executor = TestExecutor::connect(&router, "exec-wait", &["MAIN"]).await;
    submit(&router, patch("waited-on", "MAIN")).await;
    let assign = executor.assignment().await;

    let waiting = {
        let router_client = router.client.clone();
        tokio::spawn(async move {
            let state = router_client
                .clone()
                .wait(WaitRequest {
                    id: "waited-on".to_owned(),
                    wait_ms: 30_000,
                })
                .await
                .expect("wait answers")
                .into_inner()
                .state
                .expect("state");
            (state, std::time::SystemTime::now())
        })
    };
    waiters_become(&router, 1.0).await;
    executor.finish(&assign, PatchStatus::Succeeded).await;
    let (state, answered_at) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the wait answered long before its 30 s")
        .expect("task");
    assert_eq!(state.status, PatchStatus::Succeeded as i32);
    let events = router
        .client
        .clone()
        .events(EventsRequest {
            id: "waited-on".to_owned(),
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    let ended_us = events
        .iter()
        .rev()
        .find(|event| event.status == "succeeded")
        .expect("the end event")
        .at_unix_us;
    let answered_us = answered_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    let latency_ms = (answered_us - ended_us) as f64 / 1000.0;
    eprintln!("wake latency (end event -> answer received): {latency_ms:.2} ms");
    assert!(latency_ms < 5_000.0, "woken {latency_ms} ms after the end");
    waiters_become(&router, 0.0).await;
}

async fn a_wait_that_runs_out_answers_the_current_state_and_unknown_ids_are_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("stays-queued", "NOBODY")).await;
    let began = Instant::now();
    let state = wait(&router, "stays-queued", 400).await.expect("answers");
    let took = began.elapsed();
    assert_eq!(state.status, PatchStatus::Queued as i32);
    assert!(
        took >= Duration::from_millis(380),
        "answered after {took:?}"
    );

    let status = wait(&router, "no-such-patch", 100)
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = wait(&router, "../bad id", 100).await.expect_err("bad id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Already terminal: at once, whatever the wait.
    cancel(&router, "stays-queued", "test").await;
    let began = Instant::now();
    let state = wait(&router, "stays-queued", 60_000)
        .await
        .expect("answers");
    assert_eq!(state.status, PatchStatus::Cancelled as i32);
    assert!(began.elapsed() < PATIENCE);
}

async fn a_dependent_failed_with_its_dependency_wakes_its_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut executor = TestExecutor::connect(&router, "exec-deps", &["MAIN"]).await;
    submit(&router, patch("first", "MAIN")).await;
    let mut dependent = patch("second", "OTHER");
    dependent.depends_on = vec!["first".to_owned()];
    submit(&router, dependent).await;
    let assign = executor.assignment().await;
    let waiting = {
        let client = router.client.clone();
        tokio::spawn(async move {
            client
                .clone()
                .wait(WaitRequest {
                    id: "second".to_owned(),
                    wait_ms: 30_000,
                })
                .await
        })
    };
    waiters_become(&router, 1.0).await;
    executor.finish(&assign, PatchStatus::Failed).await;
    let state = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("woken long before the wait is over")
        .expect("task")
        .expect("answer")
        .into_inner()
        .state
        .expect("state");
    assert_eq!(state.status, PatchStatus::Failed as i32, "{}", state.error);
}

async fn a_call_given_up_by_its_client_frees_its_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("nobody-runs-it", "NOBODY")).await;
    let client = router.client.clone();
    let waiting = tokio::spawn(async move {
        client
            .clone()
            .wait(WaitRequest {
                id: "nobody-runs-it".to_owned(),
                wait_ms: 60_000,
            })
            .await
    });
    waiters_become(&router, 1.0).await;
    waiting.abort();
    waiters_become(&router, 0.0).await;
}

async fn a_dry_run_is_answered_by_the_asked_session_only_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;

    let refused = router
        .client
        .clone()
        .dry_run(DryRunRequest {
            patch: Some(patch("dry", "MAIN")),
        })
        .await
        .expect_err("no executor serves MAIN");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("MAIN"), "{}", refused.message());

    let mut asked = TestExecutor::connect(&router, "exec-asked", &["MAIN"]).await;
    let client = router.client.clone();
    let answer = tokio::spawn(async move {
        client
            .clone()
            .dry_run(DryRunRequest {
                patch: Some(patch("dry", "MAIN")),
            })
            .await
    });
    let request = match asked.next().await {
        router_message::Kind::DryRun(request) => request,
        other => panic!("expected a dry run, got {other:?}"),
    };
    assert_eq!(request.patch.as_ref().map(|p| p.id.as_str()), Some("dry"));
    let report = |error: &str| ApplyReport {
        status: PatchStatus::Succeeded as i32,
        dry_run: true,
        diff: error.to_owned(),
        ..ApplyReport::default()
    };
    // Another session's answer to the same request id is dropped.
    let stranger = TestExecutor::connect(&router, "exec-stranger", &["MAIN"]).await;
    stranger
        .send(executor_message::Kind::DryRunResult(DryRunResult {
            request_id: request.request_id,
            report: Some(report("from the stranger")),
        }))
        .await;
    asked
        .send(executor_message::Kind::DryRunResult(DryRunResult {
            request_id: request.request_id,
            report: Some(report("from the asked")),
        }))
        .await;
    let got = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("answered")
        .expect("task")
        .expect("dry run ok")
        .into_inner()
        .report
        .expect("report");
    assert_eq!(got.diff, "from the asked");
    assert!(got.dry_run);

    let missing = router
        .client
        .clone()
        .get(GetRequest {
            id: "dry".to_owned(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

async fn a_dry_run_goes_only_to_an_executor_that_advertises_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    // An older executor: its Hello names no dry_run capability.
    let _older = TestExecutor::say_hello(
        &router,
        ghost_proto::executor::v1::Hello {
            executor_id: "exec-older".to_owned(),
            workspaces: vec![ghost_proto::executor::v1::Workspace {
                target: "MAIN".to_owned(),
                root: "/ws/MAIN".to_owned(),
            }],
            capabilities: vec!["write".to_owned(), "cancel".to_owned()],
            token: String::new(),
        },
    )
    .await
    .expect("work stream opens");
    let refused = tokio::time::timeout(
        PATIENCE,
        router.client.clone().dry_run(DryRunRequest {
            patch: Some(patch("dry-old", "MAIN")),
        }),
    )
    .await
    .expect("answered at once, not after the dry run deadline")
    .expect_err("the executor cannot dry-run");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("dry_run capability"),
        "{}",
        refused.message()
    );
}
