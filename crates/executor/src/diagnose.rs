//! The report's diagnostics: what the parser ([`ghost_core::diagnostics`]) found in the whole
//! output of each command and check, gathered into [`ApplyReport::diagnostics`] with
//! workspace-relative paths, the files the patch touched first, then errors before warnings
//! before notes, at most [`MAX_REPORTED`] (a last note says how many more there were).

use std::collections::HashSet;

use ghost_core::{ApplyReport, Diagnostic, Severity, diagnostics};

use crate::workspace::Workspace;

/// Most diagnostics a report carries; the rest are counted in a last note.
pub const MAX_REPORTED: usize = 100;

/// The `tool` of the note that counts the diagnostics left out.
pub const OMITTED_TOOL: &str = "ghost";

/// Most diagnostics an attempt holds between its commands (each command's parsers may find
/// up to [`diagnostics::MAX_DIAGNOSTICS`] per stream): the rest are only counted.
pub const MAX_HELD: usize = 1_000;

/// Keeps at most [`MAX_HELD`] diagnostics over all of `report`'s commands, the earlier
/// commands' first, counting the rest as dropped. Call after each command.
pub fn trim(report: &mut ApplyReport) {
    let mut room = MAX_HELD;
    for command in &mut report.commands {
        let found = &mut command.diagnostics;
        if found.diagnostics.len() > room {
            let extra = found.diagnostics.len() - room;
            found.diagnostics.truncate(room);
            found.diagnostics.shrink_to_fit();
            found.dropped = found.dropped.saturating_add(extra as u64);
        }
        room -= found.diagnostics.len();
    }
}

/// Moves the diagnostics the commands' parsers found into `report.diagnostics`. Call once,
/// after the last command or check ran. No text it writes names a server path: paths under
/// the root become relative, and the state dir or agent inbox anywhere in a path or message
/// are replaced as in every other reported text.
pub fn fill(report: &mut ApplyReport, workspace: &Workspace) {
    let touched: HashSet<String> = report
        .edits
        .iter()
        .flat_map(|edit| [edit.path.clone(), edit.from.clone()])
        .filter(|path| !path.is_empty())
        .collect();
    let mut dropped = 0u64;
    let mut seen = HashSet::new();
    let mut all = std::mem::take(&mut report.diagnostics);
    for command in &mut report.commands {
        let found = std::mem::take(&mut command.diagnostics);
        dropped += found.dropped;
        let check = diagnostics::check_label(if command.name.is_empty() {
            &command.command
        } else {
            &command.name
        });
        for mut diagnostic in found.diagnostics {
            diagnostic.path = relative(&diagnostic.path, workspace);
            crate::apply::scrub(&mut diagnostic.message, workspace);
            diagnostic.check.clone_from(&check);
            // tsc run twice (a build and a check) says the same thing twice: once is enough.
            let key = (
                diagnostic.path.clone(),
                diagnostic.line,
                diagnostic.column,
                diagnostic.code.clone(),
                diagnostic.message.clone(),
                diagnostic.check.clone(),
            );
            if seen.insert(key) {
                all.push(diagnostic);
            }
        }
    }
    // Stable: within a rank, the order the tools reported.
    all.sort_by_key(|diagnostic| (!touched.contains(&diagnostic.path), diagnostic.severity));
    let omitted = all
        .len()
        .saturating_sub(MAX_REPORTED)
        .try_into()
        .unwrap_or(u64::MAX)
        .saturating_add(dropped);
    all.truncate(MAX_REPORTED);
    if omitted > 0 {
        all.push(Diagnostic {
            severity: Severity::Note,
            message: format!(
                "{omitted} more diagnostics not shown; the {} above come first",
                all.len()
            ),
            tool: OMITTED_TOOL.to_owned(),
            ..Diagnostic::default()
        });
    }
    report.diagnostics = all;
}

