//! A Slack outage: the fake answers 500 and 429 with `Retry-After` for a while; afterwards
//! every message has arrived, in order per thread, none twice. Then the same with the
//! alerter restarted (same database) in the middle of the outage.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use alerter::AlerterConfig;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeResponse, FakeSlack, SlackRequest};

use crate::helpers::{TestApp, WAIT, config, drained, notify, spawn_with};
use crate::notify::alert_request;

/// Messages the scenario makes: per patch a parent, an update and a reply; for the alert a
/// parent and the resolution.
const EXPECTED: usize = 8;

fn outage_config(slack: &FakeSlack, data_dir: Option<std::path::PathBuf>) -> AlerterConfig {
    let mut cfg = config(Some(slack.base_url()));
    cfg.slack.max_attempts = 30;
    cfg.slack.initial_backoff = Duration::from_millis(20);
    cfg.slack.max_backoff = Duration::from_millis(200);
    cfg.slack.pacing = Duration::from_millis(20);
    cfg.alerts.group_wait = Duration::ZERO;
    cfg.data_dir = data_dir;
    cfg
}

async fn make_traffic(app: &mut TestApp) {
    for id in ["p-a", "p-b"] {
        assert!(
            app.client
                .notify(notify(id))
                .await
                .unwrap()
                .into_inner()
                .accepted
        );
    }
    for id in ["p-a", "p-b"] {
        let mut second = notify(id);
        second.attempt = 2;
        second.status = PatchStatus::Succeeded as i32;
        assert!(
            app.client
                .notify(second)
                .await
                .unwrap()
                .into_inner()
                .accepted
        );
    }
    app.client
        .alert(alert_request("queue_stale/MAIN", false, 1))
        .await
        .unwrap();
    app.client
        .alert(alert_request("queue_stale/MAIN", true, 2))
        .await
        .unwrap();
}

fn delivered(requests: &[SlackRequest]) -> Vec<&SlackRequest> {
    requests.iter().filter(|r| r.succeeded()).collect()
}

/// Every message once, and per thread: parent, then update, then reply.
fn assert_all_arrived_in_order_once(slack: &FakeSlack, requests: &[SlackRequest]) {
    let ok = delivered(requests);
    assert_eq!(ok.len(), EXPECTED, "delivered: {ok:#?}");
    let distinct: HashSet<String> = ok
        .iter()
        .map(|r| format!("{} {}", r.method, r.body))
        .collect();
    assert_eq!(distinct.len(), EXPECTED, "a message arrived twice");

    let messages = slack.messages();
    let parents: Vec<_> = messages.iter().filter(|m| m.thread_ts.is_none()).collect();
    assert_eq!(parents.len(), 3, "{messages:#?}");
    for id in ["p-a", "p-b"] {
        let parent = parents
            .iter()
            .find(|m| m.text().contains(id))
            .expect("parent of the patch");
        assert_eq!(parent.updates, 1, "{id}");
        assert_eq!(
            parent.body["blocks"][0]["text"]["text"],
            format!("✅ {id} succeeded")
        );
        let thread: Vec<&str> = ok
            .iter()
            .filter(|r| {
                r.body["ts"] == parent.ts.as_str()
                    || r.body["thread_ts"] == parent.ts.as_str()
                    || (r.body.get("thread_ts").is_none() && r.text().contains(id))
            })
            .map(|r| {
                if r.method == "chat.update" {
                    "update"
                } else if r.body.get("thread_ts").is_some() {
                    "reply"
                } else {
                    "parent"
                }
            })
            .collect();
        assert_eq!(thread, ["parent", "update", "reply"], "{id}");
    }
    let alert = parents
        .iter()
        .find(|m| m.text().contains("queue_stale/MAIN"))
        .expect("alert parent");
    let resolution = messages
        .iter()
        .find(|m| m.thread_ts.as_deref() == Some(alert.ts.as_str()))
        .expect("resolution in the alert thread");
    assert!(resolution.text().starts_with("✅ resolved"));
}

fn outage() -> Vec<FakeResponse> {
    vec![
        FakeResponse::ServerError,
        FakeResponse::ServerError,
        FakeResponse::RateLimited { retry_after_s: 1 },
        FakeResponse::ServerError,
        FakeResponse::ServerError,
        FakeResponse::ServerError,
        FakeResponse::RateLimited { retry_after_s: 1 },
    ]
}

async fn after_an_outage_every_message_arrives_in_order_once() {
    let slack = FakeSlack::start().await;
    slack.push_responses(outage());
    let mut app = spawn_with(outage_config(&slack, None), Arc::new(SystemClock)).await;
    make_traffic(&mut app).await;

    let requests = slack
        .wait_until(WAIT, |all| delivered(all).len() >= EXPECTED)
        .await;
    assert_eq!(slack.script_left(), 0, "the outage was not exercised");
    assert_all_arrived_in_order_once(&slack, &requests);
    let failed = requests.iter().filter(|r| !r.succeeded()).count();
    assert_eq!(failed, outage().len());
    let counts = drained(&app, WAIT).await;
    assert_eq!(
        (counts.pending, counts.sent, counts.dead),
        (0, EXPECTED as u64, 0)
    );
}

async fn a_restart_during_the_outage_loses_and_repeats_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let slack = FakeSlack::start().await;
    let mut script = outage();
    script.extend(outage());
    slack.push_responses(script);
    let data_dir = Some(scratch.path().join("alerter"));

    let mut first = spawn_with(
        outage_config(&slack, data_dir.clone()),
        Arc::new(SystemClock),
    )
    .await;
    make_traffic(&mut first).await;
    slack
        .wait_until(WAIT, |all| {
            all.iter().filter(|r| !r.succeeded()).count() >= 4
        })
        .await;
    first.stop().await;
    let before_restart = slack.requests().await.len();

    let mut second = spawn_with(outage_config(&slack, data_dir), Arc::new(SystemClock)).await;
    // The summarizer redelivering after the restart changes nothing.
    assert!(
        !second
            .client
            .notify(notify("p-a"))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    let requests = slack
        .wait_until(WAIT, |all| delivered(all).len() >= EXPECTED)
        .await;
    assert!(
        requests.len() > before_restart,
        "the second alerter sent nothing"
    );
    assert_eq!(slack.script_left(), 0, "the outage was not exercised");
    assert_all_arrived_in_order_once(&slack, &requests);
    let counts = drained(&second, WAIT).await;
    assert_eq!((counts.pending, counts.dead), (0, 0));
}

on_both_stores!(
    after_an_outage_every_message_arrives_in_order_once,
    a_restart_during_the_outage_loses_and_repeats_nothing,
);
