//! Issue 23: the summary of an agent task carries what the agent did — its diff, the files it
//! changed, its final message, transcript tail, exit status and tokens — next to the checks.

use ghost_proto::router::v1::{AgentRun, ApplyReport, PatchStatus};
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};

use crate::helpers::{T0, TRACE_ID, spawn_summarizer};

#[tokio::test]
async fn an_agent_tasks_summary_holds_the_agents_diff_and_final_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    let diff = "diff --git a/greeting.txt b/greeting.txt\n--- a/greeting.txt\n+++ b/greeting.txt\n\
                @@ -1 +1 @@\n-hello\n+hello from the agent\n";
    let report = ApplyReport {
        status: PatchStatus::Succeeded as i32,
        agent: Some(AgentRun {
            cli: "aider".to_owned(),
            exit_code: Some(0),
            duration_ms: 4200,
            diff: diff.to_owned(),
            files: vec!["greeting.txt".to_owned(), "notes/new.txt".to_owned()],
            final_message: "I updated the greeting.".to_owned(),
            transcript_tail: "Applied edit to greeting.txt".to_owned(),
            input_tokens: Some(1200),
            output_tokens: Some(40),
            cost_usd: "0.00".to_owned(),
            ..AgentRun::default()
        }),
        sandbox: "landlock".to_owned(),
        ..ApplyReport::default()
    };
    app.client
        .record(RecordRequest {
            outcome: Some(Outcome {
                patch_id: "agent-1".to_owned(),
                target: "MAIN".to_owned(),
                attempt: 1,
                description: "Greet from the agent".to_owned(),
                report: Some(report),
                trace_id: TRACE_ID.to_owned(),
                created_unix_ms: T0,
                finished_unix_ms: T0 + 60_000,
                intake_warnings: Vec::new(),
                notify: String::new(),
                priority: String::new(),
                key_name: String::new(),
            }),
        })
        .await
        .unwrap();
    let folder = dir.path().join("summaries/MAIN");
    let markdown = std::fs::read_to_string(folder.join("summary-agent-1.md")).unwrap();
    assert!(markdown.contains("## Agent"), "{markdown}");
    assert!(
        markdown.contains("-hello\n+hello from the agent"),
        "{markdown}"
    );
    assert!(
        markdown.contains("`greeting.txt` `notes/new.txt`"),
        "{markdown}"
    );
    assert!(markdown.contains("I updated the greeting."), "{markdown}");
    assert!(markdown.contains("1200 tokens in, 40 out"), "{markdown}");
    assert!(markdown.contains("exit 0"), "{markdown}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(folder.join("summary-agent-1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["agent"]["files"][1], "notes/new.txt");
    assert_eq!(json["agent"]["diff"], diff);
    app.stop().await;
}
