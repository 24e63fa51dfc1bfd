//! Issue 27, must show: every example patch of the guide for models is submitted to a running
//! system (the real executor) against the fixture workspace the guide describes, and ends as
//! its text says. The examples and the fixture are read from the guide's one source
//! (`ghost-example` and `ghost-fixture` fences), and each must appear in what `GET /v1/guide`
//! serves, so the text a model reads is the text tested here.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use executor::{CommandPolicy, TargetPolicy};
use gateway::guide::{self, Example};
use serde_json::Value;

use crate::helpers::{API_KEY, TestSystem, spawn_system_with};

/// Every file of the workspace but the executor's own `.ghost`: path → (contents, mode).
pub(crate) fn tree(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if rel == ".ghost" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), 0));
                walk(root, &path, out);
            } else {
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel, (std::fs::read(&path).expect("read"), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Empties the workspace (but `.ghost`) and writes the guide's fixture files (mode 644).
pub(crate) fn reset(root: &Path, fixtures: &[&Example]) {
    for entry in std::fs::read_dir(root).expect("read workspace") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|name| name == ".ghost") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove dir");
        } else {
            std::fs::remove_file(&path).expect("remove file");
        }
    }
    for fixture in fixtures {
        let rel = fixture.attribute("path").expect("a fixture names its path");
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("fixture dir");
        std::fs::write(&path, &fixture.body).expect("fixture file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("mode");
    }
}

#[tokio::test]
async fn every_example_of_the_guide_ends_as_its_text_says() {
    let system = spawn_system_with(true, |config| {
        let executor = config.executor.as_mut().expect("an executor");
        // The guide: "They assume this workspace MAIN, whose policy lets patches run `sh`".
        executor.targets.insert(
            "MAIN".to_owned(),
            TargetPolicy {
                commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
                ..TargetPolicy::default()
            },
        );
    })
    .await;
    let served = system
        .http
        .get(format!("{}/v1/guide", system.gateway()))
        .send()
        .await
        .expect("gateway reachable")
        .text()
        .await
        .expect("the guide");

    let blocks = guide::examples(guide::SOURCE);
    let fixtures: Vec<&Example> = blocks
        .iter()
        .filter(|block| block.kind == "ghost-fixture")
        .collect();
    let examples: Vec<&Example> = blocks
        .iter()
        .filter(|block| block.kind == "ghost-example")
        .collect();
    assert!(!fixtures.is_empty(), "the guide describes no fixture");
    // Every edit op, both patch documents, and a failure of each kind the guide explains.
    let all: String = examples.iter().map(|e| e.body.as_str()).collect();
    for op in [
        "write", "replace", "diff", "delete", "rename", "chmod", "mkdir",
    ] {
        assert!(
            all.contains(&format!("\"op\": \"{op}\"")),
            "no example of {op}"
        );
    }
    assert!(all.contains("*** Begin Patch") && all.contains("--- a/"));
    let expected: Vec<&str> = examples
        .iter()
        .filter_map(|e| e.attribute("expect"))
        .collect();
    for status in ["succeeded", "failed", "rejected"] {
        assert!(expected.contains(&status), "no example ending {status}");
    }

    let workspace = system.workspace.clone();
    let mut ran = Vec::new();
    for example in examples {
        let named = example.attribute("id").unwrap_or("(derived)");
        let expect = example
            .attribute("expect")
            .expect("an example names its end");
        assert!(
            served.contains(&example.body),
            "example {named} is not in what GET /v1/guide serves"
        );
        let document: Value = serde_json::from_str(&example.body)
            .unwrap_or_else(|err| panic!("example {named} is not JSON: {err}"));
        let derived = example.attribute("derived") == Some("true");
        if derived {
            assert!(document["id"].is_null(), "a derived-id example names an id");
        } else {
            assert_eq!(document["id"], named, "example {named} carries another id");
        }

        reset(&workspace, &fixtures);
        let before = tree(&workspace);
        if example.attribute("dry_run") == Some("true") {
            dry_run(&system, named, expect, example.attribute("diff"), &document).await;
            assert_eq!(tree(&workspace), before, "dry run {named} wrote");
            ran.push(named.to_owned());
            continue;
        }
        let response = system.submit(&document).await;
        let code = response.status().as_u16();
        let accepted: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(code, 202, "example {named} was not accepted: {accepted}");
        let id = accepted["id"].as_str().expect("an id").to_owned();
        if derived {
            assert!(
                id.starts_with("p-") && id.len() == 18 && accepted["id_derived"] == true,
                "{accepted}"
            );
        }
        let id = id.as_str();
        let finished = system.wait_finished(id).await;
        assert_eq!(finished["status"], expect, "example {id}: {finished}");
        ends_as_said(&format!("example {id}"), example, &finished);
        let error = finished["error"].as_str().unwrap_or("");
        let after = tree(&workspace);
        if expect == "succeeded" {
            assert!(error.is_empty(), "example {id}: {finished}");
            assert_ne!(after, before, "example {id} succeeded but changed nothing");
        } else {
            // Nothing written, or everything restored.
            assert_eq!(after, before, "example {id} left the workspace changed");
        }
        ran.push(id.to_owned());
    }
    assert!(ran.len() >= 14, "only {} examples ran: {ran:?}", ran.len());

    // "The same id with the same content is a replay ... with other content is refused (409)."
    let first = examples_by_id(&blocks, "fix-timeout-1");
    let response = system.submit(&first).await;
    assert_eq!(response.status().as_u16(), 202);
    let replayed: Value = response.json().await.expect("json");
    assert_eq!(replayed["replayed"], true, "{replayed}");
    let mut changed = first.clone();
    changed["description"] = Value::String("other content".to_owned());
    assert_eq!(system.submit(&changed).await.status().as_u16(), 409);
    system.system.shutdown().await.expect("shutdown");
}

