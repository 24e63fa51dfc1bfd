//! The legacy normaliser against every real legacy patch in `tests/fixtures/legacy/`, plus the
//! YAML and alias paths of submission parsing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ghost_core::{
    Edit, Format, LegacyOptions, ParseBudget, PatchError, Priority, Shape, TargetName,
    parse_submission,
};

/// The gateway's default body limit.
const BUDGET: ParseBudget = ParseBudget {
    max_bytes: 1024 * 1024,
    max_aliases: ParseBudget::DEFAULT_MAX_ALIASES,
    max_depth: ParseBudget::DEFAULT_MAX_DEPTH,
    max_nodes: ParseBudget::DEFAULT_MAX_NODES,
};

fn target(name: &str) -> TargetName {
    TargetName::parse(name).unwrap()
}

fn options() -> LegacyOptions {
    LegacyOptions {
        default_target: Some(target("MAIN")),
        aliases: BTreeMap::from([
            ("BRAUN".to_owned(), target("MAIN")),
            ("DEV".to_owned(), target("CYOPS")),
        ]),
        roots: BTreeMap::from([
            (
                target("CYOPS"),
                vec!["/Users/sawyer/gitSync/gpt-cursor-runner".to_owned()],
            ),
            (
                target("MAIN"),
                vec!["/Users/sawyer/gitSync/tm-mobile-cursor/".to_owned()],
            ),
        ]),
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap()
}

/// Every fixture file either normalises into a valid v1 patch or is refused naming a field;
/// each file has an expectation here, so a new fixture cannot slip through untested.
#[test]
fn every_legacy_fixture_normalises_or_is_refused_naming_the_field() {
    let expected: BTreeMap<&str, Result<Shape, &str>> = BTreeMap::from([
        ("blockid-mutations.json", Ok(Shape::CommandPatch)),
        ("envelope-pattern-replacement.json", Ok(Shape::Envelope)),
        ("g2o-execution-validation.json", Ok(Shape::G2o)),
        ("mutations-absolute-tmp-path.json", Err("/mutations/0/path")),
        ("phase-agent-task.json", Ok(Shape::Phase)),
        ("upsert-absolute-repo-paths.json", Ok(Shape::CommandPatch)),
        ("phase-no-id-no-target.json", Ok(Shape::Phase)),
        ("command-no-target.json", Ok(Shape::CommandPatch)),
        ("command-trailing-comma.json", Ok(Shape::CommandPatch)),
        // An old runner's `tasks[]` list is refused at `tasks`, naming what to use instead.
        ("tasks-leading-comment.json", Err("/tasks")),
        // Documents that ask for nothing are refused as a whole (the pointer is "").
        ("target-only-test-marker.json", Err("")),
        ("manifest-move-log.json", Err("")),
        ("prose-status-note.json", Err("")),
    ]);
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(want) = expected.get(name.as_str()) else {
            panic!("fixture {name} has no expectation in this test");
        };
        seen += 1;
        let body = std::fs::read(&path).unwrap();
        let got = parse_submission(&body, Format::Json, &BUDGET, &options());
        match (want, got) {
            (Ok(shape), Ok(normalised)) => {
                assert_eq!(normalised.shape, *shape, "{name}");
                // The result is a canonical v1 patch: it survives its own JSON round trip.
                let again = ghost_core::parse_json(normalised.patch.canonical_json().as_bytes())
                    .unwrap_or_else(|err| panic!("{name}: canonical form invalid: {err}"));
                assert_eq!(again, normalised.patch, "{name}");
            }
            (
                Err(pointer),
                Err(PatchError::Invalid {
                    pointer: got,
                    message,
                }),
            ) => {
                assert_eq!(got, *pointer, "{name}: {message}");
                if pointer.is_empty() {
                    assert!(
                        message.contains(ghost_core::NOTHING_TO_DO),
                        "{name}: {message}"
                    );
                }
                if *pointer == "/tasks" {
                    assert_eq!(message, ghost_core::TASKS_SHAPE, "{name}");
                }
            }
            (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
    assert_eq!(seen, expected.len(), "a fixture file is missing");
}

#[test]
fn command_patch_with_block_id_writes_its_mutation() {
    let normalised = parse_submission(
        &fixture("blockid-mutations.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap();
    let patch = normalised.patch;
    assert_eq!(patch.id.as_str(), "test-patch-v347");
    assert_eq!(patch.target.as_str(), "MAIN");
    assert_eq!(patch.edits.len(), 1);
    assert_eq!(patch.edits[0].path().as_str(), "foo/bar/baz.js");
    assert_eq!(normalised.ignored, vec!["/version".to_owned()]);
}

#[test]
fn envelope_pattern_becomes_a_replace_edit() {
    let patch = parse_submission(
        &fixture("envelope-pattern-replacement.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap()
    .patch;
    assert_eq!(
        patch.edits,
        vec![Edit::Replace {
            path: ghost_core::RelPath::parse("tmp_test_target.tsx").unwrap(),
            search: "<Text>This text will be patched.</Text>".to_owned(),
            replace: "<Text>✅ PATCHED</Text>".to_owned(),
        }]
    );
}

#[test]
fn g2o_execution_and_validation_become_commands_and_checks() {
    let normalised = parse_submission(
        &fixture("g2o-execution-validation.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap();
    let patch = normalised.patch;
    assert_eq!(patch.id.as_str(), "patch-v1.4.1048a(P6.5.50)_ghost-smoke");
    assert_eq!(patch.commands.len(), 1);
    assert!(patch.commands[0].starts_with("node scripts/g2o/health_http_ping_once.js"));
    assert_eq!(patch.validate.len(), 1);
    assert!(normalised.ignored.contains(&"/patch/metadata".to_owned()));
}

#[test]
fn absolute_paths_outside_the_roots_are_refused_naming_the_field() {
    let err = parse_submission(
        &fixture("mutations-absolute-tmp-path.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap_err();
    let PatchError::Invalid { pointer, message } = err else {
        panic!("expected an invalid-field error");
    };
    assert_eq!(pointer, "/mutations/0/path");
    assert!(message.contains("/tmp/simple-test.log"), "{message}");
    assert!(message.contains("legacy root"), "{message}");
}

#[test]
fn prose_phases_become_an_agent_task() {
    let patch = parse_submission(
        &fixture("phase-agent-task.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap()
    .patch;
    assert_eq!(
        patch.id.as_str(),
        "patch-v1.4.200(P1.1.0)_shell-directory-create"
    );
    let task = &patch.agent.as_ref().unwrap().task;
    assert!(task.contains("Create src-nextgen/shell/ directory with hardened structure"));
    assert!(task.contains("Configure shell-specific TypeScript setup"));
    // postMutationBuild and validate: patch checks, run where the policy allows them.
    assert!(patch.commands.is_empty());
    assert_eq!(patch.validate.len(), 9);
    assert!(patch.validate.iter().all(|check| check.if_allowed));
    assert_eq!(patch.priority, Priority::High);
    assert!(patch.edits.is_empty());
}

#[test]
fn upserts_under_a_legacy_root_become_relative_writes_with_modes() {
    let normalised = parse_submission(
        &fixture("upsert-absolute-repo-paths.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap();
    let patch = normalised.patch;
    // project "DEV:gpt-cursor-runner" names the old target DEV, an alias of CYOPS.
    assert_eq!(patch.target.as_str(), "CYOPS");
    assert_eq!(patch.edits.len(), 8);
    assert_eq!(
        patch.edits[0].path().as_str(),
        "scripts/config/patch-queue.json"
    );
    assert_eq!(
        patch.edits[3],
        Edit::Chmod {
            path: ghost_core::RelPath::parse("scripts/patch-executor.js").unwrap(),
            mode: "0755".to_owned(),
        }
    );
    // postMutationBuild first, then validate, all as patch checks run where allowed.
    assert!(patch.commands.is_empty());
    assert_eq!(patch.validate.len(), 5);
    assert!(patch.validate.iter().all(|check| check.if_allowed));
    assert_eq!(patch.validate[4].run, "node scripts/ci/validate_success.js");
    assert!(normalised.ignored.contains(&"/showInUI".to_owned()));
}

#[test]
fn the_same_absolute_paths_without_roots_are_refused() {
    let mut no_roots = options();
    no_roots.roots.clear();
    let err = parse_submission(
        &fixture("upsert-absolute-repo-paths.json"),
        Format::Json,
        &BUDGET,
        &no_roots,
    )
    .unwrap_err();
    assert!(
        matches!(&err, PatchError::Invalid { pointer, .. } if pointer == "/mutations/0/path"),
        "{err:?}"
    );
}

#[test]
fn yaml_v1_patches_parse_and_targets_follow_aliases() {
    let body = b"id: y1\ntarget: BRAUN\nedits:\n  - op: write\n    path: a.txt\n    contents: hi\n";
    let normalised = parse_submission(body, Format::Yaml, &BUDGET, &options()).unwrap();
    assert_eq!(normalised.shape, Shape::V1);
    assert_eq!(normalised.patch.target.as_str(), "MAIN");
}

#[test]
fn yaml_errors_carry_line_and_column_or_pointer() {
    let err =
        parse_submission(b"id: y\ntarget: [\n", Format::Yaml, &BUDGET, &options()).unwrap_err();
    assert!(
        matches!(err, PatchError::Syntax { line, .. } if line >= 2),
        "{err:?}"
    );
    let err = parse_submission(
        b"id: y\ntarget: MAIN\nedits:\n  - op: write\n    path: ../x\n    contents: ''\n",
        Format::Yaml,
        &BUDGET,
        &options(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PatchError::Invalid { pointer, .. } if pointer == "/edits/0/path"),
        "{err:?}"
    );
}

#[test]
fn unknown_mutation_ops_and_non_patches_are_refused() {
    let err = parse_submission(
        br#"{"blockId":"b","mutations":[{"op":"explode","path":"a"}]}"#,
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PatchError::Invalid { pointer, .. } if pointer == "/mutations/0/op"),
        "{err:?}"
    );
    let err = parse_submission(br#"[1,2]"#, Format::Json, &BUDGET, &options()).unwrap_err();
    assert!(matches!(&err, PatchError::Invalid { pointer, .. } if pointer.is_empty()));
}

#[test]
fn missing_target_without_a_default_names_the_target_field() {
    let mut no_default = options();
    no_default.default_target = None;
    let err = parse_submission(
        &fixture("blockid-mutations.json"),
        Format::Json,
        &BUDGET,
        &no_default,
    )
    .unwrap_err();
    assert!(
        matches!(&err, PatchError::Invalid { pointer, .. } if pointer == "/target"),
        "{err:?}"
    );
}
