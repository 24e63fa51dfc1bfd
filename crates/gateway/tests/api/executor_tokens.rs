//! `/v1/executor-tokens`: issue, list and revoke per-executor tokens through the gateway,
//! against a real router; admin scope only; the secret is shown once and never listed.

use serde_json::{Value, json};

use crate::helpers::{KEY, MAIN_SUBMITTER, READER, TestGateway, read};

async fn delete(gateway: &TestGateway, path: &str, key: &str) -> (u16, Value) {
    let response = gateway
        .http
        .delete(format!("{}{path}", gateway.url()))
        .bearer_auth(key)
        .send()
        .await
        .expect("gateway reachable");
    read(response).await
}

async fn post_raw(
    gateway: &TestGateway,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, String, Value) {
    let response = gateway
        .http
        .post(format!("{}{path}", gateway.url()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("gateway reachable");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let (code, body) = read(response).await;
    (code, content_type, body)
}

#[tokio::test]
async fn an_admin_issues_lists_and_revokes_executor_tokens() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, issued) = gateway
        .post(
            "/v1/executor-tokens",
            KEY,
            &json!({"name": "alice-laptop", "targets": ["MAIN", "CYOPS"]}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");
    let mut keys: Vec<&str> = issued
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "name", "targets", "token"]);
    assert_eq!(issued["name"], "alice-laptop");
    assert_eq!(issued["targets"], json!(["MAIN", "CYOPS"]));
    let secret = issued["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gx_"), "{secret}");
    assert!(issued["created_at"].as_str().unwrap().ends_with('Z'));

    let (code, listed) = gateway.get("/v1/executor-tokens", KEY).await;
    assert_eq!(code, 200, "{listed}");
    assert!(!listed.to_string().contains(&secret[3..]), "{listed}");
    let token = &listed["tokens"][0];
    assert_eq!(token["name"], "alice-laptop");
    assert_eq!(token["targets"], json!(["MAIN", "CYOPS"]));
    assert!(token["revoked_at"].is_null());
    assert!(token["last_used_at"].is_null());
    assert!(token["created_by"].is_string());
    assert_eq!(token["live_streams"], 0);

    let (code, again) = gateway
        .post(
            "/v1/executor-tokens",
            KEY,
            &json!({"name": "alice-laptop", "targets": ["MAIN"]}),
        )
        .await;
    assert_eq!(code, 409, "{again}");

    let (code, revoked) = delete(&gateway, "/v1/executor-tokens/alice-laptop", KEY).await;
    assert_eq!(code, 200, "{revoked}");
    assert_eq!(revoked["name"], "alice-laptop");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert!(!revoked.to_string().contains(&secret[3..]));

    let (code, twice) = delete(&gateway, "/v1/executor-tokens/alice-laptop", KEY).await;
    assert_eq!(code, 409, "{twice}");
    assert_eq!(twice["type"], "/problems/conflict");
    let (code, unknown) = delete(&gateway, "/v1/executor-tokens/nobody", KEY).await;
    assert_eq!(code, 404, "{unknown}");
    assert_eq!(unknown["detail"], "executor token nobody not found");
}

#[tokio::test]
async fn bad_token_requests_are_problems_naming_the_field() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for (body, code, pointer) in [
        (
            r#"{"name": "has space", "targets": ["MAIN"]}"#,
            422,
            "/name",
        ),
        (
            r#"{"name": "ok", "targets": ["no/such"]}"#,
            422,
            "/targets/0",
        ),
        (r#"{"name": "ok", "targets": []}"#, 422, "/targets"),
        (r#"{"name": "ok"}"#, 422, ""),
    ] {
        let (got, content_type, problem) =
            post_raw(&gateway, "/v1/executor-tokens", KEY, body).await;
        assert_eq!(got, code, "{body}: {problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["pointer"], pointer, "{body}: {problem}");
    }
    let (got, content_type, problem) =
        post_raw(&gateway, "/v1/executor-tokens", KEY, "{not json").await;
    assert_eq!(got, 400, "{problem}");
    assert_eq!(content_type, "application/problem+json");
}

#[tokio::test]
async fn submit_and_read_keys_may_not_touch_executor_tokens() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for key in [READER, MAIN_SUBMITTER] {
        let (code, body) = gateway
            .post(
                "/v1/executor-tokens",
                key,
                &json!({"name": "sneaky", "targets": ["MAIN"]}),
            )
            .await;
        assert_eq!(code, 403, "{body}");
        let (code, body) = gateway.get("/v1/executor-tokens", key).await;
        assert_eq!(code, 403, "{body}");
        let (code, body) = delete(&gateway, "/v1/executor-tokens/sneaky", key).await;
        assert_eq!(code, 403, "{body}");
    }
    let (code, body) = gateway.get("/v1/executor-tokens", KEY).await;
    assert_eq!(code, 200);
    assert_eq!(body["tokens"], json!([]), "nothing was issued");
}

#[tokio::test]
async fn the_executor_token_routes_are_in_the_openapi_document_with_schemas_and_examples() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", gateway.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    assert_eq!(
        paths["/v1/executor-tokens"]["post"]["operationId"],
        "createExecutorToken"
    );
    assert_eq!(
        paths["/v1/executor-tokens"]["get"]["operationId"],
        "listExecutorTokens"
    );
    assert_eq!(
        paths["/v1/executor-tokens/{name}"]["delete"]["operationId"],
        "revokeExecutorToken"
    );
    let schemas = &doc["components"]["schemas"];
    for name in [
        "NewExecutorToken",
        "IssuedExecutorToken",
        "ExecutorTokenView",
    ] {
        assert!(
            schemas[name]["example"].is_object(),
            "{name}: {}",
            schemas[name]
        );
    }
    assert!(schemas["ExecutorTokenList"].is_object());
    assert_eq!(
        schemas["TokenTarget"]["pattern"], "^[A-Za-z0-9_-]{1,64}$",
        "{}",
        schemas["TokenTarget"]
    );
}

