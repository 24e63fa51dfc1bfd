//! The routes the dashboard and the CLI share (issue 9 contract): the report on a patch,
//! pause/resume, executors and alerts — against a real router and a real alerter.

use std::collections::HashMap;

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::alerter::v1::{AlertRequest, NotifyRequest, Severity};
use ghost_proto::router::v1::PatchStatus;
use serde_json::json;

use crate::helpers::{
    KEY, MAIN_SUBMITTER, READER, TestGateway, spawn_alerter, spawn_alerter_with, write_patch,
};

#[tokio::test]
async fn a_patch_that_has_not_run_has_a_null_report() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway
        .post("/v1/patches", KEY, &write_patch("not-run-yet"))
        .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = gateway.get("/v1/patches/not-run-yet", READER).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert!(body.as_object().unwrap().contains_key("report"), "{body}");
    assert!(body["report"].is_null(), "{body}");
}

#[tokio::test]
async fn targets_are_paused_and_resumed_by_admins_only() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway
        .post("/v1/targets/MAIN/pause", KEY, &json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["target"], "MAIN");
    assert_eq!(body["paused"], true);
    assert_eq!(body["queued"], 0);
    let (_, targets) = gateway.get("/v1/targets", READER).await;
    let main = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "MAIN")
        .expect("MAIN listed once paused");
    assert_eq!(main["paused"], true);

    // Work submitted to a paused target waits.
    let (code, _) = gateway
        .post("/v1/patches", KEY, &write_patch("waits"))
        .await;
    assert_eq!(code, 202);
    let (code, body) = gateway
        .post("/v1/targets/MAIN/resume", KEY, &json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["paused"], false);
    assert_eq!(body["queued"], 1, "{body}");

    let (code, body) = gateway
        .post("/v1/targets/MAIN/pause", READER, &json!({}))
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = gateway
        .post("/v1/targets/MAIN/pause", MAIN_SUBMITTER, &json!({}))
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = gateway
        .post("/v1/targets/MAIN/pause", "wrong-key", &json!({}))
        .await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = gateway
        .post("/v1/targets/no.dots/pause", KEY, &json!({}))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("invalid target"),
        "{body}"
    );
}

#[tokio::test]
async fn executors_are_listed_for_readers() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway.get("/v1/executors", READER).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({"executors": []}));
    let (code, _) = gateway.get("/v1/executors", "").await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn alerts_without_an_alerter_are_a_503_naming_the_setting() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway.get("/v1/alerts", READER).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["type"], "/problems/not-configured");
    assert!(
        body["detail"].as_str().unwrap().contains("alerter_url"),
        "{body}"
    );
}

#[tokio::test]
async fn alerts_come_from_the_alerter_with_their_state() {
    let (alerter, lifecycle) = spawn_alerter().await;
    let alerter_grpc = alerter.grpc;
    let gateway = TestGateway::start(|config, _| {
        config.alerter_url = Some(format!("http://{alerter_grpc}"));
    })
    .await;

    let (code, body) = gateway.get("/v1/alerts", READER).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({"alerts": [], "slack_backlog": []}));

    let mut client = AlerterServiceClient::connect(format!("http://{alerter_grpc}"))
        .await
        .expect("alerter reachable");
    for (key, severity) in [
        ("queue_stale/MAIN", Severity::Warning),
        ("executor_lost/MAIN", Severity::Critical),
    ] {
        client
            .alert(AlertRequest {
                key: key.to_owned(),
                resolved: false,
                severity: severity as i32,
                summary: format!("<b>{key}</b>"),
                labels: HashMap::from([("target".to_owned(), "MAIN".to_owned())]),
                source: "router".to_owned(),
                at_unix_ms: 1_700_000_000_000,
            })
            .await
            .expect("alert accepted");
    }
    lifecycle
        .ack("queue_stale/MAIN", "UOPERATOR")
        .await
        .expect("ack");

    let (code, body) = gateway.get("/v1/alerts", READER).await;
    assert_eq!(code, 200, "{body}");
    let alerts = body["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 2, "{body}");
    assert_eq!(alerts[0]["key"], "executor_lost/MAIN", "most severe first");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(alerts[0]["labels"]["target"], "MAIN");
    assert_eq!(alerts[0]["source"], "router");
    assert!(alerts[0]["since_unix_ms"].as_i64().unwrap() > 0);
    assert_eq!(alerts[1]["key"], "queue_stale/MAIN");
    assert_eq!(alerts[1]["state"], "acked");
    assert_eq!(alerts[1]["severity"], "warning");

    lifecycle
        .silence(
            "executor_lost/MAIN",
            std::time::Duration::from_secs(600),
            "UOPERATOR",
        )
        .await
        .expect("silence");
    let (_, body) = gateway.get("/v1/alerts", READER).await;
    assert_eq!(body["alerts"][0]["state"], "silenced", "{body}");

    let (code, _) = gateway.get("/v1/alerts", "").await;
    assert_eq!(code, 401);
    alerter.stop().await;
}

/// Issue 26: the Slack backlog per channel, in `/v1/alerts` and on the dashboard's alerts page;
/// not for a key limited to some targets (channels are shared between teams).
#[tokio::test]
async fn the_slack_backlog_per_channel_is_listed_with_the_alerts() {
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().to_path_buf();
    let (alerter, _lifecycle) = spawn_alerter_with(move |config| {
        // A Slack that never answers: every message stays waiting.
        config.data_dir = Some(data_dir);
        config.slack.api_base_url = Some("http://127.0.0.1:9/api".to_owned());
        config.slack.bot_token = ghost_runtime::config::Secret::new("xoxb-test");
        config.slack.channel = "#ghost-ops".to_owned();
        config.slack.initial_backoff = std::time::Duration::from_secs(60);
    })
    .await;
    let alerter_grpc = alerter.grpc;
    let gateway = TestGateway::start(|config, _| {
        config.alerter_url = Some(format!("http://{alerter_grpc}"));
    })
    .await;
    let mut client = AlerterServiceClient::connect(format!("http://{alerter_grpc}"))
        .await
        .expect("alerter reachable");
    for n in 0..3 {
        client
            .notify(NotifyRequest {
                patch_id: format!("failed-{n}"),
                target: "MAIN".to_owned(),
                attempt: 1,
                status: PatchStatus::Failed as i32,
                description: "a failure".to_owned(),
                ..NotifyRequest::default()
            })
            .await
            .expect("notify accepted");
    }

    let (code, body) = gateway.get("/v1/alerts", READER).await;
    assert_eq!(code, 200, "{body}");
    let backlog = body["slack_backlog"].as_array().expect("slack_backlog");
    assert_eq!(backlog.len(), 1, "{body}");
    assert_eq!(backlog[0]["channel"], "#ghost-ops");
    assert_eq!(backlog[0]["pending"], 3, "{body}");
    assert_eq!(backlog[0]["digest_only"], false);

    let (code, body) = gateway.get("/v1/alerts", MAIN_SUBMITTER).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["slack_backlog"],
        json!([]),
        "a limited key sees no channels"
    );

    let mut browser = crate::dashboard::Client::new(&gateway.url());
    browser.login(READER).await;
    let page = browser.get("/ui/alerts").await.body;
    assert!(page.contains("<h2>Slack backlog</h2>"), "{page}");
    assert!(
        page.contains("<tr><td>#ghost-ops</td><td class=\"num\">3</td>"),
        "{page}"
    );
    alerter.stop().await;
}
