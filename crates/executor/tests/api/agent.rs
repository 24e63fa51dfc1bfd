//! Must show 8: an agent hand-off completes when the completion file appears and times out
//! cleanly when it does not.

use std::time::{Duration, Instant};

use executor::{AgentConfig, CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{TestWorkspace, patch, workspace_with};

fn agent_workspace() -> TestWorkspace {
    let inbox = tempfile::tempdir().unwrap().keep();
    workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["test".to_owned()]),
        agent: Some(AgentConfig {
            inbox: Some(inbox),
            command: None,
            timeout: Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    })
}

fn inbox(ws: &TestWorkspace) -> std::path::PathBuf {
    ws.ctx
        .workspace
        .policy
        .agent
        .as_ref()
        .unwrap()
        .inbox
        .clone()
        .unwrap()
}

#[test]
fn the_hand_off_completes_when_the_agent_writes_the_completion_file() {
    let ws = agent_workspace();
    let inbox = inbox(&ws);
    let root = ws.root().to_owned();
    // The "agent": waits for its task file, edits the workspace, then signals completion.
    let agent = std::thread::spawn(move || {
        let task = inbox.join("task-1.task.md");
        let start = Instant::now();
        while !task.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&task).unwrap();
        assert!(text.contains("rename the widget"), "{text}");
        std::fs::write(root.join("widget.txt"), "renamed").unwrap();
        std::fs::write(inbox.join("task-1.done"), "ok\n").unwrap();
    });
    let report = ws.apply(&patch(
        "task-1",
        r#""agent":{"task":"rename the widget"},"validate":["test -f widget.txt"],"timeout_s":10"#,
    ));
    agent.join().unwrap();
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(report.commands.len(), 1);
    assert!(report.stages.iter().any(|s| s.stage == "agent"));
    assert_eq!(ws.read("widget.txt"), "renamed");
}

