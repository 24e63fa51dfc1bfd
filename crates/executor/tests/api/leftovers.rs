//! Issue 17 round 2, part 2: what commands leave behind never blocks a target, a git repo a
//! patch fakes never runs code, a bad journal blocks only its target, oversized originals are
//! refused before they are read, and rewritten files lose setuid/setgid.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{RunningExecutor, patch, snapshot, workspace, workspace_with};

fn any_command() -> TargetPolicy {
    TargetPolicy {
        commands: CommandPolicy::Any,
        ..TargetPolicy::default()
    }
}

#[test]
fn build_output_left_in_a_created_directory_is_removed_and_the_target_stays_open() {
    let ws = workspace_with(any_command());
    ws.write("keep.txt", "keep");
    ws.write("a.txt", "original a");
    let outside = ws.root().parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), "precious").unwrap();
    let before = snapshot(ws.root());
    // Like pytest's __pycache__ (nested, with a symlink out that must not be followed) in a
    // directory the patch created, and a command that replaced a journaled file with a dir.
    let script = format!(
        "mkdir -p pkg/__pycache__/deep && echo b > pkg/__pycache__/deep/m.pyc && \
         ln -s {out} pkg/__pycache__/out && rm a.txt && mkdir -p a.txt/x && echo y > a.txt/x/y && \
         mkdir new.txt && echo z > new.txt/z && exit 1",
        out = outside.display()
    );
    let report = ws.apply(&patch(
        "pyc",
        &format!(
            r#""edits":[{{"op":"write","path":"pkg/mod.py","contents":"x"}},{{"op":"write","path":"a.txt","contents":"changed"}},{{"op":"write","path":"new.txt","contents":"n"}}],"validate":[{{"run":{}}}]"#,
            serde_json::to_string(&format!("sh -c '{script}'")).unwrap()
        ),
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    let rollback = report.rollback.unwrap();
    assert!(rollback.error.is_empty(), "{}", rollback.error);
    assert_eq!(snapshot(ws.root()), before);
    assert_eq!(
        fs::read_to_string(outside.join("precious")).unwrap(),
        "precious"
    );
    let next = ws.apply(&patch(
        "after",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}]"#,
    ));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
}

#[test]
fn a_bare_repository_faked_by_a_patch_never_runs_its_fsmonitor_at_the_commit() {
    let ws = workspace();
    let pwned = ws.root().parent().unwrap().join("pwned");
    let config = format!(
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = .\n\tfsmonitor = \"touch {}; false\"\n",
        pwned.display()
    );
    let report = ws.apply(&patch(
        "fsmonitor",
        &format!(
            r#""edits":[{{"op":"write","path":"HEAD","contents":"ref: refs/heads/main\n"}},{{"op":"write","path":"config","contents":{}}},{{"op":"write","path":"objects/.keep","contents":""}},{{"op":"write","path":"refs/.keep","contents":""}},{{"op":"write","path":"a.txt","contents":"a"}}],"commit":{{"message":"m"}}"#,
            serde_json::to_string(&config).unwrap()
        ),
    ));
    assert!(!pwned.exists(), "git ran the patch's fsmonitor: {report:?}");
    assert_ne!(report.status, Status::Succeeded, "{report:?}");
}

