//! Issue 20: `[[targets.checks]]` in ghost.toml reach the executor `ghost up` starts, and run
//! after a patch that cannot run commands itself: a failing one rolls the patch back, naming
//! the check; a `changed:` one stays out of a patch that changed nothing it matches.

use serde_json::json;

use crate::helpers::Env;
use crate::up::{PORT_ZERO, spawn_up, submit, wait_ended};

#[tokio::test]
async fn owner_checks_from_ghost_toml_run_and_a_failing_one_rolls_the_patch_back() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[[targets]]\nname = \"MAIN\"\nroot = \"./main\"\ncommands = \"deny\"\n\n\
         [[targets.checks]]\nname = \"no-todo\"\nrun = \"sh -c '! grep -rq TODO src'\"\n\
         when = \"changed:src/**\"\n",
    );
    let key = "checks-test-key-0123456789";
    let up = spawn_up(&env, &dir, &["up", "--api-key", key], &PORT_ZERO).await;
    let clean = json!({"id": "clean", "edits": [{"op": "write", "path": "src/a.txt", "contents": "done\n"}]});
    let (code, body) = submit(&up.url, key, &clean).await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, key, "clean").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let todo = json!({"id": "todo", "edits": [{"op": "write", "path": "src/b.txt", "contents": "TODO\n"}]});
    let (code, body) = submit(&up.url, key, &todo).await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, key, "todo").await;
    assert_eq!(ended["status"], "rolled_back", "{ended}");
    assert!(ended.to_string().contains("no-todo"), "{ended}");
    assert!(dir.join("main/src/a.txt").is_file());
    assert!(!dir.join("main/src/b.txt").exists());
    // Outside src/ the check does not run: TODO in a note is fine.
    let note =
        json!({"id": "note", "edits": [{"op": "write", "path": "NOTES.md", "contents": "TODO\n"}]});
    let (code, body) = submit(&up.url, key, &note).await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, key, "note").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    up.kill_9().await;
}