/// The document of the example named `id`.
fn examples_by_id(blocks: &[Example], id: &str) -> Value {
    let example = blocks
        .iter()
        .find(|block| block.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no example {id}"));
    serde_json::from_str(&example.body).expect("json")
}

/// `POST /v1/patches?dry_run=true`: answered 200 with the status the guide says and a diff
/// holding the line it quotes; nothing stored.
pub(crate) async fn dry_run(
    system: &TestSystem,
    id: &str,
    expect: &str,
    diff_line: Option<&str>,
    document: &Value,
) {
    let response = system
        .http
        .post(format!("{}/v1/patches?dry_run=true", system.gateway()))
        .bearer_auth(API_KEY)
        .json(document)
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 200, "dry run {id}");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["dry_run"], true, "{answer}");
    assert_eq!(answer["status"], expect, "dry run {id}: {answer}");
    let diff = answer["diff"].as_str().unwrap_or("");
    let line = diff_line.expect("a dry-run example quotes a line of its diff");
    assert!(
        diff.lines().any(|l| l == line),
        "dry run {id}: no line {line:?} in {answer}"
    );
    assert_eq!(system.get(id).await.0, 404, "a dry run stores nothing");
}

/// The error text and the located diagnostic an example's fence quotes (`error=…`,
/// `diagnostic=path:line`) are what the ended patch reports; `what` names the example.
pub(crate) fn ends_as_said(what: &str, example: &Example, finished: &Value) {
    let error = finished["error"].as_str().unwrap_or("");
    if let Some(said) = example.attribute("error") {
        assert!(
            error.contains(said),
            "{what}: the error {error:?} is not the one the text quotes ({said:?})"
        );
    }
    if let Some(located) = example.attribute("diagnostic") {
        let (path, line) = located.rsplit_once(':').expect("path:line");
        let line: u64 = line.parse().expect("a line number");
        let diagnostics = finished["report"]["diagnostics"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            diagnostics
                .iter()
                .any(|d| d["path"] == path && d["line"] == line && d["severity"] == "error"),
            "{what}: no error diagnostic at {located}: {finished}"
        );
    }
}
