//! Issue 26, per-user notification: the API key a patch was submitted with reaches the alerter
//! through the gateway, router and summarizer, which tells the Slack user mapped to that key.

use ghost_testkit::wait_for;

use crate::helpers::{spawn_system_with, write_patch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_mapped_to_the_submitting_key_is_told_when_the_patch_ends() {
    let test = spawn_system_with(true, |config| {
        // The single key of `ghost up` is named `api_key`.
        config
            .alerter
            .routing
            .notify_users
            .insert("api_key".to_owned(), "U0ALICE".to_owned());
    })
    .await;

    let response = test
        .submit(&write_patch("told-1", "told.txt", "hello\n"))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let finished = test.wait_finished("told-1").await;
    assert_eq!(finished["status"], "succeeded", "{finished}");

    let dm = wait_for("a direct message to U0ALICE", async || {
        let requests = test.slack.requests().await;
        let dm: Vec<_> = requests
            .into_iter()
            .filter(|r| r.method.ends_with("chat.postMessage") && r.body["channel"] == "U0ALICE")
            .collect();
        if dm.is_empty() { Err(dm) } else { Ok(dm) }
    })
    .await;
    assert_eq!(dm.len(), 1, "one direct message to the key's user: {dm:?}");
    assert!(
        dm[0].body.to_string().contains("told-1"),
        "{:?}",
        dm[0].body
    );
}
