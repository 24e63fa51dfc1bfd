//! Revert through the whole system (issue 20, must show): `POST /v1/patches/{id}/revert` queues a
//! patch that restores a succeeded patch's pre-images byte for byte (modes included); a file
//! changed since is a 409 naming it, with nothing stored; and a patch that made a git commit is
//! reverted from git (the executor keeps no records here) with a revert commit of its own.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use executor::TargetPolicy;
use serde_json::{Value, json};

use crate::helpers::{API_KEY, TestSystem, spawn_system, spawn_system_with};

/// `POST /v1/patches/{id}/revert`: status, `Location`, JSON body.
async fn revert(system: &TestSystem, id: &str) -> (u16, Option<String>, Value) {
    let response = system
        .http
        .post(format!("{}/v1/patches/{id}/revert", system.gateway()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    (
        status,
        location,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn submit_ok(system: &TestSystem, patch: &Value) {
    let response = system.submit(patch).await;
    let status = response.status().as_u16();
    assert_eq!(status, 202, "{}", response.text().await.unwrap_or_default());
}

/// Every file under `root` (but `.git`) with its bytes and permission bits, sorted.
fn tree(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                found.push((
                    rel,
                    std::fs::read(&path).expect("read"),
                    meta.permissions().mode() & 0o7777,
                ));
            }
        }
    }
    found.sort();
    found
}

fn write_mode(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn git(root: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", root)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@localhost")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@localhost")
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_succeeded_patch_is_reverted_byte_for_byte_by_a_patch_of_its_own() {
    let system = spawn_system(true).await;
    let ws = system.workspace.clone();
    write_mode(&ws.join("a.txt"), "one\ntwo\nthree\n", 0o644);
    write_mode(&ws.join("run.sh"), "#!/bin/sh\necho hi\n", 0o755);
    write_mode(&ws.join("old.txt"), "going away\n", 0o600);
    write_mode(&ws.join("moved.txt"), "moving\n", 0o644);
    let before = tree(&ws);

    submit_ok(
        &system,
        &json!({
            "id": "rv-ok",
            "target": "MAIN",
            "description": "many kinds of change",
            "edits": [
                {"op": "replace", "path": "a.txt", "search": "two", "replace": "TWO"},
                {"op": "write", "path": "new/c.txt", "contents": "created\n"},
                {"op": "delete", "path": "old.txt"},
                {"op": "chmod", "path": "run.sh", "mode": "644"},
                {"op": "rename", "from": "moved.txt", "to": "moved/there.txt"},
            ],
        }),
    )
    .await;
    let applied = system.wait_finished("rv-ok").await;
    assert_eq!(applied["status"], "succeeded", "{applied}");
    let after = tree(&ws);
    assert_ne!(after, before);

    let (status, location, body) = revert(&system, "rv-ok").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "revert-rv-ok", "{body}");
    assert_eq!(location.as_deref(), Some("/v1/patches/revert-rv-ok"));
    let reverted = system.wait_finished("revert-rv-ok").await;
    assert_eq!(reverted["status"], "succeeded", "{reverted}");
    assert_eq!(
        tree(&ws),
        before,
        "the workspace is byte-identical to before the patch, modes included"
    );

    // Asking again is a replay: the same revert patch, nothing new queued.
    let (status, _, body) = revert(&system, "rv-ok").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "revert-rv-ok", "{body}");

    // The revert is a patch like any other: reverting it brings the change back.
    let (status, _, body) = revert(&system, "revert-rv-ok").await;
    assert_eq!(status, 202, "{body}");
    let again = system.wait_finished("revert-revert-rv-ok").await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(tree(&ws), after);

    // Only a succeeded patch can be reverted; an unknown one is not found.
    submit_ok(
        &system,
        &json!({
            "id": "rv-failed",
            "target": "MAIN",
            "edits": [{"op": "replace", "path": "a.txt", "search": "absent text", "replace": "x"}],
        }),
    )
    .await;
    let failed = system.wait_finished("rv-failed").await;
    assert_ne!(failed["status"], "succeeded", "{failed}");
    let (status, _, body) = revert(&system, "rv-failed").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|error| error.contains("succeeded")),
        "{body}"
    );
    let (status, _, body) = revert(&system, "rv-nobody").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_file_changed_since_the_patch_refuses_the_revert_with_a_409_naming_it() {
    let system = spawn_system(true).await;
    let ws = system.workspace.clone();
    write_mode(&ws.join("a.txt"), "original\n", 0o644);
    write_mode(&ws.join("b.txt"), "untouched by hand\n", 0o644);
    submit_ok(
        &system,
        &json!({
            "id": "rv-conflict",
            "target": "MAIN",
            "edits": [
                {"op": "write", "path": "a.txt", "contents": "patched\n"},
                {"op": "write", "path": "b.txt", "contents": "patched too\n"},
            ],
        }),
    )
    .await;
    let applied = system.wait_finished("rv-conflict").await;
    assert_eq!(applied["status"], "succeeded", "{applied}");

    // Someone edits a.txt by hand after the patch.
    std::fs::write(ws.join("a.txt"), "edited by hand\n").expect("hand edit");
    let before = tree(&ws);

    let (status, _, body) = revert(&system, "rv-conflict").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["conflicts"], json!(["a.txt"]), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|error| error.contains("a.txt")),
        "{body}"
    );
    let (code, stored) = system.get("revert-rv-conflict").await;
    assert_eq!(code, 404, "nothing was stored: {stored}");
    assert_eq!(tree(&ws), before, "nothing was written");
}

