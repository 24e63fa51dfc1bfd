//! Issue 20 point 4 (executor side): a succeeded patch leaves a revert record; a revert patch
//! (`revert: {of}`) restores its pre-images through the normal apply, refuses with the
//! conflicting paths when a file changed since, falls back to git when the record is gone,
//! and a dry run answers the diff or the conflicts without writing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use executor::{CommandPolicy, OwnerCheck, TargetPolicy, When};
use ghost_core::{Patch, PatchId, Status};

use crate::helpers::{RunningExecutor, TestWorkspace, patch, snapshot, workspace_with};

/// Every regular file under `root` (`.git` excluded) with its bytes and mode; directories
/// are left out, since a revert leaves the directories a patch created in place.
fn files(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    snapshot(root)
        .into_iter()
        .filter_map(|(rel, (bytes, mode))| {
            let bytes = bytes?;
            (mode & 0o170000 == 0).then_some((rel, (bytes, mode)))
        })
        .collect()
}

/// The revert patch of `of`, as the router builds it.
fn revert_of(of: &str, extra: &str) -> Patch {
    let id = ghost_core::revert_id(&PatchId::parse(of).unwrap());
    patch(id.as_str(), &format!(r#""revert":{{"of":"{of}"{extra}}}"#))
}

fn seed(ws: &TestWorkspace) {
    ws.write("a.txt", "one\ntwo\nthree\n");
    ws.write("b.txt", "bee\n");
    ws.write("old.txt", "to be moved\n");
    ws.write("run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(ws.root().join("gone.bin"), [0u8, 159, 146, 150, 10, 0]).unwrap();
    fs::set_permissions(
        ws.root().join("gone.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// Writes, replaces, creates, deletes, renames and chmods.
const EVERY_OP: &str = r#""edits":[
    {"op":"write","path":"b.txt","contents":"bee, rewritten\n"},
    {"op":"replace","path":"a.txt","search":"two","replace":"TWO"},
    {"op":"write","path":"new/deep/c.txt","contents":"created\n"},
    {"op":"delete","path":"gone.bin"},
    {"op":"rename","from":"old.txt","to":"moved/old.txt"},
    {"op":"chmod","path":"run.sh","mode":"755"}
]"#;

fn policy() -> TargetPolicy {
    TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        ..TargetPolicy::default()
    }
}

#[test]
fn a_revert_restores_every_file_and_mode_and_its_revert_brings_the_patch_back() {
    let ws = workspace_with(policy());
    seed(&ws);
    let before = files(ws.root());
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let after = files(ws.root());
    assert_ne!(after, before);

    let undo = revert_of("p1", "");
    let report = ws.apply(&undo);
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(files(ws.root()), before);
    assert!(report.conflicts.is_empty());
    // One edit per restored path: the written-back files and the removed ones.
    let mut edits: Vec<(String, String)> = report
        .edits
        .iter()
        .map(|edit| (edit.op.clone(), edit.path.clone()))
        .collect();
    edits.sort();
    let expected: Vec<(String, String)> = [
        ("delete", "moved/old.txt"),
        ("delete", "new/deep/c.txt"),
        ("write", "a.txt"),
        ("write", "b.txt"),
        ("write", "gone.bin"),
        ("write", "old.txt"),
        ("write", "run.sh"),
    ]
    .iter()
    .map(|(op, path)| ((*op).to_owned(), (*path).to_owned()))
    .collect();
    assert_eq!(edits, expected);
    // The directories the patch made are left in place.
    assert!(ws.root().join("new/deep").is_dir());

    // The revert is a patch like any other: reverting it brings the patch's effect back.
    let redo = ws.apply(&revert_of(undo.id.as_str(), ""));
    assert_eq!(redo.status, Status::Succeeded, "{}", redo.error);
    assert_eq!(files(ws.root()), after);
    // Asking again is a replay of the recorded result.
    let again = ws.apply(&undo);
    assert_eq!(again.status, Status::Succeeded);
    assert_eq!(files(ws.root()), after);
}

#[test]
fn a_command_of_the_patch_that_rewrites_a_touched_file_is_no_conflict() {
    let ws = workspace_with(policy());
    seed(&ws);
    let before = files(ws.root());
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"b.txt","contents":"bee 2\n"},{"op":"write","path":"c.txt","contents":"c\n"}],
           "commands":["sh -c 'echo appended >> b.txt; chmod 700 c.txt'"]"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    assert_eq!(ws.read("b.txt"), "bee 2\nappended\n");
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(files(ws.root()), before);
}

#[test]
fn a_file_changed_by_hand_since_the_patch_is_a_conflict_and_nothing_is_written() {
    let ws = workspace_with(policy());
    seed(&ws);
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    ws.write("new/deep/c.txt", "changed by hand\n");
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let whole = snapshot(ws.root());
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert_eq!(report.conflicts, ["new/deep/c.txt"]);
    assert_eq!(report.error, "files changed since patch p1: new/deep/c.txt");
    assert_eq!(snapshot(ws.root()), whole);
    // A mode changed by hand is a conflict too.
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    ws.write("new/deep/c.txt", "created\n");
    let whole = snapshot(ws.root());
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.conflicts, ["run.sh"], "{}", report.error);
    assert_eq!(snapshot(ws.root()), whole);
    // A directory where the patch left a file always conflicts.
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(ws.root().join("b.txt")).unwrap();
    fs::create_dir(ws.root().join("b.txt")).unwrap();
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.conflicts, ["b.txt"], "{}", report.error);
}

