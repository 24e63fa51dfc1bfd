//! Submitting: v1 and legacy shapes, JSON and YAML, chat text, idempotency.

use serde_json::{Value, json};

use crate::helpers::{KEY, TestGateway, write_patch};

/// Must-show 8: each legacy fixture posted is accepted normalised or refused with 422 naming
/// the field.
#[tokio::test]
async fn every_legacy_fixture_is_accepted_normalised_or_refused_naming_the_field() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let dir = ghost_testkit::repo_root().join("crates/ghost-core/tests/fixtures/legacy");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        seen += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let response = gateway
            .http
            .post(format!("{}/v1/patches", gateway.url()))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(std::fs::read(&path).expect("fixture"))
            .send()
            .await
            .expect("reachable");
        let (code, body) = crate::helpers::read(response).await;
        match code {
            202 => {
                assert!(
                    body["shape"].as_str().unwrap().starts_with("legacy-"),
                    "{name}: {body}"
                );
                let id = body["id"].as_str().unwrap();
                let (code, stored) = gateway.get(&format!("/v1/patches/{id}"), KEY).await;
                assert_eq!(code, 200, "{name}: {stored}");
            }
            422 => {
                // A field is named, or the whole document asks for nothing and says so.
                let pointer = body["pointer"].as_str().unwrap_or("");
                let detail = body["detail"].as_str().unwrap_or("");
                assert!(
                    !pointer.is_empty() || detail.starts_with(ghost_core::NOTHING_TO_DO),
                    "{name}: 422 naming neither a field nor what is missing: {body}"
                );
            }
            other => panic!("{name}: unexpected {other} {body}"),
        }
    }
    assert_eq!(seen, 13, "fixture count changed");
    // The absolute /tmp path is the one refusal, and it names the legacy field.
    let body = std::fs::read(dir.join("mutations-absolute-tmp-path.json")).unwrap();
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (code, problem) = crate::helpers::read(response).await;
    assert_eq!(code, 422);
    assert_eq!(problem["pointer"], "/mutations/0/path");
}

#[tokio::test]
async fn yaml_patches_are_accepted_and_errors_carry_line_and_column() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let send = |body: &'static str| {
        gateway
            .http
            .post(format!("{}/v1/patches", gateway.url()))
            .bearer_auth(KEY)
            .header("content-type", "application/yaml")
            .body(body)
            .send()
    };
    let (code, body) = crate::helpers::read(
        send(
            "id: yaml-1\ntarget: BRAUN\nedits:\n  - op: write\n    path: a.txt\n    contents: hi\n",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["target"], "MAIN", "alias BRAUN maps to MAIN");
    let (code, body) = crate::helpers::read(send("id: yaml-2\ntarget: [\n").await.unwrap()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["line"].as_u64().unwrap() >= 2, "{body}");
    assert!(body["column"].is_number(), "{body}");
}

#[tokio::test]
async fn same_id_same_content_replays_and_other_content_conflicts() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, first) = gateway
        .post("/v1/patches", KEY, &write_patch("idem-1"))
        .await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["replayed"], false);
    let (code, again) = gateway
        .post("/v1/patches", KEY, &write_patch("idem-1"))
        .await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["replayed"], true);
    let mut other = write_patch("idem-1");
    other["description"] = json!("different");
    let (code, conflict) = gateway.post("/v1/patches", KEY, &other).await;
    assert_eq!(code, 409, "{conflict}");
    // Idempotency-Key must match the patch id: equal replays, different conflicts.
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .header("idempotency-key", "idem-1")
        .json(&write_patch("idem-1"))
        .send()
        .await
        .unwrap();
    let (code, body) = crate::helpers::read(response).await;
    assert_eq!(
        (code, body["replayed"].clone()),
        (202, json!(true)),
        "{body}"
    );
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .header("idempotency-key", "idem-key-3")
        .json(&write_patch("idem-other"))
        .send()
        .await
        .unwrap();
    let (code, body) = crate::helpers::read(response).await;
    assert_eq!(code, 409, "{body}");
}

/// Must-show 5: two patch blocks and one unrelated code block submit two patches.
#[tokio::test]
async fn chat_text_with_two_patch_blocks_submits_two() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let text = "Here are the fixes.\n\n```json\n{\"id\":\"chat-1\",\"target\":\"MAIN\",\"edits\":[{\"op\":\"write\",\"path\":\"a.txt\",\"contents\":\"1\"}]}\n```\n\nFor reference, the old code:\n\n```python\nprint('not a patch')\n```\n\nAnd the second:\n\n```yaml\nid: chat-2\ntarget: MAIN\nedits:\n  - op: write\n    path: b.txt\n    contents: \"2\"\n```\n";
    let (code, body) = gateway
        .post("/v1/messages", KEY, &json!({"text": text}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["submitted"], 2, "{body}");
    let outcomes: Vec<&str> = body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["submitted", "skipped", "submitted"]);
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["chat-1", "chat-2"]);
}

#[tokio::test]
async fn events_list_cancel_and_retry_go_through_the_router() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for id in ["life-1", "life-2", "life-3"] {
        assert_eq!(
            gateway.post("/v1/patches", KEY, &write_patch(id)).await.0,
            202
        );
    }
    let (code, page) = gateway
        .get("/v1/patches?page_size=2&target=MAIN", KEY)
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["patches"].as_array().unwrap().len(), 2);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let (code, rest) = gateway
        .get(&format!("/v1/patches?page_size=2&page_token={token}"), KEY)
        .await;
    assert_eq!(code, 200, "{rest}");
    assert_eq!(rest["patches"].as_array().unwrap().len(), 1);
    let (code, cancelled) = gateway
        .post("/v1/patches/life-1/cancel", KEY, &Value::Null)
        .await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (code, events) = gateway.get("/v1/patches/life-1/events", KEY).await;
    assert_eq!(code, 200, "{events}");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == "cancelled"),
        "{events}"
    );
    let (code, retried) = gateway
        .post("/v1/patches/life-1/retry", KEY, &Value::Null)
        .await;
    assert_eq!(code, 200, "{retried}");
    assert_eq!(retried["status"], "queued");
    let (code, missing) = gateway.get("/v1/patches/no-such-patch", KEY).await;
    assert_eq!(code, 404, "{missing}");
    let (code, filtered) = gateway.get("/v1/patches?status=bogus", KEY).await;
    assert_eq!(code, 400, "{filtered}");
    let (code, targets) = gateway.get("/v1/targets", KEY).await;
    assert!(code == 200 || code == 501, "{code} {targets}");
}
