//! Dry run over the Work stream: it writes nothing (every file and the state dir hash the same
//! before and after), and its diff is exactly what the real apply then does: `git apply` of
//! the dry run's diff to a copy of the workspace gives the same tree, byte for byte and mode
//! for mode, as the real apply of the same patch; and the diff equals the one computed
//! between the workspace before and after the apply.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use executor::diff::{FileChange, MAX_DIFF_BYTES, Side, render};
use executor::journal::{Header, Journal};
use ghost_core::Status;

use crate::helpers::{RunningExecutor, TestWorkspace, patch, snapshot, workspace};

type Snapshot = BTreeMap<String, (Option<Vec<u8>>, u32)>;

fn seed(ws: &TestWorkspace) {
    ws.write("src/app.py", "def f():\n    return 1   \n\nprint(f())\n");
    ws.write(
        "notes.txt",
        "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n",
    );
    ws.write("gone.txt", "to be deleted\n");
    ws.write("old/name.txt", "moving\n");
    ws.write("run.sh", "#!/bin/sh\necho hi");
    ws.write("edited.md", "no newline at the end");
}

const EDITS: &str = r#""edits":[
    {"op":"replace","path":"src/app.py","search":"def f():\n    return 1\n","replace":"def f():\n    return 2\n"},
    {"op":"replace","path":"notes.txt","search":"five","replace":"FIVE"},
    {"op":"write","path":"new/dir/created.txt","contents":"fresh\nfile\n"},
    {"op":"delete","path":"gone.txt"},
    {"op":"rename","from":"old/name.txt","to":"moved/name.txt"},
    {"op":"chmod","path":"run.sh","mode":"755"},
    {"op":"write","path":"edited.md","contents":"no newline at the end\nnow there is\n"}
]"#;

