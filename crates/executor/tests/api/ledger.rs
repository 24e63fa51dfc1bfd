//! Must show 6: a re-delivered patch (same id and content hash) is not applied twice.

use ghost_core::Status;

use crate::helpers::{patch, workspace};

#[test]
fn a_redelivered_patch_returns_the_recorded_result_and_touches_nothing() {
    let ws = workspace();
    ws.write("log.txt", "start\n");
    let append = patch(
        "append-once",
        r#""edits":[{"op":"diff","path":"log.txt","diff":"@@ -1 +1,2 @@\n start\n+once\n"}]"#,
    );
    let first = ws.apply(&append);
    assert_eq!(first.status, Status::Succeeded, "{}", first.error);
    assert_eq!(ws.read("log.txt"), "start\nonce\n");
    // Someone edits the file; a second delivery must neither re-apply nor undo anything.
    ws.write("log.txt", "start\nonce\nlater\n");
    let second = ws.apply(&append);
    assert_eq!(second, first);
    assert_eq!(ws.read("log.txt"), "start\nonce\nlater\n");
    // A patch that was rolled back is not recorded, so a retry runs again.
    let failing = patch(
        "fails",
        r#""edits":[{"op":"replace","path":"log.txt","search":"absent","replace":"x"}]"#,
    );
    assert_eq!(ws.apply(&failing).status, Status::Failed);
    ws.write("log.txt", "absent\n");
    assert_eq!(ws.apply(&failing).status, Status::Succeeded);
}

/// Issue 23 point 5: a re-delivered agent patch does not run the agent again: the ledger
/// answers with the recorded outcome, the agent's diff included, and the workspace is left as
/// it is; a patch the agent's check rolled back is not recorded, so its retry is a new attempt
/// from the restored workspace.
#[test]
fn a_redelivered_agent_patch_does_not_run_the_agent_twice() {
    use std::time::Duration;

    use executor::{AgentConfig, CommandPolicy, TargetPolicy};

    // The agent counts its runs in a file outside the workspace (a writable path of the
    // sandbox) and writes a file of its own in the workspace.
    let counter_dir = tempfile::tempdir().unwrap();
    let counter = counter_dir.path().join("runs");
    let ws = crate::helpers::workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["test".to_owned()]),
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            command: Some(format!(
                "sh -c 'echo run >> {counter}; echo made by the agent > made.txt; echo Done.'",
                counter = counter.display()
            )),
            timeout: Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        writable: vec![counter_dir.path().to_path_buf()],
        ..TargetPolicy::default()
    });
    let task = patch(
        "agent-once",
        r#""agent":{"task":"make made.txt"},"validate":["test -f made.txt"],"timeout_s":20"#,
    );
    let first = ws.apply(&task);
    assert_eq!(
        first.status,
        Status::Succeeded,
        "{}: {:?}",
        first.error,
        first.commands
    );
    let agent = first.agent.as_ref().expect("the agent run is reported");
    assert!(agent.diff.contains("made by the agent"), "{}", agent.diff);
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");

    ws.write("made.txt", "edited since\n");
    let second = ws.apply(&task);
    assert_eq!(second, first, "the recorded outcome, agent diff included");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\n",
        "the agent did not run again"
    );
    assert_eq!(ws.read("made.txt"), "edited since\n");

    // A rolled-back agent patch: its retry runs the agent again, from the restored workspace.
    let failing = patch(
        "agent-check-fails",
        r#""agent":{"task":"make made.txt"},"validate":["test -f absent.txt"],"timeout_s":20"#,
    );
    ws.write("made.txt", "before\n");
    let rolled = ws.apply(&failing);
    assert_eq!(rolled.status, Status::RolledBack, "{}", rolled.error);
    assert_eq!(ws.read("made.txt"), "before\n");
    let retried = ws.apply(&failing);
    assert_eq!(retried.status, Status::RolledBack, "{}", retried.error);
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\nrun\nrun\n"
    );
    assert_eq!(ws.read("made.txt"), "before\n");
}
