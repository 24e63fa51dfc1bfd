//! The summarizer's API over real gRPC on loopback, with its files on a temp dir and a
//! recording fake alerter.

mod agent;
mod archive;
mod concurrency;
mod crash;
mod delivery;
mod diagnostics;
mod golden;
mod helpers;
mod manifest;
mod outbox_age;
mod replicas;
mod storage;
mod stores;
mod truncation;
mod webhooks;

use ghost_proto::router::v1::PatchStatus;
use ghost_proto::summarizer::v1::ListRequest;
use helpers::{
    FakeAlerter, created, get_error, main_one_per_page, record, record_error, spawn_summarizer,
    summary,
};

#[tokio::test]
async fn record_writes_markdown_and_json_and_notifies_the_alerter() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = FakeAlerter::start().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;

    assert!(
        created(
            &mut app.client,
            record("fix-login", 1, PatchStatus::Succeeded)
        )
        .await
    );

    let folder = dir.path().join("summaries/MAIN");
    let markdown = std::fs::read_to_string(folder.join("summary-fix-login.md")).unwrap();
    assert!(
        markdown.starts_with("# ✅ fix-login succeeded\n"),
        "{markdown}"
    );
    assert!(markdown.contains("patchName: fix-login"), "{markdown}");
    assert!(markdown.contains("`src/login.ts`"), "{markdown}");
    assert!(
        markdown.contains("http://jaeger.test/trace/4bf92f3577b34da6a3ce929d0e0e4736"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("summary-fix-login.json")).unwrap())
            .unwrap();
    assert_eq!(json["patch_id"], "fix-login");
    assert_eq!(json["target"], "MAIN");
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(json["edits"][0]["path"], "src/login.ts");

    let notified = alerter.wait_for(1).await;
    assert_eq!(notified.len(), 1, "{notified:?}");
    assert_eq!(notified[0].patch_id, "fix-login");
    assert_eq!(notified[0].attempt, 1);
    assert_eq!(notified[0].status, PatchStatus::Succeeded as i32);
    assert!(notified[0].excerpt.starts_with("# ✅ fix-login"));
    assert_eq!(notified[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

    let got = summary(&mut app.client, "fix-login").await;
    assert_eq!(got.markdown, markdown);
    assert_eq!(got.path, "summaries/MAIN/summary-fix-login.md");
    assert_eq!(got.status, PatchStatus::Succeeded as i32);
    app.stop().await;
}

#[tokio::test]
async fn recording_the_same_attempt_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    assert!(created(&mut app.client, record("p-dup", 1, PatchStatus::RolledBack)).await);
    let json_path = dir.path().join("summaries/MAIN/summary-p-dup.json");
    let before = std::fs::read(&json_path).unwrap();

    let mut changed = record("p-dup", 1, PatchStatus::Succeeded);
    changed.outcome.as_mut().unwrap().description = "something else".into();
    let second = app.client.record(changed).await.unwrap().into_inner();
    assert!(!second.created);
    assert_eq!(std::fs::read(&json_path).unwrap(), before);
    app.stop().await;
}

#[tokio::test]
async fn a_later_attempt_appends_to_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    app.client
        .record(record("p-retry", 1, PatchStatus::RolledBack))
        .await
        .unwrap();
    assert!(
        created(
            &mut app.client,
            record("p-retry", 2, PatchStatus::Succeeded)
        )
        .await
    );

    let folder = dir.path().join("summaries/MAIN");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("summary-p-retry.json")).unwrap())
            .unwrap();
    assert_eq!(json["attempt"], 2);
    assert_eq!(json["status"], "succeeded");
    let attempts = json["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["status"], "rolled_back");
    assert_eq!(attempts[1]["status"], "succeeded");
    let markdown = std::fs::read_to_string(folder.join("summary-p-retry.md")).unwrap();
    assert!(markdown.starts_with("# ✅ p-retry succeeded"), "{markdown}");
    assert!(markdown.contains("attempt 1: ❌ rolled_back"), "{markdown}");
    app.stop().await;
}

