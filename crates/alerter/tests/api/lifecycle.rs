//! The alert lifecycle on a paused tokio clock: grouping, repeat, escalation, ack, silence and
//! resolve. Messages are read from the outbox (what would be sent, in order).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alerter::AlertPolicy;
use alerter::lifecycle::{Lifecycle, Phase, RaiseAlert, Severity};
use alerter::outbox::Outbox;
use alerter::store::{Kind, NewMessage, Store};
use ghost_runtime::clock::TokioClock;

const START_MS: i64 = 1_700_000_000_000;

fn policy() -> AlertPolicy {
    AlertPolicy {
        group_wait: Duration::from_secs(30),
        repeat_interval: Duration::from_secs(3600),
        escalate_after: Duration::from_secs(1800),
        escalation_channel: Some("#ghost-escalations".to_owned()),
        escalation_mention: "<!here>".to_owned(),
        tick: Duration::from_secs(1),
    }
}

async fn engine(policy: AlertPolicy) -> (Arc<Lifecycle>, Store) {
    let store = Store::open(None).unwrap();
    let clock = Arc::new(TokioClock::starting_at(START_MS));
    let outbox = Outbox::new(store.clone(), clock.clone());
    let lifecycle = Lifecycle::load(outbox, clock, policy, "#ghost".to_owned())
        .await
        .unwrap();
    (Arc::new(lifecycle), store)
}

fn raise(key: &str) -> RaiseAlert {
    let target = key.rsplit('/').next().unwrap().to_owned();
    RaiseAlert {
        key: key.to_owned(),
        severity: Severity::Critical,
        summary: format!("{key} fired"),
        labels: BTreeMap::from([("target".to_owned(), target)]),
        source: "test".to_owned(),
    }
}

async fn sent(store: &Store) -> Vec<NewMessage> {
    store.all_messages().await.unwrap()
}

fn text(message: &NewMessage) -> &str {
    message.body["text"].as_str().unwrap()
}

/// Advances the paused clock by `secs` and runs the timers.
async fn after(lifecycle: &Lifecycle, secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
    lifecycle.tick().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn alerts_raised_within_the_window_are_grouped_into_one_message() {
    let (lifecycle, store) = engine(policy()).await;
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    after(&lifecycle, 10).await;
    lifecycle
        .raise(raise("executor_lost/CYOPS"), None)
        .await
        .unwrap();
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap(); // dedup by key
    lifecycle
        .raise(raise("service_down/router"), None)
        .await
        .unwrap();
    after(&lifecycle, 19).await;
    assert!(
        sent(&store).await.is_empty(),
        "posted before the window ended"
    );

    after(&lifecycle, 1).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let group = text(&messages[0]);
    assert!(group.starts_with("🔥 2 alerts: executor_lost"), "{group}");
    assert!(group.contains("executor_lost/MAIN") && group.contains("executor_lost/CYOPS"));
    assert_eq!(messages[0].kind, Kind::Post);

    // The other group's window started later.
    after(&lifecycle, 10).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 2);
    assert!(text(&messages[1]).contains("service_down/router"));
    assert!(
        lifecycle
            .active()
            .await
            .iter()
            .all(|alert| alert.phase == Phase::Firing)
    );
}

