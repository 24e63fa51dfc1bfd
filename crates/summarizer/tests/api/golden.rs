//! Must-show 1: every terminal state renders. The .md and .json of each are compared with
//! the files under `tests/golden/` (regenerate with `GHOST_UPDATE_GOLDEN=1`, then review the
//! diff). Times and trace ids are fixed, so the files are byte-for-byte stable.

use std::path::PathBuf;

use ghost_proto::router::v1::{ApplyReport, PatchStatus};
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};

use crate::helpers::{T0, TRACE_ID, full_report, spawn_summarizer};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn outcome(patch_id: &str, attempt: u32, report: ApplyReport) -> RecordRequest {
    RecordRequest {
        outcome: Some(Outcome {
            notify: String::new(),
            priority: String::new(),
            key_name: String::new(),
            patch_id: patch_id.to_owned(),
            target: "MAIN".to_owned(),
            attempt,
            description: "Make login faster: cache the session lookup".to_owned(),
            report: Some(report),
            trace_id: TRACE_ID.to_owned(),
            created_unix_ms: T0,
            finished_unix_ms: T0 + 60_000 * i64::from(attempt.max(1)),
            intake_warnings: Vec::new(),
        }),
    }
}

/// Compares `actual` with the golden file `name`, or rewrites it when asked to.
fn check_golden(name: &str, actual: &str) -> Option<String> {
    let path = golden_dir().join(name);
    if std::env::var_os("GHOST_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("missing golden file {}: {err}", path.display()));
    (expected != actual).then(|| {
        format!(
            "{name} differs from {} (GHOST_UPDATE_GOLDEN=1 regenerates):\n--- actual ---\n{actual}",
            path.display()
        )
    })
}

#[tokio::test]
async fn every_terminal_state_matches_its_golden_markdown_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    let statuses = [
        PatchStatus::Succeeded,
        PatchStatus::Failed,
        PatchStatus::RolledBack,
        PatchStatus::Cancelled,
        PatchStatus::TimedOut,
        PatchStatus::Rejected,
        PatchStatus::Interrupted,
        PatchStatus::Lost,
    ];
    let mut cases = Vec::new();
    for status in statuses {
        let name = status
            .as_str_name()
            .trim_start_matches("PATCH_STATUS_")
            .to_lowercase();
        let id = format!("golden-{}", name.replace('_', "-"));
        if status == PatchStatus::Succeeded {
            // A retry that succeeded: the failed first attempt stays in the history.
            app.client
                .record(outcome(&id, 1, full_report(PatchStatus::RolledBack)))
                .await
                .unwrap();
        }
        let attempt = match status {
            PatchStatus::Succeeded => 2,
            PatchStatus::Lost => 3,
            _ => 1,
        };
        app.client
            .record(outcome(&id, attempt, full_report(status)))
            .await
            .unwrap();
        cases.push((id, name, status));
    }
    // Attempt 0: cancelled while queued, before any attempt started.
    let queued = ApplyReport {
        status: PatchStatus::Cancelled as i32,
        error: "cancelled while queued by U123".to_owned(),
        ..Default::default()
    };
    app.client
        .record(outcome("golden-cancelled-queued", 0, queued))
        .await
        .unwrap();
    cases.push((
        "golden-cancelled-queued".to_owned(),
        "cancelled_queued".to_owned(),
        PatchStatus::Cancelled,
    ));

    let folder = dir.path().join("summaries/MAIN");
    let mut failures = Vec::new();
    for (id, name, status) in &cases {
        let markdown = std::fs::read_to_string(folder.join(format!("summary-{id}.md"))).unwrap();
        let json = std::fs::read_to_string(folder.join(format!("summary-{id}.json"))).unwrap();
        let icon = if *status == PatchStatus::Succeeded {
            "✅"
        } else {
            "❌"
        };
        assert!(
            markdown.starts_with(&format!("# {icon} {id} ")),
            "{markdown}"
        );
        assert!(
            markdown.ends_with(&format!("\npatchName: {id}\n")),
            "{markdown}"
        );
        assert!(markdown.contains(&format!("http://jaeger.test/trace/{TRACE_ID}")));
        let doc: summarizer::doc::SummaryDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(doc.schema_version, summarizer::doc::SCHEMA_VERSION);
        assert_eq!(doc.patch_id.as_str(), id);
        failures.extend(check_golden(&format!("{name}.md"), &markdown));
        failures.extend(check_golden(&format!("{name}.json"), &json));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    app.stop().await;
}
