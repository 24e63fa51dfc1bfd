//! Records of different patches overlap, attempts of one patch take turns: 40 concurrent
//! calls (20 patches × 2 attempts, in random-ish order) leave every history and the manifest
//! complete.

use ghost_proto::router::v1::PatchStatus;

use crate::helpers::{record, spawn_summarizer};

#[tokio::test]
async fn concurrent_records_keep_every_attempt_and_the_manifest_complete() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_summarizer(dir.path(), None).await;
    let mut calls = Vec::new();
    for n in 0..40_u32 {
        // Even patches send attempt 1 first, odd ones attempt 2 first.
        let (patch, wave) = (n % 20, n / 20);
        let attempt = if patch % 2 == 0 { 1 + wave } else { 2 - wave };
        let status = if attempt == 1 {
            PatchStatus::RolledBack
        } else {
            PatchStatus::Succeeded
        };
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            client
                .record(record(&format!("c-{patch:02}"), attempt, status))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for call in calls {
        assert!(call.await.unwrap().created);
    }
    let main = dir.path().join("summaries/MAIN");
    for patch in 0..20 {
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(main.join(format!("summary-c-{patch:02}.json"))).unwrap(),
        )
        .unwrap();
        let mut attempts: Vec<u64> = json["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        attempts.sort_unstable();
        assert_eq!(attempts, [1, 2], "c-{patch:02}: {json}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(main.join("patch-manifest.json")).unwrap()).unwrap();
    let rows = manifest["patches"].as_array().unwrap();
    assert_eq!(rows.len(), 20, "{manifest}");
    assert!(rows.iter().all(|row| row["attempts"] == 2), "{manifest}");
    let leftovers = std::fs::read_dir(&main)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);
}