fn copy_tree(from: &Path, to: &Path) {
    for (rel, (bytes, mode)) in snapshot(from) {
        let path = to.join(&rel);
        match bytes {
            None => fs::create_dir_all(&path).unwrap(),
            Some(bytes) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Files only (git tracks no directories), bytes and permission bits.
fn files(snapshot: &Snapshot) -> BTreeMap<String, (Vec<u8>, u32)> {
    snapshot
        .iter()
        .filter_map(|(rel, (bytes, mode))| {
            bytes
                .as_ref()
                .map(|bytes| (rel.clone(), (bytes.clone(), mode & 0o777)))
        })
        .collect()
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_its_diff_is_what_the_apply_then_does() {
    let ws = workspace();
    seed(&ws);
    fs::set_permissions(ws.root().join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    let before = snapshot(ws.root());
    let state_before = snapshot(&ws.ctx.workspace.state_dir);
    let mut executor = RunningExecutor::start(&ws).await;
    let the_patch = patch("dry-1", EDITS);

    let report = executor.dry_run(&the_patch).await;
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert!(report.dry_run);
    assert_eq!(
        snapshot(ws.root()),
        before,
        "the dry run changed the workspace"
    );
    assert_eq!(
        snapshot(&ws.ctx.workspace.state_dir),
        state_before,
        "the dry run wrote executor state (ledger or journal)"
    );
    let rungs: Vec<(&str, &str)> = report
        .edits
        .iter()
        .map(|edit| (edit.path.as_str(), edit.match_step.as_str()))
        .collect();
    assert!(
        rungs.contains(&("src/app.py", "trailing_whitespace")),
        "{rungs:?}"
    );
    assert!(rungs.contains(&("notes.txt", "exact")), "{rungs:?}");
    let diff = report.diff.clone();
    assert!(
        diff.contains("--- /dev/null\n+++ b/new/dir/created.txt\n"),
        "{diff}"
    );
    assert!(!diff.contains("+++ /dev/null\n"), "{diff}");
    assert!(
        diff.contains("rename from old/name.txt\nrename to moved/name.txt\n"),
        "{diff}"
    );
    assert!(
        diff.contains("old mode 100644\nnew mode 100755\n"),
        "{diff}"
    );
    assert!(diff.contains("\\ No newline at end of file\n"), "{diff}");

    // A deleted file is named with its line count, its contents never shown.
    assert!(
        diff.contains(
            "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\n# -1 lines (a deleted \
             file's contents are not shown)\n"
        ),
        "{diff}"
    );
    assert!(!diff.contains("to be deleted"), "{diff}");

    // The diff's effect, by git, on a copy of the workspace as it was (git cannot apply a
    // deletion without its contents: the deleted files are removed by hand).
    let copy = tempfile::tempdir().unwrap();
    copy_tree(ws.root(), copy.path());
    let mut applicable = String::new();
    for section in diff
        .split_inclusive('\n')
        .fold(Vec::<String>::new(), |mut all, line| {
            if line.starts_with("diff --git ") || all.is_empty() {
                all.push(String::new());
            }
            all.last_mut().unwrap().push_str(line);
            all
        })
    {
        if section.contains("\ndeleted file mode ") {
            let name = section
                .lines()
                .next()
                .unwrap()
                .rsplit(" b/")
                .next()
                .unwrap();
            fs::remove_file(copy.path().join(name)).unwrap();
        } else {
            applicable.push_str(&section);
        }
    }
    fs::write(copy.path().join("dry.diff"), &applicable).unwrap();
    let applied = Command::new("git")
        .args(["apply", "--unsafe-paths", "dry.diff"])
        .current_dir(copy.path())
        .output()
        .expect("git runs");
    assert!(
        applied.status.success(),
        "git apply refused the dry run's diff: {}\n{diff}",
        String::from_utf8_lossy(&applied.stderr)
    );
    fs::remove_file(copy.path().join("dry.diff")).unwrap();

    // The real apply of the same patch.
    let real = executor.apply(&the_patch).await;
    assert_eq!(real.status, Status::Succeeded, "{}", real.error);
    let after = snapshot(ws.root());
    assert_eq!(
        files(&snapshot(copy.path())),
        files(&after),
        "git apply of the dry run's diff and the real apply differ"
    );
    executor.stop().await;
}

#[tokio::test]
async fn the_dry_run_diff_equals_the_diff_of_the_workspace_before_and_after_the_apply() {
    let ws = workspace();
    seed(&ws);
    let before = files(&snapshot(ws.root()));
    let mut executor = RunningExecutor::start(&ws).await;
    let the_patch = patch(
        "dry-2",
        r#""edits":[
            {"op":"replace","path":"notes.txt","search":"two\nthree","replace":"2\n3\n3.5"},
            {"op":"write","path":"a/new.txt","contents":"x\n"},
            {"op":"delete","path":"gone.txt"},
            {"op":"chmod","path":"run.sh","mode":"700"}
        ]"#,
    );
    let dry = executor.dry_run(&the_patch).await;
    assert_eq!(dry.status, Status::Succeeded, "{}", dry.error);
    let real = executor.apply(&the_patch).await;
    assert_eq!(real.status, Status::Succeeded, "{}", real.error);
    let after = files(&snapshot(ws.root()));
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changes: Vec<FileChange<'_>> = paths
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| FileChange {
            old_path: path,
            path,
            before: before
                .get(path)
                .map(|(bytes, mode)| Side { bytes, mode: *mode }),
            after: after
                .get(path)
                .map(|(bytes, mode)| Side { bytes, mode: *mode }),
        })
        .collect();
    let observed = render(&changes, MAX_DIFF_BYTES).text;
    assert_eq!(dry.diff, observed);
    executor.stop().await;
}

#[tokio::test]
async fn a_dry_run_that_would_fail_says_why_and_a_blocked_target_is_not_rolled_back() {
    let ws = workspace();
    seed(&ws);
    let mut executor = RunningExecutor::start(&ws).await;
    let missing = executor
        .dry_run(&patch(
            "dry-miss",
            r#""edits":[{"op":"replace","path":"notes.txt","search":"eleven","replace":"11"}]"#,
        ))
        .await;
    assert_eq!(missing.status, Status::Failed);
    assert!(missing.dry_run);
    assert!(missing.error.contains("notes.txt"), "{}", missing.error);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.root().join("link")).unwrap();
    let escaping = executor
        .dry_run(&patch(
            "dry-escape",
            r#""edits":[{"op":"write","path":"link/x.txt","contents":"x"}]"#,
        ))
        .await;
    assert!(
        matches!(escaping.status, Status::Rejected),
        "{:?} {}",
        escaping.status,
        escaping.error
    );
    assert!(escaping.error.contains("symlink"), "{}", escaping.error);
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());

    // A journal left open: the dry run refuses and rolls nothing back.
    let state = ws.ctx.workspace.state_dir.clone();
    let journal = Journal::begin(
        &state,
        "MAIN",
        &Header {
            patch_id: "earlier".to_owned(),
            content_hash: "h".to_owned(),
            attempt: 1,
            fencing_token: 9,
            root: Some(ws.ctx.root_id),
        },
    )
    .unwrap();
    journal.seal().unwrap();
    let state_before = snapshot(&state);
    let before = snapshot(ws.root());
    let blocked = executor
        .dry_run(&patch(
            "dry-blocked",
            r#""edits":[{"op":"write","path":"x.txt","contents":"x"}]"#,
        ))
        .await;
    assert_eq!(blocked.status, Status::Rejected);
    assert!(blocked.error.contains("blocked"), "{}", blocked.error);
    assert!(!blocked.error.contains(&state.display().to_string()));
    assert_eq!(snapshot(&state), state_before);
    assert_eq!(snapshot(ws.root()), before);
    executor.stop().await;
}

/// Lines from a small alphabet, so that random files share many lines and the diffs have
/// context, moves and repeats; the last line may lack its newline.
fn text_strategy() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    (
        proptest::collection::vec(prop_oneof!["a", "b", "c", "d", "", "e f"], 0..40),
        any::<bool>(),
    )
        .prop_map(|(lines, newline_at_end)| {
            let mut text = lines.join("\n");
            if newline_at_end && !text.is_empty() {
                text.push('\n');
            }
            text
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// The diff module's output, applied by git to the old file, gives the new file exactly.
    #[test]
    fn git_apply_of_a_rendered_diff_gives_the_new_file(
        before in text_strategy(),
        after in text_strategy(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rendered = render(
            &[FileChange {
                old_path: "f.txt",
                path: "f.txt",
                before: Some(Side { bytes: before.as_bytes(), mode: 0o644 }),
                after: Some(Side { bytes: after.as_bytes(), mode: 0o644 }),
            }],
            MAX_DIFF_BYTES,
        );
        fs::write(dir.path().join("f.txt"), &before).unwrap();
        if before != after {
            fs::write(dir.path().join("change.diff"), &rendered.text).unwrap();
            let applied = Command::new("git")
                .args(["apply", "change.diff"])
                .current_dir(dir.path())
                .output()
                .expect("git runs");
            proptest::prop_assert!(
                applied.status.success(),
                "git apply refused:\n{}\n{}",
                String::from_utf8_lossy(&applied.stderr),
                rendered.text
            );
        } else {
            proptest::prop_assert!(!rendered.text.contains("@@"), "{}", rendered.text);
        }
        proptest::prop_assert_eq!(fs::read_to_string(dir.path().join("f.txt")).unwrap(), after);
    }
}

#[tokio::test]
async fn a_dry_run_of_a_delete_names_the_file_and_its_line_count_never_its_contents() {
    let ws = workspace();
    ws.write(".env", "API_TOKEN=hunter2\nDB_PASSWORD=swordfish\n");
    let mut executor = RunningExecutor::start(&ws).await;
    let report = executor
        .dry_run(&patch("peek", r#""edits":[{"op":"delete","path":".env"}]"#))
        .await;
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(
        report.diff,
        "diff --git a/.env b/.env\ndeleted file mode 100644\n# -2 lines (a deleted file's \
         contents are not shown)\n"
    );
    assert!(!report.diff.contains("hunter2"));
    executor.stop().await;
}

#[test]
fn deleted_files_count_toward_the_patch_limit() {
    // LIMITS: 1 MiB a file, 4 MiB a patch. Five files of 1 MiB less a byte, all deleted.
    let ws = workspace();
    let big = "x".repeat(1024 * 1024 - 1);
    let mut edits = Vec::new();
    for index in 0..5 {
        ws.write(&format!("big{index}.txt"), &big);
        edits.push(format!(r#"{{"op":"delete","path":"big{index}.txt"}}"#));
    }
    let report = ws.apply(&patch(
        "many-deletes",
        &format!(r#""edits":[{}]"#, edits.join(",")),
    ));
    assert_eq!(report.status, Status::Rejected, "{}", report.error);
    assert!(report.error.contains("patch limit"), "{}", report.error);
    for index in 0..5 {
        assert!(ws.root().join(format!("big{index}.txt")).exists());
    }
}
