//! Terminal outcomes reach the summarizer several at a time (their settles share commits),
//! each exactly once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ghost_testkit::wait::wait_for;

use crate::helpers::{
    TestRouter, TestSummarizer, cancel, config, outbox_settled, patch, spawn_router, submit,
};

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

    summarizer.wait_records(ids.len()).await;
    // Settled rows are not sent again: once the outbox is empty, no row can be claimed.
    outbox_settled(&router, "outcomes").await;
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

/// Ends `id` at once (submitted with no executor, then cancelled) and waits until the
/// summarizer recorded its outcome.
async fn end_and_record(router: &TestRouter, summarizer: &TestSummarizer, id: &str) {
    submit(router, patch(id, "IDLE")).await;
    cancel(router, id, "test").await;
    summarizer.wait_recorded(id).await;
}

/// An outcome that ends while another is still being delivered goes out at once (it does not
/// wait for the earlier delivery and its commit), and the row still out is not sent again,
/// across several of the outbox's claim rounds (each later outcome wakes the outbox, which
/// claims again, and once more after settling it).
async fn a_new_outcome_does_not_wait_for_one_still_being_delivered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let summarizer = TestSummarizer::new(Duration::ZERO, "slow-one");
    let _stop = summarizer.serve(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.summarizer_url = Some(url);
    let router = spawn_router(cfg).await;

    submit(&router, patch("slow-one", "IDLE")).await;
    cancel(&router, "slow-one", "test").await;
    wait_for("slow-one sent", async || {
        let calls = summarizer.calls.lock().unwrap().clone();
        if calls.contains_key("slow-one") {
            Ok(())
        } else {
            Err(calls)
        }
    })
    .await;
    end_and_record(&router, &summarizer, "quick-one").await;
    assert!(
        !summarizer.was_recorded("slow-one"),
        "slow-one is still held"
    );
    // More claim rounds pass with slow-one still out: it is not sent again meanwhile.
    for later in ["later-1", "later-2", "later-3"] {
        end_and_record(&router, &summarizer, later).await;
    }
    summarizer.gate.add_permits(1);
    summarizer.wait_recorded("slow-one").await;
    outbox_settled(&router, "outcomes").await;
    let calls = summarizer.calls.lock().unwrap().clone();
    for id in ["slow-one", "quick-one", "later-1", "later-2", "later-3"] {
        assert_eq!(calls.get(id), Some(&1), "{id}: {calls:?}");
    }
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
    summarizer.wait_recorded("told").await;
    summarizer.wait_recorded("plain").await;
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
