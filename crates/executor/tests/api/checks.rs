//! Issue 20, point 1: the owner's checks run after every patch (a patch cannot skip them),
//! `changed:<glob>` ones only when a matching path changed, and legacy checks whose program
//! the target does not allow are skipped and reported, not refused.

use std::collections::BTreeSet;
use std::time::Duration;

use executor::{AgentConfig, CommandPolicy, OwnerCheck, TargetPolicy, When};
use ghost_core::{CommandKind, Format, LegacyOptions, ParseBudget, Status, TargetName};

use crate::helpers::{patch, snapshot, workspace_with};

fn check(name: &str, run: &str, when: When) -> OwnerCheck {
    OwnerCheck {
        name: name.to_owned(),
        run: run.to_owned(),
        timeout: Some(Duration::from_secs(20)),
        when,
    }
}

fn stage_names_are_unique(report: &ghost_core::ApplyReport) {
    let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a stage appears twice: {names:?}"
    );
}

#[test]
fn a_failing_owner_check_rolls_the_patch_back_and_names_the_check_even_when_commands_are_denied() {
    // Patches may run nothing at all here; the owner's check still runs.
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Deny,
        checks: vec![
            check("fmt", "true", When::Always),
            check(
                "typecheck",
                "sh -c 'echo src/a.ts: broken >&2; exit 3'",
                When::Always,
            ),
        ],
        ..TargetPolicy::default()
    });
    ws.write("src/a.ts", "let a = 1;\n");
    let before = snapshot(ws.root());
    let report = ws.apply(&patch(
        "owner-1",
        r#""edits":[{"op":"write","path":"src/a.ts","contents":"let a: number = 'x';\n"}]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(report.error.contains("typecheck"), "{}", report.error);
    assert!(report.error.contains("exit code 3"), "{}", report.error);
    let rollback = report.rollback.as_ref().unwrap();
    assert!(rollback.reason.contains("typecheck"), "{rollback:?}");
    assert!(rollback.error.is_empty(), "{rollback:?}");
    let ran: Vec<(&str, CommandKind, Option<i32>)> = report
        .commands
        .iter()
        .map(|c| (c.name.as_str(), c.kind, c.exit_code))
        .collect();
    assert_eq!(
        ran,
        [
            ("fmt", CommandKind::Check, Some(0)),
            ("typecheck", CommandKind::Check, Some(3))
        ]
    );
    assert!(report.commands[1].output_tail.contains("broken"));
    assert_eq!(snapshot(ws.root()), before);
    assert!(report.stages.iter().any(|s| s.stage == "checks"));
    assert!(report.stages.iter().any(|s| s.stage == "plan"));
    assert!(report.stages.iter().any(|s| s.stage == "write"));
    stage_names_are_unique(&report);

    // Nothing a patch says turns them off: not its own (refused) commands, not keep, not an
    // empty validate list.
    let refused = ws.apply(&patch(
        "owner-2",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}],"commands":["true"]"#,
    ));
    assert_eq!(refused.status, Status::Rejected, "{}", refused.error);
    let kept = ws.apply(&patch(
        "owner-3",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}],"validate":[],"on_failure":"keep""#,
    ));
    assert_eq!(kept.status, Status::RolledBack, "{}", kept.error);
    assert!(kept.error.contains("typecheck"), "{}", kept.error);
    assert!(
        !ws.root().join("b.txt").exists(),
        "a failing owner check rolls back even with on_failure keep"
    );
}

