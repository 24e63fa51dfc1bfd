//! Issue 27, must show, for the user manual: every example patch on every page of the manual
//! (`docs/src/**/*.md`) is submitted to a running system (the real executor) and ends as its
//! fence says. The fences are the guide's (`json ghost-example id=… expect=…`, fixtures as
//! `text ghost-fixture path=…`, read by `gateway::guide::examples`); each page runs against a
//! fresh system whose workspace `MAIN` (policy: patches may run `sh`) holds that page's
//! fixtures, reset before each example. A page that includes the guide (`{{#include` of
//! `guide/guide.md`) is skipped: `guide.rs` tests those examples. So is a page of runnable steps
//! (`sh ghost-step` fences, the getting-started page): its examples need the page's own
//! `ghost.toml` (an owner check), and `ghost-cli`'s
//! `walkthrough::the_getting_started_page_works_as_written` runs the whole page as written. A
//! patch-shaped JSON or YAML block (one with `edits`) outside these fences fails the test, so no
//! example goes untested.

use std::path::{Path, PathBuf};

use executor::{CommandPolicy, TargetPolicy};
use gateway::guide::{self, Example};
use serde_json::Value;

use crate::guide::{dry_run, ends_as_said, reset, tree};
use crate::helpers::{API_KEY, TestSystem, spawn_system_with};

/// Every `*.md` under `dir`, sorted, depth first.
fn pages(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read docs dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            found.extend(pages(&path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    found
}

/// Fenced blocks that look like a patch (`"edits"` or `edits:`) but are not a `ghost-example`:
/// their first line, for the failure message.
fn untested_patch_blocks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some((info, mut body)) = open.take() {
            if line.trim_end() == "```" {
                let language = info.split(' ').next().unwrap_or("");
                let patch_like = body.contains("\"edits\"") || body.contains("edits:");
                if matches!(language, "json" | "yaml" | "yml")
                    && patch_like
                    && !info.contains("ghost-example")
                {
                    found.push(format!("```{info}"));
                }
            } else {
                body.push_str(line);
                body.push('\n');
                open = Some((info, body));
            }
            continue;
        }
        if let Some(info) = line.strip_prefix("```") {
            open = Some((info.to_owned(), String::new()));
        }
    }
    found
}

async fn spawn() -> TestSystem {
    spawn_system_with(true, |config| {
        let executor = config.executor.as_mut().expect("an executor");
        executor.targets.insert(
            "MAIN".to_owned(),
            TargetPolicy {
                commands: CommandPolicy::Allowlist(vec!["sh".to_owned()]),
                ..TargetPolicy::default()
            },
        );
    })
    .await
}

/// Submits one example and checks it ends as its fence says.
async fn run(system: &TestSystem, page: &str, example: &Example, fixtures: &[&Example]) -> String {
    let named = example.attribute("id").unwrap_or("(derived)");
    let expect = example
        .attribute("expect")
        .unwrap_or_else(|| panic!("{page}: example {named} names no expect="));
    let derived = example.attribute("derived") == Some("true");
    reset(&system.workspace, fixtures);
    let before = tree(&system.workspace);

    let response = if example.language == "json" {
        let document: Value = serde_json::from_str(&example.body)
            .unwrap_or_else(|err| panic!("{page}: example {named} is not JSON: {err}"));
        if derived {
            assert!(
                document["id"].is_null(),
                "{page}: derived example {named} names an id"
            );
        } else {
            assert_eq!(
                document["id"], named,
                "{page}: example {named} carries another id"
            );
        }
        if example.attribute("dry_run") == Some("true") {
            dry_run(system, named, expect, example.attribute("diff"), &document).await;
            assert_eq!(
                tree(&system.workspace),
                before,
                "{page}: dry run {named} wrote"
            );
            return named.to_owned();
        }
        system.submit(&document).await
    } else {
        assert!(
            matches!(example.language.as_str(), "yaml" | "yml"),
            "{page}: example {named} is {:?}, not json or yaml",
            example.language
        );
        system
            .http
            .post(format!("{}/v1/patches", system.gateway()))
            .bearer_auth(API_KEY)
            .header("content-type", "application/yaml")
            .body(example.body.clone())
            .send()
            .await
            .expect("gateway reachable")
    };
    let code = response.status().as_u16();
    let accepted: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        code, 202,
        "{page}: example {named} was not accepted: {accepted}"
    );
    let id = accepted["id"].as_str().expect("an id").to_owned();
    if !derived {
        assert_eq!(id, named, "{page}: example {named} was stored as {id}");
    }
    let finished = system.wait_finished(&id).await;
    assert_eq!(
        finished["status"], expect,
        "{page}: example {id}: {finished}"
    );
    ends_as_said(&format!("{page}: example {id}"), example, &finished);
    let error = finished["error"].as_str().unwrap_or("");
    let after = tree(&system.workspace);
    if expect == "succeeded" {
        assert!(error.is_empty(), "{page}: example {id}: {finished}");
        assert_ne!(
            after, before,
            "{page}: example {id} succeeded but changed nothing"
        );
    } else {
        assert_eq!(
            after, before,
            "{page}: example {id} left the workspace changed"
        );
    }
    id
}

