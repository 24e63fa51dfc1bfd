//! Must show 2: the real executor binary killed with SIGKILL at many points during an apply;
//! after a restart the workspace is byte-identical to before (and the patch is reported
//! `interrupted`) or fully applied (and recorded) — never half-applied.
//!
//! A small test router speaks the Work stream: it takes the executor's Hello, assigns the
//! patch, and records every message. A pause after each write (the debug build's
//! `executor::TEST_WRITE_DELAY_VAR`, not a config key) slows the writes so kills land between
//! them; a config naming the old `test_write_delay` key is refused.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use ghost_core::Status;
use ghost_proto::executor::v1::{
    Assign, ExecutorMessage, RouterMessage, Welcome, executor_message, router_message,
};
use ghost_proto::router::v1 as wire;

use crate::helpers::{
    Session, TestRouter, file_appears, patch, snapshot, start_executor,
    start_executor_with_write_delay, workspace,
};

/// The pause after each file written by the executor that is killed.
const WRITE_DELAY: Duration = Duration::from_millis(4);

type Snapshot = BTreeMap<String, (Option<Vec<u8>>, u32)>;

fn reset(root: &Path, base: &Snapshot) {
    fs::remove_dir_all(root).unwrap();
    fs::create_dir_all(root).unwrap();
    for (rel, (bytes, mode)) in base {
        let path = root.join(rel);
        match bytes {
            None => fs::create_dir_all(&path).unwrap(),
            Some(bytes) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
}

/// Reads the restarted executor's first messages: an owed Result comes before any heartbeat.
async fn owed_result(session: &mut Session) -> Option<ExecutorMessage> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), session.from_executor.recv()).await;
        match next.ok().flatten()?.kind {
            Some(executor_message::Kind::Result(result)) => {
                return Some(ExecutorMessage {
                    kind: Some(executor_message::Kind::Result(result)),
                });
            }
            Some(executor_message::Kind::Heartbeat(_)) => return None,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_leaves_the_workspace_whole_after_restart() {
    let ws = workspace();
    for i in 0..12 {
        ws.write(
            &format!("src/file{i}.txt"),
            &format!("original {i}\n").repeat(50),
        );
    }
    ws.write("old.txt", "to be renamed\n");
    let edits: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"op":"write","path":"src/file{i}.txt","contents":"changed {i}\n"}}"#))
        .chain(
            (0..4).map(|i| {
                format!(r#"{{"op":"write","path":"new{i}/deep/n.txt","contents":"new"}}"#)
            }),
        )
        .chain([r#"{"op":"rename","from":"old.txt","to":"moved/old.txt"}"#.to_owned()])
        .collect();
    let body = format!(r#""edits":[{}]"#, edits.join(","));
    let base = snapshot(ws.root());
    let expected = {
        let mut other = workspace();
        reset(other.root(), &base);
        // reset made the root anew: its identity is the new directory's (the old inode number
        // comes back only when no other test took it first).
        other.ctx.root_id = executor::beneath::RootId::of(other.root()).unwrap();
        let report = other.apply(&patch("p", &body));
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
        snapshot(other.root())
    };

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

    let (mut interrupted, mut applied, mut untouched) = (0, 0, 0);
    for trial in 0u64..50 {
        let mut executor = start_executor_with_write_delay(&config, WRITE_DELAY);
        let session = sessions.recv().await.unwrap();
        let id = format!("crash-{trial}");
        let wire_patch = wire::Patch::from(&patch(&id, &body));
        for kind in [
            router_message::Kind::Welcome(Welcome {
                heartbeat_interval_ms: 200,
            }),
            router_message::Kind::Assign(Assign {
                patch: Some(wire_patch),
                attempt: 1,
                fencing_token: trial + 1,
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
        // Kill points spread from "before the journal" to "after the last write".
        tokio::time::sleep(Duration::from_millis(trial * 3)).await;
        executor.kill().unwrap();
        executor.wait().unwrap();
        drop(session);

        let mut restarted = start_executor(&config);
        let mut session = sessions.recv().await.unwrap();
        // The executor dials the router only after its recovery finished.
        let now = snapshot(ws.root());
        let owed = owed_result(&mut session).await;
        if now == base {
            if let Some(ExecutorMessage {
                kind: Some(executor_message::Kind::Result(result)),
            }) = owed
            {
                assert_eq!(result.patch_id, id);
                assert_eq!(result.fencing_token, trial + 1);
                let report = ghost_core::ApplyReport::try_from(result.report.unwrap()).unwrap();
                assert_eq!(report.status, Status::Interrupted);
                interrupted += 1;
            } else {
                untouched += 1;
            }
        } else {
            assert_eq!(
                now, expected,
                "trial {trial}: the workspace is half-applied"
            );
            assert!(
                owed.is_none(),
                "trial {trial}: an applied patch was reported interrupted"
            );
            applied += 1;
        }
        restarted.kill().unwrap();
        restarted.wait().unwrap();
        reset(ws.root(), &base);
    }
    eprintln!(
        "50 kills: {interrupted} interrupted and rolled back, {applied} fully applied, {untouched} before any journal"
    );
    assert!(
        interrupted >= 10,
        "too few kills landed mid-apply: {interrupted}"
    );
}

/// Issue 23: the executor killed with SIGKILL while an agent runs: after a restart the
/// agent's leftovers are stopped, the workspace is whole again (the snapshot taken before the
/// agent restored, its new file removed) and the patch is reported `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_an_agent_runs_leaves_the_workspace_whole_after_restart() {
    kill_9_while_an_agent_runs(false).await;
}

/// Issue 23: the same with a git work tree whose `.git/config`, `.git/info/` and
/// `.git/hooks/` the agent changed before the executor died: the guard's copies of them
/// survive the crash and are put back byte for byte, so no planted hook or filter outlives
/// the interrupted patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_an_agent_poisons_git_restores_its_config_info_and_hooks_after_restart() {
    kill_9_while_an_agent_runs(true).await;
}

/// Every file under `.git/config`, `.git/info` and `.git/hooks`: its mode and its bytes as
/// text (all of them are text; a failure shows them readably).
fn git_guarded(root: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut shown = |rel: String, (bytes, mode): (Option<Vec<u8>>, u32)| {
        let text = match bytes {
            None => "directory".to_owned(),
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        found.insert(rel, format!("{mode:o} {text}"));
    };
    for name in ["config", "info", "hooks"] {
        let path = root.join(".git").join(name);
        if path.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            shown(name.to_owned(), (Some(fs::read(&path).unwrap()), mode));
        } else if path.is_dir() {
            for (rel, node) in snapshot(&path) {
                shown(format!("{name}/{rel}"), node);
            }
        }
    }
    found
}

async fn kill_9_while_an_agent_runs(with_git: bool) {
    let ws = workspace();
    ws.write("a.txt", "original\n");
    let mut agent = "echo changed >> a.txt; echo half > made.txt; sleep 30".to_owned();
    if with_git {
        for args in [
            &["init", "-q"][..],
            &["add", "a.txt"],
            &["commit", "-qm", "init"],
        ] {
            let status = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .current_dir(ws.root())
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        }
        fs::create_dir_all(ws.root().join(".git/info")).unwrap();
        fs::write(ws.root().join(".git/info/exclude"), "# kept\n").unwrap();
        // Changed before made.txt appears, so the kill lands after every one of them.
        agent = format!(
            "printf '[filter \"x\"]\\n\\tclean = cat\\n' >> .git/config; \
             echo '* filter=x' > .git/info/attributes; echo planted > .git/info/exclude; \
             printf '#!/bin/sh\\nexit 0\\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; \
             rm -f .git/hooks/*.sample; {agent}"
        );
    }
    let git_before = git_guarded(ws.root());
    let base = snapshot(ws.root());
    let (router_addr, mut sessions) = TestRouter::start().await;
    let config = ws.root().parent().unwrap().join("executor.toml");
    fs::write(
        &config,
        format!(
            "router_url = \"http://{router_addr}\"\nstate_dir = \"{}\"\nreconnect_backoff = \"50ms\"\n\
[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
[[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n\
[targets.MAIN.agent]\ncli = \"command\"\ntimeout = \"60s\"\n\
command = {command}\n",
            ws.ctx.workspace.state_dir.display(),
            ws.root().display(),
            command = toml_string(&shell_words::join(["sh", "-c", &agent])),
        ),
    )
    .unwrap();
    let mut executor = start_executor(&config);
    let session = sessions.recv().await.unwrap();
    let wire_patch = wire::Patch::from(&patch("agent-crash", r#""agent":{"task":"edit slowly"}"#));
    for kind in [
        router_message::Kind::Welcome(Welcome {
            heartbeat_interval_ms: 200,
        }),
        router_message::Kind::Assign(Assign {
            patch: Some(wire_patch),
            attempt: 1,
            fencing_token: 7,
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
    let made = ws.root().join("made.txt");
    file_appears(&made, "the agent to start editing").await;
    executor.kill().unwrap();
    executor.wait().unwrap();
    drop(session);

    let mut restarted = start_executor(&config);
    let mut session = sessions.recv().await.unwrap();
    let owed = owed_result(&mut session).await;
    assert_eq!(snapshot(ws.root()), base, "the workspace is whole again");
    assert_eq!(
        git_guarded(ws.root()),
        git_before,
        ".git/config, info/ and hooks/ are as before the agent ran"
    );
    let Some(ExecutorMessage {
        kind: Some(executor_message::Kind::Result(result)),
    }) = owed
    else {
        panic!("no result owed for the interrupted agent patch: {owed:?}");
    };
    assert_eq!(result.patch_id, "agent-crash");
    let report = ghost_core::ApplyReport::try_from(result.report.unwrap()).unwrap();
    assert_eq!(report.status, Status::Interrupted);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The write delay is not a config key: a config file naming the former `test_write_delay`
/// is refused at start like any unknown key, and the same file without it loads.
#[test]
fn a_config_naming_test_write_delay_is_refused_like_any_unknown_key() {
    let ws = workspace();
    let dir = ws.root().parent().unwrap();
    let base = format!(
        "router_url = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\n\
[[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n",
        ws.ctx.workspace.state_dir.display(),
        ws.root().display()
    );
    let print_config = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_executor"))
            .arg("--config")
            .arg(&path)
            .arg("--print-config")
            .output()
            .unwrap()
    };
    let plain = print_config("plain.toml", &base);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let knob = print_config("knob.toml", &format!("test_write_delay = \"4ms\"\n{base}"));
    let stderr = String::from_utf8_lossy(&knob.stderr);
    assert!(!knob.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("test_write_delay"), "{stderr}");
}
