//! Deferred manifests (`manifest_delay` > 0): a burst of records is folded into few rewrites
//! of `patch-manifest.json`, which catches up with every record and is flushed on shutdown.

use std::path::Path;
use std::time::Duration;

use ghost_proto::router::v1::PatchStatus;
use ghost_testkit::wait_for;

use crate::helpers::{record, spawn_with, test_config};

fn manifest_ids(target_dir: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(target_dir.join("patch-manifest.json")) else {
        return Vec::new();
    };
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    manifest["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|i| format!("burst-{i:02}")).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_deferred_manifest_catches_up_with_a_burst_and_is_flushed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("summaries/MAIN");
    let config = summarizer::SummarizerConfig {
        manifest_delay: Duration::from_millis(50),
        ..test_config(dir.path(), None)
    };
    let mut app = spawn_with(config.clone()).await;
    for i in 0..20 {
        app.client
            .record(record(&format!("burst-{i:02}"), 1, PatchStatus::Succeeded))
            .await
            .unwrap();
    }
    // The writer catches up on its own (bounded wait, no timing asserted).
    let ids = wait_for("20 ids in the manifest", async || {
        let ids = manifest_ids(&main);
        if ids.len() == 20 { Ok(ids) } else { Err(ids) }
    })
    .await;
    assert_eq!(ids, expected(20));

    // Records just before a stop are in the manifest once the service has stopped.
    let slow = summarizer::SummarizerConfig {
        manifest_delay: Duration::from_secs(3600),
        ..config
    };
    app.stop().await;
    app = spawn_with(slow).await;
    for i in 20..25 {
        app.client
            .record(record(&format!("burst-{i:02}"), 1, PatchStatus::Succeeded))
            .await
            .unwrap();
    }
    assert_eq!(
        manifest_ids(&main),
        expected(20),
        "written before the delay"
    );
    app.stop().await;
    assert_eq!(manifest_ids(&main), expected(25));
}
