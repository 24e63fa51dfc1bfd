//! Terminal outcomes reach the summarizer several at a time (their settles share commits),
//! each exactly once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::helpers::{PATIENCE, TestSummarizer, cancel, config, patch, spawn_router, submit};

crate::on_both_stores!(
    outcomes_are_delivered_several_at_a_time_and_each_once,
    a_new_outcome_does_not_wait_for_one_still_being_delivered,
    an_outcome_carries_the_patchs_notify_priority_and_key_name_to_the_summarizer,
);

async fn outcomes_are_delivered_several_at_a_time_and_each_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = TestSummarizer::new(Duration::from_millis(200), "");
    let _stop = summarizer.serve(listener);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    let router = spawn_router(cfg).await;

    // Queued with no executor, then cancelled: each ends at once with an outcome to deliver.
    let ids: Vec<String> = (0..12).map(|n| format!("outcome-{n}")).collect();
    for id in &ids {
        submit(&router, patch(id, "IDLE")).await;
    }
    for id in &ids {
        cancel(&router, id, "test").await;
    }

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while summarizer.recorded.lock().unwrap().len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} recorded",
            summarizer.recorded.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled rows are not sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recorded = summarizer.recorded.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            recorded.get(&(id.clone(), 0)),
            Some(&1),
            "{id}: {recorded:?}"
        );
    }
    assert_eq!(recorded.len(), ids.len(), "{recorded:?}");
    assert!(
        summarizer.most_in_flight.load(Ordering::SeqCst) >= 2,
        "outcomes went one at a time"
    );
}

/// An outcome that ends while another is still being delivered goes out at once (it does not
/// wait for the earlier delivery and its commit), and the row still out is not sent again,
/// across several of the outbox's one-second polls.
async fn a_new_outcome_does_not_wait_for_one_still_being_delivered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = TestSummarizer::new(Duration::ZERO, "slow-one");
    let _stop = summarizer.serve(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    let router = spawn_router(cfg).await;
    let wait_for = |id: &'static str| {
        let summarizer = summarizer.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !summarizer.was_recorded(id) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} not recorded: {:?}",
                    summarizer.recorded.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    submit(&router, patch("slow-one", "IDLE")).await;
    submit(&router, patch("quick-one", "IDLE")).await;
    cancel(&router, "slow-one", "test").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !summarizer.calls.lock().unwrap().contains_key("slow-one") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow-one never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel(&router, "quick-one", "test").await;
    wait_for("quick-one").await;
    assert!(
        !summarizer.was_recorded("slow-one"),
        "slow-one is still held"
    );
    // Three polls pass with slow-one still out: it is not sent again meanwhile.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    summarizer.gate.add_permits(1);
    wait_for("slow-one").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = summarizer.calls.lock().unwrap().clone();
    assert_eq!(calls.get("slow-one"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("quick-one"), Some(&1), "{calls:?}");
}

async fn an_outcome_carries_the_patchs_notify_priority_and_key_name_to_the_summarizer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = TestSummarizer::new(Duration::ZERO, "");
    let _stop = summarizer.serve(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    let router = spawn_router(cfg).await;

    let mut told = patch("told", "IDLE");
    told.notify = "U0ALICE".to_owned();
    told.priority = ghost_proto::router::v1::Priority::High as i32;
    router
        .client
        .clone()
        .submit(ghost_proto::router::v1::SubmitRequest {
            patch: Some(told),
            key_name: "alice-gpt".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    submit(&router, patch("plain", "IDLE")).await;
    cancel(&router, "told", "test").await;
    cancel(&router, "plain", "test").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !(summarizer.was_recorded("told") && summarizer.was_recorded("plain")) {
        assert!(tokio::time::Instant::now() < deadline, "not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = summarizer.told.lock().unwrap().clone();
    assert_eq!(
        seen["told"],
        (
            "U0ALICE".to_owned(),
            "high".to_owned(),
            "alice-gpt".to_owned()
        )
    );
    assert_eq!(
        seen["plain"],
        (String::new(), "normal".to_owned(), String::new())
    );
}
