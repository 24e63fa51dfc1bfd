//! Must show 5: hostile inputs are refused and nothing is written.

use std::time::{Duration, Instant};

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::{Edit, RelPath, Status};
use ghost_proto::router::v1 as wire;

use crate::helpers::{RunningExecutor, patch, snapshot, workspace, workspace_with};

fn refused_at_parse(fields: &str) {
    let body = format!(r#"{{"id":"p","target":"MAIN",{fields}}}"#);
    let err = ghost_core::parse_json(body.as_bytes()).expect_err(fields);
    assert!(err.to_string().contains("/edits/0/path"), "{err}");
}

#[test]
fn traversal_absolute_git_and_nul_paths_never_reach_the_disk() {
    refused_at_parse(r#""edits":[{"op":"write","path":"../escape","contents":"x"}]"#);
    refused_at_parse(r#""edits":[{"op":"write","path":"/etc/passwd","contents":"x"}]"#);
    refused_at_parse(r#""edits":[{"op":"write","path":".git/config","contents":"x"}]"#);
    refused_at_parse(r#""edits":[{"op":"write","path":"a\u0000b","contents":"x"}]"#);
    // The same paths inside a whole-document patch: ghost-core refuses them at parse, and the
    // executor refuses them in a patch that skipped that check (its document set in code).
    let ws = workspace();
    let before = snapshot(ws.root());
    for path in ["../escape", "/etc/x", ".git/config", "a\u{0}b"] {
        let doc = format!(
            "*** Begin Patch\n*** Add File: ok.txt\n+fine\n*** Add File: {path}\n+x\n*** End Patch\n"
        );
        let body = format!(
            r#"{{"id":"p","target":"MAIN","patch":{}}}"#,
            serde_json::to_string(&doc).unwrap()
        );
        let err = ghost_core::parse_json(body.as_bytes()).expect_err(path);
        assert!(err.to_string().contains("\"/patch\""), "{err}");
        let mut unchecked = patch(
            "p",
            r#""patch":"*** Begin Patch\n*** Add File: ok.txt\n+fine\n*** End Patch\n""#,
        );
        unchecked.patch = Some(doc);
        let report = ws.apply(&unchecked);
        assert_eq!(report.status, Status::Rejected, "{path}");
        assert!(report.error.contains("/patch: path"), "{}", report.error);
        assert_eq!(snapshot(ws.root()), before, "{path}");
    }
}

#[test]
fn symlink_escapes_of_a_file_or_a_parent_are_refused() {
    let ws = workspace();
    let outside = ws.root().parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "keep").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), ws.root().join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.root().join("dir")).unwrap();
    std::fs::create_dir_all(ws.root().join("repo/.git")).unwrap();
    std::os::unix::fs::symlink(ws.root().join("repo/.git"), ws.root().join("g")).unwrap();
    let before = snapshot(ws.root());
    for path in ["link", "dir/secret", "dir/new", "g/config"] {
        let report = ws.apply(&patch(
            "p",
            &format!(r#""edits":[{{"op":"write","path":"first","contents":"1"}},{{"op":"write","path":"{path}","contents":"x"}}]"#),
        ));
        assert_eq!(report.status, Status::Rejected, "{path}");
        assert_eq!(snapshot(ws.root()), before, "{path}");
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "keep"
    );
    assert!(!outside.join("new").exists());
}

#[test]
fn a_100_mb_write_over_the_limit_is_refused() {
    let ws = workspace();
    let mut big = patch(
        "p",
        r#""edits":[{"op":"write","path":"small","contents":"ok"}]"#,
    );
    big.edits.push(Edit::Write {
        path: RelPath::parse("big.bin").unwrap(),
        contents: "x".repeat(100 * 1024 * 1024),
    });
    let report = ws.apply(&big);
    assert_eq!(report.status, Status::Rejected);
    assert!(report.error.contains("file limit"), "{}", report.error);
    assert!(snapshot(ws.root()).is_empty());
}

#[test]
fn a_command_not_on_the_allowlist_is_refused_before_any_write() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["true".to_owned()]),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch(
        "p",
        r#""edits":[{"op":"write","path":"a","contents":"x"}],"commands":["true","rm -rf ."]"#,
    ));
    assert_eq!(report.status, Status::Rejected);
    assert!(
        report
            .error
            .contains("\"rm\" is not on target MAIN's allowlist"),
        "{}",
        report.error
    );
    assert!(report.commands.is_empty());
    assert!(snapshot(ws.root()).is_empty());
    let denied = workspace().apply(&patch(
        "p",
        r#""edits":[{"op":"write","path":"a","contents":"x"}],"commands":["true"]"#,
    ));
    assert_eq!(denied.status, Status::Rejected);
    assert!(denied.error.contains("denied"), "{}", denied.error);
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie waits only for its reaper; it runs no code.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_grandchild_ignoring_sigterm_is_dead_after_the_deadline() {
    let ws = workspace_with(TargetPolicy {
        // The command writes its pids beside the workspace, outside the sandbox.
        sandbox: executor::SandboxMode::Off,
        commands: CommandPolicy::Any,
        shell: true,
        kill_grace: Duration::from_millis(300),
        ..TargetPolicy::default()
    });
    ws.write("keep.txt", "original");
    let before = snapshot(ws.root());
    let pid_file = ws.root().parent().unwrap().join("grandchild.pid");
    let command = format!(
        "trap '' TERM; (trap '' TERM; exec sleep 60) & echo $! > {}; wait; wait",
        pid_file.display()
    );
    let command = serde_json::to_string(&command).unwrap();
    let started = Instant::now();
    let report = ws.apply(&patch(
        "p",
        &format!(r#""edits":[{{"op":"write","path":"keep.txt","contents":"changed"}}],"validate":[{{"run":{command},"timeout_s":1}}]"#),
    ));
    let elapsed = started.elapsed();
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    assert!(report.commands[0].timed_out);
    assert_eq!(
        report.commands[0].signal,
        Some(9),
        "{:?}",
        report.commands[0]
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let settle = Instant::now();
    while alive(pid) && settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "grandchild {pid} survived the deadline");
    assert_eq!(snapshot(ws.root()), before);
    assert!(report.rollback.is_some());
    eprintln!("deadline 1 s + grace 0.3 s: apply returned after {elapsed:?}");
}

/// A wire patch as it arrives over gRPC: `fields` with every `PLACEHOLDER` path replaced by
/// `path`, so the executor's own checks are reached whatever the gateway and ghost-core refuse.
fn wire_with_path(fields: &str, path: &str) -> wire::Patch {
    let mut wire_patch = wire::Patch::from(&patch("state", fields));
    for edit in &mut wire_patch.edits {
        let paths: Vec<&mut String> = match edit.op.as_mut() {
            Some(wire::edit::Op::Write(op)) => vec![&mut op.path],
            Some(wire::edit::Op::Mkdir(op)) => vec![&mut op.path],
            Some(wire::edit::Op::Delete(op)) => vec![&mut op.path],
            Some(wire::edit::Op::Rename(op)) => vec![&mut op.from, &mut op.to],
            _ => Vec::new(),
        };
        for field in paths {
            if field == "PLACEHOLDER" {
                *field = path.to_owned();
            }
        }
    }
    wire_patch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_state_dirs_are_off_limits_in_any_spelling() {
    let mut ws = workspace();
    // The executor's own state dir inside the workspace, under a name of its own.
    let state_dir = ws.root().join("var/ghost-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    ws.ctx.workspace.state_dir = state_dir;
    ws.write(".ghost/summarizer/summaries/p.md", "the real summary\n");
    let mut executor = RunningExecutor::start(&ws).await;
    let before = snapshot(ws.root());
    for path in [
        ".ghost/router/router.sqlite",
        ".ghost/summarizer/summaries/p.md",
        ".GHOST/summarizer/summaries/p.md",
        ".Ghost/alerter/x",
        ".ghost",
        "var/ghost-state/ledger/MAIN/forged.json",
        "var/ghost-state/journal/MAIN.journal",
    ] {
        for op in [
            r#"{"op":"write","path":"PLACEHOLDER","contents":"forged"}"#,
            r#"{"op":"mkdir","path":"PLACEHOLDER"}"#,
            r#"{"op":"rename","from":"ok.txt","to":"PLACEHOLDER"}"#,
        ] {
            let fields =
                format!(r#""edits":[{{"op":"write","path":"ok.txt","contents":"1"}},{op}]"#);
            let report = executor.apply_wire(wire_with_path(&fields, path)).await;
            assert_eq!(
                report.status,
                Status::Rejected,
                "{path} {op}: {}",
                report.error
            );
            assert_eq!(snapshot(ws.root()), before, "{path} {op}");
        }
    }
    let delete = executor
        .apply_wire(wire_with_path(
            r#""edits":[{"op":"delete","path":"PLACEHOLDER"}]"#,
            ".ghost/summarizer/summaries/p.md",
        ))
        .await;
    assert_eq!(delete.status, Status::Rejected, "{}", delete.error);
    assert_eq!(snapshot(ws.root()), before);
    executor.stop().await;
}
