//! What the system refuses, and that a refusal writes nothing.

use serde_json::json;

use crate::helpers::{API_KEY, spawn_system, write_patch};

#[tokio::test]
async fn escaping_paths_are_refused_at_the_door_and_write_nothing() {
    let test = spawn_system(true).await;
    let cases = [
        ("escape-dotdot", "../x", "escapes"),
        ("escape-abs", "/etc/x", "absolute"),
        ("escape-deep", "a/../../x", "escapes"),
        ("escape-git", ".git/config", ".git"),
    ];
    for (id, path, reason) in cases {
        let response = test.submit(&write_patch(id, path, "owned")).await;
        assert_eq!(response.status().as_u16(), 422, "{id}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["pointer"], "/edits/0/path", "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{id}: {problem}"
        );
        // Nothing was stored, so nothing can run later.
        assert_eq!(test.get(id).await.0, 404, "{id} must not be queued");
    }
    assert!(!test.scratch.path().join("x").exists());
    assert!(!test.workspace.join(".git").exists());
    test.system.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_symlink_out_of_the_workspace_is_refused_by_the_executor() {
    let test = spawn_system(true).await;
    let outside = test.scratch.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, test.workspace.join("link")).unwrap();
    let patch = json!({
        "id": "via-symlink",
        "target": "MAIN",
        "edits": [
            {"op": "write", "path": "innocent.txt", "contents": "first"},
            {"op": "write", "path": "link/evil.txt", "contents": "owned"}
        ]
    });
    assert_eq!(test.submit(&patch).await.status().as_u16(), 202);
    let finished = test.wait_finished("via-symlink").await;
    assert_eq!(finished["status"], "rejected", "{finished}");
    assert!(
        finished["error"].as_str().unwrap().contains("symlink"),
        "{finished}"
    );
    assert!(!outside.join("evil.txt").exists());
    assert!(
        !test.workspace.join("innocent.txt").exists(),
        "no write may happen when any path is refused"
    );
    test.system.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_and_invalid_bodies_name_what_is_wrong() {
    let test = spawn_system(false).await;

    let response = test
        .submit_raw("{\n  \"id\": \"p\",\n  \"target\": MAIN\n}".to_owned())
        .await;
    assert_eq!(response.status().as_u16(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(3), Some(13)),
        "{problem}"
    );

    let response = test
        .submit(&json!({"id": "p", "target": "MAIN", "edits": [{"op": "write", "path": "a", "contents": 7}]}))
        .await;
    assert_eq!(response.status().as_u16(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["pointer"], "/edits/0/contents", "{problem}");

    let response = test.submit(&json!({"id": "p", "edits": []})).await;
    assert_eq!(response.status().as_u16(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("`target`"),
        "{problem}"
    );

    let response = test
        .submit(&json!({"id": "bad/id", "target": "MAIN", "agent": {"task": "t"}}))
        .await;
    assert_eq!(response.status().as_u16(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["pointer"], "/id", "{problem}");

    let response = test
        .http
        .post(format!("{}/v1/patches", test.gateway()))
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    test.system.shutdown().await.unwrap();
}

#[tokio::test]
async fn intake_requires_the_api_key() {
    let test = spawn_system(false).await;
    let url = format!("{}/v1/patches", test.gateway());
    let body = write_patch("auth-1", "a.txt", "x").to_string();
    let none = test
        .http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let wrong = test
        .http
        .post(&url)
        .bearer_auth("not-the-key-at-all-000000")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let header_key = test
        .http
        .post(&url)
        .header("x-api-key", API_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(header_key.status().as_u16(), 202);
    assert_eq!(test.get("auth-1").await.0, 200);
    test.system.shutdown().await.unwrap();
}

#[tokio::test]
async fn same_id_replays_or_conflicts() {
    let test = spawn_system(false).await;
    let patch = write_patch("idem-1", "a.txt", "one");
    assert_eq!(test.submit(&patch).await.status().as_u16(), 202);
    let replay = test.submit(&patch).await;
    assert_eq!(replay.status().as_u16(), 202);
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replay["replayed"], true);
    let other = test.submit(&write_patch("idem-1", "a.txt", "two")).await;
    assert_eq!(other.status().as_u16(), 409);
    test.system.shutdown().await.unwrap();
}
