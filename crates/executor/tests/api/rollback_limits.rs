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
