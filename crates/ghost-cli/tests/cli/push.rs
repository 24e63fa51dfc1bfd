//! `[[subscriptions]]` in `ghost.toml`, end to end: `ghost up` with a subscription, a patch
//! through the gateway, and its outcome arriving at a receiver that verifies it with the real
//! `standardwebhooks` package; a loopback URL without `allow_private` refuses to start.

use std::time::Duration;

use ghost_testkit::WebhookReceiver;

use crate::helpers::Env;
use crate::up::{PORT_ZERO, ghost_in, spawn_up, submit, write_patch};

/// `whsec_` and the base64 of 32 bytes.
const SECRET: &str = "whsec_C2FtcGxlLXNlY3JldC1mb3ItZ2hvc3QtcnVubmVyISE=";
const KEY: &str = "push-test-key-0123456789";

fn ghost_toml(url: &str, allow_private: bool) -> String {
    format!(
        "[[targets]]\nname = \"MAIN\"\nroot = \"./main\"\n\n\
         [[subscriptions]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
         events = [\"patch.succeeded\"]\ntargets = [\"MAIN\"]\nallow_private = {allow_private}\n"
    )
}

#[tokio::test]
async fn a_subscription_in_ghost_toml_receives_the_outcome_of_a_submitted_patch_signed() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver =
        WebhookReceiver::start(port, SECRET, &dir.join("received.jsonl"), 0.0, 204).await;
    let url = format!("http://127.0.0.1:{port}/ghost");

    // Without allow_private the file is refused before anything starts.
    env.file("ghost.toml", &ghost_toml(&url, false));
    let refused = ghost_in(&env, &dir, &["up", "--api-key", KEY], &PORT_ZERO).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("subscriptions[0] (http://127.0.0.1"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("unless allow_private = true"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(SECRET), "{}", refused.stderr);

    env.file("ghost.toml", &ghost_toml(&url, true));
    let up = spawn_up(&env, &dir, &["up", "--api-key", KEY], &PORT_ZERO).await;
    let (code, body) = submit(&up.url, KEY, &write_patch("pushed", None, "pushed.txt")).await;
    assert_eq!(code, 202, "{body}");

    let received = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let message = &received[0];
    assert_eq!(message["verified"], true, "{message:#?}");
    assert_eq!(message["type"], "patch.succeeded");
    assert_eq!(message["patch"], "pushed");
    let data = &message["payload"]["data"];
    assert_eq!(data["target"], "MAIN");
    assert_eq!(data["report"]["edits"][0]["path"], "pushed.txt");
    assert!(
        data["summary"]["markdown"]
            .as_str()
            .unwrap()
            .contains("pushed"),
        "{data:#?}"
    );
    assert!(dir.join("main/pushed.txt").is_file());
    up.kill_9().await;
}
