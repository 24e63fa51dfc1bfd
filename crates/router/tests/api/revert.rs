//! `Revert`: the target's executor (one advertising `revert`) checks the revert patch with a
//! dry run; a clean check stores and queues `revert-<id>`, conflicts store nothing; asking
//! again is a replay; only a succeeded patch is reverted; Submit and DryRun refuse a revert
//! patch.

use std::time::Duration;

use ghost_proto::executor::v1::{DryRun, DryRunResult, Hello, Workspace, executor_message};
use ghost_proto::router::v1::{
    ApplyReport, DryRunRequest, EventsRequest, GetRequest, PatchStatus, Priority, RevertRequest,
    RevertResponse, SubmitRequest,
};

use crate::helpers::{
    PATIENCE, RecordingAlerter, TestExecutor, TestRouter, config, metric_becomes, patch,
    spawn_router, submit, wait_for_status,
};

crate::on_both_stores!(
    a_checked_revert_of_a_committed_patch_is_queued_once_and_audited,
    two_reverts_at_once_ask_the_executor_once_and_store_one_patch,
    conflicts_store_nothing_and_are_answered_sorted,
    only_a_succeeded_known_patch_is_reverted,
    no_executor_advertising_revert_is_a_failed_precondition_naming_the_target,
    an_older_executor_is_never_assigned_a_revert_patch_but_still_gets_the_others,
    a_revert_no_connected_executor_can_apply_raises_revert_waiting_until_one_can,
    a_revert_call_cut_by_its_deadline_leaves_no_lock_entry_behind,
    submit_and_dry_run_refuse_a_revert_patch,
    a_submitted_patch_may_not_take_a_revert_id_in_any_case,
);

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// An executor that advertises `capabilities` for MAIN.
async fn executor(router: &TestRouter, id: &str, capabilities: &[&str]) -> TestExecutor {
    TestExecutor::say_hello(
        router,
        Hello {
            executor_id: id.to_owned(),
            workspaces: vec![Workspace {
                target: "MAIN".to_owned(),
                root: "/ws/MAIN".to_owned(),
            }],
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            token: String::new(),
        },
    )
    .await
    .expect("work stream opens")
}

/// Submits `id` on MAIN and has `executor` end it `status` (with `commit_sha` when set).
async fn finished(
    router: &TestRouter,
    executor: &mut TestExecutor,
    id: &str,
    commit_message: &str,
    status: PatchStatus,
    commit_sha: &str,
) {
    let mut original = patch(id, "MAIN");
    original.commit_message = commit_message.to_owned();
    submit(router, original).await;
    let assign = executor.assignment().await;
    executor
        .report(
            &assign,
            ApplyReport {
                status: status as i32,
                error: if status == PatchStatus::Succeeded {
                    String::new()
                } else {
                    "test executor says no".to_owned()
                },
                commit_sha: commit_sha.to_owned(),
                ..ApplyReport::default()
            },
        )
        .await;
    wait_for_status(router, id, status).await;
}

fn ask(router: &TestRouter, id: &str, actor: &str) -> tokio::task::JoinHandle<RevertAnswer> {
    let mut client = router.client.clone();
    let request = RevertRequest {
        id: id.to_owned(),
        actor: actor.to_owned(),
    };
    tokio::spawn(async move {
        tokio::time::timeout(PATIENCE * 4, client.revert(request))
            .await
            .expect("revert answers")
            .map(tonic::Response::into_inner)
    })
}

type RevertAnswer = Result<RevertResponse, tonic::Status>;

async fn answer_of(call: tokio::task::JoinHandle<RevertAnswer>) -> RevertAnswer {
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("revert answered")
        .expect("task")
}

/// The next message must be a dry run; it is returned.
async fn dry_run_asked(executor: &mut TestExecutor) -> DryRun {
    match executor.next().await {
        ghost_proto::executor::v1::router_message::Kind::DryRun(request) => request,
        other => panic!("expected a dry run, got {other:?}"),
    }
}

async fn answer_dry_run(executor: &TestExecutor, request: &DryRun, report: ApplyReport) {
    executor
        .send(executor_message::Kind::DryRunResult(DryRunResult {
            request_id: request.request_id,
            report: Some(report),
        }))
        .await;
}

