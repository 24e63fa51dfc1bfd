//! An accepted patch survives a router restart and is applied once an executor connects.

use ghost_proto::router::v1::EventsRequest;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;

use crate::helpers::{spawn_system, write_patch};

#[tokio::test]
async fn a_patch_accepted_without_executor_survives_a_router_restart() {
    let mut test = spawn_system(false).await;
    let response = test
        .submit(&write_patch("durable-1", "kept.txt", "survived\n"))
        .await;
    assert_eq!(response.status().as_u16(), 202);

    // Router down: the gateway must refuse rather than accept and lose.
    let (grpc, http) = test.system.stop_service("router").await.unwrap();
    let refused = test.submit(&write_patch("while-down", "x.txt", "x")).await;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    // A new router over the same SQLite file, on the same address.
    test.system.start_router(grpc, http).await.unwrap();
    test.system
        .wait_ready(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let (code, body) = test.get("durable-1").await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(
        test.get("while-down").await.0,
        404,
        "a refused patch must not exist"
    );

    test.system
        .add_executor(vec![("MAIN".to_owned(), test.workspace.clone())])
        .await
        .unwrap();
    let finished = test.wait_finished("durable-1").await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["attempt"], 1, "applied once: {finished}");
    assert_eq!(
        std::fs::read_to_string(test.workspace.join("kept.txt")).unwrap(),
        "survived\n"
    );

    let mut router = RouterServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let events = router
        .events(EventsRequest {
            id: "durable-1".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "leased").count(),
        1,
        "leased exactly once: {statuses:?}"
    );
    assert_eq!(statuses.first(), Some(&"received"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"succeeded"), "{statuses:?}");
    test.system.shutdown().await.unwrap();
}
