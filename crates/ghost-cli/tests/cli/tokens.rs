//! `ghost token create|list|revoke` against a real system, through the gateway's admin API.

use crate::helpers::spawn_system;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_once_listed_without_secrets_and_revoked() {
    let system = spawn_system().await;

    let run = system
        .ghost(&[
            "--json",
            "token",
            "create",
            "--target",
            "MAIN",
            "--target",
            "LOCKED",
            "--name",
            "alice-laptop",
        ])
        .await;
    run.expect(0);
    let issued = run.json();
    let mut keys: Vec<&str> = issued
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["name", "targets", "token"], "{issued}");
    assert_eq!(issued["name"], "alice-laptop");
    assert_eq!(issued["targets"], serde_json::json!(["MAIN", "LOCKED"]));
    let secret = issued["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gx_"), "{secret}");

    let run = system
        .ghost(&["token", "create", "--target", "MAIN", "--name", "bob-vm"])
        .await;
    run.expect(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let token_line = lines
        .iter()
        .find(|line| line.starts_with("gx_"))
        .unwrap_or_else(|| panic!("no line with the token alone: {run:?}"));
    assert_eq!(token_line.len(), 67, "{run:?}");
    assert!(
        run.stdout
            .contains("start an executor with: ghost executor --router"),
        "{run:?}"
    );
    // The hint names a token file: the token on a command line is visible in `ps`.
    assert!(run.stdout.contains("--token-file FILE"), "{run:?}");
    assert_eq!(run.stdout.matches(*token_line).count(), 1, "{run:?}");

    let run = system.ghost(&["token", "list"]).await;
    run.expect(0);
    assert!(
        run.stdout.contains("alice-laptop") && run.stdout.contains("bob-vm"),
        "{run:?}"
    );
    assert!(!run.stdout.contains(&secret[3..]), "{run:?}");
    let run = system.ghost(&["--json", "token", "list"]).await;
    run.expect(0);
    assert!(!run.stdout.contains(&secret[3..]), "{run:?}");
    assert_eq!(run.json()["tokens"].as_array().unwrap().len(), 2);

    let run = system.ghost(&["token", "revoke", "alice-laptop"]).await;
    run.expect(0);
    assert!(
        run.stdout.contains("revoked executor token alice-laptop"),
        "{run:?}"
    );
    let tokens = system.ghost(&["--json", "token", "list"]).await.json();
    let alice = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alice-laptop")
        .cloned()
        .unwrap();
    assert!(alice["revoked_at"].is_string(), "{tokens}");

    let run = system.ghost(&["token", "revoke", "alice-laptop"]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("409") && run.stderr.contains("already revoked"),
        "{run:?}"
    );
    let run = system
        .ghost(&["token", "create", "--target", "MAIN", "--name", "no spaces"])
        .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("name"), "{run:?}");
    let run = system
        .ghost(&["token", "create", "--name", "no-target"])
        .await;
    run.expect(2);
}
