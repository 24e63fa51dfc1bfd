//! On PostgreSQL only: the database stopped and started again while notifications flow, and
//! two alerter replicas sharing one database and one (fake) Slack: one sender per channel,
//! one health monitor (taken over when its replica stops), commands answered by either.
//! Each test starts its own server ([`TempPostgres`]) and skips with a printed reason when
//! PostgreSQL is not installed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alerter::AlerterConfig;
use alerter::routing::Route;
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::clock::SystemClock;
use ghost_runtime::config::Secret;
use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::{FakeSlack, POLL_INTERVAL, SlackRequest, wait_until};

use crate::helpers::{OPERATOR, TestApp, WAIT, config, drained, notify, slash, spawn_with};
use crate::notify::alert_request;

/// The key of the alerter's own storage alert.
const STORAGE_ALERT: &str = "storage_unavailable/alerter";

/// The test config on the database at `url`, with fast retries.
fn on_database(slack: &FakeSlack, url: &str) -> AlerterConfig {
    let mut cfg = config(Some(slack.base_url()));
    cfg.store.url = Some(Secret::new(url));
    cfg.slack.max_attempts = 30;
    cfg.slack.max_backoff = Duration::from_millis(200);
    cfg.alerts.group_wait = Duration::ZERO;
    // Every success in its own thread (no switch to the digest), so each patch makes exactly
    // a parent, an update and a reply.
    cfg.routing.backlog_threshold = 10_000;
    cfg
}

async fn spawn_on(cfg: AlerterConfig) -> TestApp {
    spawn_with(cfg, Arc::new(SystemClock)).await
}

/// Attempt 1 (failed, a new thread) or 2 (succeeded: an update and a reply) of `patch`.
fn attempt(patch: &str, attempt: u32) -> NotifyRequest {
    let mut request = notify(patch);
    request.attempt = attempt;
    if attempt > 1 {
        request.status = PatchStatus::Succeeded as i32;
        request.error = String::new();
    }
    request
}

/// Sends `request` as a caller's outbox does: again after UNAVAILABLE (bounded); returns how
/// many times it was refused. Any other error fails the test.
async fn send_until_accepted(app: &mut TestApp, request: NotifyRequest) -> u32 {
    let mut refused = 0;
    wait_until(
        "the notification accepted",
        3 * WAIT,
        POLL_INTERVAL,
        async || match app.client.notify(request.clone()).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                refused += 1;
                Err(status)
            }
            Err(status) => panic!("notify failed: {status:?}"),
        },
    )
    .await;
    refused
}