#[tokio::test]
async fn a_committed_patch_is_reverted_from_git_with_a_revert_commit() {
    let system = spawn_system_with(true, |config| {
        let executor = config.executor.as_mut().expect("an executor");
        executor.targets.insert(
            "MAIN".to_owned(),
            TargetPolicy {
                // No records kept: the pre-images can only come from git.
                revert_keep: 0,
                ..TargetPolicy::default()
            },
        );
    })
    .await;
    let ws = system.workspace.clone();
    git(&ws, &["init", "-q"]);
    write_mode(&ws.join("lib.txt"), "library v1\n", 0o644);
    write_mode(&ws.join("doomed.txt"), "to be deleted\n", 0o644);
    git(&ws, &["add", "-A"]);
    git(&ws, &["commit", "-qm", "initial"]);
    let before = tree(&ws);
    let initial = git(&ws, &["rev-parse", "HEAD"]);

    submit_ok(
        &system,
        &json!({
            "id": "rv-git",
            "target": "MAIN",
            "description": "feature with a commit",
            "edits": [
                {"op": "write", "path": "lib.txt", "contents": "library v2\n"},
                {"op": "write", "path": "src/feature.txt", "contents": "feature\n"},
                {"op": "delete", "path": "doomed.txt"},
            ],
            "commit": {"message": "Add the feature\n\nWith a body."},
        }),
    )
    .await;
    let applied = system.wait_finished("rv-git").await;
    assert_eq!(applied["status"], "succeeded", "{applied}");
    let sha = applied["report"]["commit_sha"]
        .as_str()
        .expect("a commit sha")
        .to_owned();
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), sha);

    let (status, _, body) = revert(&system, "rv-git").await;
    assert_eq!(status, 202, "{body}");
    let reverted = system.wait_finished("revert-rv-git").await;
    assert_eq!(reverted["status"], "succeeded", "{reverted}");
    assert_eq!(tree(&ws), before, "the files are as before the patch");
    let revert_sha = reverted["report"]["commit_sha"]
        .as_str()
        .expect("the revert committed")
        .to_owned();
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), revert_sha);
    assert_eq!(git(&ws, &["rev-parse", "HEAD^"]), sha);
    let message = git(&ws, &["log", "-1", "--format=%B"]);
    assert!(
        message.starts_with("Revert \"Add the feature\""),
        "{message}"
    );
    assert!(
        message.contains(&format!("This reverts commit {sha}.")),
        "{message}"
    );
    // The revert commit's tree is the tree before the patch.
    assert_eq!(
        git(&ws, &["diff", "--stat", &initial, "HEAD"]),
        "",
        "HEAD's tree equals the tree before the patch"
    );
    assert_eq!(git(&ws, &["status", "--porcelain"]), "");
}
