//! Issue 23, must show: a real agent CLI (aider, from `./.venv-aider`, made by
//! `scripts/agent-env`) pointed at a fake OpenAI-compatible model server on 127.0.0.1 that
//! answers with a canned edit in aider's own `whole` edit format. The agent really edits the
//! workspace, then the checks run: passing, the patch succeeds and the report holds the
//! agent's diff; failing, the workspace is restored byte for byte and the agent's new file is
//! gone, with the check's diagnostics reported.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use executor::{AgentConfig, CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{TestWorkspace, patch, snapshot, workspace_with};

/// The reply of the fake model: prose, then two files in aider's `whole` format.
const CANNED: &str = "I updated the greeting and added a note.\n\n\
greeting.txt\n```\nhello from the agent\n```\n\n\
notes/new.txt\n```\na file the agent made\n```\n";

/// A fake OpenAI-compatible server: every POST to `.../chat/completions` gets [`CANNED`]; the
/// request bodies are kept.
struct FakeModel {
    runtime: tokio::runtime::Runtime,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeModel {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(format!("{uri} {body}"));
                if !uri.path().ends_with("/chat/completions") {
                    return (axum::http::StatusCode::NOT_FOUND, String::new());
                }
                let reply = serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
                    "model": "fake",
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": CANNED}}],
                    "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240}
                });
                (axum::http::StatusCode::OK, reply.to_string())
            }
        });
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            runtime,
            port,
            requests,
        }
    }
}

/// `./.venv-aider/bin/aider`, or `None` (with a loud message) when it is missing outside CI;
/// in CI (`CI` set) a missing aider fails the test.
fn aider() -> Option<PathBuf> {
    let aider = ghost_testkit::repo_root().join(".venv-aider/bin/aider");
    if aider.exists() {
        return Some(aider);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: run scripts/agent-env (scripts/test does)",
        aider.display()
    );
    eprintln!(
        "\n*** SKIPPED: {} is missing; run scripts/agent-env to test the real agent CLI ***\n",
        aider.display()
    );
    None
}

fn aider_workspace(aider: &std::path::Path, model: &FakeModel) -> TestWorkspace {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["grep".to_owned(), "test".to_owned()]),
        agent: Some(AgentConfig {
            cli: Some("aider".to_owned()),
            command: Some(aider.display().to_string()),
            timeout: Duration::from_secs(120),
            model: Some("openai/fake-model".to_owned()),
            args: vec![
                "--openai-api-base".to_owned(),
                format!("http://127.0.0.1:{}/v1", model.port),
                "--openai-api-key".to_owned(),
                "fake-key".to_owned(),
                "--edit-format".to_owned(),
                "whole".to_owned(),
            ],
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    ws.write("greeting.txt", "hello\n");
    ws.write("keep/other.txt", "untouched\n");
    ws
}

const TASK: &str = r#""description":"Greet from the agent","agent":{"task":"Change greeting.txt to say hello from the agent, and add notes/new.txt."},"timeout_s":120"#;

#[test]
fn aider_edits_the_workspace_and_with_a_passing_check_the_report_holds_its_diff() {
    let Some(aider) = aider() else { return };
    let model = FakeModel::start();
    let ws = aider_workspace(&aider, &model);
    let report = ws.apply(&patch(
        "aider-ok",
        &format!(r#"{TASK},"validate":["grep -q agent greeting.txt"]"#),
    ));
    let agent = report
        .agent
        .clone()
        .expect("the report has the agent's run");
    assert_eq!(
        report.status,
        Status::Succeeded,
        "{}\n{}",
        report.error,
        agent.transcript_tail
    );
    assert_eq!(ws.read("greeting.txt"), "hello from the agent\n");
    assert_eq!(ws.read("notes/new.txt"), "a file the agent made\n");
    assert_eq!(agent.cli, "aider");
    assert_eq!(agent.exit_code, Some(0));
    assert!(
        agent.diff.contains("-hello\n+hello from the agent"),
        "{}",
        agent.diff
    );
    assert!(agent.diff.contains("+++ b/notes/new.txt"), "{}", agent.diff);
    assert!(
        agent.files.contains(&"greeting.txt".to_owned()),
        "{:?}",
        agent.files
    );
    assert!(
        agent.files.contains(&"notes/new.txt".to_owned()),
        "{:?}",
        agent.files
    );
    assert!(
        !agent.files.iter().any(|f| f.starts_with("keep")),
        "{:?}",
        agent.files
    );
    assert!(!agent.transcript_tail.is_empty());
    assert_eq!(agent.input_tokens, Some(1200), "{}", agent.transcript_tail);
    assert_eq!(agent.output_tokens, Some(40), "{}", agent.transcript_tail);
    assert!(report.stages.iter().any(|s| s.stage == "snapshot"));
    // The task reached the model: the prompt built from the patch is in its request.
    let requests = model.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("Greet from the agent")
            && r.contains("grep -q agent greeting.txt")),
        "{requests:?}"
    );
    eprintln!(
        "aider run: {} ms, sandbox {:?}, {} model request(s)",
        agent.duration_ms,
        report.sandbox,
        requests.len()
    );
    // A re-delivery returns the recorded result without running the agent again.
    let again = ws.apply(&patch(
        "aider-ok",
        &format!(r#"{TASK},"validate":["grep -q agent greeting.txt"]"#),
    ));
    assert_eq!(again.status, Status::Succeeded);
    assert_eq!(model.requests.lock().unwrap().len(), requests.len());
    drop(model.runtime);
}

#[test]
fn aider_edits_then_a_failing_check_restores_the_workspace_byte_for_byte() {
    let Some(aider) = aider() else { return };
    let model = FakeModel::start();
    let ws = aider_workspace(&aider, &model);
    let before = snapshot(ws.root());
    let report = ws.apply(&patch(
        "aider-bad",
        &format!(r#"{TASK},"validate":["grep -q goodbye greeting.txt"]"#),
    ));
    let agent = report
        .agent
        .clone()
        .expect("the report has the agent's run");
    assert_eq!(
        report.status,
        Status::RolledBack,
        "{}\n{}",
        report.error,
        agent.transcript_tail
    );
    assert_eq!(snapshot(ws.root()), before);
    assert!(!ws.root().join("notes").exists());
    assert!(report.error.contains("grep -q goodbye"), "{}", report.error);
    let check = report
        .commands
        .last()
        .expect("the failing check is reported");
    assert_eq!(check.exit_code, Some(1));
    // What the agent did is still reported, next to the check's failure.
    assert!(
        agent.diff.contains("+hello from the agent"),
        "{}",
        agent.diff
    );
    let rollback = report.rollback.expect("a rollback record");
    assert!(rollback.error.is_empty(), "{}", rollback.error);
    assert!(rollback.removed >= 1, "{rollback:?}");
    drop(model.runtime);
}
