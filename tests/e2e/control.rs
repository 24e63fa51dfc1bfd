//! Operator controls on the router: cancel a queued patch, pause and resume a target, retry.

use std::time::Duration;

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{CancelRequest, PauseRequest, ResumeRequest, RetryRequest};
use ghost_testkit::wait_for;
use tonic::transport::Channel;

use crate::helpers::{spawn_system, write_patch};

async fn router(test: &crate::helpers::TestSystem) -> RouterServiceClient<Channel> {
    let (grpc, _) = test.system.addr_of("router").unwrap();
    RouterServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cancelled_queued_patch_never_runs_and_still_gets_a_summary() {
    let mut test = spawn_system(false).await;
    assert_eq!(
        test.submit(&write_patch("cancel-me", "c.txt", "no"))
            .await
            .status()
            .as_u16(),
        202
    );
    let mut client = router(&test).await;
    client
        .cancel(CancelRequest {
            id: "cancel-me".into(),
            actor: "U123".into(),
        })
        .await
        .unwrap();
    let finished = test.wait_finished("cancel-me").await;
    assert_eq!(finished["status"], "cancelled", "{finished}");
    assert!(finished["summary"].as_str().unwrap().contains("cancel-me"));

    // An executor arriving later must not run it.
    test.system
        .add_executor(vec![("MAIN".to_owned(), test.workspace.clone())])
        .await
        .unwrap();
    assert_eq!(
        test.submit(&write_patch("after-cancel", "d.txt", "yes"))
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        test.wait_finished("after-cancel").await["status"],
        "succeeded"
    );
    assert!(!test.workspace.join("c.txt").exists());

    // Cancelling an ended patch is refused; retrying it queues a new attempt that runs.
    let err = client
        .cancel(CancelRequest {
            id: "after-cancel".into(),
            actor: "U123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let retried = client
        .retry(RetryRequest {
            id: "cancel-me".into(),
            actor: "U123".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(retried.state.is_some());
    let body = wait_for("the retry of cancel-me to succeed", async || {
        let (_, body) = test.get("cancel-me").await;
        if body["status"] == "succeeded" {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(
        body["attempt"], 1,
        "cancelled while queued never started an attempt: {body}"
    );
    assert_eq!(
        std::fs::read_to_string(test.workspace.join("c.txt")).unwrap(),
        "no"
    );
    let missing = client
        .cancel(CancelRequest {
            id: "no-such-patch".into(),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    test.system.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_paused_target_holds_its_queue_until_resumed() {
    let test = spawn_system(true).await;
    let mut client = router(&test).await;
    client
        .pause(PauseRequest {
            target: "MAIN".into(),
            actor: "U123".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        test.submit(&write_patch("held", "held.txt", "later"))
            .await
            .status()
            .as_u16(),
        202
    );
    // Give a (wrongly) running queue every chance to hand it out, then check it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = test.get("held").await;
    assert_eq!(body["status"], "queued", "{body}");
    assert!(!test.workspace.join("held.txt").exists());
    client
        .resume(ResumeRequest {
            target: "MAIN".into(),
            actor: "U123".into(),
        })
        .await
        .unwrap();
    assert_eq!(test.wait_finished("held").await["status"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(test.workspace.join("held.txt")).unwrap(),
        "later"
    );
    let bad = client
        .pause(PauseRequest {
            target: "../etc".into(),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    test.system.shutdown().await.unwrap();
}
