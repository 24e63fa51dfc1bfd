//! One input through every ghost-core parser: the fuzz target and the corpus replay test in
//! ghost-core (`tests/fuzz_corpus.rs`) both call [`run`], so what the fuzzer found stays tested.
//!
//! The input is read as a document (JSON, YAML, chat text with fenced blocks) and, split at its
//! first NUL byte into `original` and `change`, as a diff, a V4A document, a search text and a
//! block to find with the ladder in `original`; and as a check's output, for the diagnostics
//! parser. Errors are expected; panics and hangs are bugs.

use std::collections::BTreeMap;

use ghost_core::fileops::{plan, plan_document, replace_text};
use ghost_core::unified::{apply_hunks, parse_hunks, parse_multi};
use ghost_core::v4a::{self, V4aFile};
use ghost_core::{
    Format, LegacyOptions, ParseBudget, TargetName, detect_shape, diagnostics, fenced_blocks,
    ladder, normalise, parse_json,
};

/// Runs `data` through parse, normalise, plan, unified diffs, V4A and the ladder.
pub fn run(data: &[u8]) {
    let budget = ParseBudget::new(64 * 1024);
    let main = TargetName::parse("MAIN").expect("a valid target name");
    let options = LegacyOptions {
        default_target: Some(main.clone()),
        aliases: BTreeMap::from([("OLD".to_owned(), main.clone())]),
        roots: BTreeMap::from([(main, vec!["/srv/app".to_owned()])]),
    };
    for format in [Format::Json, Format::Yaml] {
        document(data, format, &budget, &options);
    }
    let text = String::from_utf8_lossy(data);
    // Check output: whole, and fed in uneven chunks as the executor streams it.
    let _ = diagnostics::parse(&text, "fuzz");
    let mut parser = diagnostics::Parser::new("fuzz");
    for chunk in data.chunks(1 + data.len() % 7) {
        parser.feed(chunk);
    }
    let _ = parser.finish();
    for block in fenced_blocks(&text) {
        document(block.body.as_bytes(), Format::Yaml, &budget, &options);
    }
    let (original, change) = text.split_once('\0').unwrap_or((&text, &text));
    if let Ok(hunks) = parse_hunks(change) {
        let _ = apply_hunks(original, &hunks);
    }
    if let Ok(files) = parse_multi(change) {
        for file in files {
            let _ = apply_hunks(original, &file.hunks);
        }
    }
    if let Ok(files) = v4a::parse(change) {
        for file in files {
            if let V4aFile::Update { hunks, .. } = file {
                let _ = apply_hunks(original, &hunks);
            }
        }
    }
    let _ = plan_document(change);
    if !change.trim().is_empty() {
        let _ = replace_text(original, change, "replaced\n");
    }
    let hay: Vec<&str> = original.split('\n').collect();
    let needle: Vec<&str> = change.split('\n').collect();
    let from = data.len() % (hay.len() + 2);
    let hint = data
        .first()
        .map(|byte| usize::from(*byte) % (hay.len() + 2));
    let _ = ladder::find(&hay, &needle, from, hint);
}

fn document(data: &[u8], format: Format, budget: &ParseBudget, options: &LegacyOptions) {
    // The gateway's reader: JSON trailing commas and comments forgiven.
    let Ok(ghost_core::Document { value, .. }) = ghost_core::read_document(data, format, budget)
    else {
        return;
    };
    if detect_shape(&value).is_none() {
        return;
    }
    let Ok(normalised) = normalise(value, options) else {
        return;
    };
    let _ = plan(&normalised.patch);
    if normalised.derived_id {
        assert_eq!(
            normalised.patch.derived_id(),
            normalised.patch.id,
            "unstable derived id"
        );
    }
    // The canonical form must read back as the same patch: routers and executors rely on it.
    let canonical = normalised.patch.canonical_json();
    match parse_json(canonical.as_bytes()) {
        Ok(again) => assert_eq!(again, normalised.patch, "canonical form changed the patch"),
        Err(err) => panic!("the canonical form of an accepted patch is refused: {err}"),
    }
}
