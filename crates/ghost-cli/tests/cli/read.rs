//! The read commands against one system with a few finished patches: each one's text and its
//! `--json` document (which must parse), list filters and pagination.

use crate::helpers::{path_arg, spawn_system, write_patch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_print_text_and_parseable_json() {
    let system = spawn_system().await;
    for n in 1..=3 {
        let id = format!("cli-read-{n}");
        let file = system.file(
            &format!("{id}.json"),
            &write_patch(&id, "MAIN", &format!("r{n}.txt"), "r\n"),
        );
        system.ghost(&["submit", &path_arg(&file)]).await.expect(0);
    }

    // status
    let run = system.ghost(&["status"]).await;
    run.expect(0);
    assert!(run.stdout.contains("MAIN"), "{run:?}");
    assert!(run.stdout.contains("succeeded"), "{run:?}");
    let status = system.ghost(&["--json", "status"]).await.json();
    assert_eq!(status["counts"]["succeeded"], 3, "{status}");
    assert_eq!(status["counted"], 3, "{status}");
    assert!(status["targets"].is_array(), "{status}");

    // list: all, filtered, paged
    let run = system.ghost(&["list"]).await;
    run.expect(0);
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    for n in 1..=3 {
        assert!(run.stdout.contains(&format!("cli-read-{n}")), "{run:?}");
    }
    let all = system.ghost(&["--json", "list"]).await.json();
    assert_eq!(all["patches"].as_array().unwrap().len(), 3, "{all}");
    assert_eq!(all["patches"][0]["id"], "cli-read-3", "newest first: {all}");
    let none = system
        .ghost(&["--json", "list", "--status", "failed", "--target", "MAIN"])
        .await
        .json();
    assert_eq!(none["patches"].as_array().unwrap().len(), 0, "{none}");
    let first = system
        .ghost(&["--json", "list", "--limit", "2"])
        .await
        .json();
    assert_eq!(first["patches"].as_array().unwrap().len(), 2, "{first}");
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty(), "a second page exists: {first}");
    let text = system.ghost(&["list", "--limit", "2"]).await;
    assert!(
        text.stdout.contains(&format!("--page-token {token}")),
        "{text:?}"
    );
    let second = system
        .ghost(&["--json", "list", "--limit", "2", "--page-token", &token])
        .await
        .json();
    let ids: Vec<&str> = second["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-read-1"], "{second}");

    // show
    let run = system.ghost(&["show", "cli-read-2"]).await;
    run.expect(0);
    assert!(run.stdout.contains("cli-read-2  succeeded"), "{run:?}");
    let detail = system.ghost(&["--json", "show", "cli-read-2"]).await.json();
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(detail["target"], "MAIN");

    // events
    let run = system.ghost(&["events", "cli-read-2"]).await;
    run.expect(0);
    assert!(run.stdout.contains("queued"), "{run:?}");
    let events = system
        .ghost(&["--json", "events", "cli-read-2"])
        .await
        .json();
    let statuses: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"), "{events}");

    // targets
    let run = system.ghost(&["targets"]).await;
    run.expect(0);
    assert!(run.stdout.contains("MAIN"), "{run:?}");
    assert!(run.stdout.contains("online"), "{run:?}");
    let targets = system.ghost(&["--json", "targets"]).await.json();
    assert!(
        targets
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["target"] == "MAIN")
    );

    // executors
    let run = system.ghost(&["executors"]).await;
    run.expect(0);
    assert!(run.stdout.contains("cli-test-executor"), "{run:?}");
    let executors = system.ghost(&["--json", "executors"]).await.json();
    let list = executors["executors"].as_array().unwrap();
    assert!(
        list.iter().any(|e| e["executor_id"] == "cli-test-executor"
            && e["targets"].as_array().unwrap().iter().any(|t| t == "MAIN")),
        "{executors}"
    );

    // logs of a patch without commands
    let run = system.ghost(&["logs", "cli-read-1"]).await;
    run.expect(0);
    assert!(run.stdout.contains("ran no commands"), "{run:?}");
    let logs = system.ghost(&["--json", "logs", "cli-read-1"]).await.json();
    assert_eq!(logs["commands"].as_array().unwrap().len(), 0, "{logs}");
}
