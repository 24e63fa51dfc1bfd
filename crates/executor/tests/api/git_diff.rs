//! Must show 3: diffs made by `git diff` on a real history apply to exactly what `git apply`
//! gives — renames, deletions, mode changes, no newline at end of file, CRLF.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ghost_core::Status;

use crate::helpers::{patch, snapshot, workspace};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "core.autocrlf=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write(dir: &Path, rel: &str, contents: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn chmod(dir: &Path, rel: &str, mode: u32) {
    fs::set_permissions(dir.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, (bytes, mode)) in snapshot(from) {
        let path = to.join(&rel);
        match bytes {
            None => fs::create_dir_all(&path).unwrap(),
            Some(bytes) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
                chmod(to, &rel, mode);
            }
        }
    }
}

/// Only files count: git tracks no directories, so empty ones left behind are not compared.
fn files(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
    snapshot(root)
        .into_iter()
        .filter_map(|(rel, (bytes, mode))| bytes.map(|b| (rel, b, mode)))
        .collect()
}

#[test]
fn git_diffs_apply_exactly_as_git_apply_does() {
    let repo = tempfile::tempdir().unwrap();
    let repo = repo.path();
    git(repo, &["init", "-q"]);
    let body: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    write(repo, "src/main.rs", &body);
    write(repo, "src/lib.rs", "pub fn a() {}\n\npub fn b() {}\n");
    write(repo, "old/name.txt", "moved content\nsecond\nthird\n");
    write(repo, "gone.txt", "to be deleted\n");
    write(repo, "run.sh", "#!/bin/sh\necho hi\n");
    write(repo, "noeol.txt", "first\nlast without newline");
    write(repo, "win.txt", "alpha\r\nbeta\r\ngamma\r\n");
    write(repo, "same/same.txt", "x\n");
    chmod(repo, "run.sh", 0o644);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "base"]);
    let base = tempfile::tempdir().unwrap();
    copy_tree(repo, base.path());

    let edited: String = (1..=40)
        .map(|i| match i {
            3 => "line three\n".to_owned(),
            20 => "line 20\ninserted\n".to_owned(),
            39 => String::new(),
            _ => format!("line {i}\n"),
        })
        .collect();
    write(repo, "src/main.rs", &edited);
    fs::create_dir_all(repo.join("new/place")).unwrap();
    fs::rename(
        repo.join("old/name.txt"),
        repo.join("new/place/renamed.txt"),
    )
    .unwrap();
    write(
        repo,
        "new/place/renamed.txt",
        "moved content\nsecond changed\nthird\n",
    );
    fs::remove_file(repo.join("gone.txt")).unwrap();
    chmod(repo, "run.sh", 0o755);
    write(repo, "noeol.txt", "first\nlast now with newline\n");
    write(repo, "win.txt", "alpha\r\nBETA\r\ngamma\r\ndelta\r\n");
    write(repo, "fresh/tool.sh", "#!/bin/sh\nexit 0");
    chmod(repo, "fresh/tool.sh", 0o755);
    write(
        repo,
        "src/lib.rs",
        "pub fn a() {}\n\npub fn b() { todo() }\n",
    );
    git(repo, &["add", "-A"]);
    let diff = git(repo, &["diff", "--cached", "-M", "HEAD"]);
    assert!(diff.contains("rename from old/name.txt"), "{diff}");
    assert!(diff.contains("new mode 100755"), "{diff}");
    assert!(diff.contains("\\ No newline at end of file"), "{diff}");
    assert!(diff.contains("deleted file mode"), "{diff}");

    // git apply on one copy of the base…
    let expected = tempfile::tempdir().unwrap();
    copy_tree(base.path(), expected.path());
    fs::write(expected.path().join("change.diff"), &diff).unwrap();
    git(expected.path(), &["apply", "change.diff"]);
    fs::remove_file(expected.path().join("change.diff")).unwrap();

    // …and the executor on another.
    let ws = workspace();
    copy_tree(base.path(), ws.root());
    let document = serde_json::to_string(&diff).unwrap();
    let report = ws.apply(&patch("git-diff", &format!(r#""patch":{document}"#)));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert!(
        report
            .edits
            .iter()
            .any(|e| e.op == "rename" && e.from == "old/name.txt")
    );
    assert_eq!(files(ws.root()), files(expected.path()));
    assert_eq!(ws.read("win.txt"), "alpha\r\nBETA\r\ngamma\r\ndelta\r\n");
}
