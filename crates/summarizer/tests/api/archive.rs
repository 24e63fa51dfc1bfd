//! Must-show 5: archiving moves old summaries (and their artifacts) to `.archive/YYYY-MM/`,
//! the retention limit deletes them, an interrupted move is finished at start, and
//! `patch-manifest.json` always matches the files on disk.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ghost_proto::router::v1::PatchStatus;

use crate::helpers::{T0, get_error, record, spawn_summarizer, summary};
use crate::snapshot;

const DAY: i64 = 86_400_000;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Records `patch_id` (attempt 1) as finished at `finished_ms`.
fn at(patch_id: &str, finished_ms: i64) -> ghost_proto::summarizer::v1::RecordRequest {
    let mut request = record(patch_id, 1, PatchStatus::Failed);
    request.outcome.as_mut().unwrap().finished_unix_ms = finished_ms;
    request
}

/// Asserts the manifest of `target_dir` lists exactly the summaries on disk, at their paths,
/// and returns the patch ids with their `.md` paths.
fn assert_manifest_matches_disk(target_dir: &Path) -> Vec<(String, String)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target_dir.join("patch-manifest.json")).unwrap())
            .unwrap();
    let patches = manifest["patches"].as_array().unwrap();
    let mut listed = BTreeSet::new();
    let mut rows = Vec::new();
    for patch in patches {
        let md = patch["summary_path"].as_str().unwrap().to_owned();
        let json = patch["json_path"].as_str().unwrap().to_owned();
        assert!(
            target_dir.join(&md).is_file(),
            "manifest names missing {md}"
        );
        assert!(
            target_dir.join(&json).is_file(),
            "manifest names missing {json}"
        );
        assert_eq!(patch["archived"], md.starts_with(".archive/"), "{patch}");
        listed.insert(md.clone());
        listed.insert(json);
        rows.push((patch["id"].as_str().unwrap().to_owned(), md));
    }
    let on_disk: BTreeSet<String> = snapshot(target_dir)
        .into_keys()
        .filter(|path| {
            let name = path.rsplit('/').next().unwrap();
            name.starts_with("summary-")
        })
        .collect();
    assert_eq!(on_disk, listed, "disk and manifest disagree");
    assert_eq!(manifest["total"], patches.len());
    let by_status: u64 = manifest["totals_by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_status as usize, patches.len());
    rows
}

#[tokio::test]
async fn old_summaries_move_to_the_archive_and_the_manifest_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    for (id, finished) in [
        ("nov", T0),
        ("dec", T0 + 20 * DAY),
        ("recent", T0 + 40 * DAY),
        ("newest", T0 + 44 * DAY),
    ] {
        app.client.record(at(id, finished)).await.unwrap();
    }
    let main = dir.path().join("summaries/MAIN");
    assert_eq!(assert_manifest_matches_disk(&main).len(), 4);

    let now = T0 + 45 * DAY;
    let report = app
        .summaries
        .archive(now, Some(days(10)), None)
        .await
        .unwrap();
    assert_eq!((report.archived, report.expired), (2, 0));
    for (id, month) in [("nov", "2023-11"), ("dec", "2023-12")] {
        assert!(!main.join(format!("summary-{id}.md")).exists());
        assert!(!main.join(format!("artifacts/{id}")).exists());
        let archived = main.join(".archive").join(month);
        assert!(archived.join(format!("summary-{id}.md")).is_file());
        assert!(archived.join(format!("summary-{id}.json")).is_file());
        assert!(archived.join(format!("artifacts/{id}/1-1.log")).is_file());
    }
    assert!(main.join("summary-recent.md").is_file());
    let rows = assert_manifest_matches_disk(&main);
    assert!(rows.contains(&(
        "nov".to_owned(),
        ".archive/2023-11/summary-nov.md".to_owned()
    )));

    // Still served, from the archive; a second run changes nothing.
    let got = summary(&mut app.client, "nov").await;
    assert_eq!(got.path, "summaries/MAIN/.archive/2023-11/summary-nov.md");
    assert!(got.archived);
    assert!(got.markdown.starts_with("# ❌ nov failed"));
    let before = snapshot(&main);
    let report = app
        .summaries
        .archive(now, Some(days(10)), None)
        .await
        .unwrap();
    assert_eq!((report.archived, report.expired), (0, 0));
    assert_eq!(snapshot(&main), before);

    // A new attempt brings an archived summary back, with its history.
    let mut retry = record("dec", 2, PatchStatus::Succeeded);
    retry.outcome.as_mut().unwrap().finished_unix_ms = now;
    assert!(app.client.record(retry).await.unwrap().into_inner().created);
    assert!(main.join("summary-dec.md").is_file());
    assert!(!main.join(".archive/2023-12/summary-dec.md").exists());
    assert!(main.join("artifacts/dec/1-1.log").is_file());
    assert!(main.join("artifacts/dec/2-1.log").is_file());
    assert_manifest_matches_disk(&main);

    // Survives a restart unchanged.
    app.stop().await;
    let mut app = spawn_summarizer(dir.path(), None).await;
    assert_manifest_matches_disk(&main);

    // Retention: archived summaries past it are deleted; redelivery does not resurrect them.
    let later = T0 + 400 * DAY;
    let report = app
        .summaries
        .archive(later, Some(days(10)), Some(days(365)))
        .await
        .unwrap();
    assert_eq!(report.archived, 3, "{report:?}");
    assert_eq!(report.expired, 1, "{report:?}");
    assert!(!main.join(".archive/2023-11/summary-nov.md").exists());
    assert!(!main.join(".archive/2023-11/artifacts/nov").exists());
    let rows = assert_manifest_matches_disk(&main);
    assert_eq!(rows.len(), 3);
    let status = get_error(&mut app.client, "nov").await;
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        !app.client
            .record(at("nov", T0))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(main.join("patch-manifest.json")).unwrap()).unwrap();
    let events: Vec<&str> = manifest["changelog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"archived") && events.contains(&"expired"),
        "{events:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_archive_move_interrupted_by_a_crash_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_summarizer(dir.path(), None).await;
    app.client.record(at("half", T0)).await.unwrap();
    app.stop().await;

    // As if killed after moving the artifacts and the Markdown but before the JSON.
    let main = dir.path().join("summaries/MAIN");
    let archive = main.join(".archive/2023-11");
    std::fs::create_dir_all(archive.join("artifacts")).unwrap();
    std::fs::rename(main.join("artifacts/half"), archive.join("artifacts/half")).unwrap();
    std::fs::rename(
        main.join("summary-half.md"),
        archive.join("summary-half.md"),
    )
    .unwrap();

    let mut app = spawn_summarizer(dir.path(), None).await;
    assert!(archive.join("summary-half.json").is_file());
    assert!(!main.join("summary-half.json").exists());
    let rows = assert_manifest_matches_disk(&main);
    assert_eq!(
        rows,
        vec![(
            "half".to_owned(),
            ".archive/2023-11/summary-half.md".to_owned()
        )]
    );
    let got = summary(&mut app.client, "half").await;
    assert!(got.archived);
    app.stop().await;
}
