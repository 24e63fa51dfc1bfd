//! Must-show 6: with the alerter down, outcomes wait in the durable outbox (across a summarizer
//! restart) and are delivered once it comes back.

use ghost_proto::router::v1::PatchStatus;

use ghost_testkit::wait_for;

use crate::helpers::{FakeAlerter, outbox_tried, record, reserve_port, spawn_summarizer};

#[tokio::test]
async fn outcomes_recorded_while_the_alerter_is_down_are_delivered_after_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let alerter_addr = reserve_port();
    let alerter_url = format!("http://{alerter_addr}");

    let mut app = spawn_summarizer(dir.path(), Some(alerter_url.clone())).await;
    for (id, attempt, status) in [
        ("down-1", 1, PatchStatus::Succeeded),
        ("down-2", 1, PatchStatus::RolledBack),
        ("down-2", 2, PatchStatus::Failed),
    ] {
        assert!(
            app.client
                .record(record(id, attempt, status))
                .await
                .unwrap()
                .into_inner()
                .created
        );
    }
    // Let the outbox fail a few times against the closed port, then wait until it has.
    let rows = outbox_tried(&app, 2).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    app.stop().await;

    // A restart with the alerter still down: nothing is dropped.
    let app = spawn_summarizer(dir.path(), Some(alerter_url.clone())).await;
    assert_eq!(app.summaries.index().outbox_len().unwrap(), 3);

    // The alerter comes back on its address: everything arrives.
    let alerter = FakeAlerter::start_on(alerter_addr).await;
    let received = alerter.wait_for(3).await;
    let mut keys: Vec<(String, u32, i32)> = received
        .iter()
        .map(|n| (n.patch_id.clone(), n.attempt, n.status))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys,
        vec![
            ("down-1".to_owned(), 1, PatchStatus::Succeeded as i32),
            ("down-2".to_owned(), 1, PatchStatus::RolledBack as i32),
            ("down-2".to_owned(), 2, PatchStatus::Failed as i32),
        ]
    );
    let failed = received.iter().find(|n| n.attempt == 2).unwrap();
    assert_eq!(failed.error, "validation failed: tsc exited 2");
    assert!(
        failed.excerpt.starts_with("# ❌ down-2 failed"),
        "{}",
        failed.excerpt
    );

    // Delivered rows leave the outbox.
    wait_for("the outbox to empty", async || {
        match app.summaries.index().outbox_len().unwrap() {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    app.stop().await;
}

/// The same through the real alerter (its `App` on the reserved port) to a fake Slack.
#[tokio::test]
async fn outcomes_reach_slack_through_the_real_alerter_once_it_is_up() {
    use alerter::{AlerterConfig, SlackConfig};
    use ghost_runtime::config::{Secret, ServerConfig};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let alerter_addr = reserve_port();
    let app = spawn_summarizer(dir.path(), Some(format!("http://{alerter_addr}"))).await;
    let mut client = app.client.clone();
    for (id, status) in [
        ("slack-1", PatchStatus::Succeeded),
        ("slack-2", PatchStatus::TimedOut),
    ] {
        client.record(record(id, 1, status)).await.unwrap();
    }
    app.stop().await;
    let app = spawn_summarizer(dir.path(), Some(format!("http://{alerter_addr}"))).await;
    assert_eq!(app.summaries.index().outbox_len().unwrap(), 2);

    let slack = ghost_testkit::FakeSlack::start().await;
    let alerter_config = AlerterConfig {
        server: ServerConfig {
            grpc_listen: alerter_addr,
            ..ServerConfig::ephemeral()
        },
        slack: SlackConfig {
            api_base_url: Some(slack.base_url()),
            bot_token: Secret::new("xoxb-summarizer-test"),
            channel: "#ghost-test".to_owned(),
            pacing: Duration::ZERO,
            ..SlackConfig::default()
        },
        ..AlerterConfig::default()
    };
    let alerter_app = alerter::App::build(alerter_config).await.unwrap();
    let (stop_alerter, stopped) = tokio::sync::oneshot::channel::<()>();
    let alerter_task = tokio::spawn(alerter_app.run(async {
        let _ = stopped.await;
    }));

    let mentions = |requests: &[ghost_testkit::SlackRequest], id: &str| {
        requests.iter().any(|r| r.body.to_string().contains(id))
    };
    wait_for("slack-1 and slack-2 posted to Slack", async || {
        let requests = slack.requests().await;
        if mentions(&requests, "slack-1") && mentions(&requests, "slack-2") {
            Ok(())
        } else {
            Err(requests)
        }
    })
    .await;
    drop(stop_alerter);
    let _ = alerter_task.await;
    app.stop().await;
}

/// Notifications go several at a time (one at a time capped the whole system at ~330
/// patches/s), yet the attempts of one patch reach the alerter in order.
#[tokio::test]
async fn notifications_go_several_at_a_time_and_a_patchs_attempts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Every notification is held until all are recorded, then until a second one is being
    // answered (or half a second): a parallel outbox has several in flight whatever the
    // timing, a serial one never two.
    let alerter = FakeAlerter::start_holding().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;
    let mut expected = 0;
    for n in 0..12 {
        let id = format!("many-{n}");
        app.client
            .record(record(&id, 1, PatchStatus::RolledBack))
            .await
            .unwrap();
        app.client
            .record(record(&id, 2, PatchStatus::Succeeded))
            .await
            .unwrap();
        expected += 2;
    }
    alerter.release();
    let received = alerter.wait_for(expected).await;
    assert_eq!(received.len(), expected, "every notification arrives once");
    assert!(
        alerter.most_in_flight() >= 2,
        "notifications went one at a time"
    );
    for n in 0..12 {
        let id = format!("many-{n}");
        let attempts: Vec<u32> = received
            .iter()
            .filter(|r| r.patch_id == id)
            .map(|r| r.attempt)
            .collect();
        assert_eq!(attempts, vec![1, 2], "{id}: attempts out of order");
    }
    app.stop().await;
}
