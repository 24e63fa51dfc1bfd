//! Priority, FIFO, depends_on, pause and resume.

use std::time::Duration;

use ghost_proto::router::v1::{PatchStatus, PauseRequest, Priority, ResumeRequest};

use crate::helpers::{
    PATIENCE, TestExecutor, config, patch, spawn_router, submit, wait_for_status,
};

crate::on_both_stores!(
    high_before_normal_before_low_and_fifo_within_a_priority,
    depends_on_waits_for_success_and_fails_fast_when_a_dependency_failed,
    pause_holds_the_queue_and_resume_releases_it,
    a_patch_waiting_on_another_targets_patch_runs_when_that_one_succeeds,
);

/// Takes and succeeds `count` assignments in turn; returns the patch ids in assignment order.
async fn run_in_order(executor: &mut TestExecutor, count: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..count {
        let assign = executor.assignment().await;
        order.push(assign.patch.as_ref().unwrap().id.clone());
        executor.finish(&assign, PatchStatus::Succeeded).await;
    }
    order
}

async fn high_before_normal_before_low_and_fifo_within_a_priority() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    for (id, priority) in [
        ("n1", Priority::Normal),
        ("l1", Priority::Low),
        ("h1", Priority::High),
        ("n2", Priority::Normal),
        ("h2", Priority::High),
        ("l2", Priority::Low),
        ("n3", Priority::Normal),
    ] {
        let mut p = patch(id, "MAIN");
        p.priority = priority as i32;
        submit(&router, p).await;
    }
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    let order = run_in_order(&mut executor, 7).await;
    assert_eq!(order, ["h1", "h2", "n1", "n2", "n3", "l1", "l2"]);
}

async fn depends_on_waits_for_success_and_fails_fast_when_a_dependency_failed() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut child = patch("child", "MAIN");
    child.depends_on = vec!["parent".to_owned()];
    submit(&router, child).await;
    submit(&router, patch("parent", "MAIN")).await;
    let mut grandchild = patch("grandchild", "MAIN");
    grandchild.depends_on = vec!["child".to_owned()];
    submit(&router, grandchild).await;

    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    // child was submitted first but must wait for parent.
    let order = run_in_order(&mut executor, 3).await;
    assert_eq!(order, ["parent", "child", "grandchild"]);

    // A dependency that fails fails its dependents, transitively, without running them.
    let mut doomed = patch("doomed-child", "MAIN");
    doomed.depends_on = vec!["bad-parent".to_owned()];
    submit(&router, doomed).await;
    let mut doomed_grandchild = patch("doomed-grandchild", "MAIN");
    doomed_grandchild.depends_on = vec!["doomed-child".to_owned()];
    submit(&router, doomed_grandchild).await;
    submit(&router, patch("bad-parent", "MAIN")).await;
    let assign = executor.assignment().await;
    assert_eq!(assign.patch.as_ref().unwrap().id, "bad-parent");
    executor.finish(&assign, PatchStatus::RolledBack).await;
    let failed = wait_for_status(&router, "doomed-child", PatchStatus::Failed).await;
    assert!(
        failed
            .error
            .contains("dependency bad-parent ended rolled_back"),
        "{}",
        failed.error
    );
    wait_for_status(&router, "doomed-grandchild", PatchStatus::Failed).await;
    executor
        .expect_silence(std::time::Duration::from_millis(300))
        .await;

    // A patch submitted after its dependency already failed fails at once.
    let mut late = patch("late-child", "MAIN");
    late.depends_on = vec!["bad-parent".to_owned()];
    let stored = submit(&router, late).await;
    assert_eq!(stored.status, PatchStatus::Failed as i32);
}

async fn pause_holds_the_queue_and_resume_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut client = router.client.clone();
    client
        .pause(PauseRequest {
            target: "MAIN".to_owned(),
            actor: "test".to_owned(),
        })
        .await
        .unwrap();
    submit(&router, patch("held", "MAIN")).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    executor
        .expect_silence(std::time::Duration::from_millis(300))
        .await;

    // The pause is durable: it holds across a restart.
    drop(executor);
    router.stop().await;
    let router = spawn_router(config(dir.path())).await;
    let mut executor = TestExecutor::connect(&router, "ex", &["MAIN"]).await;
    executor
        .expect_silence(std::time::Duration::from_millis(300))
        .await;

    router
        .client
        .clone()
        .resume(ResumeRequest {
            target: "MAIN".to_owned(),
            actor: "test".to_owned(),
        })
        .await
        .unwrap();
    let assign = tokio::time::timeout(PATIENCE, executor.assignment())
        .await
        .unwrap();
    assert_eq!(assign.patch.unwrap().id, "held");
}

async fn a_patch_waiting_on_another_targets_patch_runs_when_that_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut docs = TestExecutor::connect(&router, "docs-ex", &["DOCS"]).await;
    let mut main = TestExecutor::connect(&router, "main-ex", &["MAIN"]).await;
    let mut child = patch("docs-child", "DOCS");
    child.depends_on = vec!["main-parent".to_owned()];
    submit(&router, child).await;
    docs.expect_silence(Duration::from_millis(300)).await;

    submit(&router, patch("main-parent", "MAIN")).await;
    let parent = main.assignment().await;
    docs.expect_silence(Duration::from_millis(200)).await;
    main.finish(&parent, PatchStatus::Succeeded).await;

    // The MAIN completion wakes DOCS, which had nothing runnable before.
    let assigned = docs.assignment().await;
    assert_eq!(assigned.patch.unwrap().id, "docs-child");
}