async fn metrics(router: &TestRouter) -> String {
    reqwest::get(format!("http://{}/metrics", router.http))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

async fn a_checked_revert_of_a_committed_patch_is_queued_once_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(
        &router,
        &mut exec,
        "orig",
        "Add the orig file\n\nWith a body.",
        PatchStatus::Succeeded,
        SHA,
    )
    .await;

    let call = ask(&router, "orig", "alice");
    let request = dry_run_asked(&mut exec).await;
    let revert = request.patch.clone().expect("the revert patch");
    assert_eq!(revert.id, "revert-orig");
    assert_eq!(revert.target, "MAIN");
    assert_eq!(revert.revert_of, "orig");
    assert_eq!(revert.revert_commit, SHA);
    assert_eq!(revert.priority, Priority::High as i32);
    assert!(revert.edits.is_empty() && revert.commands.is_empty());
    assert_eq!(
        revert.commit_message,
        format!("Revert \"Add the orig file\"\n\nThis reverts commit {SHA}.")
    );
    assert_eq!(revert.description, "Revert orig: test patch orig");
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            diff: "--- a/orig.txt\n+++ /dev/null\n".to_owned(),
            ..ApplyReport::default()
        },
    )
    .await;
    let answer = answer_of(call).await.expect("revert queued");
    assert!(answer.created);
    assert!(answer.conflicts.is_empty());
    let state = answer.state.expect("the revert patch's state");
    assert_eq!(state.id, "revert-orig");
    // Stored and queued through the normal path: the executor is assigned it.
    let assign = exec.assignment().await;
    let assigned = assign.patch.expect("patch");
    assert_eq!(assigned.id, "revert-orig");
    assert_eq!(assigned.revert_of, "orig");

    // The original's audit trail names the actor and the revert.
    let events = router
        .client
        .clone()
        .events(EventsRequest {
            id: "orig".to_owned(),
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|event| event.actor == "alice" && event.detail.contains("revert-orig")),
        "{events:?}"
    );

    // The revert patch's own trail starts with who asked, not the gateway that carried it.
    let events = router
        .client
        .clone()
        .events(EventsRequest {
            id: "revert-orig".to_owned(),
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    assert_eq!(
        events.first().map(|event| event.actor.as_str()),
        Some("alice"),
        "{events:?}"
    );

    // Asking again is a replay: no executor is asked, nothing new stored.
    let again = answer_of(ask(&router, "orig", "bob"))
        .await
        .expect("replay answered");
    assert!(!again.created);
    assert_eq!(again.state.expect("state").id, "revert-orig");
    exec.expect_silence(Duration::from_millis(300)).await;

    let text = metrics(&router).await;
    assert!(
        text.contains("ghost_router_reverts_total{outcome=\"queued\"} 1"),
        "{text}"
    );
}

async fn two_reverts_at_once_ask_the_executor_once_and_store_one_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(&router, &mut exec, "twice", "", PatchStatus::Succeeded, "").await;
    let first = ask(&router, "twice", "alice");
    let second = ask(&router, "twice", "bob");
    let request = dry_run_asked(&mut exec).await;
    let revert = request.patch.clone().expect("patch");
    assert!(revert.revert_commit.is_empty(), "no commit was made");
    assert!(revert.commit_message.is_empty(), "so the revert makes none");
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    let answers = [
        answer_of(first).await.expect("first"),
        answer_of(second).await.expect("second"),
    ];
    assert_eq!(
        answers.iter().filter(|answer| answer.created).count(),
        1,
        "{answers:?}"
    );
    for answer in &answers {
        assert_eq!(
            answer.state.as_ref().map(|state| state.id.as_str()),
            Some("revert-twice")
        );
    }
    // The executor is assigned the one revert patch and asked nothing else.
    assert_eq!(
        exec.assignment().await.patch.expect("patch").id,
        "revert-twice"
    );
    exec.expect_silence(Duration::from_millis(300)).await;
}

async fn conflicts_store_nothing_and_are_answered_sorted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(&router, &mut exec, "moved", "", PatchStatus::Succeeded, "").await;

    let call = ask(&router, "moved", "alice");
    let request = dry_run_asked(&mut exec).await;
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Rejected as i32,
            dry_run: true,
            error: "files changed since patch moved ended: src/b.ts, src/a.ts".to_owned(),
            conflicts: vec!["src/b.ts".to_owned(), "src/a.ts".to_owned()],
            ..ApplyReport::default()
        },
    )
    .await;
    let answer = answer_of(call).await.expect("an answer, not an error");
    assert!(answer.state.is_none(), "{answer:?}");
    assert!(!answer.created);
    assert_eq!(answer.conflicts, vec!["src/a.ts", "src/b.ts"]);
    assert!(answer.error.contains("src/a.ts"), "{}", answer.error);

    let missing = router
        .client
        .clone()
        .get(GetRequest {
            id: "revert-moved".to_owned(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    exec.expect_silence(Duration::from_millis(300)).await;

    // Another failed check is refused with the executor's error.
    let call = ask(&router, "moved", "alice");
    let request = dry_run_asked(&mut exec).await;
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Rejected as i32,
            dry_run: true,
            error: "the pre-images of patch moved are no longer kept".to_owned(),
            ..ApplyReport::default()
        },
    )
    .await;
    let refused = answer_of(call).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("no longer kept"),
        "{}",
        refused.message()
    );

    let text = metrics(&router).await;
    assert!(
        text.contains("ghost_router_reverts_total{outcome=\"conflict\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ghost_router_reverts_total{outcome=\"refused\"} 1"),
        "{text}"
    );
}

