//! The patches real models and the old system send, through the public API: no target, no
//! id, trailing commas and comments are accepted (with warnings the summary repeats); an
//! id-less body sent twice is one patch; duplicate keys and documents that ask for nothing are
//! refused saying exactly what is wrong.

use serde_json::Value;

use crate::helpers::{KEY, TestGateway, read};
use crate::system::{ADMIN_KEY, System};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        ghost_testkit::repo_root()
            .join("crates/ghost-core/tests/fixtures/legacy")
            .join(name),
    )
    .expect("fixture")
}

async fn send(url: &str, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/patches"))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("gateway reachable");
    read(response).await
}

/// On one workspace with a default target, the real legacy patches carrying no target, no id
/// or a trailing comma are accepted, and the summary repeats what was forgiven.
#[tokio::test]
async fn legacy_patches_without_target_or_id_or_with_trailing_commas_are_accepted() {
    let system = System::start(true, |config| {
        config.default_target = Some("MAIN".to_owned());
    })
    .await;
    let url = system.url();

    let (code, lenient) = send(
        &url,
        ADMIN_KEY,
        "application/json",
        fixture("command-trailing-comma.json"),
    )
    .await;
    assert_eq!(code, 202, "{lenient}");
    assert_eq!(lenient["target"], "MAIN", "no target: the default");
    assert_eq!(lenient["id"], "test-patch-fix");
    assert_eq!(
        lenient["warnings"],
        serde_json::json!(["line 7, column 17: a trailing comma before '}' was ignored"])
    );

    // The same patch without the comma: a replay, with nothing forgiven this time.
    let (code, strict) = send(
        &url,
        ADMIN_KEY,
        "application/json",
        fixture("command-no-target.json"),
    )
    .await;
    assert_eq!(code, 202, "{strict}");
    assert_eq!(
        (&strict["id"], &strict["replayed"]),
        (&lenient["id"], &Value::Bool(true))
    );
    assert_eq!(strict["warnings"], serde_json::json!([]));

    // Prose phases with neither id nor target: an id derived from the content.
    let (code, phase) = send(
        &url,
        ADMIN_KEY,
        "application/json",
        fixture("phase-no-id-no-target.json"),
    )
    .await;
    assert_eq!(code, 202, "{phase}");
    let id = phase["id"].as_str().expect("id");
    assert!(
        id.starts_with("p-") && id.len() == 18 && phase["id_derived"] == true,
        "{phase}"
    );
    assert_eq!(phase["shape"], "legacy-phase");
    assert_eq!(phase["target"], "MAIN");

    // A `//` comment forgiven in a v1 patch without id or target.
    let (code, commented) = send(
        &url,
        ADMIN_KEY,
        "application/json",
        b"// written by a model\n{\"edits\": [{\"op\": \"write\", \"path\": \"notes.txt\", \"contents\": \"hi // there,]\",},],}"
            .to_vec(),
    )
    .await;
    assert_eq!(code, 202, "{commented}");
    let warnings: Vec<&str> = commented["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("text"))
        .collect();
    assert_eq!(
        warnings,
        [
            "line 1, column 1: a // comment was ignored",
            "line 2, column 76: a trailing comma before '}' was ignored",
            "line 2, column 78: a trailing comma before ']' was ignored",
            "line 2, column 80: a trailing comma before '}' was ignored",
        ]
    );

    // The summaries repeat the warnings of the first submission.
    let done = crate::dashboard::finished(&system, "test-patch-fix").await;
    let summary = done["summary"].as_str().expect("summary");
    assert!(
        summary.contains("line 7, column 17: a trailing comma before '}' was ignored"),
        "{summary}"
    );
    let done = crate::dashboard::finished(&system, commented["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let summary = done["summary"].as_str().expect("summary");
    for warning in &warnings {
        assert!(summary.contains(warning), "{warning} not in {summary}");
    }
    // The string holding `//` and `,]` was written byte for byte.
    let written = std::fs::read_to_string(system.workspace.join("notes.txt")).expect("written");
    assert_eq!(written, "hi // there,]");
}

/// The same id-less body twice (and once more spelled differently) is one patch with one id.
#[tokio::test]
async fn the_same_body_without_an_id_twice_is_one_patch() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let body = br#"{"target":"MAIN","edits":[{"op":"write","path":"a.txt","contents":"x"}]}"#;
    let (code, first) = send(&gateway.url(), KEY, "application/json", body.to_vec()).await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["replayed"], false);
    let (code, again) = send(&gateway.url(), KEY, "application/json", body.to_vec()).await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(
        (&again["id"], &again["replayed"]),
        (&first["id"], &Value::Bool(true))
    );
    let respelled = "{ \"edits\": [ { \"contents\": \"x\", \"path\": \"a.txt\", \"op\": \"write\" } ],\n  \"target\": \"BRAUN\" }";
    let (code, third) = send(
        &gateway.url(),
        KEY,
        "application/json",
        respelled.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(code, 202, "{third}");
    assert_eq!(
        (&third["id"], &third["replayed"]),
        (&first["id"], &Value::Bool(true))
    );
    let (code, yaml) = send(
        &gateway.url(),
        KEY,
        "application/yaml",
        b"target: MAIN\nedits:\n  - {op: write, path: a.txt, contents: x}\n".to_vec(),
    )
    .await;
    assert_eq!(code, 202, "{yaml}");
    assert_eq!(yaml["id"], first["id"]);
    assert_eq!(
        gateway.stored_ids().await,
        [first["id"].as_str().expect("id")]
    );
}

/// `"id":"a","id":"b"` and its kin are refused naming the key and both JSON pointers.
#[tokio::test]
async fn duplicate_keys_are_refused_naming_the_key_and_both_pointers() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for (content_type, body, key, pointer) in [
        (
            "application/json",
            r#"{"id":"a","id":"b","target":"MAIN","commands":["true"]}"#,
            "id",
            "/id",
        ),
        (
            "application/json",
            r#"{"id":"n","target":"MAIN","edits":[{"op":"write","path":"x","contents":"","path":"y"}]}"#,
            "path",
            "/edits/0/path",
        ),
        (
            "application/yaml",
            "id: y\ntarget: MAIN\ncommands: [\"true\"]\ntarget: CYOPS\n",
            "target",
            "/target",
        ),
    ] {
        let (code, problem) =
            send(&gateway.url(), KEY, content_type, body.as_bytes().to_vec()).await;
        assert_eq!(code, 422, "{body}: {problem}");
        assert_eq!(problem["key"], key, "{problem}");
        assert_eq!(problem["pointers"], serde_json::json!([pointer, pointer]));
        assert_eq!(problem["pointer"], pointer);
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            detail.contains(&format!("duplicate key {key:?}")),
            "{detail}"
        );
        assert_eq!(
            detail.matches(&format!("{pointer:?}")).count(),
            2,
            "{detail}"
        );
    }
    assert!(gateway.stored_ids().await.is_empty());
}

/// A manifest, a prose note and a target with test markers ask for nothing: 422 saying so.
#[tokio::test]
async fn documents_that_ask_for_nothing_are_refused_naming_what_is_missing() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for name in [
        "manifest-move-log.json",
        "prose-status-note.json",
        "target-only-test-marker.json",
        "tasks-leading-comment.json",
    ] {
        let (code, problem) = send(&gateway.url(), KEY, "application/json", fixture(name)).await;
        assert_eq!(code, 422, "{name}: {problem}");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            detail.starts_with(ghost_core::NOTHING_TO_DO),
            "{name}: {detail}"
        );
    }
    let (code, problem) = send(
        &gateway.url(),
        KEY,
        "application/json",
        br#"{"id":"prose","target":"MAIN","description":"please fix the login"}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("nothing to do")
    );
    assert!(gateway.stored_ids().await.is_empty());
}
