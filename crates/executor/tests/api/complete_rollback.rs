//! Issue 20, point 3: whatever a patch's commands and checks change is rolled back with its
//! edits — files made, changed, chmodded and deleted, directories made and removed,
//! symlinks, a directory turned into a file and back — byte for byte with modes, also after
//! a kill -9 during a command; what `.gitignore` ignores is left alone unless
//! `rollback_ignore` says otherwise.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use executor::{CommandPolicy, OwnerCheck, TargetPolicy, When};
use ghost_core::Status;
use ghost_proto::executor::v1::{
    Assign, ExecutorMessage, Result as ResultMessage, RouterMessage, Welcome, executor_message,
    router_message,
};
use ghost_proto::router::v1 as wire;
use ghost_testkit::wait_until;
use proptest::prelude::*;

use crate::helpers::{
    Session, TestRouter, TestWorkspace, file_appears, patch, snapshot, start_executor,
    workspace_with,
};

fn shell_policy() -> TargetPolicy {
    TargetPolicy {
        commands: CommandPolicy::Any,
        shell: true,
        ..TargetPolicy::default()
    }
}

/// One thing a command does to the workspace.
#[derive(Debug, Clone)]
enum Op {
    Create(usize, String),
    Modify(usize, String),
    Chmod(usize, u32),
    Delete(usize),
    MakeDir(usize),
    RemoveDir(usize),
    DirToFile(usize),
    FileToDir(usize),
    Symlink(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..64, "[a-z]{0,20}").prop_map(|(i, s)| Op::Create(i, s)),
        (0usize..64, "[a-z ]{0,20}").prop_map(|(i, s)| Op::Modify(i, s)),
        (
            0usize..64,
            prop_oneof![Just(0o600u32), Just(0o644), Just(0o755), Just(0o700)]
        )
            .prop_map(|(i, m)| Op::Chmod(i, m)),
        (0usize..64).prop_map(Op::Delete),
        (0usize..64).prop_map(Op::MakeDir),
        (0usize..64).prop_map(Op::RemoveDir),
        (0usize..64).prop_map(Op::DirToFile),
        (0usize..64).prop_map(Op::FileToDir),
        (0usize..64).prop_map(Op::Symlink),
    ]
}

const FILES: [&str; 6] = [
    "a.txt",
    "src/b.rs",
    "src/deep/c.ts",
    "bin/run.sh",
    "d e.txt",
    "src/x",
];
const DIRS: [&str; 4] = ["src", "src/deep", "bin", "empty"];

/// The result a restarted executor owes for the attempt it was killed in (other messages
/// are skipped), within 10 s.
async fn owed_result(session: &mut Session) -> ResultMessage {
    wait_until(
        "the restarted executor's result owed for the interrupted attempt",
        Duration::from_secs(10),
        Duration::ZERO,
        async || match session.from_executor.recv().await {
            Some(ExecutorMessage {
                kind: Some(executor_message::Kind::Result(result)),
            }) => Ok(result),
            Some(other) => Err(Some(other.kind)),
            None => Err(None),
        },
    )
    .await
}

/// The shell line for `op`: every path quoted, every step allowed to fail (`;`).
fn script(op: &Op) -> String {
    let file = |i: usize| FILES[i % FILES.len()];
    let dir = |i: usize| DIRS[i % DIRS.len()];
    match op {
        Op::Create(i, text) => {
            format!("mkdir -p new{i}/in && printf '%s' '{text}' > 'new{i}/in/f{i}'")
        }
        Op::Modify(i, text) => format!("printf '%s' '{text}' >> '{}'", file(*i)),
        Op::Chmod(i, mode) => format!("chmod {mode:o} '{}'", file(*i)),
        Op::Delete(i) => format!("rm -f '{}'", file(*i)),
        Op::MakeDir(i) => format!("mkdir -p 'made{i}/sub' && chmod 700 'made{i}'"),
        Op::RemoveDir(i) => format!("rm -rf '{}'", dir(*i)),
        Op::DirToFile(i) => format!("rm -rf '{d}' && echo file > '{d}'", d = dir(*i)),
        Op::FileToDir(i) => format!(
            "rm -f '{f}' && mkdir -p '{f}/inner' && echo x > '{f}/inner/y'",
            f = file(*i)
        ),
        Op::Symlink(i) => format!("ln -sfn /etc 'link{i}'; ln -sf ../a.txt 'src/l{i}' 2>/dev/null"),
    }
}

