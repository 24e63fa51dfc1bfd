//! pause / resume: a paused target keeps its patches queued; resume lets them run.

use crate::helpers::{path_arg, spawn_system, write_patch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_targets_queue_and_resume_releases_it() {
    let system = spawn_system().await;

    let run = system.ghost(&["--json", "pause", "MAIN"]).await;
    run.expect(0);
    let view = run.json();
    assert_eq!(view["target"], "MAIN", "{view}");
    assert_eq!(view["paused"], true, "{view}");
    let run = system.ghost(&["targets"]).await;
    assert!(run.stdout.contains("paused"), "{run:?}");

    let file = system.file(
        "held.json",
        &write_patch("cli-held", "MAIN", "held.txt", "held\n"),
    );
    let run = system
        .ghost(&["--json", "submit", "--no-wait", &path_arg(&file)])
        .await;
    run.expect(0);
    assert_eq!(run.json()["id"], "cli-held");
    let targets = system.ghost(&["--json", "targets"]).await.json();
    let main = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "MAIN")
        .cloned()
        .unwrap();
    assert_eq!(main["paused"], true, "{targets}");
    assert_eq!(
        main["queued"], 1,
        "held in the queue while paused: {targets}"
    );

    let run = system.ghost(&["resume", "MAIN"]).await;
    run.expect(0);
    assert!(run.stdout.contains("running"), "{run:?}");
    system
        .wait_for("cli-held", "succeeded", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("held.txt")).unwrap(),
        "held\n"
    );

    let run = system.ghost(&["pause", "not a target"]).await;
    run.expect(10);
    assert!(run.stderr.contains("400"), "{run:?}");
}