#[test]
fn a_failing_command_with_keep_still_runs_the_owner_checks_and_keeps_only_what_passes_them() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        checks: vec![check(
            "guard",
            "sh -c 'if [ -e bad.txt ]; then echo bad.txt: refused >&2; exit 4; fi'",
            When::Always,
        )],
        ..TargetPolicy::default()
    });
    ws.write("a.txt", "a\n");
    let before = snapshot(ws.root());
    // The patch's first command fails on purpose, hoping keep saves its edits unchecked.
    let sneaky = ws.apply(&patch(
        "keep-skip-1",
        r#""edits":[{"op":"write","path":"bad.txt","contents":"x"}],"commands":["sh -c 'echo made > made.txt; exit 1'"],"on_failure":"keep""#,
    ));
    assert_eq!(sneaky.status, Status::RolledBack, "{}", sneaky.error);
    assert!(sneaky.error.contains("guard"), "{}", sneaky.error);
    assert!(sneaky.error.contains("exit code 1"), "{}", sneaky.error);
    let ran: Vec<(&str, CommandKind, Option<i32>)> = sneaky
        .commands
        .iter()
        .map(|c| (c.name.as_str(), c.kind, c.exit_code))
        .collect();
    assert_eq!(ran[1], ("guard", CommandKind::Check, Some(4)), "{ran:?}");
    assert_eq!(snapshot(ws.root()), before);

    // With checks that pass, keep keeps what a failing command left.
    let honest = ws.apply(&patch(
        "keep-skip-2",
        r#""edits":[{"op":"write","path":"good.txt","contents":"g"}],"commands":["sh -c 'exit 1'"],"on_failure":"keep""#,
    ));
    assert_eq!(honest.status, Status::Failed, "{}", honest.error);
    assert_eq!(honest.commands.len(), 2, "{:?}", honest.commands);
    assert_eq!(honest.commands[1].exit_code, Some(0));
    assert_eq!(ws.read("good.txt"), "g");
    stage_names_are_unique(&honest);
}

#[test]
fn a_changed_glob_check_runs_only_when_a_matching_path_changed_by_an_edit_or_a_command() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        checks: vec![check(
            "tsc",
            "sh -c 'echo tsc failed; exit 2'",
            When::Changed("src/**/*.ts".to_owned()),
        )],
        ..TargetPolicy::default()
    });
    ws.write("src/deep/a.ts", "a\n");
    ws.write("README.md", "readme\n");

    let docs = ws.apply(&patch(
        "glob-1",
        r#""edits":[{"op":"write","path":"README.md","contents":"new readme\n"},{"op":"write","path":"src/a.tsx","contents":"x"}]"#,
    ));
    assert_eq!(docs.status, Status::Succeeded, "{}", docs.error);
    assert!(docs.commands.is_empty(), "{:?}", docs.commands);

    let edited = ws.apply(&patch(
        "glob-2",
        r#""edits":[{"op":"write","path":"src/deep/a.ts","contents":"b\n"}]"#,
    ));
    assert_eq!(edited.status, Status::RolledBack, "{}", edited.error);
    assert!(edited.error.contains("tsc"), "{}", edited.error);
    assert_eq!(ws.read("src/deep/a.ts"), "a\n");

    // A file a command made counts too (the snapshot sees it), and goes with the rollback.
    let generated = ws.apply(&patch(
        "glob-3",
        r#""edits":[{"op":"write","path":"notes.txt","contents":"n"}],"commands":["sh -c 'mkdir -p src/gen && echo x > src/gen/out.ts'"]"#,
    ));
    assert_eq!(generated.status, Status::RolledBack, "{}", generated.error);
    assert!(generated.error.contains("tsc"), "{}", generated.error);
    assert!(!ws.root().join("src/gen").exists());
    assert!(!ws.root().join("notes.txt").exists());
}

