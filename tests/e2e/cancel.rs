//! Cancel of a running patch, end to end: the gateway's cancel reaches the router, the router
//! sends Cancel down the Work stream, and the real executor kills the patch's whole process
//! group (a grandchild included) and restores the workspace byte for byte.

use std::time::Duration;

use ghost_runtime::config::ServerConfig;
use ghost_testkit::{POLL_INTERVAL, wait_for, wait_until};
use tokio_util::sync::CancellationToken;

use crate::helpers::{API_KEY, spawn_system};

#[tokio::test]
async fn cancelling_a_running_patch_kills_its_commands_and_rolls_back() {
    let system = spawn_system(false).await;
    let workspace = system.scratch.path().join("cancel-ws");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("a.txt"), "before\n").unwrap();
    let pid_file = system.scratch.path().join("grandchild.pid");

    let (router_grpc, _) = system.system.addr_of("router").unwrap();
    let config = executor::ExecutorConfig {
        server: ServerConfig::ephemeral(),
        router_url: format!("http://{router_grpc}"),
        executor_id: "cancel-test".to_owned(),
        state_dir: system.scratch.path().join("cancel-state"),
        workspaces: vec![executor::WorkspaceConfig {
            target: "MAIN".to_owned(),
            root: workspace.clone(),
        }],
        reconnect_backoff: Duration::from_millis(100),
        targets: [(
            "MAIN".to_owned(),
            executor::TargetPolicy {
                commands: executor::CommandPolicy::Any,
                // The grandchild's pid file is outside the workspace: under the sandbox only
                // paths listed here may be written there.
                writable: vec![system.scratch.path().to_path_buf()],
                ..executor::TargetPolicy::default()
            },
        )]
        .into_iter()
        .collect(),
        ..executor::ExecutorConfig::default()
    };
    let app = executor::App::build(config).await.expect("executor builds");
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone().cancelled_owned()));

    // The command starts a grandchild that ignores SIGTERM, records its pid, then waits.
    let script = format!(
        "trap '' TERM; (trap '' TERM; sleep 120) & echo $! > {}; wait",
        pid_file.display()
    );
    let patch = serde_json::json!({
        "id": "cancel-me",
        "target": "MAIN",
        "description": "a patch that hangs in its command",
        "edits": [
            {"op": "write", "path": "a.txt", "contents": "after\n"},
            {"op": "write", "path": "new/b.txt", "contents": "new\n"}
        ],
        "commands": [format!("sh -c {}", shell_quote(&script))],
        "timeout_s": 300
    });
    assert_eq!(system.submit(&patch).await.status(), 202);

    let grandchild: i32 = wait_for(
        "the command to start (its grandchild's pid file)",
        async || {
            let text = std::fs::read_to_string(&pid_file);
            match text.as_ref().map(|text| text.trim().parse()) {
                Ok(Ok(pid)) => Ok(pid),
                _ => Err(text.map_err(|err| err.to_string())),
            }
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(workspace.join("a.txt")).unwrap(),
        "after\n",
        "the edit is applied while the command runs"
    );

    let cancelled = system
        .http
        .post(format!("{}/v1/patches/cancel-me/cancel", system.gateway()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(cancelled.status().is_success(), "{}", cancelled.status());

    let finished = system.wait_finished("cancel-me").await;
    assert_eq!(finished["status"], "cancelled", "{finished}");
    assert_eq!(
        std::fs::read_to_string(workspace.join("a.txt")).unwrap(),
        "before\n",
        "rolled back byte for byte"
    );
    assert!(
        !workspace.join("new").exists(),
        "created files and directories removed"
    );
    let proc_entry = std::path::PathBuf::from(format!("/proc/{grandchild}"));
    let gone = format!("grandchild {grandchild} (ignoring SIGTERM) gone after the cancel");
    wait_until(&gone, Duration::from_secs(10), POLL_INTERVAL, async || {
        if proc_entry.exists() && !zombie(&proc_entry) {
            Err("alive")
        } else {
            Ok(())
        }
    })
    .await;

    stop.cancel();
    running.await.unwrap().unwrap();
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A killed process whose parent has not reaped it yet is dead too.
fn zombie(proc_entry: &std::path::Path) -> bool {
    std::fs::read_to_string(proc_entry.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
