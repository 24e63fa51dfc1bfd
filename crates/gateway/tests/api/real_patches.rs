//! The patches real models and the old system send, through the public API: no target, no
//! id, trailing commas and comments are accepted (with warnings the summary repeats); an
//! id-less body sent twice is one patch; duplicate keys and documents that ask for nothing are
//! refused saying exactly what is wrong.

use serde_json::Value;

use crate::helpers::{KEY, MAIN_SUBMITTER, TestGateway, read};
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

/// `POST /v1/patches` with an `Idempotency-Key` header.
async fn send_keyed(url: &str, idempotency_key: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/patches"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(body.to_owned())
        .send()
        .await
        .expect("gateway reachable");
    read(response).await
}

/// The id an id-less `body` will get on the test gateway (default target MAIN).
fn derived_id_of(body: &str) -> String {
    let options = ghost_core::LegacyOptions {
        default_target: Some(ghost_core::TargetName::parse("MAIN").expect("target")),
        ..Default::default()
    };
    ghost_core::parse_submission(
        body.as_bytes(),
        ghost_core::Format::Json,
        &ghost_core::ParseBudget::new(1 << 20),
        &options,
    )
    .expect("valid")
    .patch
    .id
    .to_string()
}

/// A caller cannot take, ahead of time, the id an id-less patch of predictable content will
/// get: an explicit `p-` + 16 hex id is refused unless it is the document's own derived id.
#[tokio::test]
async fn derived_ids_cannot_be_squatted() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let victim = r#"{"target":"CYOPS","commands":["make release"]}"#;
    let derived = derived_id_of(victim);
    // A key for MAIN only names the CYOPS patch's id for its own MAIN patch.
    let squat = format!(r#"{{"id":"{derived}","target":"MAIN","commands":["true"]}}"#);
    let (code, problem) = send(
        &gateway.url(),
        MAIN_SUBMITTER,
        "application/json",
        squat.into_bytes(),
    )
    .await;
    assert_eq!(code, 422, "{problem}");
    assert_eq!(problem["pointer"], "/id", "{problem}");
    assert_eq!(problem["detail"], ghost_core::RESERVED_ID, "{problem}");
    let (code, accepted) = send(&gateway.url(), KEY, "application/json", victim.into()).await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["id"], derived.as_str());
    // Naming its own derived id is the same patch: a replay.
    let own = format!(r#"{{"id":"{derived}","target":"CYOPS","commands":["make release"]}}"#);
    let (code, again) = send(&gateway.url(), KEY, "application/json", own.into_bytes()).await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(gateway.stored_ids().await, [derived.as_str()]);
}

/// `Idempotency-Key` on a document without an id becomes its id: the 202 and `GET` agree with
/// the key, a retry replays, other content under the key is 409.
#[tokio::test]
async fn an_idempotency_key_names_a_patch_that_has_no_id() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let url = gateway.url();
    let body = r#"{"target":"MAIN","commands":["make test"]}"#;
    let (code, accepted) = send_keyed(&url, "order-42", body).await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["id"], "order-42", "{accepted}");
    assert_eq!(accepted["id_derived"], false, "{accepted}");
    let (code, stored) = gateway.get("/v1/patches/order-42", KEY).await;
    assert_eq!(code, 200, "{stored}");
    let (code, again) = send_keyed(&url, "order-42", body).await;
    assert_eq!(
        (code, &again["replayed"]),
        (202, &Value::Bool(true)),
        "{again}"
    );
    let (code, conflict) = send_keyed(
        &url,
        "order-42",
        r#"{"target":"MAIN","commands":["make lint"]}"#,
    )
    .await;
    assert_eq!(code, 409, "{conflict}");
    // A key of the derived form is the document's own derived id or nothing.
    let (code, problem) = send_keyed(&url, "p-0123456789abcdef", body).await;
    assert_eq!(code, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains(ghost_core::RESERVED_ID),
        "{problem}"
    );
    let other = r#"{"target":"MAIN","commands":["make docs"]}"#;
    let (code, own) = send_keyed(&url, &derived_id_of(other), other).await;
    assert_eq!(code, 202, "{own}");
    assert_eq!(own["id"], derived_id_of(other).as_str());
    // A document with an id still has to carry the key's.
    let (code, conflict) = send_keyed(
        &url,
        "order-43",
        r#"{"id":"order-44","target":"MAIN","commands":["make"]}"#,
    )
    .await;
    assert_eq!(code, 409, "{conflict}");
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["order-42", derived_id_of(other).as_str()]);
}

