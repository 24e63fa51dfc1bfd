//! What real models send: ids derived from content, forgiven trailing commas and comments
//! (named, with truthful positions), duplicate keys refused naming both places, and documents
//! that ask for nothing refused saying so.

use std::collections::BTreeMap;

use ghost_core::{
    Format, LegacyOptions, NOTHING_TO_DO, ParseBudget, PatchError, RESERVED_ID, Shape, TASKS_SHAPE,
    TargetName, parse_submission, read_document,
};

const BUDGET: ParseBudget = ParseBudget {
    max_bytes: 1024 * 1024,
    max_aliases: ParseBudget::DEFAULT_MAX_ALIASES,
    max_depth: ParseBudget::DEFAULT_MAX_DEPTH,
    max_nodes: ParseBudget::DEFAULT_MAX_NODES,
};

fn options() -> LegacyOptions {
    LegacyOptions {
        default_target: Some(TargetName::parse("MAIN").unwrap()),
        aliases: BTreeMap::new(),
        roots: BTreeMap::new(),
    }
}

fn submit(body: &str) -> Result<ghost_core::Normalised, PatchError> {
    parse_submission(body.as_bytes(), Format::Json, &BUDGET, &options())
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn a_patch_without_an_id_gets_one_from_its_content_however_spelled() {
    let one = submit(r#"{"target":"MAIN","commands":["make"]}"#).unwrap();
    let spaced = submit("{ \"commands\" : [ \"make\" ] ,\n  \"target\": \"MAIN\" }").unwrap();
    let defaulted = submit(r#"{"commands":["make"]}"#).unwrap();
    assert!(one.derived_id);
    let id = one.patch.id.as_str();
    assert!(id.starts_with("p-") && id.len() == 18, "{id}");
    assert_eq!(spaced.patch.id, one.patch.id);
    // The default target is part of the content: the same patch as naming it.
    assert_eq!(defaulted.patch.id, one.patch.id);
    let other = submit(r#"{"target":"MAIN","commands":["make test"]}"#).unwrap();
    assert_ne!(other.patch.id, one.patch.id);
    // An explicit id is kept as given.
    let named = submit(r#"{"id":"mine","target":"MAIN","commands":["make"]}"#).unwrap();
    assert_eq!(named.patch.id.as_str(), "mine");
    assert!(!named.derived_id);
}

#[test]
fn legacy_shapes_without_id_or_target_are_normalised() {
    let phase = parse_submission(
        &fixture("phase-no-id-no-target.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap();
    assert_eq!(phase.shape, Shape::Phase);
    assert!(phase.derived_id);
    assert_eq!(phase.patch.target.as_str(), "MAIN");
    let task = &phase.patch.agent.as_ref().unwrap().task;
    assert!(
        task.contains("Phase 1: Patch runner quarantine logic"),
        "{task}"
    );
    assert!(
        task.contains("Remove all `https://runner.thoughtmarks.app`"),
        "{task}"
    );
    let again = parse_submission(
        &fixture("phase-no-id-no-target.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap();
    assert_eq!(again.patch.id, phase.patch.id);
}

#[test]
fn trailing_commas_and_comments_are_forgiven_and_named() {
    let strict = submit(&String::from_utf8(fixture("command-no-target.json")).unwrap()).unwrap();
    let lenient =
        submit(&String::from_utf8(fixture("command-trailing-comma.json")).unwrap()).unwrap();
    assert_eq!(lenient.patch, strict.patch);
    assert!(strict.warnings.is_empty());
    assert_eq!(
        lenient.warnings,
        ["line 7, column 17: a trailing comma before '}' was ignored"]
    );
    let commented = submit("// a model's note\n{\"commands\": [\"make\", /* all */],}").unwrap();
    assert_eq!(
        commented.warnings,
        [
            "line 1, column 1: a // comment was ignored",
            "line 2, column 21: a trailing comma before ']' was ignored",
            "line 2, column 23: a /* */ comment was ignored",
            "line 2, column 33: a trailing comma before '}' was ignored",
        ]
    );
}

#[test]
fn strings_holding_comment_or_comma_text_are_kept_byte_for_byte() {
    let normalised =
        submit(r#"{"target":"MAIN","commands":["echo '// not a comment ,]' /* nor this */ ,}"],}"#)
            .unwrap();
    assert_eq!(
        normalised.patch.commands,
        ["echo '// not a comment ,]' /* nor this */ ,}"]
    );
    assert_eq!(normalised.warnings.len(), 1, "{:?}", normalised.warnings);
}

#[test]
fn errors_after_a_forgiven_comment_keep_the_senders_line_and_column() {
    // Columns as in the text sent: the forgiven bytes became spaces, not gaps.
    for (body, place) in [
        (
            &b"{\"a\": 1, // note\n \"b\": [1,],\n \"c\": tru }"[..],
            (3, 10),
        ),
        (&b"{\"a\": [1,], \"b\": tru }"[..], (1, 21)),
    ] {
        match read_document(body, Format::Json, &BUDGET) {
            Err(PatchError::Syntax { line, column, .. }) => assert_eq!((line, column), place),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_keys_name_the_key_and_both_pointers_in_json_and_yaml() {
    for (body, format, pointer) in [
        (
            r#"{"id":"a","id":"b","target":"MAIN"}"#,
            Format::Json,
            "/id",
        ),
        (
            r#"{"id":"a","target":"MAIN","edits":[{"op":"write","path":"x","path":"y","contents":""}]}"#,
            Format::Json,
            "/edits/0/path",
        ),
        (
            "id: a\ntarget: MAIN\ntarget: CYOPS\n",
            Format::Yaml,
            "/target",
        ),
    ] {
        match parse_submission(body.as_bytes(), format, &BUDGET, &options()) {
            Err(err @ PatchError::DuplicateKey { .. }) => {
                let text = err.to_string();
                let PatchError::DuplicateKey { first, second, .. } = err else {
                    unreachable!("matched above")
                };
                assert_eq!((first.as_str(), second.as_str()), (pointer, pointer));
                assert_eq!(text.matches(&format!("{pointer:?}")).count(), 2, "{text}");
            }
            other => panic!("{body}: expected a duplicate key, got {other:?}"),
        }
    }
}

#[test]
fn documents_that_ask_for_nothing_say_what_is_missing() {
    for body in [
        r#"{"entries":[{"filename":"a.json","status":"moved"}]}"#,
        r#"{"test":"cache mirror functionality","status":"should appear"}"#,
        r#"{"test":true,"target":"test"}"#,
        r#"{"id":"p1","target":"MAIN","description":"just prose"}"#,
        "{}",
    ] {
        match submit(body) {
            Err(PatchError::Invalid { pointer, message }) => {
                assert_eq!(pointer, "", "{body}");
                assert!(message.starts_with(NOTHING_TO_DO), "{body}: {message}");
            }
            other => panic!("{body}: expected nothing to do, got {other:?}"),
        }
    }
}

/// Derived ids are stored and retried against: this pins the rule. If it fails, every derived
/// id has moved; a change to the canonical form needs a new id version, not a new literal.
#[test]
fn derived_ids_are_pinned() {
    let normalised = submit(r#"{"target":"MAIN","commands":["make test"]}"#).unwrap();
    assert!(normalised.derived_id);
    assert_eq!(normalised.patch.id.as_str(), PINNED_DERIVED_ID);
}

const PINNED_DERIVED_ID: &str = "p-210c3e760c9a0bbc";

#[test]
fn explicit_ids_of_the_derived_form_are_reserved() {
    let derived = submit(r#"{"target":"MAIN","commands":["make test"]}"#)
        .unwrap()
        .patch
        .id;
    // Another document taking that id ahead of time, in any shape that names an id.
    for (body, pointer) in [
        (
            format!(r#"{{"id":"{derived}","target":"MAIN","commands":["rm -rf build"]}}"#),
            "/id",
        ),
        (
            r#"{"id":"p-0123456789abcdef","target":"OTHER","agent":{"task":"x"}}"#.to_owned(),
            "/id",
        ),
        (
            r#"{"blockId":"p-0123456789abcdef","postMutationBuild":"make"}"#.to_owned(),
            "/blockId",
        ),
        (
            r#"{"patch":{"id":"p-0123456789abcdef","kind":"k","execution":["make"]}}"#.to_owned(),
            "/patch/id",
        ),
    ] {
        match submit(&body) {
            Err(PatchError::Invalid {
                pointer: got,
                message,
            }) => {
                assert_eq!(got, pointer, "{body}");
                assert_eq!(message, RESERVED_ID, "{body}");
            }
            other => panic!("{body}: expected the reserved-id refusal, got {other:?}"),
        }
    }
    // The document's own derived id, named explicitly, is the same patch: accepted.
    let own = submit(&format!(
        r#"{{"id":"{derived}","target":"MAIN","commands":["make test"]}}"#
    ))
    .unwrap();
    assert_eq!(own.patch.id, derived);
    assert!(!own.derived_id);
    // Ids that only look alike are anyone's.
    for id in [
        "p-0123456789ABCDEF",
        "p-0123456789abcde",
        "p-0123456789abcdef0",
        "q-0123456789abcdef",
    ] {
        let body = format!(r#"{{"id":"{id}","target":"MAIN","commands":["make"]}}"#);
        assert_eq!(submit(&body).unwrap().patch.id.as_str(), id);
    }
}

#[test]
fn blank_instructions_are_refused_naming_what_is_missing() {
    for (body, pointer, names) in [
        (r#"{"executionSteps":[]}"#, "/phases", "executionSteps"),
        (r#"{"phases":[{}]}"#, "/phases", "phases"),
        (r#"{"notes":""}"#, "/phases", "notes"),
        (
            r#"{"notes":["  "],"executionSteps":[""],"phases":[{"task":" "}]}"#,
            "/phases",
            "non-blank",
        ),
        (r#"{"agent":{"task":" "}}"#, "/agent/task", "task"),
        (
            r#"{"id":"a","target":"MAIN","commands":["make"],"agent":{"task":"\n"}}"#,
            "/agent/task",
            "blank",
        ),
    ] {
        match submit(body) {
            Err(PatchError::Invalid {
                pointer: got,
                message,
            }) => {
                assert_eq!(got, pointer, "{body}: {message}");
                assert!(message.contains(names), "{body}: {message}");
            }
            other => panic!("{body}: expected a refusal, got {other:?}"),
        }
    }
    // One real line is enough.
    assert!(submit(r#"{"notes":["", "fix the login"]}"#).is_ok());
    assert!(submit(r#"{"phases":[{"task":"rename the module"}]}"#).is_ok());
}

#[test]
fn a_tasks_list_is_refused_as_a_shape_not_as_nothing_to_do() {
    let err = parse_submission(
        &fixture("tasks-leading-comment.json"),
        Format::Json,
        &BUDGET,
        &options(),
    )
    .unwrap_err();
    match err {
        PatchError::Invalid { pointer, message } => {
            assert_eq!(pointer, "/tasks");
            assert_eq!(message, TASKS_SHAPE);
            assert!(!message.contains("nothing to do"));
        }
        other => panic!("expected the tasks refusal, got {other:?}"),
    }
}

#[test]
fn a_long_duplicate_key_is_shortened_in_the_refusal() {
    let key = "k".repeat(512 * 1024);
    let body = format!(r#"{{"{key}":{{"a":1,"a":2}}}}"#);
    match submit(&body) {
        Err(err @ PatchError::DuplicateKey { .. }) => {
            let text = err.to_string();
            assert!(text.len() < 1024, "{} bytes", text.len());
            let PatchError::DuplicateKey {
                key: shown, first, ..
            } = err
            else {
                unreachable!("matched above")
            };
            // The nested duplicate "a" comes first; its pointer holds the long key.
            assert_eq!(shown, "a");
            assert_eq!(first.chars().count(), 65, "{first}");
            assert!(first.starts_with("/kkk") && first.ends_with('…'), "{first}");
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
    let key = "k".repeat(500 * 1024);
    let body = format!(r#"{{"{key}":1,"{key}":2}}"#);
    match submit(&body) {
        Err(PatchError::DuplicateKey { key: shown, .. }) => {
            assert_eq!(shown, format!("{}…", "k".repeat(64)));
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
}

#[test]
fn the_warnings_kept_are_the_earliest_in_the_document() {
    // A trailing comma is found only at its bracket, after the 25 comments that follow it.
    let comments = "// note\n".repeat(25);
    let body = format!("{{\"target\":\"MAIN\",\"commands\":[\"make\",\n{comments}]}}");
    let document = read_document(body.as_bytes(), Format::Json, &BUDGET).unwrap();
    assert_eq!(document.warnings.len(), 21, "{:?}", document.warnings);
    assert_eq!(
        document.warnings[0],
        "line 1, column 36: a trailing comma before ']' was ignored"
    );
    assert!(document.warnings[1].starts_with("line 2, column 1:"));
    assert!(document.warnings[19].starts_with("line 20, column 1:"));
    assert_eq!(
        document.warnings[20],
        "6 more forgiven commas or comments not listed"
    );
}