#[test]
fn the_hand_off_times_out_cleanly_without_a_completion_file() {
    let ws = agent_workspace();
    let started = Instant::now();
    let report = ws.apply(&patch(
        "task-2",
        r#""agent":{"task":"never done"},"timeout_s":1"#,
    ));
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    assert!(
        report.error.contains("did not complete"),
        "{}",
        report.error
    );
    assert!(inbox(&ws).join("task-2.task.md").exists());
    eprintln!("agent deadline 1 s: returned after {:?}", started.elapsed());
    let failed = std::fs::write(inbox(&ws).join("task-3.done"), "failed: could not build\n");
    failed.unwrap();
    // A stale completion file from before the hand-off does not count: it is removed first.
    let report = ws.apply(&patch("task-3", r#""agent":{"task":"x"},"timeout_s":1"#));
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
}

/// Issue 23: cancelling a running agent CLI kills its whole tree (a background child too) and
/// restores the workspace; what it had written is gone.
#[test]
fn cancelling_a_running_agent_kills_its_tree_and_rolls_back() {
    let ws = workspace_with(TargetPolicy {
        kill_grace: Duration::from_millis(200),
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            command: Some(
                "sh -c 'echo half > made.txt; sleep 60 & echo $! > pids.txt; echo $$ >> pids.txt; wait'"
                    .to_owned(),
            ),
            timeout: Duration::from_secs(60),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    ws.write("a.txt", "a\n");
    let before = crate::helpers::snapshot(ws.root());
    let cancel = tokio_util::sync::CancellationToken::new();
    let pids_file = ws.root().join("pids.txt");
    let (report, pids) = std::thread::scope(|scope| {
        let applying = scope.spawn(|| {
            executor::apply::apply(
                &ws.ctx,
                &patch("agent-cancel", r#""agent":{"task":"work slowly"}"#),
                executor::apply::Lease::default(),
                false,
                &cancel,
            )
        });
        let start = Instant::now();
        let mut pids = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
            pids = text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect();
            if pids.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pids.len(), 2, "the agent started its background child");
        cancel.cancel();
        (applying.join().unwrap(), pids)
    });
    assert_eq!(report.status, Status::Cancelled, "{}", report.error);
    assert_eq!(crate::helpers::snapshot(ws.root()), before);
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        assert!(!alive, "process {pid} of the agent is still running");
    }
    let agent = report.agent.expect("the agent's run");
    assert!(
        agent.files.contains(&"made.txt".to_owned()),
        "{:?}",
        agent.files
    );
    assert!(report.rollback.is_some_and(|r| r.error.is_empty()));
}

/// The old system's phase document (`notes`, `phases`, `executionSteps`,
/// `postMutationBuild`), handed to a scripted agent. `legacy_checks` names the programs the
/// target allows, so only those `postMutationBuild` checks run.
fn legacy_phase_patch_with(legacy_checks: &[&str]) -> ghost_core::ApplyReport {
    legacy_patch_through(
        "phase-agent-task.json",
        legacy_checks,
        "sh -c 'grep -q \"Phase 1: Create src-nextgen/shell/\" && mkdir -p src-nextgen/shell \
         && echo \"export {};\" > src-nextgen/shell/index.ts && echo created the shell'",
    )
}

/// The legacy document `fixture` (in ghost-core's legacy fixtures), normalised and handed
/// to the scripted agent `command` (which reads the task on stdin) on a target allowing
/// the programs `legacy_checks`; the workspace is checked to be restored byte for byte
/// unless the patch succeeded.
fn legacy_patch_through(
    fixture: &str,
    legacy_checks: &[&str],
    command: &str,
) -> ghost_core::ApplyReport {
    let fixture = ghost_testkit::repo_root()
        .join("crates/ghost-core/tests/fixtures/legacy")
        .join(fixture);
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    let options = ghost_core::LegacyOptions {
        default_target: Some(ghost_core::TargetName::parse("MAIN").unwrap()),
        ..ghost_core::LegacyOptions::default()
    };
    let legacy = ghost_core::normalise(value, &options).unwrap().patch;
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(legacy_checks.iter().map(|p| (*p).to_owned()).collect()),
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            // The "agent" reads the task on stdin and does what it asks.
            command: Some(command.to_owned()),
            timeout: Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    ws.write("package.json", "{}\n");
    let before = crate::helpers::snapshot(ws.root());
    let report = ws.apply(&legacy);
    if report.status != Status::Succeeded {
        assert_eq!(
            crate::helpers::snapshot(ws.root()),
            before,
            "restored byte for byte"
        );
    }
    report
}

#[test]
fn a_legacy_phase_patch_runs_through_a_scripted_agent_to_succeeded() {
    // No program of its postMutationBuild is allowed: every check is skipped and reported.
    let report = legacy_phase_patch_with(&[]);
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let agent = report.agent.expect("the agent's run");
    assert_eq!(
        agent.files,
        [
            "src-nextgen",
            "src-nextgen/shell",
            "src-nextgen/shell/index.ts"
        ]
    );
    assert!(agent.diff.contains("+export {};"), "{}", agent.diff);
    assert_eq!(agent.final_message, "created the shell");
    assert!(
        report.commands.iter().all(|c| c.skipped),
        "{:?}",
        report.commands
    );
}

#[test]
fn a_legacy_phase_patch_whose_check_fails_is_rolled_back_with_the_checks_diagnostics() {
    // `chmod +x scripts/*.sh` is allowed and runs without a shell: no such file, it fails.
    let report = legacy_phase_patch_with(&["chmod"]);
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(
        report.error.contains("chmod +x scripts/*.sh"),
        "{}",
        report.error
    );
    let chmod = report
        .commands
        .iter()
        .find(|c| c.command.starts_with("chmod"))
        .expect("the chmod check ran");
    assert_ne!(chmod.exit_code, Some(0));
    assert!(
        chmod.output_tail.contains("scripts/*.sh"),
        "{}",
        chmod.output_tail
    );
    assert!(report.agent.is_some_and(|a| a.diff.contains("+export {};")));
}

/// The other prose shape of the old system: `notes` and `phases` of `section`/`actions`,
/// with no id and no target. The scripted agent finds a note and an action in its prompt
/// and does what they ask; the echo of `postMutationBuild` runs as a check.
#[test]
fn a_legacy_notes_and_actions_patch_runs_through_a_scripted_agent_to_succeeded() {
    let report = legacy_patch_through(
        "phase-no-id-no-target.json",
        &["echo"],
        "sh -c 'grep -q \"MISSION: Repair patch quarantine system\" && \
         grep -q \"Move failed patches to .patches/failed/. directory\" /dev/stdin && \
         mkdir -p patches/failed && echo moved > patches/failed/README && echo made patches/failed'",
    );
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let agent = report.agent.expect("the agent's run");
    assert_eq!(
        agent.files,
        ["patches", "patches/failed", "patches/failed/README"]
    );
    assert_eq!(agent.final_message, "made patches/failed");
    let check = report
        .commands
        .iter()
        .find(|c| c.command.starts_with("echo"))
        .expect("the postMutationBuild echo ran as a check");
    assert_eq!(check.exit_code, Some(0), "{check:?}");
}

/// Figures (printed, not asserted): the overhead of the hand-off and the snapshot around a
/// no-op agent (`true`) on a 10-file and a 10,000-file workspace.
#[test]
fn overhead_of_a_no_op_agent_is_measured() {
    for files in [10usize, 10_000] {
        let ws = workspace_with(TargetPolicy {
            agent: Some(AgentConfig {
                cli: Some("command".to_owned()),
                command: Some("true".to_owned()),
                timeout: Duration::from_secs(60),
                ..AgentConfig::default()
            }),
            ..TargetPolicy::default()
        });
        for i in 0..files {
            ws.write(&format!("d{}/f{i}.txt", i % 100), "x\n");
        }
        for run in ["first", "second"] {
            let started = Instant::now();
            let report = ws.apply(&patch(
                &format!("noop-{run}"),
                r#""agent":{"task":"nothing"}"#,
            ));
            let total = started.elapsed();
            assert_eq!(report.status, Status::Succeeded, "{}", report.error);
            let stages: Vec<String> = report
                .stages
                .iter()
                .map(|s| format!("{} {:.1} ms", s.stage, s.duration_us as f64 / 1000.0))
                .collect();
            eprintln!(
                "no-op agent, {files} files, {run} run: {:.1} ms in all ({})",
                total.as_secs_f64() * 1000.0,
                stages.join(", ")
            );
        }
    }
}

/// Issue 23 review: the values of the agent's `env` and of allowlisted variables never
/// appear in a report, whatever the agent prints or writes. The values are variables the test
/// process already has (its code may not set any): nextest's run id stands for the agent's
/// API key, cargo's manifest dir for an allowlisted token.
#[test]
fn secret_values_the_agent_prints_or_writes_are_redacted_from_every_reported_text() {
    let key = std::env::var("NEXTEST_RUN_ID").expect("run under cargo nextest");
    let token = std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo");
    assert!(key.len() >= 8 && token.len() >= 8);
    let mut allowlist = TargetPolicy::default().env_allowlist;
    allowlist.push("CARGO_MANIFEST_DIR".to_owned());
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        env_allowlist: allowlist,
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            command: Some(
                "sh -c 'echo \"key $NEXTEST_RUN_ID token $CARGO_MANIFEST_DIR\"; \
                 echo \"$NEXTEST_RUN_ID\" > \"k-$NEXTEST_RUN_ID.txt\"; \
                 echo \"done with $NEXTEST_RUN_ID\"'"
                    .to_owned(),
            ),
            env: vec!["NEXTEST_RUN_ID".to_owned()],
            timeout: Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch(
        "secret",
        r#""agent":{"task":"print the key"},"validate":["sh -c 'echo check $CARGO_MANIFEST_DIR; exit 1'"],"timeout_s":20"#,
    ));
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains(&key), "the agent's key is reported: {text}");
    assert!(
        !text.contains(&token),
        "an allowlisted value is reported: {text}"
    );
    assert!(text.contains("[redacted:NEXTEST_RUN_ID]"), "{text}");
    assert!(text.contains("[redacted:CARGO_MANIFEST_DIR]"), "{text}");
    let agent = report.agent.expect("the agent's run");
    assert!(
        agent
            .files
            .iter()
            .any(|f| f.contains("[redacted:NEXTEST_RUN_ID]")),
        "{:?}",
        agent.files
    );
    assert!(
        agent.final_message.contains("[redacted:"),
        "{}",
        agent.final_message
    );
}

/// Issue 23 review: on a target with an agent, a patch may not rewrite the files an agent
/// CLI takes its settings from; the refusal names the path and nothing is written.
#[test]
fn a_patch_editing_an_agent_config_file_is_refused_on_a_target_with_an_agent() {
    let ws = agent_workspace();
    for path in [
        ".claude/settings.json",
        ".gemini/settings.json",
        "opencode.json",
        ".aider.conf.yml",
        ".env",
        "sub/.env.local",
    ] {
        let body =
            format!(r#""edits":[{{"op":"write","path":"{path}","contents":"x"}}],"timeout_s":5"#);
        let report = ws.apply(&patch("cfg", &body));
        assert_eq!(report.status, Status::Rejected, "{path}: {}", report.error);
        assert!(report.error.contains(path), "{}", report.error);
        assert!(!ws.root().join(path).exists(), "{path} was written");
    }
    // Other files still go through.
    let report = ws.apply(&patch(
        "ok",
        r#""edits":[{"op":"write","path":"src/main.txt","contents":"x"}],"timeout_s":5"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
}

/// Issue 23 review: however many paths (with long names) an agent makes, its part of the
/// report stays within 1 MiB: the paths are listed up to a byte budget, then counted.
#[test]
fn the_agent_report_stays_within_one_mib_however_long_the_paths_it_made() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            // 6,000 empty files with 240-byte names: 1.4 MB of paths.
            command: Some(
                "sh -c 'i=0; while [ $i -lt 6000 ]; do : > \"$(printf %0240d $i)\"; i=$((i+1)); done'"
                    .to_owned(),
            ),
            timeout: Duration::from_secs(120),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch(
        "many",
        r#""agent":{"task":"make files"},"timeout_s":120"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let agent = report.agent.expect("the agent's run");
    let listed: usize = agent.files.iter().map(String::len).sum();
    let total = listed + agent.diff.len() + agent.transcript_tail.len() + agent.final_message.len();
    eprintln!(
        "agent report: {} paths listed ({listed} bytes), diff {} bytes, total {total} bytes",
        agent.files.len(),
        agent.diff.len()
    );
    assert!(
        total <= 1024 * 1024,
        "the agent's report holds {total} bytes"
    );
    let last = agent.files.last().unwrap();
    assert!(last.contains("more paths not listed"), "{last}");
}

/// Issue 23 review: the inbox hand-off's agent command gets what an agent CLI gets: the task
/// on stdin and in `GHOST_TASK_FILE` (also its last argument), and the agent's `env`.
#[test]
fn the_inbox_agent_command_gets_the_task_file_variable_stdin_and_its_env() {
    let inbox = tempfile::tempdir().unwrap().keep();
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["test".to_owned()]),
        agent: Some(AgentConfig {
            inbox: Some(inbox),
            command: Some(
                "sh -c 'test \"$GHOST_TASK_FILE\" = \"$0\" && test -n \"$NEXTEST_RUN_ID\" \
                 && grep -q \"polish the inbox\" && echo ok > handed.txt'"
                    .to_owned(),
            ),
            env: vec!["NEXTEST_RUN_ID".to_owned()],
            timeout: Duration::from_secs(30),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch(
        "inbox-cmd",
        r#""agent":{"task":"polish the inbox"},"validate":["test -f handed.txt"],"timeout_s":20"#,
    ));
    assert_eq!(
        report.status,
        Status::Succeeded,
        "{}: {:?}",
        report.error,
        report.commands
    );
    assert_eq!(ws.read("handed.txt"), "ok\n");
}

/// Issue 23 review: the checks after an agent get a deadline of their own, not what the agent
/// left of its timeout: an agent using most of its 4 s, then a 2 s check, succeeds.
#[test]
fn checks_after_an_agent_get_their_own_deadline_not_the_agents_leftover() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sleep".to_owned()]),
        agent: Some(AgentConfig {
            cli: Some("command".to_owned()),
            command: Some("sleep 3".to_owned()),
            timeout: Duration::from_secs(4),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch(
        "own-deadline",
        r#""agent":{"task":"take your time"},"validate":["sleep 2"]"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
}
