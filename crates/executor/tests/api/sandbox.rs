//! Issue 23, must show: under Landlock a command (or an agent) may write only in the
//! workspace and its private temp dir (`TMPDIR`); a write outside fails and nothing outside
//! changes.

use executor::{AgentConfig, CommandPolicy, SandboxMode, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{patch, snapshot, workspace_with};

/// Whether this kernel has Landlock (the executor's own probe: a ruleset can be made).
fn landlock_kernel() -> bool {
    let available = executor::commands::sandbox::available();
    if !available {
        eprintln!("\n*** SKIPPED: this kernel has no Landlock ***\n");
    }
    available
}

#[test]
fn a_command_writing_outside_the_workspace_fails_and_nothing_outside_changes() {
    if !landlock_kernel() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("existing.txt"), "before\n").unwrap();
    let before_outside = snapshot(outside.path());
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        shell: true,
        ..TargetPolicy::default()
    });
    ws.write("a.txt", "a\n");
    let line = format!(
        "echo inside > b.txt && echo tmp > \"$TMPDIR/t\" && cat \"$TMPDIR/t\" && \
         echo evil > {dir}/new.txt; echo evil >> {dir}/existing.txt; \
         test ! -e {dir}/new.txt",
        dir = outside.path().display()
    );
    let report = ws.apply(&patch(
        "sandboxed",
        &format!(r#""commands":[{}]"#, serde_json::to_string(&line).unwrap()),
    ));
    assert_eq!(report.sandbox, "landlock");
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let output = &report.commands[0].output_tail;
    assert!(output.contains("tmp"), "the temp dir is writable: {output}");
    assert!(output.contains("Permission denied"), "{output}");
    assert_eq!(snapshot(outside.path()), before_outside);
    assert_eq!(ws.read("b.txt"), "inside\n");
}

#[test]
fn an_agent_writing_outside_the_workspace_fails_and_is_rolled_back() {
    if !landlock_kernel() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let ws = workspace_with(TargetPolicy {
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            command: Some(format!(
                "sh -c 'echo mine > made.txt && echo evil > {}/evil.txt'",
                outside.path().display()
            )),
            timeout: std::time::Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    ws.write("a.txt", "a\n");
    let before = snapshot(ws.root());
    let report = ws.apply(&patch("agent-out", r#""agent":{"task":"write outside"}"#));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert_eq!(report.sandbox, "landlock");
    assert!(!outside.path().join("evil.txt").exists());
    assert_eq!(snapshot(ws.root()), before);
    let agent = report.agent.expect("the agent's run");
    assert_ne!(agent.exit_code, Some(0));
    assert!(
        agent.transcript_tail.contains("Permission denied"),
        "{}",
        agent.transcript_tail
    );
    assert_eq!(agent.files, ["made.txt"]);
}

#[test]
fn with_the_sandbox_off_a_command_may_write_outside() {
    let outside = tempfile::tempdir().unwrap();
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        shell: true,
        sandbox: SandboxMode::Off,
        ..TargetPolicy::default()
    });
    let line = format!("echo ok > {}/out.txt", outside.path().display());
    let report = ws.apply(&patch(
        "unsandboxed",
        &format!(r#""commands":[{}]"#, serde_json::to_string(&line).unwrap()),
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(report.sandbox, "none");
    assert!(outside.path().join("out.txt").exists());
}

/// Issue 23 review: under Landlock (ABI 6 or later) a command cannot signal a process outside
/// its sandbox: `kill -0` on the executor's own process fails; with the sandbox off it works.
#[test]
fn a_sandboxed_command_cannot_signal_a_process_outside_its_sandbox() {
    if !landlock_kernel() {
        return;
    }
    if executor::commands::sandbox::abi() < 6 {
        eprintln!("\n*** SKIPPED: this kernel's Landlock has no signal scope (ABI < 6) ***\n");
        return;
    }
    let line = format!("kill -0 {}", std::process::id());
    let body = format!(r#""commands":[{}]"#, serde_json::to_string(&line).unwrap());
    let mut outcomes = Vec::new();
    for sandbox in [SandboxMode::Auto, SandboxMode::Off] {
        let ws = workspace_with(TargetPolicy {
            commands: CommandPolicy::Any,
            shell: true,
            sandbox,
            ..TargetPolicy::default()
        });
        let report = ws.apply(&patch("signal", &body));
        outcomes.push((
            report.sandbox.clone(),
            report.status,
            report.commands[0].output_tail.clone(),
        ));
    }
    let (name, status, output) = &outcomes[0];
    assert_eq!(name, "landlock");
    assert_eq!(
        *status,
        Status::RolledBack,
        "kill -0 reached the executor: {output}"
    );
    assert!(
        output.contains("ermitted") || output.contains("denied"),
        "{output}"
    );
    let (name, status, output) = &outcomes[1];
    assert_eq!(name, "none");
    assert_eq!(
        *status,
        Status::Succeeded,
        "unconfined, kill -0 works: {output}"
    );
}
