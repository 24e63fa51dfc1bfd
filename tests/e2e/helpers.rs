//! Starting a whole system for a test and talking to its gateway.

use std::path::PathBuf;

use ghost_cli::system::{LocalOptions, SlackOptions, System, SystemBuilder, SystemConfig};
use ghost_testkit::{FakeSlack, wait_for};
use serde_json::Value;

pub const API_KEY: &str = "e2e-test-key-0123456789abcdef";

/// A running system with its fakes and scratch directories.
pub struct TestSystem {
    pub system: System,
    pub slack: FakeSlack,
    pub workspace: PathBuf,
    pub data_dir: PathBuf,
    pub scratch: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Starts all five services (the executor only when `with_executor`) against a fake Slack.
pub async fn spawn_system(with_executor: bool) -> TestSystem {
    spawn_system_with(with_executor, |_| {}).await
}

/// [`spawn_system`] with the services' configs changed by `adjust` first (a target's command
/// policy, say).
pub async fn spawn_system_with(
    with_executor: bool,
    adjust: impl FnOnce(&mut SystemConfig),
) -> TestSystem {
    let scratch = tempfile::tempdir().expect("tempdir");
    let workspace = scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace dir");
    let data_dir = scratch.path().join("state");
    let slack = FakeSlack::start().await;
    let options = LocalOptions {
        data_dir: data_dir.clone(),
        workspaces: if with_executor {
            vec![("MAIN".to_owned(), workspace.clone())]
        } else {
            Vec::new()
        },
        // Known even when no executor serves it yet: patches to it wait in the queue.
        targets: vec!["MAIN".to_owned()],
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        api_key: API_KEY.to_owned(),
        slack: Some(SlackOptions {
            api_base_url: slack.base_url(),
            bot_token: "xoxb-e2e-token".to_owned(),
            channel: "#ghost-e2e".to_owned(),
        }),
    };
    let system = SystemBuilder::new(&options)
        .configure(adjust)
        .start()
        .await
        .expect("system starts");
    TestSystem {
        system,
        slack,
        workspace,
        data_dir,
        scratch,
        http: reqwest::Client::new(),
    }
}

impl TestSystem {
    pub fn gateway(&self) -> String {
        self.system.gateway_url().expect("gateway running")
    }

    /// `POST /v1/patches` with a JSON body and the test key.
    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.submit_raw(body.to_string()).await
    }

    /// `POST /v1/patches` with a raw body.
    pub async fn submit_raw(&self, body: String) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/patches", self.gateway()))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("gateway reachable")
    }

    /// `GET /v1/patches/{id}` as JSON (status code and body).
    pub async fn get(&self, id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/v1/patches/{id}", self.gateway()))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("gateway reachable");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the patch has ended and its summary is readable.
    pub async fn wait_finished(&self, id: &str) -> Value {
        wait_for(&format!("patch {id} to end with a summary"), async || {
            let (code, body) = self.get(id).await;
            let terminal = !matches!(
                body["status"].as_str(),
                None | Some("received" | "queued" | "leased" | "applying" | "validating")
            );
            if code == 200 && terminal && !body["summary"].is_null() {
                Ok(body)
            } else {
                Err((code, body))
            }
        })
        .await
    }

    /// Where the summarizer writes summaries of a target.
    pub fn summaries_dir(&self, target: &str) -> PathBuf {
        self.data_dir.join("summarizer/summaries").join(target)
    }
}

/// A one-file write patch.
pub fn write_patch(id: &str, path: &str, contents: &str) -> Value {
    serde_json::json!({
        "id": id,
        "target": "MAIN",
        "description": format!("e2e patch {id}"),
        "edits": [{"op": "write", "path": path, "contents": contents}],
    })
}
