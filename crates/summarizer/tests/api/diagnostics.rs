//! A report's diagnostics in the summary: a compact table in the Markdown, all of them in the
//! JSON, the first few in the Slack excerpt.

use ghost_proto::router::v1::{Diagnostic, PatchStatus};

use crate::helpers::{FakeAlerter, record, spawn_summarizer};

fn diagnostic(
    path: &str,
    line: u32,
    column: u32,
    severity: &str,
    code: &str,
    message: &str,
) -> Diagnostic {
    Diagnostic {
        path: path.to_owned(),
        line,
        column,
        severity: severity.to_owned(),
        code: code.to_owned(),
        message: message.to_owned(),
        tool: "tsc".to_owned(),
        check: "tsc --noEmit -p .".to_owned(),
    }
}

#[tokio::test]
async fn diagnostics_are_a_table_in_the_markdown_and_listed_in_the_excerpt() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = FakeAlerter::start().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;
    let mut request = record("typed", 1, PatchStatus::RolledBack);
    let report = request
        .outcome
        .as_mut()
        .and_then(|outcome| outcome.report.as_mut())
        .unwrap();
    report.diagnostics = vec![
        diagnostic(
            "src/a.ts",
            12,
            5,
            "error",
            "TS2322",
            "Type 'string' is not assignable to type 'number'.",
        ),
        diagnostic("src/b.ts", 3, 0, "warning", "TS6133", "'x' is | declared"),
    ];
    app.client.record(request).await.unwrap();

    let folder = dir.path().join("summaries/MAIN");
    let markdown = std::fs::read_to_string(folder.join("summary-typed.md")).unwrap();
    assert!(
        markdown.contains(
            "## Diagnostics\n\n| where | code | message |\n|---|---|---|\n\
             | `src/a.ts:12:5` | TS2322 | Type 'string' is not assignable to type 'number'. |\n\
             | `src/b.ts:3` | TS6133 | warning: 'x' is \\| declared |\n"
        ),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("summary-typed.json")).unwrap()).unwrap();
    assert_eq!(json["diagnostics"][0]["path"], "src/a.ts");
    assert_eq!(json["diagnostics"][0]["column"], 5);
    assert_eq!(json["diagnostics"][1]["severity"], "warning");

    let notified = alerter.wait_for(1).await;
    assert!(
        notified[0].excerpt.contains(
            "Diagnostics:\n- `src/a.ts:12:5` TS2322 Type 'string' is not assignable to type 'number'.\n"
        ),
        "{}",
        notified[0].excerpt
    );
    app.stop().await;
}