async fn only_a_succeeded_known_patch_is_reverted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(&router, &mut exec, "broke", "", PatchStatus::Failed, "").await;

    let refused = answer_of(ask(&router, "broke", "alice"))
        .await
        .expect_err("not succeeded");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("patch broke is failed: only a succeeded patch can be reverted"),
        "{}",
        refused.message()
    );
    let unknown = answer_of(ask(&router, "nobody-knows", "alice"))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let malformed = answer_of(ask(&router, "../etc", "alice"))
        .await
        .expect_err("malformed id");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    exec.expect_silence(Duration::from_millis(300)).await;
}

async fn no_executor_advertising_revert_is_a_failed_precondition_naming_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    // An executor that does dry runs but keeps no revert records.
    let mut older = executor(&router, "exec-older", &["dry_run"]).await;
    finished(&router, &mut older, "kept", "", PatchStatus::Succeeded, "").await;
    let refused = answer_of(ask(&router, "kept", "alice"))
        .await
        .expect_err("nobody can check the revert");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("MAIN"), "{}", refused.message());
    assert!(
        refused.message().contains("revert"),
        "{}",
        refused.message()
    );
    older.expect_silence(Duration::from_millis(300)).await;

    // With one that does, the check goes to it and never to the older one.
    let mut newer = executor(&router, "exec-newer", &["dry_run", "revert"]).await;
    let call = ask(&router, "kept", "alice");
    let request = dry_run_asked(&mut newer).await;
    answer_dry_run(
        &newer,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    assert!(answer_of(call).await.expect("queued").created);
    // The revert patch is applied by an executor that can: the newer one.
    assert_eq!(
        newer.assignment().await.patch.expect("patch").id,
        "revert-kept"
    );
    older.expect_silence(Duration::from_millis(300)).await;
}

async fn an_older_executor_is_never_assigned_a_revert_patch_but_still_gets_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut newer = executor(&router, "exec-newer", &["dry_run", "revert"]).await;
    finished(
        &router,
        &mut newer,
        "undo-me",
        "",
        PatchStatus::Succeeded,
        "",
    )
    .await;
    // Hold MAIN busy so the revert patch stays queued while the newer executor leaves.
    submit(&router, patch("busy", "MAIN")).await;
    let busy = newer.assignment().await;
    let call = ask(&router, "undo-me", "alice");
    let request = dry_run_asked(&mut newer).await;
    answer_dry_run(
        &newer,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    assert!(answer_of(call).await.expect("queued").created);
    newer.finish(&busy, PatchStatus::Succeeded).await;
    // The revert patch (priority high) goes to the newer executor right away.
    assert_eq!(
        newer.assignment().await.patch.expect("patch").id,
        "revert-undo-me"
    );
    drop(newer);
    wait_for_status(&router, "revert-undo-me", PatchStatus::Queued).await;

    // Only an older executor now: it gets the normal patch queued after the revert, never
    // the revert.
    let mut older = executor(&router, "exec-older", &["dry_run"]).await;
    submit(&router, patch("normal", "MAIN")).await;
    let assign = older.assignment().await;
    assert_eq!(assign.patch.as_ref().expect("patch").id, "normal");
    older.finish(&assign, PatchStatus::Succeeded).await;
    older.expect_silence(Duration::from_millis(300)).await;
    wait_for_status(&router, "revert-undo-me", PatchStatus::Queued).await;
}