#[test]
fn a_legacy_post_mutation_build_the_policy_does_not_allow_is_skipped_and_reported() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["test".to_owned()]),
        ..TargetPolicy::default()
    });
    let options = LegacyOptions {
        default_target: Some(TargetName::parse("MAIN").unwrap()),
        ..LegacyOptions::default()
    };
    let body = br#"{"blockId":"legacy-skip-1","mutations":[{"path":"built.txt","contents":"x"}],
        "postMutationBuild":["npm run build"],"validate":["test -f built.txt"]}"#;
    let budget = ParseBudget::new(body.len());
    let legacy = ghost_core::parse_submission(body, Format::Json, &budget, &options)
        .unwrap()
        .patch;
    let report = ws.apply(&legacy);
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(report.commands.len(), 2, "{:?}", report.commands);
    let skipped = &report.commands[0];
    assert_eq!(skipped.command, "npm run build");
    assert_eq!(skipped.exit_code, None);
    assert!(skipped.skipped, "a skipped check says so, not like a kill");
    assert!(!report.commands[1].skipped);
    // ...also across the wire to the router.
    let wire = ghost_proto::router::v1::ApplyReport::from(&report);
    let back = ghost_core::ApplyReport::try_from(wire).unwrap();
    assert!(back.commands[0].skipped && !back.commands[1].skipped);
    assert!(
        skipped.output_tail.starts_with("skipped: ") && skipped.output_tail.contains("npm"),
        "{}",
        skipped.output_tail
    );
    assert_eq!(report.commands[1].command, "test -f built.txt");
    assert_eq!(report.commands[1].exit_code, Some(0));
    assert_eq!(ws.read("built.txt"), "x");

    // The same check without if_allowed (a v1 patch) is still refused.
    let v1 = ws.apply(&patch(
        "v1-refused",
        r#""edits":[{"op":"write","path":"b.txt","contents":"b"}],"validate":["npm run build"]"#,
    ));
    assert_eq!(v1.status, Status::Rejected, "{}", v1.error);
}

#[test]
fn an_agent_hand_off_runs_the_owner_checks_too() {
    let inbox = tempfile::tempdir().unwrap().keep();
    let ws = workspace_with(TargetPolicy {
        checks: vec![check(
            "lint",
            "sh -c 'test ! -f bad.txt'",
            When::Changed("**/*.txt".to_owned()),
        )],
        agent: Some(AgentConfig {
            inbox: Some(inbox),
            command: Some("sh -c 'echo done > bad.txt'".to_owned()),
            timeout: Duration::from_secs(20),
            ..AgentConfig::default()
        }),
        ..TargetPolicy::default()
    });
    let report = ws.apply(&patch("agent-checked", r#""agent":{"task":"do it"}"#));
    // Issue 23: what the agent changed is snapshotted, so the failing check undoes it.
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(!ws.root().join("bad.txt").exists());
    assert!(report.error.contains("lint"), "{}", report.error);
    assert!(
        report
            .commands
            .iter()
            .any(|c| c.name == "lint" && c.kind == CommandKind::Check)
    );
    stage_names_are_unique(&report);
}

#[test]
fn a_command_cannot_keep_its_change_from_a_changed_check_by_ignoring_it() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
        checks: vec![check(
            "tsc",
            "sh -c 'exit 2'",
            When::Changed("src/**/*.ts".to_owned()),
        )],
        ..TargetPolicy::default()
    });
    ws.write(".gitignore", "dist/\n");
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(ws.root())
        .status()
        .unwrap();
    assert!(init.success());
    let report = ws.apply(&patch(
        "hidden-change",
        r#""edits":[{"op":"write","path":"notes.txt","contents":"n"}],"commands":["sh -c 'echo src/evil.ts >> .gitignore && mkdir -p src && echo x > src/evil.ts'"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(report.error.contains("tsc"), "{}", report.error);
    assert!(!ws.root().join("src").exists());
    assert_eq!(ws.read(".gitignore"), "dist/\n");
}

#[test]
fn a_changed_glob_without_a_slash_matches_the_file_name_at_any_depth() {
    let ws = workspace_with(TargetPolicy {
        checks: vec![check(
            "tsc",
            "sh -c 'echo tsc failed; exit 2'",
            When::Changed("*.ts".to_owned()),
        )],
        ..TargetPolicy::default()
    });
    ws.write("src/deep/a.ts", "a\n");
    let deep = ws.apply(&patch(
        "any-depth-1",
        r#""edits":[{"op":"write","path":"src/deep/a.ts","contents":"b\n"}]"#,
    ));
    assert_eq!(deep.status, Status::RolledBack, "{}", deep.error);
    assert!(deep.error.contains("tsc"), "{}", deep.error);
    assert_eq!(ws.read("src/deep/a.ts"), "a\n");
    let other = ws.apply(&patch(
        "any-depth-2",
        r#""edits":[{"op":"write","path":"src/deep/a.tsx","contents":"x"}]"#,
    ));
    assert_eq!(other.status, Status::Succeeded, "{}", other.error);
}
