//! A patch's commands cannot make git, run by the executor for the commit and the rollback,
//! take orders from them, nor wedge the target by removing `.git`.

use std::path::Path;
use std::process::{Command, Stdio};

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{patch, workspace_with};

fn shell_policy() -> TargetPolicy {
    TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        ..TargetPolicy::default()
    }
}

fn git(root: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(root)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[test]
fn a_filter_a_command_plants_in_git_config_never_runs_at_the_commit() {
    let ws = workspace_with(shell_policy());
    ws.write("a.txt", "a\n");
    git(ws.root(), &["init", "-q"]);
    git(ws.root(), &["add", "a.txt"]);
    git(ws.root(), &["commit", "-qm", "init"]);
    let marker = ws.root().parent().unwrap().join("pwned");
    let script = ws.root().parent().unwrap().join("plant.sh");
    std::fs::write(
        &script,
        format!(
            "printf '[filter \"x\"]\\n\\tclean = touch {} && cat\\n' >> .git/config\n\
             echo '* filter=x' > .gitattributes\n",
            marker.display()
        ),
    )
    .unwrap();
    let body = format!(
        r#""edits":[{{"op":"write","path":"a.txt","contents":"b\n"}}],"commands":["sh {}"],"commit":{{"message":"m"}}"#,
        script.display()
    );
    let report = ws.apply(&patch("filter", &body));
    assert!(
        !marker.exists(),
        "the planted filter ran outside the sandbox"
    );
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(report.error.contains(".git/config"), "{}", report.error);
    assert!(report.commit_sha.is_empty());
    assert_eq!(ws.read("a.txt"), "a\n");
    assert!(!ws.root().join(".gitattributes").exists());
}

#[test]
fn a_command_removing_dot_git_is_rolled_back_without_blocking_the_target() {
    let ws = workspace_with(shell_policy());
    ws.write(".gitignore", "dist/\n");
    ws.write("dist/bundle.js", "built\n");
    ws.write("a.txt", "a\n");
    git(ws.root(), &["init", "-q"]);
    let report = ws.apply(&patch(
        "rm-git",
        r#""edits":[{"op":"write","path":"a.txt","contents":"b\n"}],"commands":["sh -c 'rm -rf .git && echo n > new.txt'"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.error.contains(".git was removed"),
        "{}",
        report.error
    );
    let rollback = report.rollback.as_ref().unwrap();
    assert!(
        rollback.error.contains("were not removed"),
        "the rollback says what it left: {rollback:?}"
    );
    assert_eq!(ws.read("a.txt"), "a\n");
    // Nothing git ignored was taken for the command's.
    assert_eq!(ws.read("dist/bundle.js"), "built\n");
    // The target keeps working.
    let next = ws.apply(&patch(
        "after",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}],"commands":["sh -c true"]"#,
    ));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
}

#[test]
fn a_poisoned_git_config_hook_or_info_file_is_restored_so_the_next_commit_runs_nothing() {
    let ws = workspace_with(shell_policy());
    ws.write("a.txt", "a\n");
    git(ws.root(), &["init", "-q"]);
    git(ws.root(), &["add", "a.txt"]);
    git(ws.root(), &["commit", "-qm", "init"]);
    let config_before = ws.read(".git/config");
    let marker = ws.root().parent().unwrap().join("pwned");
    let script = ws.root().parent().unwrap().join("plant.sh");
    std::fs::write(
        &script,
        format!(
            "printf '[filter \"x\"]\\n\\tclean = touch {} && cat\\n' >> .git/config\n\
             echo '* filter=x' > .git/info/attributes\n\
             printf '#!/bin/sh\\ntouch {}\\n' > .git/hooks/pre-commit\n\
             chmod +x .git/hooks/pre-commit\n",
            marker.display(),
            marker.display()
        ),
    )
    .unwrap();
    let body = format!(
        r#""edits":[{{"op":"write","path":"a.txt","contents":"b\n"}}],"commands":["sh {}"]"#,
        script.display()
    );
    let report = ws.apply(&patch("poison", &body));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(report.error.contains(".git/config"), "{}", report.error);
    // What the commands planted in .git is gone with the rollback.
    assert_eq!(ws.read(".git/config"), config_before);
    assert!(!ws.root().join(".git/info/attributes").exists());
    assert!(!ws.root().join(".git/hooks/pre-commit").exists());
    // The next patch's commit (git add outside the sandbox) runs no planted filter.
    let next = ws.apply(&patch(
        "next",
        r#""edits":[{"op":"write","path":"a.txt","contents":"c\n"}],"commands":["sh -c true"],"commit":{"message":"m"}"#,
    ));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
    assert!(!next.commit_sha.is_empty());
    assert!(
        !marker.exists(),
        "a planted filter or hook ran at the commit"
    );
}

#[test]
fn a_command_adding_a_git_hook_fails_the_patch_naming_it() {
    let ws = workspace_with(shell_policy());
    ws.write("a.txt", "a\n");
    git(ws.root(), &["init", "-q"]);
    let report = ws.apply(&patch(
        "hook",
        r#""edits":[{"op":"write","path":"a.txt","contents":"b\n"}],"commands":["sh -c 'echo x > .git/hooks/post-commit'"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.error.contains(".git/hooks/post-commit"),
        "{}",
        report.error
    );
    assert!(!ws.root().join(".git/hooks/post-commit").exists());
    assert_eq!(ws.read("a.txt"), "a\n");
}
