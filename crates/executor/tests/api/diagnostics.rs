//! Diagnostics in the report: parsed from the whole output of real commands (also from the
//! middle that the report's head and tail leave out), with workspace-relative paths, the
//! patch's files first; and real eslint's `--format json`.

use std::path::PathBuf;
use std::process::Command;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::{Severity, Status};

use crate::helpers::{patch, workspace_with};

#[test]
fn a_diagnostic_in_the_omitted_middle_of_the_output_is_reported_first_and_relative() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        output_head_bytes: 512,
        output_tail_bytes: 512,
        ..TargetPolicy::default()
    });
    let check = "sh -c 'echo $(pwd)/lib/b.c:1:2: warning: early; seq 1 20000; \
                 echo ./src/a.c:7:3: error: lost in the middle; seq 1 20000; exit 1'";
    let body = format!(
        r#""edits":[{{"op":"write","path":"src/a.c","contents":"int main(void) {{ return 0; }}\n"}}],"validate":[{}]"#,
        serde_json::to_string(check).unwrap()
    );
    let report = ws.apply(&patch("diag-middle", &body));
    assert_eq!(report.status, Status::RolledBack, "{report:?}");
    let command = &report.commands[0];
    assert!(command.omitted_bytes > 0, "the output was cut");
    assert!(!command.output_head.contains("lost in the middle"));
    assert!(!command.output_tail.contains("lost in the middle"));
    let found: Vec<(String, u32, Option<u32>, Severity, &str)> = report
        .diagnostics
        .iter()
        .map(|d| {
            (
                d.path.clone(),
                d.line,
                d.column,
                d.severity,
                d.check.as_str(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("src/a.c".to_owned(), 7, Some(3), Severity::Error, check),
            ("lib/b.c".to_owned(), 1, Some(2), Severity::Warning, check),
        ]
    );
    assert_eq!(report.diagnostics[0].message, "lost in the middle");
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(&ws.root().display().to_string()), "{json}");
}

/// The pinned eslint that `scripts/node-env` installs; `None` (the test is skipped) only
/// when node itself is missing.
fn eslint() -> Option<PathBuf> {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("skipped: node is not installed, so eslint cannot run");
        return None;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/node/node_modules/.bin/eslint")
        .canonicalize()
        .unwrap_or_else(|err| {
            panic!("eslint is not installed in tests/node ({err}): run scripts/node-env")
        });
    Some(path)
}

#[test]
fn real_eslint_json_findings_become_diagnostics() {
    let Some(eslint) = eslint() else {
        return;
    };
    let eslint = eslint.display().to_string();
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec![eslint.clone()]),
        max_memory_bytes: u64::MAX,
        ..TargetPolicy::default()
    });
    ws.write(
        "eslint.config.mjs",
        "export default [{ files: [\"**/*.js\"], rules: { \"no-unused-vars\": \"error\" } }];\n",
    );
    let check = format!("{eslint} --format json src/a.js");
    let body = format!(
        r#""edits":[{{"op":"write","path":"src/a.js","contents":"export const used = 1;\nconst unused = 2;\n"}}],"validate":[{}]"#,
        serde_json::to_string(&check).unwrap()
    );
    let report = ws.apply(&patch("diag-eslint", &body));
    assert_eq!(report.status, Status::RolledBack, "{report:?}");
    let found: Vec<String> = report
        .diagnostics
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{} {} {} {}",
                d.path,
                d.line,
                d.column.unwrap_or(0),
                d.severity.as_str(),
                d.code,
                d.tool
            )
        })
        .collect();
    assert_eq!(
        found,
        ["src/a.js:2:7 error no-unused-vars eslint"],
        "{report:?}"
    );
    assert_eq!(
        report.diagnostics[0].message,
        "'unused' is assigned a value but never used."
    );
}
