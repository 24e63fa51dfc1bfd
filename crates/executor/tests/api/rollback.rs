//! Must show 1: random workspaces, random patches failing at a random step; after rollback the
//! workspace is byte-identical (contents, modes, set of files and directories).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;
use proptest::prelude::*;

use crate::helpers::{patch, snapshot, workspace_with};

const MODES: [u32; 3] = [0o600, 0o644, 0o755];

/// Where the patch fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// An edit that cannot apply, at this position in the edit list.
    Edit(usize),
    /// A command after all edits exits non-zero.
    Command,
    /// A validation check exits non-zero.
    Validate,
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        (0usize..8).prop_map(Failure::Edit),
        Just(Failure::Command),
        Just(Failure::Validate),
    ]
}

fn edit_json(kind: u8, pick: usize, files: &mut Vec<String>, serial: usize, text: &str) -> String {
    let existing = (!files.is_empty()).then(|| files[pick % files.len()].clone());
    let text = serde_json::to_string(text).unwrap();
    match (kind % 6, existing) {
        (0, _) | (_, None) => {
            let path = format!("new{serial}/deep/f{serial}.txt");
            files.push(path.clone());
            format!(r#"{{"op":"write","path":"{path}","contents":{text}}}"#)
        }
        (1, Some(path)) => format!(r#"{{"op":"write","path":"{path}","contents":{text}}}"#),
        (2, Some(path)) => {
            files.retain(|f| *f != path);
            format!(r#"{{"op":"delete","path":"{path}"}}"#)
        }
        (3, Some(path)) => {
            let to = format!("moved{serial}.txt");
            files.retain(|f| *f != path);
            files.push(to.clone());
            format!(r#"{{"op":"rename","from":"{path}","to":"{to}"}}"#)
        }
        (4, Some(path)) => format!(
            r#"{{"op":"chmod","path":"{path}","mode":"{:o}"}}"#,
            MODES[pick % 3]
        ),
        (_, Some(_)) => format!(r#"{{"op":"mkdir","path":"made{serial}/sub"}}"#),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn rollback_restores_the_workspace_byte_for_byte(
        initial in proptest::collection::vec(("[a-c]{1,2}", "[ -~\n\r]{0,40}", 0usize..3), 0..6),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), "[ -~\n]{0,30}"), 1..7),
        failure in failure(),
    ) {
        let ws = workspace_with(TargetPolicy { commands: CommandPolicy::Any, ..TargetPolicy::default() });
        let mut files = Vec::new();
        for (index, (dir, contents, mode)) in initial.iter().enumerate() {
            let path = format!("{dir}/file{index}");
            ws.write(&path, contents);
            fs::set_permissions(ws.root().join(&path), fs::Permissions::from_mode(MODES[*mode])).unwrap();
            files.push(path);
        }
        let before = snapshot(ws.root());
        let mut ops: Vec<String> = edits
            .iter()
            .enumerate()
            .map(|(serial, (kind, pick, text))| edit_json(*kind, *pick, &mut files, serial, text))
            .collect();
        let (mut commands, mut validate) = (String::new(), String::new());
        match failure {
            Failure::Edit(at) => {
                let bad = r#"{"op":"replace","path":"nowhere/missing.txt","search":"x","replace":"y"}"#;
                ops.insert(at.min(ops.len()), bad.to_owned());
            }
            Failure::Command => commands = r#","commands":["true","false"]"#.to_owned(),
            Failure::Validate => validate = r#","validate":["sh -c 'exit 3'"]"#.to_owned(),
        }
        let body = format!(r#""edits":[{}]{commands}{validate}"#, ops.join(","));
        let report = ws.apply(&patch("random", &body));
        prop_assert!(
            matches!(report.status, Status::RolledBack | Status::Failed),
            "{:?}: {}", report.status, report.error
        );
        prop_assert_eq!(snapshot(ws.root()), before);
        prop_assert!(!ws.ctx.workspace.state_dir.join("journal/MAIN.journal").exists());
    }
}

#[test]
fn a_command_that_deletes_the_directories_it_was_given_is_rolled_back_in_place() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        ..TargetPolicy::default()
    });
    // Only what the patch touched is journaled, so only that comes back.
    ws.write("src/a.rs", "fn a() {}\n");
    let before = snapshot(ws.root());
    let report = ws.apply(&patch(
        "wipes",
        r#""edits":[{"op":"write","path":"src/a.rs","contents":"changed"},{"op":"write","path":"src/deep/c.rs","contents":"new"}],"commands":["rm -rf src","false"]"#,
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    let rollback = report.rollback.unwrap();
    assert!(rollback.error.is_empty(), "{}", rollback.error);
    assert_eq!(snapshot(ws.root()), before);
}