#[test]
fn only_the_last_revert_keep_records_are_kept() {
    let ws = workspace_with(TargetPolicy {
        revert_keep: 2,
        ..policy()
    });
    for n in 1..=3 {
        let report = ws.apply(&patch(
            &format!("p{n}"),
            &format!(r#""edits":[{{"op":"write","path":"f{n}.txt","contents":"{n}\n"}}]"#),
        ));
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    }
    let first = ws.apply(&revert_of("p1", ""));
    assert_eq!(first.status, Status::Rejected);
    assert_eq!(
        first.error,
        "cannot revert patch p1: no record of patch p1 (the executor keeps the last 2 per \
         target; agent hand-offs and crashed or damaged records are not kept), and p1 made no \
         git commit"
    );
    assert!(ws.root().join("f1.txt").exists());
    for n in [2, 3] {
        let report = ws.apply(&revert_of(&format!("p{n}"), ""));
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
        assert!(!ws.root().join(format!("f{n}.txt")).exists());
    }
    // The record folder holds two records (a journal and a post file each), no more.
    let kept = fs::read_dir(ws.ctx.workspace.state_dir.join("revert/MAIN"))
        .unwrap()
        .count();
    assert_eq!(kept, 4);
}

fn git(root: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn without_a_record_a_committed_patch_is_reverted_from_git_with_a_new_commit() {
    let ws = workspace_with(TargetPolicy {
        revert_keep: 0,
        ..policy()
    });
    seed(&ws);
    // Git keeps only the executable bit: modes from git are 0644 or 0755.
    fs::set_permissions(
        ws.root().join("gone.bin"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    git(ws.root(), &["init", "-q"]);
    git(ws.root(), &["add", "-A"]);
    git(ws.root(), &["commit", "-qm", "base"]);
    let before = files(ws.root());
    let applied = ws.apply(&patch(
        "p1",
        &format!(r#"{EVERY_OP},"commit":{{"message":"Every op"}}"#),
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let sha = applied.commit_sha.clone();
    assert_eq!(sha.len(), 40);
    assert!(!ws.ctx.workspace.state_dir.join("revert/MAIN").exists());

    // Without the commit named, there is nothing to revert from.
    let unknown = ws.apply(&revert_of("p1", ""));
    assert_eq!(unknown.status, Status::Rejected);
    assert_eq!(
        unknown.error,
        "cannot revert patch p1: revert_keep = 0: this executor keeps no records, and p1 made \
         no git commit"
    );
    // A commit that is not in the repository is refused.
    let missing = ws.apply(&revert_of("p1", r#","commit":"0123456789abcdef""#));
    assert_eq!(missing.status, Status::Rejected);
    assert!(
        missing
            .error
            .contains("is not in the workspace's git repository"),
        "{}",
        missing.error
    );

    let message = format!("Revert \"Every op\"\n\nThis reverts commit {sha}.");
    let undo = patch(
        ghost_core::revert_id(&PatchId::parse("p1").unwrap()).as_str(),
        &format!(
            r#""revert":{{"of":"p1","commit":"{sha}"}},"commit":{{"message":{}}}"#,
            serde_json::to_string(&message).unwrap()
        ),
    );
    let report = ws.apply(&undo);
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(files(ws.root()), before);
    assert_eq!(git(ws.root(), &["rev-parse", "HEAD^"]), sha);
    assert_eq!(git(ws.root(), &["rev-parse", "HEAD"]), report.commit_sha);
    assert_eq!(git(ws.root(), &["status", "--porcelain"]), "");
    assert!(git(ws.root(), &["log", "-1", "--format=%B"]).starts_with("Revert \"Every op\""));

    // A file changed by hand after a committed patch is a conflict found through git.
    let second = ws.apply(&patch(
        "p2",
        r#""edits":[{"op":"write","path":"a.txt","contents":"p2\n"}],"commit":{"message":"p2"}"#,
    ));
    assert_eq!(second.status, Status::Succeeded, "{}", second.error);
    ws.write("a.txt", "by hand\n");
    let whole = snapshot(ws.root());
    let head = git(ws.root(), &["rev-parse", "HEAD"]);
    let report = ws.apply(&revert_of(
        "p2",
        &format!(r#","commit":"{}""#, second.commit_sha),
    ));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert_eq!(report.conflicts, ["a.txt"]);
    assert_eq!(snapshot(ws.root()), whole);
    assert_eq!(git(ws.root(), &["rev-parse", "HEAD"]), head);
}

#[test]
fn a_revert_whose_owner_check_fails_is_rolled_back_and_can_be_retried() {
    let ws = workspace_with(TargetPolicy {
        checks: vec![OwnerCheck {
            name: "gate".to_owned(),
            run: "sh -c 'if [ -e block ]; then echo blocked >&2; exit 3; fi'".to_owned(),
            timeout: Some(Duration::from_secs(20)),
            when: When::Always,
        }],
        ..policy()
    });
    seed(&ws);
    let before = files(ws.root());
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    ws.write("block", "");
    let after = snapshot(ws.root());
    let undo = revert_of("p1", "");
    let report = ws.apply(&undo);
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.error.contains("owner check \"gate\""),
        "{}",
        report.error
    );
    assert_eq!(snapshot(ws.root()), after);
    fs::remove_file(ws.root().join("block")).unwrap();
    let retried = ws.apply(&undo);
    assert_eq!(retried.status, Status::Succeeded, "{}", retried.error);
    assert_eq!(files(ws.root()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart_and_a_dry_run_answers_the_diff_or_the_conflicts() {
    let ws = workspace_with(policy());
    seed(&ws);
    let before = files(ws.root());
    let mut running = RunningExecutor::start(&ws).await;
    assert!(
        running.capabilities.iter().any(|c| c == "revert"),
        "{:?}",
        running.capabilities
    );
    let applied = running.apply(&patch("p1", EVERY_OP)).await;
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    running.stop().await;

    // A new executor on the same state dir.
    let mut running = RunningExecutor::start(&ws).await;
    let undo = revert_of("p1", "");
    let whole = snapshot(ws.root());
    let dry = running.dry_run(&undo).await;
    assert_eq!(dry.status, Status::Succeeded, "{}", dry.error);
    assert!(dry.dry_run);
    assert!(
        dry.diff.contains("diff --git a/b.txt b/b.txt\n"),
        "{}",
        dry.diff
    );
    assert!(dry.diff.contains("-bee, rewritten\n+bee\n"), "{}", dry.diff);
    assert!(
        dry.diff.contains("old mode 100755\nnew mode 100644\n"),
        "{}",
        dry.diff
    );
    assert!(dry.diff.contains("+++ b/old.txt\n"), "{}", dry.diff);
    assert_eq!(snapshot(ws.root()), whole);

    ws.write("b.txt", "by hand\n");
    let whole = snapshot(ws.root());
    let refused = running.dry_run(&undo).await;
    assert_eq!(refused.status, Status::Rejected);
    assert_eq!(refused.conflicts, ["b.txt"]);
    assert!(refused.diff.is_empty());
    assert_eq!(snapshot(ws.root()), whole);

    ws.write("b.txt", "bee, rewritten\n");
    let report = running.apply(&undo).await;
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(files(ws.root()), before);
    running.stop().await;
}

#[test]
fn a_record_that_is_not_whole_is_ignored_never_half_restored() {
    let ws = workspace_with(policy());
    seed(&ws);
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let folder = ws.ctx.workspace.state_dir.join("revert/MAIN");
    let names: Vec<String> = fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let post = folder.join(names.iter().find(|n| n.ends_with(".post")).unwrap());
    let journal = folder.join(names.iter().find(|n| n.ends_with(".journal")).unwrap());
    let whole = snapshot(ws.root());
    let refused = |ws: &TestWorkspace| {
        let report = ws.apply(&revert_of("p1", ""));
        assert_eq!(report.status, Status::Rejected, "{}", report.error);
        assert!(
            report.error.contains("no record of patch p1"),
            "{}",
            report.error
        );
        assert_eq!(snapshot(ws.root()), whole);
    };
    // A post file cut short (as a power loss may leave it).
    let bytes = fs::read(&post).unwrap();
    fs::write(&post, &bytes[..bytes.len() / 2]).unwrap();
    refused(&ws);
    fs::write(&post, &bytes).unwrap();
    // A journal cut short.
    let kept = fs::read(&journal).unwrap();
    fs::write(&journal, &kept[..kept.len() - 3]).unwrap();
    refused(&ws);
    // A journal that is a symlink (to a whole copy) is never followed.
    let elsewhere = ws.ctx.workspace.state_dir.join("elsewhere");
    fs::write(&elsewhere, &kept).unwrap();
    fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &journal).unwrap();
    refused(&ws);
    // Made whole again, the record restores.
    fs::remove_file(&journal).unwrap();
    fs::write(&journal, &kept).unwrap();
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
}

#[test]
fn a_record_folder_that_is_a_symlink_is_never_written_through() {
    let ws = workspace_with(policy());
    seed(&ws);
    let outside = ws.ctx.workspace.state_dir.parent().unwrap().join("outside");
    fs::create_dir_all(outside.join("MAIN")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.ctx.workspace.state_dir.join("revert")).unwrap();
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    assert_eq!(fs::read_dir(outside.join("MAIN")).unwrap().count(), 0);
    // The patch stands; it cannot be reverted without a record (or a commit).
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Rejected);
    assert!(
        report.error.contains("no record of patch p1"),
        "{}",
        report.error
    );
    // Nor is the journal left open.
    assert!(!executor::journal::is_open(
        &ws.ctx.workspace.state_dir,
        "MAIN"
    ));
}

/// A target with revert_keep 0 whose root is a git repository with `files` committed.
fn git_workspace(files: &[(&str, &str)]) -> TestWorkspace {
    let ws = workspace_with(TargetPolicy {
        revert_keep: 0,
        ..policy()
    });
    for (rel, contents) in files {
        ws.write(rel, contents);
    }
    git(ws.root(), &["init", "-q"]);
    git(ws.root(), &["add", "-A"]);
    git(ws.root(), &["commit", "-qm", "base", "--allow-empty"]);
    ws
}

#[test]
fn from_git_the_sizes_are_checked_before_a_byte_is_read_and_post_images_are_never_read() {
    let sixty = "x".repeat(59) + "\n";
    let mut ws = git_workspace(&[("a.txt", &sixty), ("b.txt", &sixty), ("c.txt", &sixty)]);
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"delete","path":"a.txt"},{"op":"delete","path":"b.txt"},
                    {"op":"delete","path":"c.txt"}],"commit":{"message":"gone"}"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    ws.ctx.limits.max_patch_bytes = 100;
    let commit = format!(r#","commit":"{}""#, applied.commit_sha);
    let report = ws.apply(&revert_of("p1", &commit));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    // Refused from the sizes git lists, before the blobs are read.
    assert!(
        report
            .error
            .contains("its pre-images in git are over the 100 byte patch limit"),
        "{}",
        report.error
    );

    // A post-image over the file limit is never read: the file as it is now is compared
    // with its blob id, and a file changed since is a conflict, not a size refusal.
    let mut ws = git_workspace(&[("big.txt", "small\n")]);
    let big = "y".repeat(199) + "\n";
    let applied = ws.apply(&patch(
        "p1",
        &format!(
            r#""edits":[{{"op":"write","path":"big.txt","contents":"{big}"}}],"commit":{{"message":"big"}}"#
        )
        .replace('\n', "\\n"),
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    ws.ctx.limits.max_file_bytes = 100;
    ws.write("big.txt", "by hand\n");
    let commit = format!(r#","commit":"{}""#, applied.commit_sha);
    let report = ws.apply(&revert_of("p1", &commit));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert_eq!(report.conflicts, ["big.txt"], "{}", report.error);
    // Within the limits, the file as the commit left it is reverted.
    ws.write("big.txt", &big);
    ws.ctx.limits.max_file_bytes = 1000;
    let report = ws.apply(&revert_of("p1", &commit));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("big.txt"), "small\n");
}

#[test]
fn from_git_only_the_patchs_own_commit_is_undone_and_its_commit_holds_only_its_paths() {
    let ws = git_workspace(&[("a.txt", "one\n"), ("user.txt", "mine\n")]);
    let base = git(ws.root(), &["rev-parse", "HEAD"]);
    // A change the user staged is not swept into a patch's commit, and stays staged.
    ws.write("user.txt", "staged by the user\n");
    git(ws.root(), &["add", "user.txt"]);
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"a.txt","contents":"two\n"}],"commit":{"message":"p1"}"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let in_commit = git(
        ws.root(),
        &["show", "--name-only", "--format=", &applied.commit_sha],
    );
    assert_eq!(in_commit, "a.txt");
    assert_eq!(
        git(ws.root(), &["diff", "--cached", "--name-only"]),
        "user.txt"
    );

    // A file the user staged as new and a patch deletes is simply gone from the index.
    ws.write("new.txt", "staged new\n");
    git(ws.root(), &["add", "new.txt"]);
    let deleted = ws.apply(&patch(
        "p0",
        r#""edits":[{"op":"delete","path":"new.txt"}],"commit":{"message":"p0"}"#,
    ));
    assert_eq!(deleted.status, Status::Succeeded, "{}", deleted.error);
    let in_commit = git(
        ws.root(),
        &["show", "--name-only", "--format=", &deleted.commit_sha],
    );
    assert_eq!(in_commit, "");
    assert_eq!(
        git(ws.root(), &["diff", "--cached", "--name-only"]),
        "user.txt"
    );

    // A commit the patch did not make is refused, naming it.
    for other in [&base, &applied.commit_sha] {
        let report = ws.apply(&revert_of("p2", &format!(r#","commit":"{other}""#)));
        assert_eq!(report.status, Status::Rejected, "{}", report.error);
        assert!(
            report
                .error
                .ends_with(&format!("commit {other} was not made by patch p2")),
            "{}",
            report.error
        );
    }
    assert_eq!(ws.read("a.txt"), "two\n");
    let report = ws.apply(&revert_of(
        "p1",
        &format!(r#","commit":"{}""#, applied.commit_sha),
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("a.txt"), "one\n");
    assert_eq!(
        git(ws.root(), &["diff", "--cached", "--name-only"]),
        "user.txt"
    );
}

#[test]
fn from_git_a_file_keeps_its_own_permission_bits_and_only_the_executable_ones_change() {
    let ws = git_workspace(&[("secret.txt", "one\n"), ("run.sh", "#!/bin/sh\n")]);
    let mode = |rel: &str| {
        fs::metadata(ws.root().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    fs::set_permissions(
        ws.root().join("secret.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    git(ws.root(), &["add", "-A"]);
    git(ws.root(), &["commit", "-qm", "modes"]);
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"secret.txt","contents":"two\n"},
                    {"op":"chmod","path":"run.sh","mode":"600"}],"commit":{"message":"p1"}"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    assert_eq!((mode("secret.txt"), mode("run.sh")), (0o600, 0o600));
    let report = ws.apply(&revert_of(
        "p1",
        &format!(r#","commit":"{}""#, applied.commit_sha),
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("secret.txt"), "one\n");
    // Not 0644 and 0755, git's only modes: the 0600 file stays 0600, run.sh is executable again.
    assert_eq!((mode("secret.txt"), mode("run.sh")), (0o600, 0o700));
}

#[test]
fn records_are_readable_by_the_executors_user_only() {
    let ws = workspace_with(policy());
    seed(&ws);
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let state = &ws.ctx.workspace.state_dir;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    for folder in [
        state.join("journal"),
        state.join("revert"),
        state.join("revert/MAIN"),
    ] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    let records: Vec<_> = fs::read_dir(state.join("revert/MAIN"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    for record in records {
        assert_eq!(mode(&record), 0o600, "{}", record.display());
    }
}

#[test]
fn a_revert_from_git_on_a_replaced_root_runs_no_git_there() {
    let ws = git_workspace(&[("a.txt", "one\n")]);
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"a.txt","contents":"two\n"}],"commit":{"message":"p1"}"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    // The root is moved away and a copy of its repository put in its place.
    let base = ws.root().parent().unwrap().to_owned();
    fs::rename(ws.root(), base.join("moved")).unwrap();
    git(&base, &["clone", "-q", "moved", "ws"]);
    let report = ws.apply(&revert_of(
        "p1",
        &format!(r#","commit":"{}""#, applied.commit_sha),
    ));
    assert_eq!(report.status, Status::Failed, "{}", report.error);
    assert!(report.error.contains("replaced"), "{}", report.error);
    assert_eq!(ws.read("a.txt"), "two\n");
}

#[test]
fn a_setuid_bit_a_command_of_the_patch_added_does_not_survive_its_revert() {
    let ws = workspace_with(policy());
    ws.write("x.sh", "echo hi\n");
    fs::set_permissions(ws.root().join("x.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"x.sh","contents":"echo hi\n"}],
           "commands":["sh -c 'chmod u+s x.sh'"]"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let mode = || {
        fs::metadata(ws.root().join("x.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(), 0o4755);
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(mode(), 0o755);
    assert_eq!(report.edits.len(), 1, "{:?}", report.edits);

    // A setuid pre-image is written back with its permission bits only: a revert never
    // makes a setuid file.
    fs::set_permissions(ws.root().join("x.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    let applied = ws.apply(&patch(
        "p2",
        r#""edits":[{"op":"write","path":"x.sh","contents":"echo bye\n"}]"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let report = ws.apply(&revert_of("p2", ""));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("x.sh"), "echo hi\n");
    assert_eq!(mode(), 0o755);
}

#[test]
fn a_record_made_under_another_workspace_root_is_ignored() {
    let mut ws = workspace_with(policy());
    seed(&ws);
    let applied = ws.apply(&patch("p1", EVERY_OP));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    // The root is replaced by a copy (same paths, same contents) and the executor restarted
    // on it: the record's paths were another directory's.
    let base = ws.root().parent().unwrap().to_owned();
    fs::rename(ws.root(), base.join("moved")).unwrap();
    let copied = Command::new("cp")
        .args(["-a", "moved", "ws"])
        .current_dir(&base)
        .status()
        .unwrap();
    assert!(copied.success());
    ws.ctx.root_id = executor::beneath::RootId::of(ws.root()).unwrap();
    let whole = snapshot(ws.root());
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert!(
        report.error.contains("no record of patch p1"),
        "{}",
        report.error
    );
    assert_eq!(snapshot(ws.root()), whole);
}

#[test]
fn a_file_over_the_size_limit_is_refused_by_its_size_not_called_changed() {
    let mut ws = workspace_with(policy());
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"a.txt","contents":"small\n"}]"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    ws.ctx.limits.max_file_bytes = 4;
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert_eq!(
        report.error,
        "cannot revert patch p1: a.txt is over the 4 byte file limit, so it cannot be compared \
         with what the patch left"
    );
}

#[test]
fn pruning_removes_the_files_of_no_whole_record() {
    let ws = workspace_with(policy());
    let folder = ws.ctx.workspace.state_dir.join("revert/MAIN");
    fs::create_dir_all(&folder).unwrap();
    // A journal whose post file was never written, a post file without its journal, and a
    // post's temp file, all newer than any record to come.
    let orphans = [
        "0000000000000099-lost.journal",
        "0000000000000098-alone.post",
        "0000000000000097-cut.post.tmp",
    ];
    for orphan in orphans {
        fs::write(folder.join(orphan), "x").unwrap();
    }
    let applied = ws.apply(&patch(
        "p1",
        r#""edits":[{"op":"write","path":"a.txt","contents":"a\n"}]"#,
    ));
    assert_eq!(applied.status, Status::Succeeded, "{}", applied.error);
    let mut names: Vec<String> = fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["0000000000000100-p1.journal", "0000000000000100-p1.post"]
    );
    let report = ws.apply(&revert_of("p1", ""));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
}
