//! What a command leaves cannot make the rollback fail for good: a tree deeper than the
//! walk goes is removed whole, and a `.git` below the root hides nothing.

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{patch, snapshot, workspace_with};

#[test]
fn a_directory_tree_deeper_than_the_walk_made_by_a_command_is_removed_and_the_target_stays_open() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        ..TargetPolicy::default()
    });
    ws.write("a.txt", "a\n");
    let before = snapshot(ws.root());
    let deep = "d/".repeat(600);
    let body = format!(
        r#""edits":[{{"op":"write","path":"a.txt","contents":"b\n"}}],"commands":["sh -c 'mkdir -p {deep} && echo x > {deep}f; exit 1'"]"#
    );
    let report = ws.apply(&patch("deep", &body));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    let rollback = report.rollback.as_ref().unwrap();
    assert!(rollback.error.is_empty(), "{rollback:?}");
    assert!(!ws.root().join("d").exists());
    assert_eq!(snapshot(ws.root()), before);
    let next = ws.apply(&patch(
        "after-deep",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}],"commands":["sh -c true"]"#,
    ));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
}

#[test]
fn a_dot_git_directory_below_the_root_does_not_hide_what_a_command_made() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        ..TargetPolicy::default()
    });
    ws.write("src/a.txt", "a\n");
    let before = snapshot(ws.root());
    let report = ws.apply(&patch(
        "nested-git",
        r#""edits":[{"op":"write","path":"src/a.txt","contents":"b\n"}],"commands":["sh -c 'mkdir -p src/.git vendor/.GIT && echo x > src/.git/payload && echo y > vendor/.GIT/payload; exit 1'"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(!ws.root().join("src/.git").exists());
    assert!(!ws.root().join("vendor").exists());
    assert_eq!(snapshot(ws.root()), before);
}

#[test]
fn a_workspace_over_the_snapshot_budget_fails_the_patch_before_any_command_runs() {
    for (name, policy, expected) in [
        (
            "files",
            TargetPolicy {
                max_snapshot_files: 10,
                ..TargetPolicy::default()
            },
            "max_snapshot_files",
        ),
        (
            "bytes",
            TargetPolicy {
                max_snapshot_bytes: 1000,
                ..TargetPolicy::default()
            },
            "max_snapshot_bytes",
        ),
    ] {
        let ws = workspace_with(TargetPolicy {
            commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
            ..policy
        });
        for index in 0..20 {
            ws.write(&format!("src/f{index}.txt"), &"x".repeat(100));
        }
        let before = snapshot(ws.root());
        let report = ws.apply(&patch(
            name,
            r#""edits":[{"op":"write","path":"a.txt","contents":"a"}],"commands":["sh -c 'echo ran > ran.txt'"]"#,
        ));
        assert_eq!(
            report.status,
            Status::RolledBack,
            "{name}: {}",
            report.error
        );
        assert!(report.error.contains(expected), "{name}: {}", report.error);
        assert!(report.commands.is_empty(), "{name}: {:?}", report.commands);
        assert_eq!(snapshot(ws.root()), before, "{name}");
        let blobs = ws.ctx.workspace.state_dir.join("snapshots/MAIN/blobs");
        let stored = walk_files(&blobs);
        assert_eq!(
            stored, 0,
            "{name}: the refused snapshot's blobs are removed"
        );
    }
}

fn walk_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            if entry.file_type().unwrap().is_dir() {
                walk_files(&entry.path())
            } else {
                1
            }
        })
        .sum()
}