#[tokio::test]
async fn summaries_are_served_after_a_restart_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    for (id, attempt) in [("older", 1), ("newer", 3)] {
        app.client
            .record(record(id, attempt, PatchStatus::Failed))
            .await
            .unwrap();
    }
    app.stop().await;

    let mut restarted = spawn_summarizer(dir.path(), None).await;
    let got = summary(&mut restarted.client, "older").await;
    assert!(
        got.markdown.starts_with("# ❌ older failed"),
        "{}",
        got.markdown
    );

    let page = main_one_per_page(&mut restarted.client, String::new()).await;
    assert_eq!(page.summaries.len(), 1);
    assert_eq!(page.summaries[0].patch_id, "newer");
    assert_eq!(page.next_page_token, "1");
    let rest = main_one_per_page(&mut restarted.client, page.next_page_token).await;
    assert_eq!(rest.summaries[0].patch_id, "older");
    assert_eq!(rest.next_page_token, "");
    restarted.stop().await;
}

#[tokio::test]
async fn invalid_input_is_refused_and_unknown_patches_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    let status = record_error(&mut app.client, record("../x", 1, PatchStatus::Succeeded)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("outcome.patch_id"), "{status:?}");

    let status = record_error(
        &mut app.client,
        record("p-running", 1, PatchStatus::Applying),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("outcome.report.status"),
        "{status:?}"
    );

    let status = get_error(&mut app.client, "never-recorded").await;
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(!dir.path().join("summaries/x").exists());
    app.stop().await;
}

/// Every file under `dir`, by relative path, with its bytes.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test]
async fn the_same_attempt_twice_changes_nothing_even_after_a_restart_and_history_grows() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = FakeAlerter::start().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;
    let first = app
        .client
        .record(record("p-idem", 1, PatchStatus::RolledBack))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    alerter.wait_for(1).await;
    let summaries = dir.path().join("summaries");
    let before = snapshot(&summaries);
    assert!(
        before.contains_key("MAIN/summary-p-idem.md"),
        "{:?}",
        before.keys()
    );
    assert!(
        before.contains_key("MAIN/artifacts/p-idem/1-1.log"),
        "{:?}",
        before.keys()
    );

    // Redelivered with other content, before and after a restart: nothing changes.
    let mut changed = record("p-idem", 1, PatchStatus::Succeeded);
    changed.outcome.as_mut().unwrap().description = "something else".into();
    assert!(!created(&mut app.client, changed.clone()).await);
    assert_eq!(snapshot(&summaries), before);
    app.stop().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;
    let again = app.client.record(changed).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(snapshot(&summaries), before);

    // The second attempt appends to the history; the first stays as it was.
    assert!(created(&mut app.client, record("p-idem", 2, PatchStatus::Succeeded)).await);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summaries.join("MAIN/summary-p-idem.json")).unwrap())
            .unwrap();
    let attempts = json["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{json}");
    assert_eq!(attempts[0]["status"], "rolled_back");
    assert_eq!(attempts[0]["error"], "validation failed: tsc exited 2");
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_eq!(json["schema_version"], 1);
    assert!(summaries.join("MAIN/artifacts/p-idem/1-1.log").exists());
    assert!(summaries.join("MAIN/artifacts/p-idem/2-1.log").exists());

    // One notification per attempt, none for the duplicates.
    let notified = alerter.wait_for(2).await;
    let mut keys: Vec<_> = notified
        .iter()
        .map(|n| (n.patch_id.clone(), n.attempt))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys,
        vec![("p-idem".to_owned(), 1), ("p-idem".to_owned(), 2)]
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summaries.join("MAIN/patch-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["patches"][0]["attempts"], 2);
    assert_eq!(manifest["patches"][0]["status"], "succeeded");
    let changelog = manifest["changelog"].as_array().unwrap();
    assert_eq!(changelog.len(), 2, "{manifest}");
    assert_eq!(changelog[1]["from"], "rolled_back");
    assert_eq!(changelog[1]["to"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn list_filters_by_target_and_status_with_paging() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    for (id, status) in [
        ("a", PatchStatus::Failed),
        ("b", PatchStatus::Succeeded),
        ("c", PatchStatus::Failed),
        ("d", PatchStatus::Failed),
    ] {
        app.client.record(record(id, 1, status)).await.unwrap();
    }
    let mut other = record("e", 1, PatchStatus::Failed);
    other.outcome.as_mut().unwrap().target = "CYOPS".into();
    app.client.record(other).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list(ListRequest {
                target: "MAIN".into(),
                status: PatchStatus::Failed as i32,
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 3);
        seen.extend(page.summaries.iter().map(|s| s.patch_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["a", "c", "d"]);
    let all = app
        .client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.total, 5);
    let bad = app
        .client
        .list(ListRequest {
            status: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("status"), "{bad:?}");
    app.stop().await;
}
