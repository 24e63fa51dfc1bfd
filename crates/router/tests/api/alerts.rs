//! Executor-lost and stale-queue alerts: raised once, resolved when the condition clears.

use std::time::Duration;

use ghost_proto::router::v1::{ApplyReport, PatchStatus, Rollback};

use crate::helpers::{
    RecordingAlerter, TestExecutor, config, executors_connected, metric_becomes, patch,
    spawn_router, submit,
};

crate::on_both_stores!(
    executor_lost_is_raised_when_the_last_executor_leaves_and_resolved_when_one_returns,
    a_queue_waiting_with_no_executor_raises_queue_stale_until_one_serves_it,
    alerts_raised_while_the_alerter_is_down_arrive_when_it_is_up,
    a_rollback_that_left_the_workspace_changed_raises_an_alert_until_a_patch_succeeds,
    the_workspace_not_restored_alert_is_resolved_by_a_success_after_a_router_restart,
);

async fn executor_lost_is_raised_when_the_last_executor_leaves_and_resolved_when_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg).await;

    let first = TestExecutor::connect(&router, "ex-1", &["MAIN"]).await;
    let second = TestExecutor::connect(&router, "ex-2", &["MAIN"]).await;
    drop(first);
    executors_connected(&router, "MAIN", 1).await;
    drop(second);
    let raised = alerter.wait_for("executor_lost/MAIN", false).await;
    assert_eq!(
        raised.labels.get("target").map(String::as_str),
        Some("MAIN")
    );
    // Raised when ex-2 left, not when ex-1 did (one executor still served MAIN then): a raise
    // then would have been the one sent, naming ex-1 (a firing alert is not raised again).
    let executor = raised.labels.get("executor").cloned().unwrap_or_default();
    assert!(executor.starts_with("ex-2#"), "{raised:?}");

    let _back = TestExecutor::connect(&router, "ex-3", &["MAIN"]).await;
    alerter.wait_for("executor_lost/MAIN", true).await;
    let changes: Vec<_> = alerter
        .received()
        .into_iter()
        .filter(|alert| alert.key == "executor_lost/MAIN")
        .map(|alert| alert.resolved)
        .collect();
    assert_eq!(changes, [false, true], "raised once, resolved once");
}

async fn a_queue_waiting_with_no_executor_raises_queue_stale_until_one_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    cfg.stale_after = Duration::from_millis(300);
    let router = spawn_router(cfg).await;

    submit(&router, patch("waiting", "DOCS")).await;
    let raised = alerter.wait_for("queue_stale/DOCS", false).await;
    assert_eq!(
        raised.labels.get("target").map(String::as_str),
        Some("DOCS")
    );

    let mut executor = TestExecutor::connect(&router, "ex", &["DOCS"]).await;
    let assign = executor.assignment().await;
    executor.finish(&assign, PatchStatus::Succeeded).await;
    alerter.wait_for("queue_stale/DOCS", true).await;
    let stale_changes = alerter
        .received()
        .into_iter()
        .filter(|alert| alert.key == "queue_stale/DOCS")
        .count();
    assert_eq!(stale_changes, 2, "raised once, resolved once");
}

async fn alerts_raised_while_the_alerter_is_down_arrive_when_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port for the alerter, then leave it closed for now.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(format!("http://127.0.0.1:{port}"));
    let router = spawn_router(cfg).await;
    let executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    drop(executor);
    // Raised, and waiting in the outbox, while the alerter is down.
    metric_becomes(router.http, "ghost_outbox_depth{outbox=\"alerts\"}", 1.0).await;

    let alerter = RecordingAlerter::start_on(port).await;
    let raised = alerter.wait_for("executor_lost/MAIN", false).await;
    assert_eq!(
        raised.labels.get("target").map(String::as_str),
        Some("MAIN")
    );
    drop(router);
}

async fn a_rollback_that_left_the_workspace_changed_raises_an_alert_until_a_patch_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;

    submit(&router, patch("breaks", "MAIN")).await;
    let assign = executor.assignment().await;
    executor
        .report(
            &assign,
            ApplyReport {
                status: PatchStatus::RolledBack as i32,
                error: "command \"false\" failed; the rollback could not restore everything"
                    .to_owned(),
                rollback: Some(Rollback {
                    restored: 1,
                    removed: 0,
                    reason: "command \"false\" failed".to_owned(),
                    error: "src/a.rs: Permission denied (os error 13)".to_owned(),
                }),
                ..ApplyReport::default()
            },
        )
        .await;
    let raised = alerter.wait_for("workspace_not_restored/MAIN", false).await;
    assert_eq!(
        raised.labels.get("patch_id").map(String::as_str),
        Some("breaks")
    );

    submit(&router, patch("after", "MAIN")).await;
    let assign = executor.assignment().await;
    executor.finish(&assign, PatchStatus::Succeeded).await;
    alerter.wait_for("workspace_not_restored/MAIN", true).await;
    let changes: Vec<_> = alerter
        .received()
        .into_iter()
        .filter(|alert| alert.key == "workspace_not_restored/MAIN")
        .map(|alert| alert.resolved)
        .collect();
    assert_eq!(changes, [false, true], "raised once, resolved once");
}

async fn the_workspace_not_restored_alert_is_resolved_by_a_success_after_a_router_restart() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg.clone()).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    submit(&router, patch("breaks", "MAIN")).await;
    let assign = executor.assignment().await;
    executor
        .report(
            &assign,
            ApplyReport {
                status: PatchStatus::RolledBack as i32,
                error: "the rollback could not restore everything".to_owned(),
                rollback: Some(Rollback {
                    restored: 0,
                    removed: 0,
                    reason: "command \"false\" failed".to_owned(),
                    error: "src/a.rs: Permission denied (os error 13)".to_owned(),
                }),
                ..ApplyReport::default()
            },
        )
        .await;
    alerter.wait_for("workspace_not_restored/MAIN", false).await;
    drop(executor);
    router.stop().await;

    // The restarted router knows nothing in memory; the firing alert is in its store.
    let router = spawn_router(cfg).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    submit(&router, patch("after", "MAIN")).await;
    let assign = executor.assignment().await;
    executor.finish(&assign, PatchStatus::Succeeded).await;
    alerter.wait_for("workspace_not_restored/MAIN", true).await;
    router.stop().await;
}