/// `/readyz` of `app`: the status and the body.
async fn readiness(app: &TestApp) -> (u16, String) {
    let response = reqwest::get(format!("{}/readyz", app.http))
        .await
        .expect("alerter reachable");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Waits (bounded) until `/readyz` answers `status`; returns its body.
async fn wait_ready(app: &TestApp, status: u16) -> String {
    let what = format!("/readyz to answer {status}");
    wait_until(&what, 3 * WAIT, POLL_INTERVAL, async || {
        let (now, body) = readiness(app).await;
        if now == status {
            Ok(body)
        } else {
            Err((now, body))
        }
    })
    .await
}

/// Every patch in `patches` has exactly one parent post, updated once, and its delivered
/// requests in thread order (parent, update, reply); no request body was delivered twice.
fn assert_each_once_in_thread_order(
    slack: &FakeSlack,
    requests: &[SlackRequest],
    patches: &[String],
) {
    // The alerter's own storage alert is posted directly, outside the outbox (checked by the
    // restart test).
    let ok: Vec<&SlackRequest> = requests
        .iter()
        .filter(|r| r.succeeded() && !r.text().contains(STORAGE_ALERT))
        .collect();
    for r in &ok {
        if !patches
            .iter()
            .any(|id| r.body.to_string().contains(id.as_str()))
        {
            eprintln!("not a patch's: {} {}", r.method, r.body);
        }
    }
    let distinct: HashSet<String> = ok
        .iter()
        .map(|r| format!("{} {}", r.method, r.body))
        .collect();
    assert_eq!(distinct.len(), ok.len(), "a message was delivered twice");
    assert_eq!(ok.len(), 3 * patches.len(), "delivered: {}", ok.len());
    let messages = slack.messages();
    for id in patches {
        let marker = format!("{id} ");
        let parents: Vec<_> = messages
            .iter()
            .filter(|m| m.thread_ts.is_none() && m.text().contains(&marker))
            .collect();
        assert_eq!(parents.len(), 1, "{id}: {parents:#?}");
        let parent = parents[0];
        assert_eq!(parent.updates, 1, "{id}");
        let thread: Vec<&str> = ok
            .iter()
            .filter(|r| {
                r.body["ts"] == parent.ts.as_str()
                    || r.body["thread_ts"] == parent.ts.as_str()
                    || (r.method != "chat.update"
                        && r.body.get("thread_ts").is_none()
                        && r.text().contains(&marker))
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
}

/// Waits (bounded) until no message is pending in the shared outbox, and none went dead.
async fn drained_alive(app: &TestApp) {
    let counts = drained(app, 3 * WAIT).await;
    assert_eq!(counts.dead, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_degrades_the_alerter_which_resumes_and_loses_nothing() {
    let Some(server) = TempPostgres::start_or_skip("replicas::postgres_restart") else {
        return;
    };
    let url = server.create_database();
    let slack = FakeSlack::start().await;
    let mut app = spawn_on(on_database(&slack, &url)).await;
    let patches: Vec<String> = (0..12).map(|n| format!("p-restart-{n:02}")).collect();
    for id in &patches[..6] {
        assert_eq!(send_until_accepted(&mut app, attempt(id, 1)).await, 0);
    }
    server.stop();
    // The first call that needs the database finds it gone: refused, and the alerter degraded.
    let status = app
        .client
        .notify(attempt(&patches[0], 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("the alerter's database is unreachable"),
        "{status:?}"
    );
    let reason = wait_ready(&app, 503).await;
    assert!(reason.contains("database is unreachable"), "{reason}");
    let stopped_at = Instant::now();
    server.restart();
    // Meanwhile callers keep their notifications and retry until the alerter takes them.
    let mut refused = 0;
    for id in &patches[..6] {
        refused += send_until_accepted(&mut app, attempt(id, 2)).await;
    }
    for id in &patches[6..] {
        refused += send_until_accepted(&mut app, attempt(id, 1)).await;
        refused += send_until_accepted(&mut app, attempt(id, 2)).await;
    }
    wait_ready(&app, 200).await;
    eprintln!(
        "postgres restart: ready again {:?} after the restart began; {refused} calls refused meanwhile",
        stopped_at.elapsed()
    );
    drained_alive(&app).await;
    let requests = slack.requests().await;
    assert_each_once_in_thread_order(&slack, &requests, &patches);
    let storage: Vec<&str> = requests
        .iter()
        .filter(|r| r.succeeded() && r.text().contains(STORAGE_ALERT))
        .map(SlackRequest::text)
        .collect();
    eprintln!("storage alert posts: {storage:#?}");
    assert!(
        storage
            .first()
            .is_some_and(|text| text.contains("the alerter's database is unreachable")),
        "{storage:#?}"
    );
    assert!(
        storage.last().is_some_and(|text| text.contains("resolved")),
        "{storage:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_post_each_message_once_parents_first_in_thread_order() {
    let Some(server) = TempPostgres::start_or_skip("replicas::one_sender") else {
        return;
    };
    let url = server.create_database();
    let slack = FakeSlack::start().await;
    // Three targets routed to three channels: each channel has one sender at a time, not
    // necessarily the same replica.
    let mut cfg = on_database(&slack, &url);
    cfg.routing.routes = (0..3)
        .map(|n| Route {
            target: vec![format!("T{n}")],
            channel: Some(format!("#c{n}")),
            ..Route::default()
        })
        .collect();
    let mut first = spawn_on(cfg.clone()).await;
    let mut second = spawn_on(cfg).await;
    let patches: Vec<String> = (0..24).map(|n| format!("p-replica-{n:02}")).collect();
    let on_target = |id: &str, n: usize, number: u32| {
        let mut request = attempt(id, number);
        request.target = format!("T{}", n % 3);
        request
    };
    // Attempt 1 through one replica, attempt 2 through the other, alternating.
    for (n, id) in patches.iter().enumerate() {
        let (a, b) = if n % 2 == 0 {
            (&mut first, &mut second)
        } else {
            (&mut second, &mut first)
        };
        assert_eq!(send_until_accepted(a, on_target(id, n, 1)).await, 0);
        assert_eq!(send_until_accepted(b, on_target(id, n, 2)).await, 0);
    }
    drained_alive(&first).await;
    let requests = slack.requests().await;
    assert_each_once_in_thread_order(&slack, &requests, &patches);
    for (n, id) in patches.iter().enumerate() {
        let parent = requests
            .iter()
            .find(|r| {
                r.succeeded() && r.body.get("thread_ts").is_none() && r.text().contains(id.as_str())
            })
            .expect("a parent");
        assert_eq!(parent.body["channel"], format!("#c{}", n % 3), "{id}");
    }
}

/// `/ghost health` on `app` (what its monitor has seen).
async fn health_of(app: &TestApp) -> String {
    slash(app, "/ghost", "health", OPERATOR).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_monitors_and_the_other_takes_over_when_it_stops() {
    let Some(server) = TempPostgres::start_or_skip("replicas::one_monitor") else {
        return;
    };
    let url = server.create_database();
    let slack = FakeSlack::start().await;
    let watched = |slack: &FakeSlack| {
        let mut cfg = on_database(slack, &url);
        // Nothing listens there: the service is down from the first check.
        cfg.health.services =
            HashMap::from([("ghostsvc".to_owned(), "http://127.0.0.1:9".to_owned())])
                .into_iter()
                .collect();
        cfg.health.interval = Duration::from_millis(100);
        cfg.health.check_timeout = Duration::from_millis(200);
        cfg.health.failures_before_alert = 1;
        cfg
    };
    let first = spawn_on(watched(&slack)).await;
    let second = spawn_on(watched(&slack)).await;
    let posts = slack.wait_for_posts(1, 3 * WAIT).await;
    assert!(
        posts[0].text().contains("service_down/ghostsvc"),
        "{}",
        posts[0].text()
    );
    let (leader, follower) = if health_of(&first).await.contains("ghostsvc") {
        (first, second)
    } else {
        (second, first)
    };
    assert!(health_of(&leader).await.contains("ghostsvc"));
    assert!(
        health_of(&follower).await.contains("nothing watched yet"),
        "the follower does not check"
    );
    let stopped = Instant::now();
    leader.stop().await;
    wait_until(
        "the follower to take the health monitor over",
        3 * WAIT,
        POLL_INTERVAL,
        async || {
            let health = health_of(&follower).await;
            if health.contains("ghostsvc") {
                Ok(())
            } else {
                Err(health)
            }
        },
    )
    .await;
    eprintln!(
        "monitor takeover after a clean stop: {:?}",
        stopped.elapsed()
    );
    // The new leader finds the alert raised by the old one: no second post.
    drained_alive(&follower).await;
    let posts: Vec<_> = slack
        .posts()
        .await
        .into_iter()
        .filter(|post| post.text().contains("service_down/ghostsvc"))
        .collect();
    assert_eq!(posts.len(), 1, "{posts:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_one_replica_sees_alerts_raised_through_the_other() {
    let Some(server) = TempPostgres::start_or_skip("replicas::commands") else {
        return;
    };
    let url = server.create_database();
    let slack = FakeSlack::start().await;
    let mut first = spawn_on(on_database(&slack, &url)).await;
    let second = spawn_on(on_database(&slack, &url)).await;
    first
        .client
        .alert(alert_request("executor_lost/MAIN", false, 1))
        .await
        .unwrap();
    let alerts = slash(&second, "/ghost", "alerts", OPERATOR).await;
    assert!(
        alerts.contains("`executor_lost/MAIN` (critical"),
        "{alerts}"
    );
    let answer = slash(&second, "/ghost", "ack executor_lost/MAIN", OPERATOR).await;
    assert!(answer.contains("acknowledged"), "{answer}");
    let active = first.lifecycle.active().await;
    assert_eq!(active[0].ack.as_ref().unwrap().by, OPERATOR, "{active:?}");
    let silenced = slash(&first, "/ghost", "silence MAIN 2h", OPERATOR).await;
    assert!(!silenced.is_empty());
    let alerts = slash(&second, "/ghost", "alerts", OPERATOR).await;
    assert!(alerts.contains("silence #1 on `MAIN`"), "{alerts}");
    drained_alive(&first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_raised_through_both_replicas_at_once_is_posted_once() {
    let Some(server) = TempPostgres::start_or_skip("replicas::one_post") else {
        return;
    };
    let url = server.create_database();
    let slack = FakeSlack::start().await;
    let mut first = spawn_on(on_database(&slack, &url)).await;
    let mut second = spawn_on(on_database(&slack, &url)).await;
    // Each key in a group of its own (so each makes its own post), raised by two callers (two
    // events) through the two replicas at the same moment.
    let keys: Vec<String> = (0..12).map(|n| format!("raced{n}/MAIN")).collect();
    for key in &keys {
        let (one, other) = tokio::join!(
            first.client.alert(alert_request(key, false, 1)),
            second.client.alert(alert_request(key, false, 2)),
        );
        one.expect("raised through the first replica");
        other.expect("raised through the second replica");
    }
    drained_alive(&first).await;
    let posts = slack.posts().await;
    for key in &keys {
        let marker = format!("`{key}`");
        let naming: Vec<_> = posts
            .iter()
            .filter(|post| post.text().contains(&marker))
            .collect();
        assert_eq!(naming.len(), 1, "{key} posted other than once: {naming:#?}");
    }
    let active = first.lifecycle.active().await;
    assert_eq!(active.len(), keys.len(), "{active:#?}");
}