/// In chat text a block that names neither an id nor a target is an example, not an order:
/// skipped as before (legacy shapes keep their own markers).
#[tokio::test]
async fn chat_blocks_without_id_or_target_are_not_run() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let text = "To clean up, run:\n\n```json\n{\"commands\":[\"make clean\"]}\n```\n\nor in YAML:\n\n```yaml\nedits:\n  - {op: delete, path: build.log}\n```\n\nThis one is meant:\n\n```json\n{\"target\":\"MAIN\",\"commands\":[\"make test\"]}\n```\n\nAnd an old block:\n\n```json\n{\"postMutationBuild\":\"make\"}\n```\n";
    let (code, body) = gateway
        .post("/v1/messages", KEY, &serde_json::json!({"text": text}))
        .await;
    assert_eq!(code, 200, "{body}");
    let blocks = body["blocks"].as_array().expect("blocks");
    let outcomes: Vec<(&str, &str)> = blocks
        .iter()
        .map(|block| {
            (
                block["outcome"].as_str().expect("outcome"),
                block["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("skipped", "not a patch"),
            ("skipped", "not a patch"),
            ("submitted", ""),
            ("submitted", "")
        ],
        "{body}"
    );
    assert_eq!(body["submitted"], 2, "{body}");
    assert_eq!(gateway.stored_ids().await.len(), 2);
}

/// Headings without a line under them are no instructions: 422 naming what is missing.
#[tokio::test]
async fn blank_instructions_are_refused_naming_what_is_missing() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for (body, pointer, names) in [
        (r#"{"executionSteps":[]}"#, "/phases", "executionSteps"),
        (r#"{"phases":[{}]}"#, "/phases", "phases"),
        (r#"{"notes":""}"#, "/phases", "notes"),
        (r#"{"agent":{"task":" "}}"#, "/agent/task", "task"),
    ] {
        let (code, problem) = send(&gateway.url(), KEY, "application/json", body.into()).await;
        assert_eq!(code, 422, "{body}: {problem}");
        assert_eq!(problem["pointer"], pointer, "{body}: {problem}");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            detail.contains(names) && detail.contains("blank"),
            "{body}: {detail}"
        );
    }
    assert!(gateway.stored_ids().await.is_empty());
}

/// A `tasks[]` document is refused for its shape, not as "nothing to do".
#[tokio::test]
async fn a_tasks_document_is_refused_for_its_shape() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, problem) = send(
        &gateway.url(),
        KEY,
        "application/json",
        fixture("tasks-leading-comment.json"),
    )
    .await;
    assert_eq!(code, 422, "{problem}");
    assert_eq!(problem["pointer"], "/tasks", "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.ends_with(ghost_core::TASKS_SHAPE), "{detail}");
    assert!(!detail.contains("nothing to do"), "{detail}");
}

/// A hostile duplicate key is not echoed at length: key and pointers are cut to 64 characters.
#[tokio::test]
async fn a_long_duplicate_key_gives_a_small_answer() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let long = "k".repeat(512 * 1024);
    for (body, key) in [
        // The 512 KiB key is a parent: every pointer holds it.
        (format!(r#"{{"{long}":{{"a":1,"a":2}}}}"#), "a".to_owned()),
        // A 500 KiB key repeated (two fit in the body limit).
        (
            format!(r#"{{"{0}":1,"{0}":2}}"#, &long[..500 * 1024]),
            format!("{}…", "k".repeat(64)),
        ),
    ] {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/patches", gateway.url()))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("gateway reachable");
        let bytes = response.bytes().await.expect("body");
        assert!(bytes.len() < 2048, "a {} byte answer", bytes.len());
        let problem: Value = serde_json::from_slice(&bytes).expect("problem json");
        assert_eq!(problem["status"], 422, "{problem}");
        assert_eq!(problem["key"], key.as_str(), "{problem}");
        for pointer in problem["pointers"].as_array().expect("pointers") {
            assert!(
                pointer.as_str().expect("pointer").chars().count() <= 65,
                "{pointer}"
            );
        }
    }
}
