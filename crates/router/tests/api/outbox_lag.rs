//! Issue 25: every durable outbox exports its depth and the age of its oldest undelivered row
//! (`ghost_outbox_depth{outbox}`, `ghost_outbox_oldest_age_seconds{outbox}`), so an outcome the
//! summarizer cannot take shows as a growing age, and the age drops to 0 once it is delivered.

use std::time::Duration;

use ghost_testkit::wait::{POLL_INTERVAL, wait_until};

use crate::helpers::{TestSummarizer, cancel, config, metrics_text, patch, spawn_router, submit};

/// The value of `name{outbox="<outbox>"}` in the router's `/metrics`, if present.
async fn gauge(http: std::net::SocketAddr, name: &str, outbox: &str) -> Option<f64> {
    let text = metrics_text(http).await;
    let label = format!("outbox=\"{outbox}\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// Polls (bounded by `within`) until the gauge's value satisfies `want`; returns it.
async fn gauge_until(
    http: std::net::SocketAddr,
    name: &str,
    outbox: &str,
    within: Duration,
    want: impl Fn(f64) -> bool,
) -> f64 {
    let what = format!("{name}{{outbox=\"{outbox}\"}} to reach the value wanted");
    wait_until(&what, within, POLL_INTERVAL, async || {
        let value = gauge(http, name, outbox).await;
        value.filter(|value| want(*value)).ok_or(value)
    })
    .await
}

#[tokio::test]
async fn an_outcome_the_summarizer_cannot_take_ages_in_the_outbox_gauge_until_delivered() {
    // A summarizer address with nothing behind it yet.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(format!("http://{address}"));
    let router = spawn_router(cfg).await;

    // Queued with no executor, then cancelled: it ends at once with an outcome to deliver.
    submit(&router, patch("undelivered", "IDLE")).await;
    cancel(&router, "undelivered", "test").await;
    let age = "ghost_outbox_oldest_age_seconds";
    let first = gauge_until(router.http, age, "outcomes", Duration::from_secs(10), |v| {
        v > 0.0
    })
    .await;
    let later = gauge_until(router.http, age, "outcomes", Duration::from_secs(10), |v| {
        v >= first + 1.0
    })
    .await;
    eprintln!("undelivered outcome: oldest age {first} s, then {later} s");
    let depth = gauge(router.http, "ghost_outbox_depth", "outcomes").await;
    assert_eq!(depth, Some(1.0), "one outcome waits in the outbox");
    assert_eq!(
        gauge(router.http, age, "alerts").await,
        Some(0.0),
        "the alerts outbox is exported, and empty"
    );

    // The summarizer comes up: the retry (backoff up to 8 s by now) delivers it.
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let _stop = TestSummarizer::new(Duration::ZERO, "").serve(listener);
    gauge_until(router.http, age, "outcomes", Duration::from_secs(30), |v| {
        v == 0.0
    })
    .await;
    assert_eq!(
        gauge(router.http, "ghost_outbox_depth", "outcomes").await,
        Some(0.0),
        "the delivered outcome left the outbox"
    );
}
