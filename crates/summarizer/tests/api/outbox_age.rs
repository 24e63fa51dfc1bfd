//! Issue 25: the notification outbox (towards the alerter) exports its depth and the age of its
//! oldest row; with the alerter down the age grows, and it drops to 0 once delivered.

use std::time::Duration;

use ghost_proto::router::v1::PatchStatus;
use ghost_testkit::{POLL_INTERVAL, wait_until};

use crate::helpers::{FakeAlerter, TestApp, record, reserve_port, spawn_summarizer};

/// `name{outbox="notifications"}` in `/metrics`, if present.
async fn gauge(app: &TestApp, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains("outbox=\"notifications\""))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// Polls (bounded) until the age gauge satisfies `want`; returns it.
async fn age_until(app: &TestApp, within: Duration, want: impl Fn(f64) -> bool) -> f64 {
    let name = "ghost_outbox_oldest_age_seconds";
    let what = format!("{name}{{outbox=\"notifications\"}} to reach the value wanted");
    wait_until(&what, within, POLL_INTERVAL, async || {
        let value = gauge(app, name).await;
        value.filter(|value| want(*value)).ok_or(value)
    })
    .await
}

#[tokio::test]
async fn a_notification_the_alerter_cannot_take_ages_in_the_outbox_gauge_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let alerter_addr = reserve_port();
    let mut app = spawn_summarizer(dir.path(), Some(format!("http://{alerter_addr}"))).await;
    app.client
        .record(record("waits", 1, PatchStatus::Succeeded))
        .await
        .unwrap();
    let aged = age_until(&app, Duration::from_secs(10), |age| age >= 1.0).await;
    eprintln!("undelivered notification: oldest age {aged} s");
    assert_eq!(gauge(&app, "ghost_outbox_depth").await, Some(1.0));

    let _alerter = FakeAlerter::start_on(alerter_addr).await;
    age_until(&app, Duration::from_secs(30), |age| age == 0.0).await;
    assert_eq!(gauge(&app, "ghost_outbox_depth").await, Some(0.0));
    app.stop().await;
}