/// The manual's guide page includes docs/guide/guide.md from its first heading on (the lines
/// before are the maintainers' comment, which holds `-->` inside and would show as text), after
/// a note for the manual's readers.
#[test]
fn the_manuals_guide_page_includes_the_guide_from_its_title() {
    let root = ghost_testkit::repo_root();
    let page = std::fs::read_to_string(root.join("docs/src/guide.md")).expect("guide page");
    let includes: Vec<&str> = page
        .lines()
        .filter(|line| line.contains("{{#include"))
        .collect();
    assert_eq!(includes.len(), 1, "one include of the guide: {page:?}");
    let line: usize = includes[0]
        .trim()
        .strip_prefix("{{#include ../guide/guide.md:")
        .and_then(|rest| rest.strip_suffix(":}}"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("docs/src/guide.md is not one line range include: {page:?}"));
    let guide = std::fs::read_to_string(root.join("docs/guide/guide.md")).expect("guide");
    let lines: Vec<&str> = guide.lines().collect();
    assert!(line >= 2, "{page}");
    assert!(
        lines[line - 1].starts_with("# ") && lines[line - 2].trim() == "-->",
        "docs/src/guide.md includes from line {line} ({:?}), not the guide's title right after its comment: change the number",
        lines.get(line - 1)
    );
    assert!(lines[..line - 1].iter().all(|l| !l.starts_with("# ")));
}

#[tokio::test]
async fn every_example_patch_of_every_manual_page_ends_as_its_fence_says() {
    let root = ghost_testkit::repo_root().join("docs/src");
    assert!(
        root.join("SUMMARY.md").is_file(),
        "no manual at {}",
        root.display()
    );
    let mut tested: Vec<(String, Vec<String>)> = Vec::new();
    for path in pages(&root) {
        let page = path
            .strip_prefix(&root)
            .expect("under docs/src")
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read page");
        if text.contains("{{#include") && text.contains("guide/guide.md") {
            continue;
        }
        if text.contains("```sh ghost-step") {
            continue;
        }
        let untested = untested_patch_blocks(&text);
        assert!(
            untested.is_empty(),
            "{page}: patch examples outside a ghost-example fence: {untested:?}"
        );
        let blocks = guide::examples(&text);
        let fixtures: Vec<&Example> = blocks
            .iter()
            .filter(|block| block.kind == "ghost-fixture")
            .collect();
        let examples: Vec<&Example> = blocks
            .iter()
            .filter(|block| block.kind == "ghost-example")
            .collect();
        if examples.is_empty() {
            continue;
        }
        let system = spawn().await;
        let mut ran = Vec::new();
        for example in examples {
            ran.push(run(&system, &page, example, &fixtures).await);
        }
        system.system.shutdown().await.expect("shutdown");
        tested.push((page, ran));
    }
    eprintln!("manual examples run, per page: {tested:?}");
    // The scanner is not vacuous: the patches chapter has examples of each ending.
    let patches = tested
        .iter()
        .find(|(page, _)| page == "patches.md")
        .unwrap_or_else(|| panic!("patches.md ran no example; pages run: {tested:?}"));
    assert!(patches.1.len() >= 3, "{patches:?}");
}
