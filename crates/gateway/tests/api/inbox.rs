//! Must-show 7: the inbox directory.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::helpers::{TestGateway, write_patch};

async fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn slow_files_are_submitted_once_complete_and_invalid_ones_rejected_with_the_reason() {
    let gateway = TestGateway::start(|config, scratch| {
        config.inbox = Some(scratch.join("inbox"));
        config.inbox_settle = Duration::from_millis(400);
    })
    .await;
    let main = gateway.path("inbox/MAIN");
    std::fs::create_dir_all(&main).unwrap();
    // Written in pieces, well inside the settle time of each other.
    let text = write_patch("inbox-slow").to_string();
    let mut file = std::fs::File::create(main.join("slow.json")).unwrap();
    for piece in text.as_bytes().chunks(text.len() / 4 + 1) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    drop(file);
    std::fs::write(main.join("broken.yaml"), "id: inbox-bad\ntarget: MAIN\nedits:\n  - op: write\n    path: ../escape\n    contents: x\n").unwrap();
    wait_for(&main.join(".accepted/slow.json")).await;
    wait_for(&main.join(".rejected/broken.yaml.error.txt")).await;
    let reason = std::fs::read_to_string(main.join(".rejected/broken.yaml.error.txt")).unwrap();
    assert!(reason.contains("escapes"), "{reason}");
    assert!(main.join(".rejected/broken.yaml").exists());
    assert!(!main.join("slow.json").exists());
    assert_eq!(gateway.stored_ids().await, ["inbox-slow"]);
}

#[tokio::test]
async fn files_dropped_while_stopped_are_processed_at_start() {
    let gateway = TestGateway::start(|config, scratch| {
        // Written before the gateway starts (its adjustment runs first).
        let inbox = scratch.join("inbox");
        std::fs::create_dir_all(inbox.join("MAIN")).unwrap();
        std::fs::write(
            inbox.join("MAIN/early.json"),
            write_patch("inbox-early").to_string(),
        )
        .unwrap();
        // A legacy file without a target: the directory names it.
        std::fs::write(
            inbox.join("MAIN/legacy.json"),
            r#"{"blockId":"inbox-legacy","mutations":[{"path":"x.txt","contents":"x"}]}"#,
        )
        .unwrap();
        // A v1 file naming another target than its directory is refused, not queued.
        let mut wrong = write_patch("inbox-wrong");
        wrong["target"] = "CYOPS".into();
        std::fs::write(inbox.join("MAIN/wrong.json"), wrong.to_string()).unwrap();
        config.inbox = Some(inbox);
        config.inbox_settle = Duration::from_millis(100);
    })
    .await;
    let inbox = gateway.path("inbox");
    wait_for(&inbox.join("MAIN/.accepted/early.json")).await;
    wait_for(&inbox.join("MAIN/.accepted/legacy.json")).await;
    wait_for(&inbox.join("MAIN/.rejected/wrong.json.error.txt")).await;
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["inbox-early", "inbox-legacy"]);
}