#[tokio::test(start_paused = true)]
async fn firing_alerts_repeat_in_their_thread_every_interval() {
    let (lifecycle, store) = engine(AlertPolicy {
        escalate_after: Duration::from_secs(100_000),
        ..policy()
    })
    .await;
    lifecycle
        .raise(raise("queue_stale/MAIN"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    after(&lifecycle, 3599).await;
    assert_eq!(sent(&store).await.len(), 1);
    after(&lifecycle, 1).await;
    after(&lifecycle, 3600).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    for repeat in &messages[1..] {
        assert_eq!(repeat.kind, Kind::Reply);
        assert_eq!(repeat.thread, messages[0].thread);
        assert_eq!(repeat.body["reply_broadcast"], true);
        assert!(text(repeat).starts_with("🔁 still firing: `queue_stale/MAIN`"));
    }
    assert!(
        text(&messages[2]).contains("for 2h"),
        "{}",
        text(&messages[2])
    );
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_alerts_escalate_once_to_the_escalation_channel() {
    let (lifecycle, store) = engine(policy()).await;
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    after(&lifecycle, 1799).await;
    assert_eq!(sent(&store).await.len(), 1);
    after(&lifecycle, 1).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 2);
    let escalation = &messages[1];
    assert_eq!(escalation.channel, "#ghost-escalations");
    assert_eq!(escalation.kind, Kind::Post);
    assert!(
        text(escalation).starts_with("<!here> 🚨 unacknowledged for 30m: `executor_lost/MAIN`"),
        "{}",
        text(escalation)
    );
    // Once only: the next repeat is a repeat, not another escalation.
    after(&lifecycle, 1800).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 3);
    assert!(text(&messages[2]).starts_with("🔁"));

    // Without an escalation channel: re-posted in the main channel with the mention.
    let (lifecycle, store) = engine(AlertPolicy {
        escalation_channel: None,
        ..policy()
    })
    .await;
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    after(&lifecycle, 1800).await;
    let messages = sent(&store).await;
    assert_eq!(messages[1].channel, "#ghost");
    assert!(text(&messages[1]).starts_with("<!here> 🚨"));
}

#[tokio::test(start_paused = true)]
async fn an_ack_records_who_and_when_and_stops_repeats_and_escalation() {
    let (lifecycle, store) = engine(policy()).await;
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    after(&lifecycle, 60).await;
    let acked = lifecycle.ack("executor_lost/MAIN", "UOPS").await.unwrap();
    let ack = acked.ack.expect("ack recorded");
    assert_eq!(ack.by, "UOPS");
    assert_eq!(ack.at_ms, START_MS + 90_000);
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].kind, Kind::Reply);
    assert_eq!(messages[1].thread, messages[0].thread);
    assert_eq!(
        text(&messages[1]),
        "👀 `executor_lost/MAIN` acknowledged by <@UOPS>"
    );

    after(&lifecycle, 4 * 3600).await;
    assert_eq!(
        sent(&store).await.len(),
        2,
        "acked alerts neither repeat nor escalate"
    );
    assert!(lifecycle.ack("no/such", "UOPS").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn silences_by_key_or_target_hold_alerts_back_until_they_end() {
    let (lifecycle, store) = engine(policy()).await;
    let by_target = lifecycle
        .silence("MAIN", Duration::from_secs(600), "UOPS")
        .await
        .unwrap();
    lifecycle
        .silence("service_down/router", Duration::from_secs(60), "UOPS")
        .await
        .unwrap();
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    lifecycle
        .raise(raise("service_down/router"), None)
        .await
        .unwrap();
    lifecycle
        .raise(raise("executor_lost/CYOPS"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(text(&messages[0]).contains("executor_lost/CYOPS"));
    assert!(!text(&messages[0]).contains("executor_lost/MAIN"));

    // The key silence ends after 60 s: the router alert goes out then.
    after(&lifecycle, 30).await;
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 2);
    assert!(text(&messages[1]).contains("service_down/router"));

    // Unsilencing the target lets executor_lost/MAIN out at once.
    assert!(lifecycle.unsilence(by_target.id).await.unwrap());
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 3);
    assert!(text(&messages[2]).contains("executor_lost/MAIN"));
    assert!(!lifecycle.unsilence(by_target.id).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn resolving_says_so_in_the_thread_and_quiet_alerts_end_quietly() {
    let (lifecycle, store) = engine(policy()).await;
    lifecycle
        .raise(raise("service_down/summarizer"), None)
        .await
        .unwrap();
    after(&lifecycle, 30).await;
    after(&lifecycle, 270).await;
    assert!(lifecycle.resolve("service_down/summarizer").await.unwrap());
    let messages = sent(&store).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].kind, Kind::Reply);
    assert_eq!(messages[1].thread, messages[0].thread);
    assert_eq!(
        text(&messages[1]),
        "✅ resolved: `service_down/summarizer` (after 5m)"
    );
    assert!(lifecycle.active().await.is_empty());
    assert!(!lifecycle.resolve("service_down/summarizer").await.unwrap());

    // Raised and cleared within the group window: nothing is ever posted.
    lifecycle
        .raise(raise("service_down/gateway"), None)
        .await
        .unwrap();
    after(&lifecycle, 5).await;
    assert!(lifecycle.resolve("service_down/gateway").await.unwrap());
    after(&lifecycle, 60).await;
    assert_eq!(sent(&store).await.len(), 2);

    // After a restart (same database) active alerts come back.
    lifecycle
        .raise(raise("executor_lost/MAIN"), None)
        .await
        .unwrap();
    let clock = Arc::new(TokioClock::starting_at(START_MS));
    let reloaded = Lifecycle::load(
        Outbox::new(store.clone(), clock.clone()),
        clock,
        policy(),
        "#ghost".to_owned(),
    )
    .await
    .unwrap();
    let keys: Vec<_> = reloaded.active().await.into_iter().map(|a| a.key).collect();
    assert_eq!(keys, ["executor_lost/MAIN"]);
}