async fn a_revert_no_connected_executor_can_apply_raises_revert_waiting_until_one_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    cfg.stale_after = Duration::from_millis(300);
    let router = spawn_router(cfg).await;
    let mut newer = executor(&router, "exec-newer", &["dry_run", "revert"]).await;
    finished(
        &router,
        &mut newer,
        "undo-me",
        "",
        PatchStatus::Succeeded,
        "",
    )
    .await;
    // Hold MAIN busy so the revert patch stays queued while the newer executor leaves.
    submit(&router, patch("busy", "MAIN")).await;
    let busy = newer.assignment().await;
    let call = ask(&router, "undo-me", "alice");
    let request = dry_run_asked(&mut newer).await;
    answer_dry_run(
        &newer,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    assert!(answer_of(call).await.expect("queued").created);
    let _ = busy;
    drop(newer);
    // Only an older executor serves MAIN: it is online (no queue_stale once it took `busy`),
    // but the revert patch waits for one advertising revert, and says so.
    let mut older = executor(&router, "exec-older", &["dry_run"]).await;
    let assign = older.assignment().await;
    assert_eq!(assign.patch.as_ref().expect("patch").id, "busy");
    older.finish(&assign, PatchStatus::Succeeded).await;
    let raised = alerter.wait_for("revert_waiting/MAIN", false).await;
    assert_eq!(
        raised.labels.get("target").map(String::as_str),
        Some("MAIN")
    );
    wait_for_status(&router, "revert-undo-me", PatchStatus::Queued).await;

    // One that can connects: resolved, and it is assigned the revert.
    let mut newest = executor(&router, "exec-newest", &["dry_run", "revert"]).await;
    alerter.wait_for("revert_waiting/MAIN", true).await;
    assert_eq!(
        newest.assignment().await.patch.expect("patch").id,
        "revert-undo-me"
    );
    let changes: Vec<bool> = alerter
        .received()
        .into_iter()
        .filter(|alert| alert.key == "revert_waiting/MAIN")
        .map(|alert| alert.resolved)
        .collect();
    assert_eq!(changes, [false, true], "raised once, resolved once");
    drop(older);
}

/// Waits (bounded) until the router's `ghost_router_reverts_checking` gauge reads `count`.
async fn reverts_checking(router: &TestRouter, count: f64) {
    metric_becomes(router.http, "ghost_router_reverts_checking", count).await;
}

async fn a_revert_call_cut_by_its_deadline_leaves_no_lock_entry_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(&router, &mut exec, "cut", "", PatchStatus::Succeeded, "").await;
    // The caller gives up (a gateway deadline, a client gone) while the executor still checks.
    let mut request = tonic::Request::new(RevertRequest {
        id: "cut".to_owned(),
        actor: "alice".to_owned(),
    });
    request.set_timeout(Duration::from_millis(500));
    let mut client = router.client.clone();
    let call = tokio::spawn(async move { client.revert(request).await });
    let _unanswered = dry_run_asked(&mut exec).await;
    reverts_checking(&router, 1.0).await;
    let cut = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the deadline cuts the call")
        .expect("task")
        .expect_err("cut");
    assert!(
        matches!(
            cut.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{cut:?}"
    );
    reverts_checking(&router, 0.0).await;
    // Asking again is checked afresh and queued.
    let again = ask(&router, "cut", "alice");
    let request = dry_run_asked(&mut exec).await;
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    assert!(answer_of(again).await.expect("queued").created);
    reverts_checking(&router, 0.0).await;
}

async fn submit_and_dry_run_refuse_a_revert_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let forged = ghost_proto::router::v1::Patch {
        id: "revert-someone".to_owned(),
        target: "MAIN".to_owned(),
        revert_of: "someone".to_owned(),
        ..ghost_proto::router::v1::Patch::default()
    };
    let refused = router
        .client
        .clone()
        .submit(SubmitRequest {
            patch: Some(forged.clone()),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("Revert"),
        "{}",
        refused.message()
    );
    let refused = router
        .client
        .clone()
        .dry_run(DryRunRequest {
            patch: Some(forged),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("Revert"),
        "{}",
        refused.message()
    );
}

async fn a_submitted_patch_may_not_take_a_revert_id_in_any_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut exec = executor(&router, "exec-revert", &["dry_run", "revert"]).await;
    finished(&router, &mut exec, "target", "", PatchStatus::Succeeded, "").await;
    for id in ["revert-target", "REVERT-target", "Revert-other"] {
        let refused = router
            .client
            .clone()
            .submit(SubmitRequest {
                patch: Some(patch(id, "MAIN")),
                ..Default::default()
            })
            .await
            .expect_err("a revert id is the router's");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{id}");
        assert!(
            refused.message().contains("reserved"),
            "{id}: {}",
            refused.message()
        );
    }
    // Nothing was stored under the id: the revert of `target` is checked and queued as usual.
    let call = ask(&router, "target", "alice");
    let request = dry_run_asked(&mut exec).await;
    answer_dry_run(
        &exec,
        &request,
        ApplyReport {
            status: PatchStatus::Succeeded as i32,
            dry_run: true,
            ..ApplyReport::default()
        },
    )
    .await;
    let answer = answer_of(call).await.expect("revert queued");
    assert!(answer.created);
    let state = answer.state.expect("state");
    assert_eq!(state.id, "revert-target");
    assert_eq!(state.target, "MAIN");
}
