//! Durable, idempotent submit.

use ghost_proto::router::v1::{ListRequest, PatchStatus, SubmitRequest};

use crate::helpers::{config, patch, spawn_router, state, submit};

crate::on_both_stores!(
    the_same_patch_twice_is_one_record_and_other_content_is_already_exists,
    concurrent_submits_are_all_stored_and_survive_a_restart,
    list_targets_reports_depth_pause_and_executor_presence,
    the_submitting_key_name_is_bounded_and_free_of_control_characters,
    intake_warnings_are_capped_in_count_and_length,
);

async fn the_same_patch_twice_is_one_record_and_other_content_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut client = router.client.clone();

    let first = client
        .submit(SubmitRequest {
            patch: Some(patch("same-1", "MAIN")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let again = client
        .submit(SubmitRequest {
            patch: Some(patch("same-1", "MAIN")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert!(!again.created, "an identical resubmit is a replay");
    assert_eq!(
        first.state.unwrap().content_hash,
        again.state.unwrap().content_hash
    );

    let mut other = patch("same-1", "MAIN");
    other.description = "different content".to_owned();
    let refused = client
        .submit(SubmitRequest {
            patch: Some(other),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);

    let listed = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .patches;
    assert_eq!(listed.len(), 1, "one record: {listed:?}");
    assert_eq!(listed[0].description, "test patch same-1");
}

async fn concurrent_submits_are_all_stored_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut handles = Vec::new();
    for n in 0..200 {
        let mut client = router.client.clone();
        handles.push(tokio::spawn(async move {
            client
                .submit(SubmitRequest {
                    patch: Some(patch(&format!("many-{n}"), "MAIN")),
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner().created)
        }));
    }
    for handle in handles {
        assert!(handle.await.unwrap().expect("accepted"), "each is new");
    }
    router.stop().await;

    let router = spawn_router(config(dir.path())).await;
    for n in 0..200 {
        let stored = state(&router, &format!("many-{n}")).await;
        assert_eq!(stored.status, PatchStatus::Queued as i32);
    }
    let again = submit(&router, patch("many-7", "MAIN")).await;
    assert_eq!(again.status, PatchStatus::Queued as i32);
}

async fn list_targets_reports_depth_pause_and_executor_presence() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("t-1", "MAIN")).await;
    submit(&router, patch("t-2", "MAIN")).await;
    let mut client = router.client.clone();
    client
        .pause(ghost_proto::router::v1::PauseRequest {
            target: "MAIN".to_owned(),
            actor: "test".to_owned(),
        })
        .await
        .unwrap();
    let _executor = crate::helpers::TestExecutor::connect(&router, "ex-a", &["MAIN", "DOCS"]).await;

    let targets = client
        .list_targets(ghost_proto::router::v1::ListTargetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .targets;
    let main = targets.iter().find(|t| t.target == "MAIN").expect("MAIN");
    assert_eq!(main.queued, 2);
    assert!(main.paused);
    assert!(main.executor_online);
    assert!(main.oldest_queued_unix_ms > 0);
    let docs = targets
        .iter()
        .find(|t| t.target == "DOCS")
        .expect("DOCS, served but empty");
    assert_eq!(docs.queued, 0);
    assert!(docs.executor_online);

    let executors = client
        .list_executors(ghost_proto::router::v1::ListExecutorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .executors;
    assert_eq!(executors.len(), 1);
    assert_eq!(executors[0].executor_id, "ex-a");
    let mut served = executors[0].targets.clone();
    served.sort();
    assert_eq!(served, ["DOCS", "MAIN"]);
}

async fn the_submitting_key_name_is_bounded_and_free_of_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut client = router.client.clone();
    for (id, name, says) in [
        ("named-1", "k".repeat(201), "at most 200 bytes"),
        (
            "named-2",
            "alice\nforged line".to_owned(),
            "control character",
        ),
    ] {
        let refused = client
            .submit(SubmitRequest {
                patch: Some(patch(id, "MAIN")),
                key_name: name,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("key_name"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains(says), "{}", refused.message());
    }
    let at_the_cap = client
        .submit(SubmitRequest {
            patch: Some(patch("named-3", "MAIN")),
            key_name: "k".repeat(200),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(at_the_cap.created);
}

async fn intake_warnings_are_capped_in_count_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut client = router.client.clone();

    let too_many = client
        .submit(SubmitRequest {
            patch: Some(patch("warned-1", "MAIN")),
            intake_warnings: vec!["line 1, column 1: a comment".to_owned(); 33],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(
        too_many.message().contains("intake_warnings"),
        "{}",
        too_many.message()
    );

    let too_long = client
        .submit(SubmitRequest {
            patch: Some(patch("warned-2", "MAIN")),
            intake_warnings: vec!["x".repeat(257)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    assert!(
        too_long.message().contains("intake_warnings/0"),
        "{}",
        too_long.message()
    );
    assert!(
        too_long.message().len() < 200,
        "the warning is not echoed: {}",
        too_long.message()
    );

    let at_the_caps = client
        .submit(SubmitRequest {
            patch: Some(patch("warned-3", "MAIN")),
            intake_warnings: vec!["y".repeat(256); 32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(at_the_caps.created);
    let listed = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .patches;
    assert_eq!(listed.len(), 1, "only the patch at the caps: {listed:?}");
}