/// Opens a Work stream on the router with `token` for MAIN; the stream, once welcomed.
async fn work_stream(
    gateway: &TestGateway,
    token: &str,
) -> (
    tokio::sync::mpsc::Sender<ghost_proto::executor::v1::ExecutorMessage>,
    tonic::Streaming<ghost_proto::executor::v1::RouterMessage>,
) {
    use ghost_proto::executor::v1::{ExecutorMessage, Hello, Workspace, executor_message};
    use ghost_proto::router::v1::router_service_client::RouterServiceClient;
    let (outbound, receiver) = tokio::sync::mpsc::channel(8);
    outbound
        .send(ExecutorMessage {
            kind: Some(executor_message::Kind::Hello(Hello {
                executor_id: "remote-box".to_owned(),
                workspaces: vec![Workspace {
                    target: "MAIN".to_owned(),
                    root: String::new(),
                }],
                capabilities: Vec::new(),
                token: token.to_owned(),
            })),
        })
        .await
        .unwrap();
    let mut client = RouterServiceClient::connect(format!("http://{}", gateway.router().grpc))
        .await
        .unwrap();
    let mut inbound = client
        .work(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("the token opens a Work stream")
        .into_inner();
    inbound.message().await.expect("welcome").expect("welcome");
    (outbound, inbound)
}

#[tokio::test]
async fn revoking_through_the_gateway_cuts_the_tokens_live_stream() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, issued) = gateway
        .post(
            "/v1/executor-tokens",
            KEY,
            &json!({"name": "remote-box", "targets": ["MAIN"]}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");
    let (_outbound, mut inbound) = work_stream(&gateway, issued["token"].as_str().unwrap()).await;

    let (_, listed) = gateway.get("/v1/executor-tokens", KEY).await;
    assert_eq!(listed["tokens"][0]["live_streams"], 1, "{listed}");
    assert!(listed["tokens"][0]["last_used_at"].is_string(), "{listed}");

    let (code, revoked) = delete(&gateway, "/v1/executor-tokens/remote-box", KEY).await;
    assert_eq!(code, 200, "{revoked}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream is cut within 5 s")
    .expect("cut with a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert_eq!(ended.message(), "executor token remote-box was revoked");
}

/// An admin key that may touch MAIN only.
const MAIN_ADMIN: &str = "main-admin-key-0123456789abcdef";

#[tokio::test]
async fn an_admin_key_limited_to_targets_manages_only_tokens_of_those_targets() {
    use sha2::{Digest, Sha256};
    let gateway = TestGateway::start(|config, _| {
        config.api_keys.push(gateway::config::ApiKeyConfig {
            name: "main-admin".to_owned(),
            sha256: Sha256::digest(MAIN_ADMIN.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            scopes: vec![gateway::auth::Scope::Admin],
            targets: vec!["MAIN".to_owned()],
        });
    })
    .await;
    // Issued by the unlimited key: one MAIN token, one spanning CYOPS too.
    for (name, targets) in [
        ("main-box", json!(["MAIN"])),
        ("both", json!(["MAIN", "CYOPS"])),
    ] {
        let (code, body) = gateway
            .post(
                "/v1/executor-tokens",
                KEY,
                &json!({"name": name, "targets": targets}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }

    let (code, problem) = gateway
        .post(
            "/v1/executor-tokens",
            MAIN_ADMIN,
            &json!({"name": "sneaky", "targets": ["MAIN", "CYOPS"]}),
        )
        .await;
    assert_eq!(code, 403, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("CYOPS"),
        "{problem}"
    );
    let (code, issued) = gateway
        .post(
            "/v1/executor-tokens",
            MAIN_ADMIN,
            &json!({"name": "mine", "targets": ["MAIN"]}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");

    let (code, listed) = gateway.get("/v1/executor-tokens", MAIN_ADMIN).await;
    assert_eq!(code, 200, "{listed}");
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main-box", "mine"], "{listed}");

    let (code, problem) = delete(&gateway, "/v1/executor-tokens/both", MAIN_ADMIN).await;
    assert_eq!(code, 403, "{problem}");
    assert_eq!(problem["type"], "/problems/forbidden", "{problem}");
    let (code, listed) = gateway.get("/v1/executor-tokens", KEY).await;
    assert_eq!(code, 200);
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|token| token["revoked_at"].is_null()),
        "nothing was revoked: {listed}"
    );
    let (code, revoked) = delete(&gateway, "/v1/executor-tokens/main-box", MAIN_ADMIN).await;
    assert_eq!(code, 200, "{revoked}");
    let (code, unknown) = delete(&gateway, "/v1/executor-tokens/nobody", MAIN_ADMIN).await;
    assert_eq!(code, 404, "{unknown}");
}