fn seed(ws: &TestWorkspace) {
    ws.write("a.txt", "alpha\n");
    ws.write("src/b.rs", "fn main() {}\n");
    ws.write("src/deep/c.ts", "let c = 1;\n");
    ws.write("bin/run.sh", "#!/bin/sh\n");
    ws.write("d e.txt", "spaced\n");
    fs::set_permissions(
        ws.root().join("bin/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::create_dir_all(ws.root().join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", ws.root().join("alias")).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn whatever_commands_do_is_undone_when_a_check_fails(
        ops in prop::collection::vec(op(), 1..12),
        in_check in any::<bool>(),
    ) {
        let mut policy = shell_policy();
        let failing = "echo no >&2; exit 1".to_owned();
        if in_check {
            policy.checks = vec![OwnerCheck {
                name: "gate".to_owned(),
                run: failing.clone(),
                timeout: None,
                when: When::Always,
            }];
        }
        let ws = workspace_with(policy);
        seed(&ws);
        let before = snapshot(ws.root());
        let lines: Vec<String> = ops.iter().map(script).collect();
        let commands = serde_json::to_string(&[lines.join("; ") + "; true"]).unwrap();
        let validate = if in_check {
            String::new()
        } else {
            format!(r#","validate":[{}]"#, serde_json::to_string(&failing).unwrap())
        };
        let body = format!(
            r#""edits":[{{"op":"write","path":"src/edited.txt","contents":"e"}}],"commands":{commands}{validate}"#
        );
        let report = ws.apply(&patch("prop", &body));
        prop_assert_eq!(report.status, Status::RolledBack, "{}", report.error);
        let rollback = report.rollback.clone().unwrap();
        prop_assert!(rollback.error.is_empty(), "{:?}", rollback);
        prop_assert_eq!(snapshot(ws.root()), before, "after {:?}", lines);
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
fn gitignored_outputs_are_left_alone_and_rollback_ignore_overrides_both_ways() {
    let ws = workspace_with(TargetPolicy {
        rollback_ignore: vec!["logs/**".to_owned(), "!dist/keep.txt".to_owned()],
        ..shell_policy()
    });
    ws.write(".gitignore", "node_modules/\ndist/\n*.log\n");
    ws.write("src/app.ts", "app\n");
    ws.write("untracked.md", "notes\n");
    git(ws.root(), &["init", "-q"]);
    git(ws.root(), &["add", ".gitignore", "src/app.ts"]);
    git(ws.root(), &["commit", "-qm", "init"]);
    let command = "mkdir -p node_modules/pkg dist logs && echo m > node_modules/pkg/index.js \
                   && echo d > dist/bundle.js && echo k > dist/keep.txt && echo l > logs/run.txt \
                   && echo t > debug.log && echo n > new.ts && echo changed >> src/app.ts \
                   && rm untracked.md \
                   && printf 'hidden.txt\\nsneaky/\\n' >> .gitignore && echo h > hidden.txt \
                   && mkdir -p sneaky evil && echo s > sneaky/s && printf '*\\n' > evil/.gitignore \
                   && echo e > evil/e";
    let body = format!(
        r#""edits":[{{"op":"write","path":"src/new.ts","contents":"x"}}],"commands":[{}],"validate":["false"]"#,
        serde_json::to_string(command).unwrap()
    );
    let report = ws.apply(&patch("ignored", &body));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.rollback.as_ref().unwrap().error.is_empty(),
        "{:?}",
        report.rollback
    );
    // Left alone: ignored by .gitignore, or by rollback_ignore.
    assert_eq!(ws.read("node_modules/pkg/index.js"), "m\n");
    assert_eq!(ws.read("dist/bundle.js"), "d\n");
    assert_eq!(ws.read("debug.log"), "t\n");
    assert_eq!(ws.read("logs/run.txt"), "l\n");
    // Undone: the rest, also what the command hid behind the .gitignore lines it wrote.
    assert!(
        !ws.root().join("dist/keep.txt").exists(),
        "!dist/keep.txt takes it in"
    );
    assert!(!ws.root().join("new.ts").exists());
    assert!(!ws.root().join("src/new.ts").exists());
    assert!(!ws.root().join("hidden.txt").exists());
    assert!(!ws.root().join("sneaky").exists());
    assert!(!ws.root().join("evil").exists());
    assert_eq!(ws.read("src/app.ts"), "app\n");
    assert_eq!(ws.read("untracked.md"), "notes\n");
    assert_eq!(ws.read(".gitignore"), "node_modules/\ndist/\n*.log\n");
    assert!(
        report.rollback.as_ref().unwrap().removed >= 4,
        "{:?}",
        report.rollback
    );
}

#[test]
fn names_that_are_not_utf8_and_symlinks_made_by_commands_are_undone_without_following() {
    let ws = workspace_with(shell_policy());
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), "safe\n").unwrap();
    ws.write("x\u{e9}.txt", "accented\n");
    let before = snapshot(ws.root());
    let command = format!(
        "printf bad > \"$(printf 'odd\\377name')\" && ln -s {out} escape && mkdir real && ln -s {out}/victim real/v",
        out = outside.path().display()
    );
    let body = format!(
        r#""edits":[{{"op":"write","path":"a","contents":"a"}}],"commands":[{}],"validate":["false"]"#,
        serde_json::to_string(&command).unwrap()
    );
    let report = ws.apply(&patch("bytes", &body));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.rollback.as_ref().unwrap().error.is_empty(),
        "{:?}",
        report.rollback
    );
    assert_eq!(snapshot(ws.root()), before);
    assert_eq!(
        fs::read_to_string(outside.path().join("victim")).unwrap(),
        "safe\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_command_then_restart_leaves_the_workspace_whole() {
    let ws = workspace_with(shell_policy());
    seed(&ws);
    let before = snapshot(ws.root());
    let (router_addr, mut sessions) = TestRouter::start().await;
    let config = ws.root().parent().unwrap().join("executor.toml");
    fs::write(
        &config,
        format!(
            "router_url = \"http://{router_addr}\"\nstate_dir = \"{}\"\nreconnect_backoff = \"50ms\"\n\
[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
[[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n\
[targets.MAIN]\ncommands = \"any\"\nshell = true\n",
            ws.ctx.workspace.state_dir.display(),
            ws.root().display()
        ),
    )
    .unwrap();
    let command = "echo more >> a.txt; chmod 600 bin/run.sh; rm -rf src/deep; mkdir -p gen/x; \
                   echo g > gen/x/out.js; rm empty -rf; echo file > empty; touch started; sleep 60";
    let body = format!(
        r#""edits":[{{"op":"write","path":"src/b.rs","contents":"edited"}}],"commands":[{}]"#,
        serde_json::to_string(command).unwrap()
    );
    let mut executor = start_executor(&config);
    let session = sessions.recv().await.unwrap();
    for kind in [
        router_message::Kind::Welcome(Welcome {
            heartbeat_interval_ms: 200,
        }),
        router_message::Kind::Assign(Assign {
            patch: Some(wire::Patch::from(&patch("killed", &body))),
            attempt: 1,
            fencing_token: 1,
            deadline_unix_ms: 0,
            traceparent: String::new(),
        }),
    ] {
        session
            .to_executor
            .send(Ok(RouterMessage { kind: Some(kind) }))
            .await
            .unwrap();
    }
    file_appears(&ws.root().join("started"), "the command to run").await;
    executor.kill().unwrap();
    executor.wait().unwrap();
    drop(session);
    // The orphaned `sleep` is in a session of its own; it writes nothing more.
    let mut restarted = start_executor(&config);
    let mut session = sessions.recv().await.unwrap();
    let owed = owed_result(&mut session).await;
    let report = ghost_core::ApplyReport::try_from(owed.report.unwrap()).unwrap();
    assert_eq!(report.status, Status::Interrupted);
    assert!(
        report.rollback.as_ref().unwrap().error.is_empty(),
        "{:?}",
        report.rollback
    );
    assert_eq!(snapshot(ws.root()), before);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_left_running_by_a_crash_is_stopped_before_the_restart_restores() {
    let ws = workspace_with(shell_policy());
    ws.write("a.txt", "a\n");
    let before = snapshot(ws.root());
    let (router_addr, mut sessions) = TestRouter::start().await;
    let config = ws.root().parent().unwrap().join("executor.toml");
    fs::write(
        &config,
        format!(
            "router_url = \"http://{router_addr}\"\nstate_dir = \"{}\"\nreconnect_backoff = \"50ms\"\n\
[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
[[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n\
[targets.MAIN]\ncommands = \"any\"\nshell = true\n",
            ws.ctx.workspace.state_dir.display(),
            ws.root().display()
        ),
    )
    .unwrap();
    // Writes on, in the workspace, for as long as it lives (bounded: 60 s).
    let command = "touch started; i=0; while [ $i -lt 1200 ]; do echo x >> noise.txt; \
                   sleep 0.05; i=$((i+1)); done";
    let body = format!(
        r#""edits":[{{"op":"write","path":"a.txt","contents":"edited"}}],"commands":[{}]"#,
        serde_json::to_string(command).unwrap()
    );
    let mut executor = start_executor(&config);
    let session = sessions.recv().await.unwrap();
    for kind in [
        router_message::Kind::Welcome(Welcome {
            heartbeat_interval_ms: 200,
        }),
        router_message::Kind::Assign(Assign {
            patch: Some(wire::Patch::from(&patch("left-running", &body))),
            attempt: 1,
            fencing_token: 1,
            deadline_unix_ms: 0,
            traceparent: String::new(),
        }),
    ] {
        session
            .to_executor
            .send(Ok(RouterMessage { kind: Some(kind) }))
            .await
            .unwrap();
    }
    file_appears(&ws.root().join("noise.txt"), "the command to run").await;
    executor.kill().unwrap();
    executor.wait().unwrap();
    drop(session);
    let mut restarted = start_executor(&config);
    let mut session = sessions.recv().await.unwrap();
    owed_result(&mut session).await;
    // Had the loop survived the restart, it would write noise.txt again within 50 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !ws.root().join("noise.txt").exists(),
        "a command of the crashed executor kept writing after the recovery"
    );
    assert_eq!(snapshot(ws.root()), before);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_a_crash_left_in_the_snapshot_store_are_removed_at_start() {
    let ws = workspace_with(shell_policy());
    let store = ws.ctx.workspace.state_dir.join("snapshots/MAIN");
    fs::create_dir_all(store.join("blobs/ab")).unwrap();
    let left = [
        store.join("blobs/ab/.cdef.ghost-tmp"),
        store.join(".manifest.ghost-tmp"),
    ];
    for path in &left {
        fs::write(path, "half written").unwrap();
    }
    fs::write(store.join("blobs/ab/cdef"), "a blob").unwrap();
    let (router_addr, mut sessions) = TestRouter::start().await;
    let config = ws.root().parent().unwrap().join("executor.toml");
    fs::write(
        &config,
        format!(
            "router_url = \"http://{router_addr}\"\nstate_dir = \"{}\"\nreconnect_backoff = \"50ms\"\n\
[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
[[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n",
            ws.ctx.workspace.state_dir.display(),
            ws.root().display()
        ),
    )
    .unwrap();
    let mut executor = start_executor(&config);
    // Connected to the router: the start, recovery included, is done.
    let session = tokio::time::timeout(Duration::from_secs(20), sessions.recv()).await;
    assert!(session.is_ok(), "the executor never connected");
    executor.kill().unwrap();
    executor.wait().unwrap();
    for path in &left {
        assert!(!path.exists(), "{} is left", path.display());
    }
    assert_eq!(
        fs::read_to_string(store.join("blobs/ab/cdef")).unwrap(),
        "a blob"
    );
}

#[test]
fn what_only_the_patchs_own_gitignore_edit_hid_is_removed_too() {
    let ws = workspace_with(shell_policy());
    ws.write(".gitignore", "node_modules/\n");
    git(ws.root(), &["init", "-q"]);
    let before = snapshot(ws.root());
    let body = r#""edits":[{"op":"write","path":".gitignore","contents":"node_modules/\nsecret/\n"}],"commands":["mkdir secret && echo s > secret/key"],"validate":["false"]"#;
    let report = ws.apply(&patch("hide-by-edit", body));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.rollback.as_ref().unwrap().error.is_empty(),
        "{:?}",
        report.rollback
    );
    assert_eq!(snapshot(ws.root()), before);
}

#[test]
fn a_file_over_the_size_limit_changed_by_a_command_is_reported_not_restored_without_blocking() {
    let ws = workspace_with(shell_policy());
    let big = vec![b'x'; 2 * 1024 * 1024];
    fs::write(ws.root().join("big.bin"), &big).unwrap();
    ws.write("small.txt", "small\n");
    let report = ws.apply(&patch(
        "big",
        r#""edits":[{"op":"write","path":"a.txt","contents":"a"}],"commands":["echo more >> big.bin; echo more >> small.txt"],"validate":["false"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    let rollback = report.rollback.unwrap();
    assert!(
        rollback.error.contains("big.bin") && rollback.error.contains("max_file_bytes"),
        "{rollback:?}"
    );
    assert_eq!(ws.read("small.txt"), "small\n");
    assert!(!ws.root().join("a.txt").exists());
    // Trying again cannot help, so the target is not blocked.
    let next = ws.apply(&patch(
        "after-big",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}]"#,
    ));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
}
