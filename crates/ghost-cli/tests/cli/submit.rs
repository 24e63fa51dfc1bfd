//! `ghost submit`: exit code = outcome, progress on stderr, summary on stdout, and why a patch
//! failed; refusals with their JSON pointer; 401 and unreachable gateways with a hint.

use std::time::Duration;

use crate::helpers::{failing_patch, path_arg, spawn_system, write_patch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_succeeds_with_exit_0_from_json_yaml_and_stdin() {
    let system = spawn_system().await;

    let file = system.file(
        "ok.json",
        &write_patch("cli-ok", "MAIN", "ok.txt", "hello\n"),
    );
    let run = system.ghost(&["submit", &path_arg(&file)]).await;
    run.expect(0);
    assert!(run.stderr.contains("accepted cli-ok"), "{run:?}");
    assert!(
        run.stderr.contains("succeeded"),
        "progress shows the end: {run:?}"
    );
    assert!(run.stdout.contains("cli-ok"), "summary printed: {run:?}");
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("ok.txt")).unwrap(),
        "hello\n"
    );

    // A finished patch cannot be cancelled: refused (10) with the gateway's reason.
    let run = system.ghost(&["cancel", "cli-ok"]).await;
    run.expect(10);
    assert!(run.stderr.contains("409"), "{run:?}");

    let yaml = system.file(
        "ok.yaml",
        "id: cli-ok-yaml\ntarget: MAIN\nedits:\n  - op: write\n    path: yaml.txt\n    contents: from yaml\n",
    );
    let run = system.ghost(&["--json", "submit", &path_arg(&yaml)]).await;
    run.expect(0);
    let detail = run.json();
    assert_eq!(detail["id"], "cli-ok-yaml");
    assert_eq!(detail["status"], "succeeded");
    assert!(detail["summary"].is_string(), "{detail}");

    // What reading forgave is shown with the acceptance.
    let lenient = system.file(
        "lenient.json",
        "{\"id\": \"cli-lenient\", \"target\": \"MAIN\",\n \"edits\": [{\"op\": \"write\", \"path\": \"l.txt\", \"contents\": \"l\"},],}\n",
    );
    let run = system.ghost(&["submit", &path_arg(&lenient)]).await;
    run.expect(0);
    assert!(
        run.stderr.contains("warning: line 2") && run.stderr.contains("trailing comma"),
        "{run:?}"
    );

    let stdin_patch = write_patch("cli-ok-stdin", "MAIN", "stdin.txt", "piped\n");
    let run = system
        .env
        .ghost_with(&["submit", "-"], &[], stdin_patch.as_bytes())
        .await;
    run.expect(0);
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("stdin.txt")).unwrap(),
        "piped\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_exits_with_its_outcome_code_and_prints_why() {
    let system = spawn_system().await;

    // on_failure: keep → failed (3).
    let kept = system.file("kept.json", &failing_patch("cli-kept", "keep"));
    let run = system.ghost(&["submit", &path_arg(&kept)]).await;
    run.expect(3);
    assert!(run.stderr.contains("cli-kept failed"), "{run:?}");
    assert!(
        run.stderr.contains("error: 42 marker-cli-kept"),
        "the failing command's output tail is on stderr: {run:?}"
    );
    assert!(run.stderr.contains("exit 3"), "{run:?}");
    assert!(system.workspace.join("cli-kept.txt").exists(), "kept");

    // Default on_failure: rollback → rolled_back (4), the workspace restored.
    let rolled = system.file("rolled.json", &failing_patch("cli-rolled", "rollback"));
    let run = system
        .ghost(&["--json", "submit", &path_arg(&rolled)])
        .await;
    run.expect(4);
    let detail = run.json();
    assert_eq!(detail["status"], "rolled_back", "{detail}");
    assert!(run.stderr.contains("cli-rolled rolled_back"), "{run:?}");
    assert!(
        run.stderr.contains("error: 42 marker-cli-rolled"),
        "{run:?}"
    );
    assert!(
        !system.workspace.join("cli-rolled.txt").exists(),
        "rolled back"
    );

    // Commands on a target that denies them: rejected before any write (7).
    let locked = failing_patch("cli-locked", "rollback").replace("\"MAIN\"", "\"LOCKED\"");
    let locked = system.file("locked.json", &locked);
    let run = system.ghost(&["submit", &path_arg(&locked)]).await;
    run.expect(7);
    assert!(run.stderr.contains("cli-locked rejected"), "{run:?}");
    assert!(run.stderr.contains("denied"), "says why: {run:?}");

    // `ghost logs` shows the same command output, `--json` too.
    let run = system.ghost(&["logs", "cli-rolled"]).await;
    run.expect(0);
    assert!(run.stdout.contains("compiling"), "{run:?}");
    assert!(
        run.stdout.contains("error: 42 marker-cli-rolled"),
        "{run:?}"
    );
    let run = system.ghost(&["--json", "logs", "cli-rolled"]).await;
    run.expect(0);
    let logs = run.json();
    assert_eq!(logs["commands"][0]["exit_code"], 3, "{logs}");

    // `ghost retry` queues it again; it fails the same way on attempt 2.
    let run = system.ghost(&["--json", "retry", "cli-rolled"]).await;
    run.expect(0);
    assert_eq!(run.json()["id"], "cli-rolled");
    let again = system
        .wait_for("cli-rolled", "failed again", |d| {
            d["attempt"] == 2 && d["status"] == "rolled_back"
        })
        .await;
    assert_eq!(again["status"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_patch_ends_its_submit_with_the_cancelled_code() {
    let system = spawn_system().await;
    // IDLE has no executor: the patch waits in its queue until cancelled.
    // --wait-s 0: ghost stops following at once and says the patch goes on (14).
    let waited = system.file(
        "waited.json",
        &write_patch("cli-waited", "IDLE", "w.txt", "w\n"),
    );
    let run = system
        .ghost(&["--json", "submit", "--wait-s", "0", &path_arg(&waited)])
        .await;
    run.expect(14);
    assert_eq!(run.json()["status"], "queued", "{run:?}");
    assert!(
        run.stderr
            .contains("hint: follow it with `ghost show cli-waited`"),
        "{run:?}"
    );

    let file = system.file(
        "idle.json",
        &write_patch("cli-idle", "IDLE", "a.txt", "a\n"),
    );
    let submit = system.env.spawn(&["submit", &path_arg(&file)], &[]);
    system
        .wait_for("cli-idle", "queued", |d| d["status"] == "queued")
        .await;

    let run = system.ghost(&["cancel", "cli-idle"]).await;
    run.expect(0);
    assert!(run.stdout.contains("cli-idle is cancelled"), "{run:?}");

    let output = tokio::time::timeout(Duration::from_secs(30), submit.wait_with_output())
        .await
        .expect("submit ends after the cancel")
        .expect("submit ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");

    // A cancelled patch can be queued again.
    let run = system.ghost(&["retry", "cli-idle"]).await;
    run.expect(0);
    assert!(run.stdout.contains("cli-idle is queued again"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_the_pointer_the_status_and_a_hint() {
    let system = spawn_system().await;

    let invalid = system.file(
        "invalid.json",
        r#"{"id": "cli-bad", "target": "MAIN", "edits": [{"op": "wrte", "path": "a", "contents": ""}]}"#,
    );
    let run = system.ghost(&["submit", &path_arg(&invalid)]).await;
    run.expect(10);
    assert!(run.stderr.contains("422"), "{run:?}");
    assert!(
        run.stderr.contains("(at /edits/0"),
        "the JSON pointer: {run:?}"
    );
    assert!(run.stderr.contains("hint:"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");

    let broken_yaml = system.file("broken.yaml", "id: x\ntarget: [MAIN\n");
    let run = system.ghost(&["submit", &path_arg(&broken_yaml)]).await;
    run.expect(10);
    assert!(
        run.stderr.contains("line "),
        "line:column of the syntax error: {run:?}"
    );

    let missing = system.ghost(&["submit", "/nonexistent/patch.json"]).await;
    missing.expect(10);
    assert!(
        missing
            .stderr
            .contains("cannot read /nonexistent/patch.json"),
        "{missing:?}"
    );

    let ok = system.file("ok.json", &write_patch("cli-auth", "MAIN", "x.txt", "x"));
    let run = system
        .env
        .ghost_with(
            &["submit", &path_arg(&ok)],
            &[("GHOST_API_KEY", "wrong-key")],
            b"",
        )
        .await;
    run.expect(11);
    assert!(run.stderr.contains("401"), "{run:?}");
    assert!(
        run.stderr.contains("hint: set GHOST_API_KEY or --api-key"),
        "{run:?}"
    );

    let run = system.ghost(&["show", "no-such-patch"]).await;
    run.expect(12);
    assert!(run.stderr.contains("404"), "{run:?}");

    let run = system.ghost(&["list", "--status", "done"]).await;
    run.expect(2);
    assert!(
        run.stderr.contains("succeeded"),
        "clap lists the statuses: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_past_its_deadline_exits_with_the_timed_out_code() {
    let system = spawn_system().await;
    let patch = serde_json::json!({
        "id": "cli-slow",
        "target": "MAIN",
        "edits": [{"op": "write", "path": "slow.txt", "contents": "slow\n"}],
        "commands": ["sleep 60"],
        "timeout_s": 1,
    });
    let file = system.file("slow.json", &patch.to_string());
    let run = system.ghost(&["submit", &path_arg(&file)]).await;
    run.expect(6);
    assert!(run.stderr.contains("cli-slow timed_out"), "{run:?}");
    assert!(!system.workspace.join("slow.txt").exists(), "rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_dry_run_prints_the_diff_and_rungs_and_writes_nothing() {
    let system = spawn_system().await;
    std::fs::write(system.workspace.join("greet.txt"), "hello   \nworld\n").unwrap();
    let patch = system.file(
        "dry.json",
        r#"{"id": "cli-dry", "target": "MAIN", "edits": [
            {"op": "replace", "path": "greet.txt", "search": "hello\n", "replace": "hi\n"},
            {"op": "write", "path": "new.txt", "contents": "new\n"}]}"#,
    );
    let run = system
        .ghost(&["submit", "--dry-run", &path_arg(&patch)])
        .await;
    run.expect(0);
    assert!(
        run.stdout.contains("--- a/greet.txt\n+++ b/greet.txt\n")
            && run.stdout.contains("-hello   \n+hi\n")
            && run.stdout.contains("+++ b/new.txt"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("replace greet.txt (rung trailing_whitespace)"),
        "{run:?}"
    );
    assert!(run.stderr.contains("nothing was written"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("greet.txt")).unwrap(),
        "hello   \nworld\n"
    );
    assert!(!system.workspace.join("new.txt").exists());
    let run = system.ghost(&["show", "cli-dry"]).await;
    assert_ne!(run.code, 0, "the dry run was stored: {run:?}");

    let run = system
        .ghost(&["--json", "submit", "--dry-run", &path_arg(&patch)])
        .await;
    run.expect(0);
    assert_eq!(run.json()["dry_run"], true);
    assert_eq!(run.json()["edits"][0]["match_step"], "trailing_whitespace");

    let missing = system.file(
        "dry-miss.json",
        r#"{"id": "cli-dry-miss", "target": "MAIN", "edits": [
            {"op": "replace", "path": "greet.txt", "search": "absent text", "replace": "x"}]}"#,
    );
    let run = system
        .ghost(&["submit", "--dry-run", &path_arg(&missing)])
        .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("would be failed"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follows_a_slow_patch_with_long_polls_to_its_end() {
    let system = spawn_system().await;
    let patch = system.file(
        "slow.json",
        r#"{"id": "cli-slow", "target": "MAIN", "commands": ["sleep 2"],
            "edits": [{"op": "write", "path": "slow.txt", "contents": "s\n"}]}"#,
    );
    let run = system.ghost(&["submit", &path_arg(&patch)]).await;
    run.expect(0);
    assert!(run.stderr.contains("succeeded"), "{run:?}");
    // A short --wait-s runs out with the patch still going: exit 14, its state named.
    let idle = system.file(
        "idle.json",
        r#"{"id": "cli-idle", "target": "IDLE", "edits": [{"op": "write", "path": "i.txt", "contents": "i"}]}"#,
    );
    let began = std::time::Instant::now();
    let run = system
        .ghost(&["submit", "--wait-s", "1", &path_arg(&idle)])
        .await;
    run.expect(14);
    assert!(run.stderr.contains("is queued"), "{run:?}");
    assert!(began.elapsed() < Duration::from_secs(30));
}
