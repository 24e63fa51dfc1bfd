//! `/v1/keys`: API keys created at runtime (hashed in the router's database), used, listed,
//! revoked, kept across a restart, and never wider than their creator; and the public pages
//! `/privacy` and `/v1/info`.

use gateway::auth::Scope;
use gateway::config::ApiKeyConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    KEY, MAIN_SUBMITTER, READER, TestGateway, config, read, spawn_gateway, spawn_router,
    write_patch,
};

/// An admin key that may touch MAIN only.
const MAIN_ADMIN: &str = "main-admin-key-0123456789abc";

fn with_data_dir(config: &mut gateway::GatewayConfig, scratch: &std::path::Path) {
    config.data_dir = Some(scratch.join("gateway"));
    config.api_keys.push(ApiKeyConfig {
        name: "main-admin".to_owned(),
        sha256: Sha256::digest(MAIN_ADMIN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        scopes: vec![Scope::Admin],
        targets: vec!["MAIN".to_owned()],
    });
}

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

#[tokio::test]
async fn a_runtime_key_is_created_used_listed_and_revoked() {
    let gateway = TestGateway::start(with_data_dir).await;
    let (code, issued) = gateway
        .post(
            "/v1/keys",
            KEY,
            &json!({"name": "chatgpt-1a2b", "scopes": ["submit", "read"]}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");
    let secret = issued["key"].as_str().expect("key").to_owned();
    assert!(
        secret.starts_with("gr_") && secret.len() >= 3 + 43,
        "{secret}"
    );
    assert_eq!(issued["scopes"], json!(["submit", "read"]));
    assert_eq!(issued["created_by"], "api_key");

    // Used: submit and read work, admin routes do not.
    let (code, body) = gateway
        .post("/v1/patches", &secret, &write_patch("rk-1"))
        .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = gateway.get("/v1/patches/rk-1", &secret).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = gateway.get("/v1/keys", &secret).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = gateway.get("/v1/executor-tokens", &secret).await;
    assert_eq!(code, 403, "{body}");

    // Listed without a secret; config keys read-only.
    let (code, list) = gateway.get("/v1/keys", KEY).await;
    assert_eq!(code, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("\"key\""),
        "{text}"
    );
    let keys = list["keys"].as_array().expect("keys");
    let runtime = keys
        .iter()
        .find(|k| k["name"] == "chatgpt-1a2b")
        .expect("listed");
    assert_eq!(runtime["source"], "runtime");
    let reader = keys
        .iter()
        .find(|k| k["name"] == "reader")
        .expect("config key listed");
    assert_eq!(reader["source"], "config");
    assert_eq!(reader["scopes"], json!(["read"]));

    // The router's database holds the hash only; the gateway keeps no keys file.
    let mut stored = std::fs::read(gateway.path("router/router.db")).expect("router database");
    stored.extend(std::fs::read(gateway.path("router/router.db-wal")).unwrap_or_default());
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let digest: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(stored.windows(digest.len()).any(|w| w == digest.as_bytes()));
    assert!(!gateway.path("gateway/api-keys.json").exists());

    // Config keys cannot be deleted; unknown names are 404; a runtime key is revoked.
    let (code, body) = delete(&gateway, "/v1/keys/reader", KEY).await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = delete(&gateway, "/v1/keys/nobody", KEY).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = delete(&gateway, "/v1/keys/chatgpt-1a2b", KEY).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = gateway.get("/v1/patches/rk-1", &secret).await;
    assert_eq!(code, 401, "{body}");
}

#[tokio::test]
async fn names_are_unique_and_checked() {
    let gateway = TestGateway::start(with_data_dir).await;
    let new = |name: &str| json!({"name": name, "scopes": ["read"]});
    let (code, body) = gateway.post("/v1/keys", KEY, &new("dup")).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = gateway.post("/v1/keys", KEY, &new("dup")).await;
    assert_eq!(code, 409, "{body}");
    // A config key's name is taken too.
    let (code, body) = gateway.post("/v1/keys", KEY, &new("reader")).await;
    assert_eq!(code, 409, "{body}");
    for bad in ["", "../x", "a b", &"a".repeat(65)] {
        let (code, body) = gateway.post("/v1/keys", KEY, &new(bad)).await;
        assert_eq!(code, 422, "{bad:?}: {body}");
        assert_eq!(body["pointer"], "/name", "{body}");
    }
    let (code, body) = gateway
        .post("/v1/keys", KEY, &json!({"name": "x", "scopes": []}))
        .await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = gateway
        .post("/v1/keys", KEY, &json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = gateway
        .post(
            "/v1/keys",
            KEY,
            &json!({"name": "x", "scopes": ["read"], "targets": ["../etc"]}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    // A target named twice is kept once.
    let (code, body) = gateway
        .post(
            "/v1/keys",
            KEY,
            &json!({"name": "twice", "scopes": ["read"], "targets": ["MAIN", "MAIN"]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["targets"], json!(["MAIN"]), "{body}");
}

#[tokio::test]
async fn a_key_is_never_wider_than_its_creator() {
    let gateway = TestGateway::start(with_data_dir).await;
    let new = |targets: Value| json!({"name": "k", "scopes": ["submit"], "targets": targets});
    // Not admins.
    for key in [READER, MAIN_SUBMITTER] {
        let (code, body) = gateway.post("/v1/keys", key, &new(json!(["MAIN"]))).await;
        assert_eq!(code, 403, "{body}");
    }
    // An admin of MAIN only: not for another target, not for every target.
    let (code, body) = gateway
        .post("/v1/keys", MAIN_ADMIN, &new(json!(["CYOPS"])))
        .await;
    assert_eq!(code, 403, "{body}");
    // Without targets: the creator's targets, never every target.
    let (code, issued) = gateway
        .post(
            "/v1/keys",
            MAIN_ADMIN,
            &json!({"name": "no-targets", "scopes": ["submit"]}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");
    assert_eq!(issued["targets"], json!(["MAIN"]), "{issued}");
    let (code, issued) = gateway
        .post("/v1/keys", MAIN_ADMIN, &new(json!(["MAIN"])))
        .await;
    assert_eq!(code, 201, "{issued}");
    let secret = issued["key"].as_str().unwrap();
    // The new key is limited like its creator.
    let mut other = write_patch("rk-cyops");
    other["target"] = json!("CYOPS");
    let (code, body) = gateway.post("/v1/patches", secret, &other).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = gateway
        .post("/v1/patches", secret, &write_patch("rk-main"))
        .await;
    assert_eq!(code, 202, "{body}");
    // The MAIN admin neither sees nor deletes a key for every target.
    let (code, body) = gateway
        .post(
            "/v1/keys",
            KEY,
            &json!({"name": "wide", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (_, list) = gateway.get("/v1/keys", MAIN_ADMIN).await;
    assert!(!list.to_string().contains("\"wide\""), "{list}");
    let (code, body) = delete(&gateway, "/v1/keys/wide", MAIN_ADMIN).await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test]
async fn runtime_keys_survive_a_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let router = spawn_router(&scratch.path().join("router")).await;
    let mut settings = config(router.grpc);
    with_data_dir(&mut settings, scratch.path());
    let first = spawn_gateway(settings.clone()).await;
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("http://{}/v1/keys", first.http))
        .bearer_auth(KEY)
        .json(&json!({"name": "kept", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    let (code, issued) = read(answer).await;
    assert_eq!(code, 201, "{issued}");
    let secret = issued["key"].as_str().unwrap().to_owned();
    first.stop().await;

    let second = spawn_gateway(settings).await;
    let answer = http
        .get(format!("http://{}/v1/targets", second.http))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    let (code, body) = read(answer).await;
    assert_eq!(code, 200, "{body}");
    let wrong = http
        .get(format!("http://{}/v1/targets", second.http))
        .bearer_auth(format!("{secret}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
}

#[tokio::test]
async fn without_a_data_dir_keys_are_still_created_since_the_router_keeps_them() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway
        .post("/v1/keys", KEY, &json!({"name": "k", "scopes": ["read"]}))
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = gateway
        .get("/v1/targets", body["key"].as_str().expect("key"))
        .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn the_privacy_policy_and_info_are_public() {
    let gateway = TestGateway::start(|config, _| {
        config.public_url = "https://ghost.example.com/".to_owned();
    })
    .await;
    let page = gateway
        .http
        .get(format!("{}/privacy", gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for stored in ["patches", "summaries", "names of the credentials", "Logs"] {
        assert!(html.contains(stored), "{stored}: {html}");
    }
    let info = gateway
        .http
        .get(format!("{}/v1/info", gateway.url()))
        .send()
        .await
        .unwrap();
    let (code, info) = read(info).await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["public_url"], "https://ghost.example.com");
    assert_eq!(info["mcp_path"], "/mcp");
    assert_eq!(info["privacy_path"], "/privacy");
}

#[tokio::test]
async fn the_configured_privacy_policy_is_served_escaped() {
    let gateway = TestGateway::start(|config, _| {
        config.privacy_policy = Some("# Our policy\n\nWe keep <b>nothing</b> & more.".to_owned());
    })
    .await;
    let html = gateway
        .http
        .get(format!("{}/privacy", gateway.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<h1>Our policy</h1>"), "{html}");
    assert!(
        html.contains("We keep &lt;b&gt;nothing&lt;/b&gt; &amp; more."),
        "{html}"
    );
    let markdown = gateway
        .http
        .get(format!("{}/privacy?format=markdown", gateway.url()))
        .send()
        .await
        .unwrap();
    assert!(
        markdown.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    assert!(
        markdown
            .text()
            .await
            .unwrap()
            .contains("We keep <b>nothing</b>")
    );
}

#[tokio::test]
async fn a_privacy_policy_file_is_read_and_a_missing_one_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let router = spawn_router(&scratch.path().join("router")).await;
    let mut settings = config(router.grpc);
    settings.privacy_policy_file = Some(scratch.path().join("missing.md"));
    let refused = gateway::App::build(settings.clone()).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("privacy_policy_file"), "{message}");
    std::fs::write(scratch.path().join("policy.md"), "From a file.").unwrap();
    settings.privacy_policy_file = Some(scratch.path().join("policy.md"));
    let running = spawn_gateway(settings).await;
    let html = reqwest::get(format!("http://{}/privacy", running.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("From a file."), "{html}");
}

#[tokio::test]
async fn a_dashboard_session_ends_when_its_runtime_key_is_revoked() {
    let keys_dir = tempfile::tempdir().unwrap();
    let data_dir = keys_dir.path().join("gateway");
    let system = crate::system::System::start(false, |config| {
        config.data_dir = Some(data_dir);
    })
    .await;
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("{}/v1/keys", system.url()))
        .bearer_auth(crate::system::ADMIN_KEY)
        .json(&json!({"name": "viewer", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    let (code, issued) = read(issued).await;
    assert_eq!(code, 201, "{issued}");
    let mut client = crate::dashboard::Client::new(&system.url());
    let login = client.login(issued["key"].as_str().unwrap()).await;
    assert_eq!(login.status, 303);
    assert_eq!(client.get("/ui").await.status, 200);
    let revoked = http
        .delete(format!("{}/v1/keys/viewer", system.url()))
        .bearer_auth(crate::system::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    assert_eq!(
        client.get("/ui").await.status,
        303,
        "back to the login page"
    );
}
