//! Only the session holding a lease moves its patch: a Result, Progress or heartbeat from any
//! other session (another token's executor, a guessed or zero fencing token) changes nothing.

use ghost_proto::executor::v1::{Heartbeat, Progress, Result as WorkResult, executor_message};
use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
use ghost_proto::router::v1::{ApplyReport, CreateExecutorTokenRequest, PatchStatus};

use crate::helpers::{
    TestExecutor, TestRouter, config, patch, spawn_router, state, submit, wait_for_status,
};

crate::on_both_stores!(an_other_token_cannot_finish_or_move_a_main_patch,);

async fn secret(router: &TestRouter, name: &str, target: &str) -> String {
    ExecutorTokenServiceClient::new(router.channel.clone())
        .create_executor_token(CreateExecutorTokenRequest {
            name: name.to_owned(),
            targets: vec![target.to_owned()],
            actor: "admin".to_owned(),
        })
        .await
        .expect("token created")
        .into_inner()
        .secret
}

fn forged_result(id: &str, fencing_token: u64, status: PatchStatus) -> executor_message::Kind {
    executor_message::Kind::Result(WorkResult {
        patch_id: id.to_owned(),
        attempt: 1,
        fencing_token,
        report: Some(ApplyReport {
            status: status as i32,
            ..ApplyReport::default()
        }),
        traceparent: String::new(),
    })
}

fn forged_progress(id: &str, fencing_token: u64) -> executor_message::Kind {
    executor_message::Kind::Progress(Progress {
        patch_id: id.to_owned(),
        fencing_token,
        status: PatchStatus::Applying as i32,
        detail: "forged".to_owned(),
    })
}

/// Sends `forgeries` on `forger`'s stream, then finishes a patch of its own: once that one
/// has succeeded, the stream's reader has handled every forgery before it.
async fn forge(
    router: &TestRouter,
    forger: &mut TestExecutor,
    forgeries: Vec<executor_message::Kind>,
    marker: &str,
) {
    for forgery in forgeries {
        forger.send(forgery).await;
    }
    submit(router, patch(marker, "OTHER")).await;
    let own = forger.assignment().await;
    forger.finish(&own, PatchStatus::Succeeded).await;
    wait_for_status(router, marker, PatchStatus::Succeeded).await;
}

async fn an_other_token_cannot_finish_or_move_a_main_patch() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let main_secret = secret(&router, "main-box", "MAIN").await;
    let other_secret = secret(&router, "other-box", "OTHER").await;
    submit(&router, patch("main-work", "MAIN")).await;
    let mut forger = TestExecutor::connect_with(&router, "other", &["OTHER"], &other_secret)
        .await
        .expect("its own target");

    // Queued: its fencing token is 0, its owner nobody.
    forge(
        &router,
        &mut forger,
        vec![
            forged_result("main-work", 0, PatchStatus::Succeeded),
            forged_result("main-work", 1, PatchStatus::Succeeded),
            forged_progress("main-work", 0),
            forged_result("main-work", 0, PatchStatus::Interrupted),
        ],
        "own-1",
    )
    .await;
    let queued = state(&router, "main-work").await;
    assert_eq!(queued.status, PatchStatus::Queued as i32, "{queued:?}");
    assert_eq!(queued.attempt, 0, "{queued:?}");

    // Leased to MAIN's executor: even the right token from another session is refused.
    let mut main = TestExecutor::connect_with(&router, "main", &["MAIN"], &main_secret)
        .await
        .expect("its own target");
    let assign = main.assignment().await;
    assert_eq!(assign.patch.as_ref().unwrap().id, "main-work");
    forge(
        &router,
        &mut forger,
        vec![
            forged_progress("main-work", assign.fencing_token),
            forged_result("main-work", assign.fencing_token, PatchStatus::Succeeded),
            forged_result("main-work", 0, PatchStatus::Failed),
            executor_message::Kind::Heartbeat(Heartbeat {
                fencing_tokens: vec![0, assign.fencing_token],
            }),
        ],
        "own-2",
    )
    .await;
    let leased = state(&router, "main-work").await;
    assert_eq!(leased.status, PatchStatus::Leased as i32, "{leased:?}");

    main.finish(&assign, PatchStatus::Succeeded).await;
    wait_for_status(&router, "main-work", PatchStatus::Succeeded).await;
}
