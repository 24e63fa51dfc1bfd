//! What real models send: ids derived from content, forgiven trailing commas and comments
//! (named, with truthful positions), duplicate keys refused naming both places, and documents
//! that ask for nothing refused saying so.

use std::collections::BTreeMap;

use ghost_core::{
    Format, LegacyOptions, NOTHING_TO_DO, ParseBudget, PatchError, Shape, TargetName,
    parse_submission, read_document,
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