#[test]
fn pathspec_magic_in_a_patch_path_does_not_widen_git_add() {
    let ws = workspace();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(ws.root())
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q"]);
    ws.write("base.txt", "base");
    git(&["add", "base.txt"]);
    git(&["commit", "-q", "-m", "base"]);
    ws.write("secret.txt", "not for the commit");
    let report = ws.apply(&patch(
        "magic",
        r#""edits":[{"op":"write","path":":(glob)*.txt","contents":"magic"}],"commit":{"message":"m"}"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let files = git(&["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), ":(glob)*.txt", "{files}");
}

#[tokio::test]
async fn an_unreadable_journal_blocks_only_its_target_and_the_executor_starts() {
    let ws = workspace();
    let journal = ws.ctx.workspace.state_dir.join("journal/MAIN.journal");
    fs::create_dir_all(journal.parent().unwrap()).unwrap();
    fs::write(&journal, "not a journal").unwrap();
    let mut executor = RunningExecutor::start(&ws).await;
    let report = executor
        .apply(&patch(
            "blocked",
            r#""edits":[{"op":"write","path":"a.txt","contents":"a"}]"#,
        ))
        .await;
    assert_eq!(report.status, Status::Rejected, "{report:?}");
    assert!(!report.error.contains("restart"), "{}", report.error);
    assert!(!ws.root().join("a.txt").exists());
    // The operator looks at it and removes it: the target works again, no restart needed.
    fs::remove_file(&journal).unwrap();
    let report = executor
        .apply(&patch(
            "open",
            r#""edits":[{"op":"write","path":"a.txt","contents":"a"}]"#,
        ))
        .await;
    assert_eq!(report.status, Status::Succeeded, "{report:?}");
    executor.stop().await;
}

#[test]
fn a_huge_sparse_original_is_refused_by_its_size_before_it_is_read() {
    let ws = workspace();
    let file = fs::File::create(ws.root().join("huge.bin")).unwrap();
    // Sparse: no disk used, but reading it whole would need 64 GiB of memory.
    file.set_len(64 << 30).unwrap();
    for op in [
        r#"{"op":"delete","path":"huge.bin"}"#,
        r#"{"op":"chmod","path":"huge.bin","mode":"600"}"#,
        r#"{"op":"rename","from":"huge.bin","to":"moved.bin"}"#,
    ] {
        let report = ws.apply(&patch("huge", &format!(r#""edits":[{op}]"#)));
        assert_eq!(report.status, Status::Rejected, "{op}: {report:?}");
        assert!(report.error.contains("byte file limit"), "{}", report.error);
    }
}

#[test]
fn a_rewritten_setuid_file_loses_its_setuid_and_setgid_bits() {
    let ws = workspace();
    ws.write("tool", "#!/bin/sh\n");
    fs::set_permissions(ws.root().join("tool"), fs::Permissions::from_mode(0o6755)).unwrap();
    let report = ws.apply(&patch(
        "suid",
        r#""edits":[{"op":"write","path":"tool","contents":"echo new"}]"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let mode = fs::metadata(ws.root().join("tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn a_path_shaped_like_the_executors_temp_file_is_refused() {
    let ws = workspace();
    let report = ws.apply(&patch(
        "tmpname",
        r#""edits":[{"op":"write","path":"src/.a.rs.ghost-tmp","contents":"x"}]"#,
    ));
    assert_eq!(report.status, Status::Rejected, "{report:?}");
}

#[test]
fn a_root_swapped_for_a_symlink_after_start_is_refused_and_nothing_is_written_through_it() {
    let ws = workspace();
    ws.write("a.txt", "a");
    let base = ws.root().parent().unwrap().to_owned();
    let elsewhere = base.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("a.txt"), "a").unwrap();
    // Whoever owns the root's parent moves the root away and puts a symlink in its place.
    fs::rename(ws.root(), base.join("moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, ws.root()).unwrap();
    let report = ws.apply(&patch(
        "swapped",
        r#""edits":[{"op":"write","path":"a.txt","contents":"changed"},{"op":"write","path":"new.txt","contents":"n"}]"#,
    ));
    assert_ne!(report.status, Status::Succeeded, "{report:?}");
    assert!(report.error.contains("replaced"), "{}", report.error);
    assert_eq!(fs::read_to_string(elsewhere.join("a.txt")).unwrap(), "a");
    assert!(!elsewhere.join("new.txt").exists());
}

fn agent_policy(inbox: std::path::PathBuf) -> TargetPolicy {
    TargetPolicy {
        agent: Some(executor::AgentConfig {
            inbox: Some(inbox),
            command: None,
            timeout: std::time::Duration::from_secs(30),
            ..executor::AgentConfig::default()
        }),
        ..TargetPolicy::default()
    }
}

#[test]
fn the_agent_inbox_follows_no_symlink_for_its_temp_file_or_the_completion_file() {
    let inbox = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let secret = outside.path().join("secret");
    fs::write(&victim, "victim").unwrap();
    fs::write(&secret, "failed: SECRET\n").unwrap();
    // Planted by whoever can write the inbox: the predictable temp name of the task file.
    std::os::unix::fs::symlink(&victim, inbox.path().join(".task-s.task.md.ghost-tmp")).unwrap();
    let ws = workspace_with(agent_policy(inbox.path().to_owned()));
    let agent = {
        let inbox = inbox.path().to_owned();
        std::thread::spawn(move || {
            let task = inbox.join("task-s.task.md");
            let start = std::time::Instant::now();
            while !task.exists() && start.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // The "completion file" is a symlink to a file the agent may not read.
            std::os::unix::fs::symlink(&secret, inbox.join("task-s.done")).unwrap();
        })
    };
    let report = ws.apply(&patch("task-s", r#""agent":{"task":"t"},"timeout_s":10"#));
    agent.join().unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
    assert!(!report.error.contains("SECRET"), "{}", report.error);
    assert_ne!(report.status, Status::Succeeded, "{report:?}");
}

#[test]
fn an_agent_inbox_inside_the_root_is_off_limits_to_patches() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(TargetPolicy::default());
    let mut ctx = ws.ctx.clone();
    ctx.workspace.policy = agent_policy(ctx.workspace.root.join("agent/inbox"));
    drop(dir);
    let report = executor::apply::apply(
        &ctx,
        &patch(
            "inbox",
            r#""edits":[{"op":"write","path":"agent/inbox/other.done","contents":"ok"}]"#,
        ),
        executor::apply::Lease::default(),
        false,
        &tokio_util::sync::CancellationToken::new(),
    );
    assert_eq!(report.status, Status::Rejected, "{report:?}");
}

#[test]
fn a_redelivered_applied_patch_is_not_reported_succeeded_while_a_journal_blocks_the_target() {
    let ws = workspace();
    let applied = patch(
        "once",
        r#""edits":[{"op":"write","path":"a.txt","contents":"a"}]"#,
    );
    assert_eq!(ws.apply(&applied).status, Status::Succeeded);
    let journal = ws.ctx.workspace.state_dir.join("journal/MAIN.journal");
    fs::create_dir_all(journal.parent().unwrap()).unwrap();
    fs::write(&journal, "not a journal").unwrap();
    // Reporting the recorded success would clear the router's workspace_not_restored alert.
    let again = ws.apply(&applied);
    assert_eq!(again.status, Status::Rejected, "{again:?}");
}
