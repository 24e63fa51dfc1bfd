//! Leases: expiry with fencing, stream loss, the attempt limit, cancel, router restart.

use std::time::Duration;

use ghost_proto::router::v1::{EventsRequest, PatchStatus, RetryRequest};

use crate::helpers::{
    RecordingAlerter, TestExecutor, cancel, config, executors_connected, patch, spawn_router,
    state, submit, wait_for_status,
};

crate::on_both_stores!(
    an_expired_lease_goes_to_another_executor_and_the_late_result_is_refused,
    a_patch_whose_executors_keep_vanishing_ends_lost_with_an_alert_and_can_be_retried,
    cancel_of_a_running_patch_reaches_its_executor,
    attempts_in_flight_when_the_router_stops_are_interrupted_and_run_again,
    retry_is_refused_for_a_patch_that_is_queued_running_or_succeeded,
);

async fn an_expired_lease_goes_to_another_executor_and_the_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.lease_timeout = Duration::from_millis(600);
    let router = spawn_router(cfg).await;
    submit(&router, patch("slow", "MAIN")).await;

    let mut stuck = TestExecutor::connect(&router, "stuck", &["MAIN"]).await;
    let first = stuck.assignment().await;
    assert_eq!(first.attempt, 1);

    // A healthy executor joins and keeps heartbeating; the stuck one stays silent.
    let mut healthy = TestExecutor::connect(&router, "healthy", &["MAIN"]).await;
    healthy.keep_alive(Duration::from_millis(100));

    let cancel = stuck.cancellation().await;
    assert_eq!(cancel.fencing_token, first.fencing_token);
    assert_eq!(cancel.reason, "lease expired");

    let second = healthy.assignment().await;
    assert_eq!(second.patch.as_ref().unwrap().id, "slow");
    assert_eq!(second.attempt, 2);
    assert!(second.fencing_token > first.fencing_token);

    // The stuck executor wakes up and reports success for its old lease, then goes away: once
    // the router has ended its session it has handled the report (one stream, in order).
    stuck.finish(&first, PatchStatus::Succeeded).await;
    stuck.stop_sending();
    executors_connected(&router, "MAIN", 1).await;
    let during = state(&router, "slow").await;
    assert_eq!(during.status, PatchStatus::Leased as i32, "{during:?}");
    assert_eq!(during.attempt, 2);

    healthy.finish(&second, PatchStatus::Succeeded).await;
    let done = wait_for_status(&router, "slow", PatchStatus::Succeeded).await;
    assert_eq!(done.attempt, 2);

    let events = router
        .client
        .clone()
        .events(EventsRequest {
            id: "slow".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let trail: Vec<(String, u32)> = events
        .iter()
        .map(|event| (event.status.clone(), event.attempt))
        .collect();
    for pair in events.windows(2) {
        assert!(pair[0].at_unix_us <= pair[1].at_unix_us, "{events:?}");
    }
    for event in &events {
        assert_eq!(
            event.at_unix_us.div_euclid(1000),
            event.at_unix_ms,
            "{event:?}"
        );
    }
    assert!(
        events.iter().any(|event| event.at_unix_us % 1000 != 0),
        "times are kept to the microsecond: {events:?}"
    );
    assert!(
        trail.contains(&("interrupted".to_owned(), 1)),
        "attempt 1 is recorded as interrupted: {trail:?}"
    );
    assert_eq!(
        trail.last().unwrap(),
        &("succeeded".to_owned(), 2),
        "{trail:?}"
    );
}

async fn a_patch_whose_executors_keep_vanishing_ends_lost_with_an_alert_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.max_attempts = 2;
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg).await;
    submit(&router, patch("cursed", "MAIN")).await;

    for attempt in 1..=2 {
        let mut executor = TestExecutor::connect(&router, "flaky", &["MAIN"]).await;
        let assign = executor.assignment().await;
        assert_eq!(assign.attempt, attempt);
        drop(executor); // the stream breaks mid-attempt
        if attempt == 1 {
            wait_for_status(&router, "cursed", PatchStatus::Queued).await;
            alerter
                .wait_for("patch_interrupted/MAIN/cursed/1", false)
                .await;
        }
    }
    let lost = wait_for_status(&router, "cursed", PatchStatus::Lost).await;
    assert!(
        lost.error.contains("gave up after 2 attempts"),
        "{}",
        lost.error
    );
    let alert = alerter.wait_for("patch_lost/MAIN/cursed", false).await;
    assert_eq!(
        alert.labels.get("patch_id").map(String::as_str),
        Some("cursed")
    );

    // lost is the dead-letter state: an operator may retry, with a fresh attempt budget.
    let retried = router
        .client
        .clone()
        .retry(RetryRequest {
            id: "cursed".to_owned(),
            actor: "U123".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(retried.status, PatchStatus::Queued as i32);
    let mut executor = TestExecutor::connect(&router, "steady", &["MAIN"]).await;
    let assign = executor.assignment().await;
    assert_eq!(assign.attempt, 3);
    executor.finish(&assign, PatchStatus::Succeeded).await;
    wait_for_status(&router, "cursed", PatchStatus::Succeeded).await;
}

async fn cancel_of_a_running_patch_reaches_its_executor() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("long", "MAIN")).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    let assign = executor.assignment().await;

    let answer = cancel(&router, "long", "U42").await;
    assert_eq!(answer.status, PatchStatus::Leased as i32, "still running");
    let cancel = executor.cancellation().await;
    assert_eq!(cancel.patch_id, "long");
    assert_eq!(cancel.fencing_token, assign.fencing_token);
    assert_eq!(cancel.reason, "cancelled by U42");

    executor.finish(&assign, PatchStatus::Cancelled).await;
    wait_for_status(&router, "long", PatchStatus::Cancelled).await;
}

async fn attempts_in_flight_when_the_router_stops_are_interrupted_and_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("survivor", "MAIN")).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    let first = executor.assignment().await;
    router.stop().await;
    drop(executor);

    let router = spawn_router(config(dir.path())).await;
    let after = state(&router, "survivor").await;
    assert_eq!(after.status, PatchStatus::Queued as i32, "{after:?}");
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    let second = executor.assignment().await;
    assert_eq!(second.attempt, first.attempt + 1);
    executor.finish(&second, PatchStatus::Succeeded).await;
    wait_for_status(&router, "survivor", PatchStatus::Succeeded).await;
}

async fn retry_is_refused_for_a_patch_that_is_queued_running_or_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("busy", "MAIN")).await;
    let retry = |id: &str| {
        let mut client = router.client.clone();
        let id = id.to_owned();
        async move {
            client
                .retry(RetryRequest {
                    id,
                    actor: "U1".to_owned(),
                })
                .await
        }
    };
    let queued = retry("busy").await.unwrap_err();
    assert_eq!(queued.code(), tonic::Code::FailedPrecondition, "{queued}");
    assert!(queued.message().contains("busy is queued"), "{queued}");

    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    let assign = executor.assignment().await;
    let running = retry("busy").await.unwrap_err();
    assert_eq!(running.code(), tonic::Code::FailedPrecondition);
    executor.finish(&assign, PatchStatus::Succeeded).await;
    wait_for_status(&router, "busy", PatchStatus::Succeeded).await;
    let succeeded = retry("busy").await.unwrap_err();
    assert_eq!(succeeded.code(), tonic::Code::FailedPrecondition);
    let missing = retry("nobody").await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
