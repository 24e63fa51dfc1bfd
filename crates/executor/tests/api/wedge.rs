//! Issue 17, items 4 and 13: one bad patch must not wedge a target, and what the executor
//! reports (errors, rollback notes) names no absolute path of the server.

use std::fs;

use ghost_core::{ApplyReport, Status};
use ghost_proto::router::v1 as wire;

use crate::helpers::{RunningExecutor, TestWorkspace, patch, snapshot, workspace};

/// Every text of a report that reaches the router, the summary and Slack.
fn reported_text(report: &ApplyReport) -> String {
    let mut text = report.error.clone();
    if let Some(rollback) = &report.rollback {
        text.push('\n');
        text.push_str(&rollback.reason);
        text.push('\n');
        text.push_str(&rollback.error);
    }
    text
}

#[track_caller]
fn assert_no_server_paths(ws: &TestWorkspace, report: &ApplyReport) {
    let text = reported_text(report);
    let base = ws.root().parent().unwrap().display().to_string();
    for secret in [
        ws.root().display().to_string(),
        ws.ctx.workspace.state_dir.display().to_string(),
        base,
    ] {
        assert!(
            !text.contains(&secret),
            "the report names the server path {secret}: {text}"
        );
    }
}

/// A wire patch whose second edit writes `path`, as it could arrive over gRPC without passing
/// the gateway's validation.
fn wire_patch_writing(id: &str, path: &str) -> wire::Patch {
    let mut wire_patch = wire::Patch::from(&patch(
        id,
        r#""edits":[{"op":"write","path":"ok.txt","contents":"1"},{"op":"write","path":"placeholder","contents":"x"}]"#,
    ));
    match wire_patch.edits[1].op.as_mut() {
        Some(wire::edit::Op::Write(write)) => write.path = path.to_owned(),
        other => panic!("unexpected wire edit {other:?}"),
    }
    wire_patch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_255_bytes_is_refused_and_the_target_keeps_working() {
    let ws = workspace();
    ws.write("ok.txt", "0");
    let before = snapshot(ws.root());
    let mut executor = RunningExecutor::start(&ws).await;
    let long = "x".repeat(300);
    for path in [
        format!("new/{long}/f.txt"),
        long.clone(),
        format!("new/deeper/{long}"),
    ] {
        let report = executor
            .apply_wire(wire_patch_writing("too-long", &path))
            .await;
        // Refused before anything is touched, by ghost-core or by the executor's own check.
        assert_eq!(report.status, Status::Rejected, "{path}: {}", report.error);
        assert!(
            report.rollback.as_ref().is_none_or(|r| r.error.is_empty()),
            "{path}: {:?}",
            report.rollback
        );
        assert_no_server_paths(&ws, &report);
        assert_eq!(snapshot(ws.root()), before, "{path}");
    }
    let too_deep = vec!["d"; 2100].join("/");
    let report = executor
        .apply_wire(wire_patch_writing("too-deep", &too_deep))
        .await;
    assert_ne!(report.status, Status::Succeeded);
    assert_no_server_paths(&ws, &report);
    assert_eq!(snapshot(ws.root()), before);

    let normal = executor
        .apply(&patch(
            "normal",
            r#""edits":[{"op":"write","path":"ok.txt","contents":"2"}]"#,
        ))
        .await;
    assert_eq!(normal.status, Status::Succeeded, "{}", normal.error);
    assert_eq!(ws.read("ok.txt"), "2");
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_rolled_back_is_refused_loudly_without_server_paths() {
    let ws = workspace();
    ws.write("ok.txt", "0");
    let mut executor = RunningExecutor::start(&ws).await;
    // A journal left behind that cannot be read (a disk error, a person's edit): the executor
    // must neither guess at it nor hang, and must say why without naming its own paths.
    let journal = ws.ctx.workspace.state_dir.join("journal/MAIN.journal");
    fs::create_dir_all(journal.parent().unwrap()).unwrap();
    fs::write(&journal, "not a journal").unwrap();
    let refused = executor
        .apply(&patch(
            "blocked",
            r#""edits":[{"op":"write","path":"ok.txt","contents":"1"}]"#,
        ))
        .await;
    assert_ne!(refused.status, Status::Succeeded);
    assert!(refused.error.contains("journal"), "{}", refused.error);
    assert_no_server_paths(&ws, &refused);
    assert_eq!(ws.read("ok.txt"), "0");
    // Once a person has dealt with it, the target works again without a restart.
    fs::remove_file(&journal).unwrap();
    let next = executor
        .apply(&patch(
            "after",
            r#""edits":[{"op":"write","path":"ok.txt","contents":"2"}]"#,
        ))
        .await;
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
    executor.stop().await;
}
