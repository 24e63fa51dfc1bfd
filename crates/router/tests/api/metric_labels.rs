//! Issue 18: metric labels carry only known targets. A target an executor serves is labelled
//! by name; any other target a client names is counted under `(other)`, so 100 distinct
//! unknown targets submitted straight to the router's gRPC Submit add no series.

use std::collections::BTreeSet;

use ghost_testkit::wait::wait_for;

use crate::helpers::{TestExecutor, config, metrics_text, patch, spawn_router, submit};

/// Every series of the router's `/metrics`: name and labels, without the value.
async fn series(http: std::net::SocketAddr) -> (BTreeSet<String>, String) {
    let text = metrics_text(http).await;
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect();
    (series, text)
}

/// Waits (bounded) until `/metrics` has a line starting with `prefix`; returns the text.
async fn wait_for_line(http: std::net::SocketAddr, prefix: &str) -> String {
    wait_for(&format!("{prefix} in /metrics"), async || {
        let text = metrics_text(http).await;
        if text.lines().any(|line| line.starts_with(prefix)) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
}

#[tokio::test]
async fn a_hundred_unknown_targets_add_no_metric_series() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(scratch.path())).await;
    let _executor = TestExecutor::connect(&router, "exec-1", &["MAIN"]).await;
    // The served target and the first unknown one make their series; the sweep publishes the
    // queue gauges.
    submit(&router, patch("served-1", "MAIN")).await;
    submit(&router, patch("unknown-0", "MIAN")).await;
    wait_for_line(router.http, "ghost_queue_depth{target=\"(other)\"} 1").await;
    let (before, _) = series(router.http).await;
    assert!(
        before.contains("ghost_patches_submitted_total{target=\"MAIN\"}"),
        "{before:#?}"
    );
    assert!(
        before.contains("ghost_patches_submitted_total{target=\"(other)\"}"),
        "{before:#?}"
    );
    for index in 1..=100 {
        submit(
            &router,
            patch(&format!("unknown-{index}"), &format!("NOBODY{index}")),
        )
        .await;
    }
    // Wait for a sweep after the last submit: the queues of the 101 unknown targets add up.
    let text = wait_for_line(router.http, "ghost_queue_depth{target=\"(other)\"} 101").await;
    let (after, _) = series(router.http).await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(added.is_empty(), "new series: {added:#?}");
    assert!(
        !text.contains("NOBODY") && !text.contains("MIAN"),
        "an unknown target's name is in /metrics:\n{text}"
    );
    assert!(
        text.contains("ghost_patches_submitted_total{target=\"(other)\"} 101"),
        "{text}"
    );
}

#[tokio::test]
async fn a_target_claimed_256_times_counts_one_executor_and_returns_to_zero() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(scratch.path())).await;
    let executor = TestExecutor::connect(&router, "greedy", &["MAIN"; 256]).await;
    let connected = wait_for_line(router.http, "ghost_executors_connected{target=\"MAIN\"}").await;
    assert!(
        connected
            .lines()
            .any(|line| line == "ghost_executors_connected{target=\"MAIN\"} 1"),
        "{connected}"
    );
    drop(executor);
    wait_for_line(router.http, "ghost_executors_connected{target=\"MAIN\"} 0").await;
}