/// `path` relative to the workspace when it lies under the root, without `./`; a path
/// elsewhere is kept, with the executor's own paths in it replaced.
fn relative(path: &str, workspace: &Workspace) -> String {
    let root = workspace.root.display().to_string();
    let mut rest = path
        .strip_prefix(root.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(path);
    while let Some(inner) = rest.strip_prefix("./") {
        rest = inner;
    }
    let mut out = rest.to_owned();
    crate::apply::scrub(&mut out, workspace);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_attempt_holds_at_most_max_held_diagnostics_and_counts_the_rest() {
        let output: String = (1..=900)
            .map(|n| format!("src/a.c:{n}:1: error: bad\n"))
            .collect();
        let mut report = ApplyReport::ended(Status::RolledBack, "");
        report.commands = vec![
            command("gcc a", &output, 0),
            command("gcc b", &output, 5),
            command("gcc c", &output, 0),
        ];
        trim(&mut report);
        let held: Vec<usize> = report
            .commands
            .iter()
            .map(|c| c.diagnostics.diagnostics.len())
            .collect();
        assert_eq!(held, [900, 100, 0]);
        let dropped: Vec<u64> = report
            .commands
            .iter()
            .map(|c| c.diagnostics.dropped)
            .collect();
        assert_eq!(dropped, [0, 805, 900]);
    }

    use std::path::PathBuf;

    use ghost_core::diagnostics::{Found, parse};
    use ghost_core::{CommandReport, EditReport, Status};

    use super::*;
    use crate::config::TargetPolicy;

    fn workspace() -> Workspace {
        Workspace {
            target: "MAIN".to_owned(),
            root: PathBuf::from("/srv/ws"),
            state_dir: PathBuf::from("/var/lib/ghost"),
            policy: TargetPolicy::default(),
        }
    }

    fn command(line: &str, output: &str, dropped: u64) -> CommandReport {
        CommandReport {
            command: line.to_owned(),
            diagnostics: Found {
                diagnostics: parse(output, line),
                dropped,
            },
            ..CommandReport::default()
        }
    }

    #[test]
    fn touched_files_first_then_severity_with_relative_paths() {
        let mut report = ApplyReport::ended(Status::RolledBack, "");
        report.edits.push(EditReport {
            op: "write".to_owned(),
            path: "src/b.ts".to_owned(),
            ..EditReport::default()
        });
        report.commands.push(command(
            "gcc -c x.c",
            "/usr/include/x.h:1:1: warning: w\n./lib/x.c:2:3: error: e\n/var/lib/ghost/t.c:1:1: error: s\n",
            0,
        ));
        report.commands.push(command(
            "tsc",
            "/srv/ws/src/b.ts(4,5): warning TS1: near /srv/ws/src/c.ts\n",
            0,
        ));
        fill(&mut report, &workspace());
        let places: Vec<(&str, Severity, &str)> = report
            .diagnostics
            .iter()
            .map(|d| (d.path.as_str(), d.severity, d.check.as_str()))
            .collect();
        assert_eq!(
            places,
            [
                ("src/b.ts", Severity::Warning, "tsc"),
                ("lib/x.c", Severity::Error, "gcc -c x.c"),
                ("<executor state>/t.c", Severity::Error, "gcc -c x.c"),
                ("/usr/include/x.h", Severity::Warning, "gcc -c x.c"),
            ]
        );
        assert_eq!(report.diagnostics[0].message, "near src/c.ts");
        assert!(
            report
                .commands
                .iter()
                .all(|c| c.diagnostics == Found::default()),
            "moved, not copied"
        );
    }

    #[test]
    fn a_long_command_line_is_cut_in_each_diagnostic() {
        let line = format!("make {}", "x".repeat(100_000));
        let mut report = ApplyReport::ended(Status::RolledBack, "");
        report
            .commands
            .push(command(&line, "src/a.c:1:1: error: e\n", 0));
        fill(&mut report, &workspace());
        let check = &report.diagnostics[0].check;
        assert_eq!(check.chars().count(), diagnostics::MAX_CHECK_CHARS + 1);
        assert!(check.starts_with("make xxx") && check.ends_with('…'));
    }

    #[test]
    fn the_report_is_capped_and_says_how_many_more() {
        let output: String = (1..=150)
            .map(|n| format!("src/a.c:{n}:1: error: e\n"))
            .collect();
        let mut report = ApplyReport::ended(Status::RolledBack, "");
        report.commands.push(command("make", &output, 7));
        fill(&mut report, &workspace());
        assert_eq!(report.diagnostics.len(), MAX_REPORTED + 1);
        let last = &report.diagnostics[MAX_REPORTED];
        assert_eq!(last.tool, OMITTED_TOOL);
        assert_eq!(
            last.message,
            "57 more diagnostics not shown; the 100 above come first"
        );
    }
}
