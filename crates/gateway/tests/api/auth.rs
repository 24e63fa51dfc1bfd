//! Must-show 2 and 3: Standard Webhooks signatures made by the `standardwebhooks` package, and
//! API key scopes and target allowlists (401 vs 403).

use serde_json::json;

use crate::helpers::{
    KEY, MAIN_SUBMITTER, READER, TestGateway, WEBHOOK_SECRET, python, write_patch,
};

#[tokio::test]
async fn missing_or_unknown_keys_are_401_and_scopes_or_targets_not_allowed_are_403() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let url = format!("{}/v1/patches", gateway.url());
    let anonymous = gateway
        .http
        .post(&url)
        .json(&write_patch("a-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let (code, _) = gateway
        .post(
            "/v1/patches",
            "wrong-key-0123456789abcdef",
            &write_patch("a-1"),
        )
        .await;
    assert_eq!(code, 401);
    // X-Api-Key works as well as Bearer.
    let response = gateway
        .http
        .post(&url)
        .header("x-api-key", MAIN_SUBMITTER)
        .json(&write_patch("a-main"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    // Read-only key: may read, may not submit or cancel.
    let (code, problem) = gateway
        .post("/v1/patches", READER, &write_patch("a-2"))
        .await;
    assert_eq!(code, 403, "{problem}");
    assert_eq!(gateway.get("/v1/patches/a-main", READER).await.0, 200);
    assert_eq!(
        gateway
            .post("/v1/patches/a-main/cancel", READER, &json!(null))
            .await
            .0,
        403
    );
    // Target allowlist: MAIN only.
    let mut cyops = write_patch("a-3");
    cyops["target"] = json!("CYOPS");
    let (code, problem) = gateway.post("/v1/patches", MAIN_SUBMITTER, &cyops).await;
    assert_eq!(code, 403, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("CYOPS"),
        "{problem}"
    );
    let (code, _) = gateway
        .get("/v1/patches?target=CYOPS", MAIN_SUBMITTER)
        .await;
    assert_eq!(code, 403);
    // Submit without admin: cancel refused.
    assert_eq!(
        gateway
            .post("/v1/patches/a-main/cancel", MAIN_SUBMITTER, &json!(null))
            .await
            .0,
        403
    );
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["a-main"], "nothing refused was stored");
}

const SIGN: &str = r#"
import sys, json, datetime, urllib.request, urllib.error
from standardwebhooks.webhooks import Webhook
url, secret, msg_id, skew, body = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
when = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=skew)
signature = Webhook(secret).sign(msg_id, when, body)
headers = {"content-type": "application/json", "webhook-id": msg_id,
           "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature}
request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
try:
    with urllib.request.urlopen(request) as response:
        print(response.status)
except urllib.error.HTTPError as err:
    print(err.code)
"#;

async fn signed(gateway: &TestGateway, secret: &str, msg_id: &str, skew_s: i64, id: &str) -> u16 {
    let url = format!("{}/v1/patches", gateway.url());
    let body = write_patch(id).to_string();
    let (ok, stdout, stderr) =
        python(SIGN, &[&url, secret, msg_id, &skew_s.to_string(), &body]).await;
    assert!(ok, "python failed: {stderr}");
    stdout.trim().parse().expect("status code")
}

#[tokio::test]
async fn standard_webhooks_signatures_are_verified_and_replays_answered_once() {
    let gateway = TestGateway::start(|_, _| {}).await;
    assert_eq!(
        signed(&gateway, WEBHOOK_SECRET, "msg_ok_1", 0, "wh-1").await,
        202
    );
    // Same webhook-id again, as a sender retries: the committed answer again, nothing new
    // queued (issue 17: ids are remembered once committed, not refused).
    assert_eq!(
        signed(&gateway, WEBHOOK_SECRET, "msg_ok_1", 0, "wh-1").await,
        202
    );
    let other_secret = "whsec_c29tZS1vdGhlci1zZWNyZXQtdmFsdWU=";
    assert_eq!(
        signed(&gateway, other_secret, "msg_bad_secret", 0, "wh-2").await,
        401
    );
    assert_eq!(
        signed(&gateway, WEBHOOK_SECRET, "msg_stale", -600, "wh-3").await,
        401
    );
    assert_eq!(
        signed(&gateway, WEBHOOK_SECRET, "msg_future", 600, "wh-4").await,
        401
    );
    // Missing headers: only an id.
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .header("webhook-id", "msg_partial")
        .json(&write_patch("wh-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A tampered body fails even with a fresh id.
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .header("webhook-id", "msg_tampered")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .json(&write_patch("wh-6"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        gateway.stored_ids().await,
        ["wh-1"],
        "nothing refused was submitted"
    );
    // The key is still needed to read: the webhook credential has only the submit scope.
    assert_eq!(gateway.get("/v1/patches/wh-1", KEY).await.0, 200);
}
