//! Issue 26, Slack at scale: routes (channel, mention, own thread or digest), digests edited in
//! place, failures delivered first, the backlog switch, per-user notification. Everything
//! against the recording fake Slack with the default 1 s pacing per channel, fed through the
//! alerter's real gRPC `Notify`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use alerter::routing::{Route, ThreadMode};
use alerter::{AlerterConfig, App};
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeMessage, FakeResponse, FakeSlack, SlackRequest, wait_for};
use serde_json::Value;

use crate::helpers::{TestApp, config, drained, slash, spawn_with};

/// The default pacing the figures are about.
const PACING: Duration = Duration::from_secs(1);

/// The test config with Slack's own pacing (1 s per channel) and the default retry budget.
fn paced(slack: &FakeSlack) -> AlerterConfig {
    let mut cfg = config(Some(slack.base_url()));
    cfg.slack.pacing = PACING;
    cfg.slack.max_attempts = 12;
    cfg
}

fn outcome(id: &str, target: &str, status: PatchStatus, attempt: u32) -> NotifyRequest {
    NotifyRequest {
        patch_id: id.to_owned(),
        target: target.to_owned(),
        attempt,
        status: status as i32,
        description: format!("patch {id}"),
        excerpt: String::new(),
        trace_id: String::new(),
        error: if status == PatchStatus::Succeeded {
            String::new()
        } else {
            format!("attempt {attempt} failed")
        },
        duration_ms: 1_000 + u64::from(attempt) * 10,
        ..NotifyRequest::default()
    }
}

fn success(id: &str, target: &str) -> NotifyRequest {
    outcome(id, target, PatchStatus::Succeeded, 1)
}

fn failure(id: &str, target: &str) -> NotifyRequest {
    outcome(id, target, PatchStatus::RolledBack, 1)
}

async fn send(app: &mut TestApp, request: NotifyRequest) -> SystemTime {
    let accepted = app
        .client
        .notify(request)
        .await
        .expect("notify")
        .into_inner()
        .accepted;
    assert!(accepted);
    SystemTime::now()
}

fn header(body: &Value) -> &str {
    body["blocks"]
        .as_array()
        .and_then(|blocks| {
            blocks
                .iter()
                .find(|block| block["type"] == "header")
                .and_then(|block| block["text"]["text"].as_str())
        })
        .unwrap_or_default()
}

fn is_digest(body: &Value) -> bool {
    header(body).starts_with("🗂️ Digest")
}

/// The patch ids listed in a digest body (`• ✅ `id` on …`).
fn digest_lines(body: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for block in body["blocks"].as_array().into_iter().flatten() {
        let text = block["text"]["text"].as_str().unwrap_or_default();
        for line in text.lines().filter(|line| line.starts_with("• ")) {
            if let Some(id) = line.split('`').nth(1) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// How often each patch id appears across the digests standing in `channel` (an id).
fn digest_counts(messages: &[FakeMessage], channel: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for message in messages
        .iter()
        .filter(|m| m.channel == channel && is_digest(&m.body))
    {
        for id in digest_lines(&message.body) {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// Delivered top-level posts whose header is the patch message of `id`.
fn parents<'a>(requests: &'a [SlackRequest], id: &str) -> Vec<&'a SlackRequest> {
    let prefix_ok = format!("✅ {id} ");
    let prefix_bad = format!("❌ {id} ");
    requests
        .iter()
        .filter(|r| {
            r.method == "chat.postMessage"
                && r.succeeded()
                && r.body.get("thread_ts").is_none()
                && (header(&r.body).starts_with(&prefix_ok)
                    || header(&r.body).starts_with(&prefix_bad))
        })
        .collect()
}

fn route(target: &[&str], status: &[&str]) -> Route {
    Route {
        target: target.iter().map(|s| (*s).to_owned()).collect(),
        status: status.iter().map(|s| (*s).to_owned()).collect(),
        ..Route::default()
    }
}

// Runs for 2 minutes of real time (the "first 2 minutes"); see .config/nextest.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_successes_and_5_failures_puts_failures_first_and_successes_in_digests() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_with(paced(&slack), Arc::new(SystemClock)).await;
    let start = Instant::now();
    let mut failed_at = Vec::new();
    let mut successes = Vec::new();
    // 205 outcomes over about 10 s; a failure after every 40 successes.
    for n in 0..205usize {
        if n % 41 == 40 {
            let id = format!("bad-{n}");
            let at = send(&mut app, failure(&id, "MAIN")).await;
            failed_at.push((id, at));
        } else {
            let id = format!("ok-{n}");
            send(&mut app, success(&id, "MAIN")).await;
            successes.push(id);
        }
        tokio::time::sleep(Duration::from_millis(38)).await;
    }
    let submitted = start.elapsed();
    assert!(submitted < Duration::from_secs(15), "took {submitted:?}");
    assert_eq!(failed_at.len(), 5);
    tokio::time::sleep(Duration::from_secs(120).saturating_sub(start.elapsed())).await;
    let requests = slack.requests().await;
    let messages = slack.messages();

    let mut latencies = Vec::new();
    for (id, at) in &failed_at {
        let found = parents(&requests, id);
        assert_eq!(found.len(), 1, "{id}: one parent message");
        let latency = found[0].received_at.duration_since(*at).unwrap_or_default();
        latencies.push(latency);
        assert!(
            latency <= Duration::from_secs(5),
            "{id}: parent after {latency:?}"
        );
    }
    let channel = slack.channel_id_of("#ghost-test").unwrap();
    let counts = digest_counts(&messages, &channel);
    for id in &successes {
        assert_eq!(counts.get(id), Some(&1), "{id} in exactly one digest line");
        assert!(parents(&requests, id).is_empty(), "{id} has no own message");
    }
    assert_eq!(counts.len(), successes.len(), "digests hold only successes");
    let calls = requests
        .iter()
        .filter(|r| r.method.starts_with("chat."))
        .count();
    eprintln!(
        "205 outcomes in {submitted:?}: {calls} Slack calls in 2 minutes; failure latencies {latencies:?}"
    );
    assert!(calls < 30, "{calls} Slack calls in the first 2 minutes");
    assert_eq!(app.store.outbox_counts().await.unwrap().dead, 0);
}

async fn routes_send_targets_to_their_channels_with_their_mention() {
    let slack = FakeSlack::start().await;
    let mut cfg = paced(&slack);
    let mut web = route(&["WEB-*"], &[]);
    web.channel = Some("#web".to_owned());
    web.mention = Some("subteam:S0WEB".to_owned());
    cfg.routing.routes = vec![web];
    cfg.routing.summary_url = Some("https://ghost.example/patches/{id}".to_owned());
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    send(&mut app, failure("web-bad", "WEB-1")).await;
    send(&mut app, failure("main-bad", "MAIN")).await;
    send(&mut app, success("web-ok", "WEB-2")).await;
    send(&mut app, success("main-ok", "MAIN")).await;
    drained(&app, Duration::from_secs(20)).await;
    let requests = slack.requests().await;
    let web_parent = parents(&requests, "web-bad");
    assert_eq!(web_parent.len(), 1);
    assert_eq!(web_parent[0].body["channel"], "#web");
    assert!(
        web_parent[0].text().starts_with("<!subteam^S0WEB> "),
        "{}",
        web_parent[0].text()
    );
    let main_parent = parents(&requests, "main-bad");
    assert_eq!(main_parent.len(), 1);
    assert_eq!(main_parent[0].body["channel"], "#ghost-test");
    assert!(!main_parent[0].text().contains("<!"), "no mention on MAIN");
    let messages = slack.messages();
    let web = slack.channel_id_of("#web").unwrap();
    let main = slack.channel_id_of("#ghost-test").unwrap();
    assert_eq!(
        digest_counts(&messages, &web)
            .into_iter()
            .collect::<Vec<_>>(),
        [("web-ok".to_owned(), 1)]
    );
    assert_eq!(
        digest_counts(&messages, &main)
            .into_iter()
            .collect::<Vec<_>>(),
        [("main-ok".to_owned(), 1)]
    );
    let digest = messages
        .iter()
        .find(|m| m.channel == web && is_digest(&m.body))
        .unwrap();
    assert!(
        digest
            .body
            .to_string()
            .contains("https://ghost.example/patches/web-ok"),
        "{}",
        digest.body
    );

    let answer = slash(&app, "/ghost", "routes", crate::helpers::BYSTANDER).await;
    assert!(answer.contains("target=WEB-* → #web"), "{answer}");
    assert!(answer.contains("system alerts → #ghost-test"), "{answer}");
}

async fn order_within_each_thread_is_kept_while_failures_jump_the_queue() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_with(paced(&slack), Arc::new(SystemClock)).await;
    for attempt in 1..=3 {
        for id in ["alpha", "beta"] {
            send(
                &mut app,
                outcome(id, "MAIN", PatchStatus::RolledBack, attempt),
            )
            .await;
        }
        for n in 0..10 {
            send(&mut app, success(&format!("ok-{attempt}-{n}"), "MAIN")).await;
        }
    }
    drained(&app, Duration::from_secs(40)).await;
    let requests = slack.requests().await;
    for id in ["alpha", "beta"] {
        let parent = parents(&requests, id);
        assert_eq!(parent.len(), 1, "{id}");
        // The thread's messages in arrival order: the post, then per attempt an update and a
        // reply, attempts rising.
        let thread: Vec<(String, String)> = requests
            .iter()
            .filter(|r| header(&r.body).starts_with(&format!("❌ {id} ")))
            .map(|r| {
                let kind = if r.method == "chat.update" {
                    "update"
                } else if r.body.get("thread_ts").is_some() {
                    "reply"
                } else {
                    "post"
                };
                let attempt = r.body["blocks"][1]["fields"][1]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("*Attempt*\n")
                    .to_owned();
                (kind.to_owned(), attempt)
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("post", "1"),
            ("update", "2"),
            ("reply", "2"),
            ("update", "3"),
            ("reply", "3"),
        ]
        .iter()
        .map(|(k, a)| ((*k).to_owned(), (*a).to_owned()))
        .collect();
        assert_eq!(thread, expected, "{id}");
    }
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let counts = digest_counts(&slack.messages(), &main);
    assert_eq!(counts.len(), 30);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

async fn a_429_storm_in_the_middle_loses_and_duplicates_nothing() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_with(paced(&slack), Arc::new(SystemClock)).await;
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    for n in 0..60 {
        if n == 20 {
            // The storm: the next eight calls are refused with Retry-After.
            slack.push_responses(std::iter::repeat_n(
                FakeResponse::RateLimited { retry_after_s: 1 },
                8,
            ));
        }
        if n % 15 == 7 {
            let id = format!("bad-{n}");
            send(&mut app, failure(&id, "MAIN")).await;
            failures.push(id);
        } else {
            let id = format!("ok-{n}");
            send(&mut app, success(&id, "MAIN")).await;
            successes.push(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drained(&app, Duration::from_secs(60)).await;
    assert_eq!(slack.script_left(), 0, "the storm happened");
    let requests = slack.requests().await;
    let limited = requests.iter().filter(|r| r.answer == "http 429").count();
    assert_eq!(limited, 8);
    for id in &failures {
        assert_eq!(parents(&requests, id).len(), 1, "{id}");
    }
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let counts = digest_counts(&slack.messages(), &main);
    for id in &successes {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    assert_eq!(counts.len(), successes.len());
    assert_eq!(app.store.outbox_counts().await.unwrap().dead, 0);
}

async fn a_backlog_switches_success_threads_to_the_digest_and_back() {
    let slack = FakeSlack::start().await;
    let mut cfg = paced(&slack);
    let mut own = route(&[], &["succeeded"]);
    own.thread = Some(ThreadMode::Own);
    cfg.routing.routes = vec![own];
    cfg.routing.backlog_threshold = 4;
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let ids: Vec<String> = (0..12).map(|n| format!("ok-{n}")).collect();
    for id in &ids {
        send(&mut app, success(id, "MAIN")).await;
    }
    drained(&app, Duration::from_secs(30)).await;
    // The switch back is noticed as the backlog drains, without waiting for another patch.
    let requests = slack
        .wait_until(Duration::from_secs(5), |requests| {
            requests.iter().any(|r| r.text().starts_with("↩️"))
        })
        .await;
    let notices: Vec<&str> = requests
        .iter()
        .map(SlackRequest::text)
        .filter(|t| t.starts_with("⏩") || t.starts_with("↩️"))
        .collect();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].starts_with("⏩"), "{notices:?}");
    assert!(notices[1].starts_with("↩️"), "{notices:?}");
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let counts = digest_counts(&slack.messages(), &main);
    let mut own_threads = 0;
    for id in &ids {
        let own = parents(&requests, id).len();
        let digested = counts.get(id).copied().unwrap_or(0);
        assert_eq!(own + digested, 1, "{id}: own {own}, digest {digested}");
        own_threads += own;
    }
    assert!((1..12).contains(&own_threads), "{own_threads} own threads");

    // Switched back: the next success gets its own thread again, and no further notice.
    send(&mut app, success("after", "MAIN")).await;
    drained(&app, Duration::from_secs(10)).await;
    let requests = slack.requests().await;
    assert_eq!(parents(&requests, "after").len(), 1);
    let notices = requests
        .iter()
        .filter(|r| r.text().starts_with("⏩") || r.text().starts_with("↩️"))
        .count();
    assert_eq!(notices, 2);
}

async fn a_patch_with_notify_or_a_mapped_key_gets_a_direct_message() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.routing
        .notify_users
        .insert("ci-bot".to_owned(), "U0MAPPED".to_owned());
    cfg.routing.notify_allowed = vec!["U0ALICE".to_owned()];
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let mut direct = failure("dm-1", "MAIN");
    direct.notify = "U0ALICE".to_owned();
    send(&mut app, direct).await;
    let mut mapped = success("dm-2", "MAIN");
    mapped.key_name = "ci-bot".to_owned();
    send(&mut app, mapped).await;
    let mut bad = success("dm-3", "MAIN");
    bad.notify = "<!channel>".to_owned();
    let status = app.client.notify(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("notify"), "{}", status.message());
    drained(&app, Duration::from_secs(10)).await;
    let requests = slack.requests().await;
    let dm = |user: &str| {
        requests
            .iter()
            .filter(|r| r.method == "chat.postMessage" && r.body["channel"] == user)
            .map(|r| r.text().to_owned())
            .collect::<Vec<_>>()
    };
    let alice = dm("U0ALICE");
    assert_eq!(alice.len(), 1);
    assert!(alice[0].contains("dm-1"), "{alice:?}");
    let mapped = dm("U0MAPPED");
    assert_eq!(mapped.len(), 1);
    assert!(mapped[0].contains("dm-2"), "{mapped:?}");
}

#[tokio::test]
async fn bad_routes_fail_at_start_naming_the_key() {
    let mut cfg = config(None);
    let mut bad = route(&["MAIN"], &[]);
    bad.routes = vec![route(&[], &["exploded"])];
    cfg.routing.routes = vec![route(&["WEB"], &[]), bad];
    let Err(err) = App::build(cfg).await else {
        panic!("a bad route was accepted");
    };
    let err = format!("{err:#}");
    assert!(err.contains("routing.routes[1].routes[0].status"), "{err}");
    assert!(err.contains("exploded"), "{err}");
}

/// Review M5: a `labels` matcher could never match (nothing carries labels): refused at start.
#[tokio::test]
async fn label_matchers_are_refused_at_start() {
    let mut cfg = config(None);
    let mut labelled = route(&["MAIN"], &[]);
    labelled.labels = [("team".to_owned(), "web".to_owned())].into();
    cfg.routing.routes = vec![labelled];
    let Err(err) = App::build(cfg).await else {
        panic!("a route matching on labels was accepted");
    };
    let err = format!("{err:#}");
    assert!(err.contains("routing.routes[0].labels"), "{err}");
    assert!(err.contains("labels are not carried yet"), "{err}");
}

async fn digests_survive_a_restart_without_loss_or_doubles() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    // First life: Slack unreachable, so everything stays pending.
    let mut cfg = config(Some("http://127.0.0.1:9/api".to_owned()));
    cfg.data_dir = Some(dir.clone());
    cfg.slack.max_attempts = 50;
    cfg.slack.initial_backoff = Duration::from_millis(200);
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    for n in 0..15 {
        send(&mut app, success(&format!("ok-{n}"), "MAIN")).await;
    }
    app.stop().await;

    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.data_dir = Some(dir);
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    // Notify is repeated after the restart (a sender's outbox may do that): deduplicated.
    for n in 0..15 {
        let accepted = app
            .client
            .notify(success(&format!("ok-{n}"), "MAIN"))
            .await
            .unwrap()
            .into_inner()
            .accepted;
        assert!(!accepted);
    }
    drained(&app, Duration::from_secs(20)).await;
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let counts = digest_counts(&slack.messages(), &main);
    assert_eq!(counts.len(), 15);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

/// Figures for the issue: Slack calls per N patches with and without digests, and
/// failure-notification latency p50/p99 under a burst of N/2. By default N = 100 (a few seconds
/// of real time); the figures use N = 1,000 (minutes):
/// `GHOST_SLACK_FIGURES_PATCHES=1000 cargo nextest run -p alerter figures_ --no-capture`.
/// The figures are printed; what is asserted is that digests save calls, that without them every
/// patch is its own post, and that every failure got its own parent message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_slack_calls_with_and_without_digests_and_failure_latency() {
    let patches: usize = std::env::var("GHOST_SLACK_FIGURES_PATCHES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100)
        .max(50);
    let mut calls_by_mode = Vec::new();
    for digests in [true, false] {
        let slack = FakeSlack::start().await;
        let mut cfg = paced(&slack);
        // Calls are counted without pacing (without digests, 1,000 posts at 1 s would take
        // 17 minutes; their number does not depend on it).
        cfg.slack.pacing = if digests { PACING } else { Duration::ZERO };
        if !digests {
            let mut own = route(&[], &[]);
            own.thread = Some(ThreadMode::Own);
            cfg.routing.routes = vec![own];
            cfg.routing.backlog_threshold = 0;
        }
        let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
        for n in 0..patches {
            let id = format!("p-{n}");
            let request = if n % 50 == 49 {
                failure(&id, "MAIN")
            } else {
                success(&id, "MAIN")
            };
            send(&mut app, request).await;
        }
        drained(&app, Duration::from_secs(600)).await;
        let calls = slack
            .requests()
            .await
            .iter()
            .filter(|r| r.method.starts_with("chat."))
            .count();
        eprintln!("{patches} patches (2% failed), digests {digests}: {calls} Slack calls");
        calls_by_mode.push(calls);
    }
    let (with_digests, without) = (calls_by_mode[0], calls_by_mode[1]);
    assert!(
        without >= patches,
        "without digests every patch is a post: {without}"
    );
    assert!(
        with_digests < without / 2,
        "digests save calls: {with_digests} with, {without} without"
    );

    let slack = FakeSlack::start().await;
    let mut app = spawn_with(paced(&slack), Arc::new(SystemClock)).await;
    let mut failed_at = Vec::new();
    for n in 0..patches / 2 {
        let id = format!("p-{n}");
        if n % 25 == 24 {
            let at = send(&mut app, failure(&id, "MAIN")).await;
            failed_at.push((id, at));
        } else {
            send(&mut app, success(&id, "MAIN")).await;
        }
    }
    drained(&app, Duration::from_secs(600)).await;
    let requests = slack.requests().await;
    let mut latencies: Vec<Duration> = failed_at
        .iter()
        .map(|(id, at)| {
            parents(&requests, id)[0]
                .received_at
                .duration_since(*at)
                .unwrap_or_default()
        })
        .collect();
    latencies.sort();
    let pick = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index]
    };
    assert_eq!(latencies.len(), patches / 2 / 25, "one parent per failure");
    eprintln!(
        "{}-patch burst, {} failures, 1 s pacing: failure-notification latency p50 {:?}, p99 {:?}",
        patches / 2,
        latencies.len(),
        pick(0.5),
        pick(0.99)
    );
}

/// Review M1: a digest edit Slack answers `message_not_found` (the digest was deleted) is not
/// dead-lettered: the full digest is posted again as a new message, and later edits go there.
async fn a_digest_edit_of_a_deleted_digest_posts_the_digest_again() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_with(config(Some(slack.base_url())), Arc::new(SystemClock)).await;
    send(&mut app, success("gone-0", "MAIN")).await;
    drained(&app, Duration::from_secs(10)).await;
    slack.push_response(FakeResponse::SlackError("message_not_found".to_owned()));
    send(&mut app, success("gone-1", "MAIN")).await;
    drained(&app, Duration::from_secs(10)).await;
    send(&mut app, success("gone-2", "MAIN")).await;
    drained(&app, Duration::from_secs(10)).await;
    assert_eq!(app.store.outbox_counts().await.unwrap().dead, 0);
    let requests = slack.requests().await;
    let failed: Vec<_> = requests
        .iter()
        .filter(|r| r.answer == "message_not_found")
        .collect();
    assert_eq!(failed.len(), 1, "{requests:?}");
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let digests: Vec<_> = slack
        .messages()
        .into_iter()
        .filter(|m| m.channel == main && is_digest(&m.body))
        .collect();
    assert_eq!(digests.len(), 2, "the old digest and its re-post");
    assert_eq!(
        digest_lines(&digests[1].body),
        ["gone-0", "gone-1", "gone-2"],
        "the re-posted digest holds every entry and takes later edits"
    );
}

/// Review M2: with 128-character ids and a long summary link, digest sections are filled by
/// characters (none over Slack's 3,000), no link is cut, a new digest message starts before
/// Slack's 50 blocks, and every patch appears exactly once.
async fn long_digest_lines_fill_sections_by_characters_and_lose_nothing() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    // About 2,500 characters a line: one line per section, so 48 lines fill 50 blocks.
    cfg.routing.summary_url = Some(format!(
        "https://ghost.example.com/{}summary",
        "{id}/".repeat(18)
    ));
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        let id = format!("{n:03}-{}", "x".repeat(124));
        assert_eq!(id.len(), 128);
        send(&mut app, success(&id, "MAIN")).await;
        ids.push(id);
    }
    drained(&app, Duration::from_secs(20)).await;
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let messages = slack.messages();
    let digests: Vec<_> = messages
        .iter()
        .filter(|m| m.channel == main && is_digest(&m.body))
        .collect();
    assert!(digests.len() >= 2, "a new digest message before 50 blocks");
    for digest in &digests {
        let blocks = digest.body["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{} blocks", blocks.len());
        for block in blocks {
            let text = block["text"]["text"].as_str().unwrap_or_default();
            assert!(text.chars().count() <= 3_000, "section of {}", text.len());
            for line in text.lines().filter(|line| line.starts_with("• ")) {
                let opened = line.matches('<').count();
                assert_eq!(
                    opened,
                    line.matches("|summary>").count(),
                    "cut link: {line}"
                );
                assert_eq!(opened, 1, "the link is kept: {line}");
            }
        }
    }
    let counts = digest_counts(&messages, &main);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} exactly once");
    }
    assert_eq!(counts.len(), ids.len());
}

async fn metrics_text(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Review M3: a patch's `notify` outside `notify_allowed` and the `notify_users` values is
/// never DMed (counted and logged), and DMs per user and digest period are capped, the rest
/// coalesced into one line.
async fn notify_is_limited_to_allowed_users_and_capped_per_period() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.routing.notify_allowed = vec!["U0ALICE".to_owned()];
    cfg.routing
        .notify_users
        .insert("ci-bot".to_owned(), "U0MAPPED".to_owned());
    cfg.routing.notify_max_per_period = 2;
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let mut stranger = failure("cap-x", "MAIN");
    stranger.notify = "U0MALLORY".to_owned();
    send(&mut app, stranger).await;
    let mut mapped_by_hand = success("cap-y", "MAIN");
    mapped_by_hand.notify = "U0MAPPED".to_owned();
    send(&mut app, mapped_by_hand).await;
    for n in 0..5 {
        let mut request = success(&format!("cap-{n}"), "MAIN");
        request.notify = "U0ALICE".to_owned();
        send(&mut app, request).await;
    }
    drained(&app, Duration::from_secs(10)).await;
    let requests = slack.requests().await;
    let dm = |user: &str| {
        requests
            .iter()
            .filter(|r| r.method == "chat.postMessage" && r.body["channel"] == user)
            .map(|r| r.text().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        dm("U0MALLORY").is_empty(),
        "a user outside the allowlist got a DM"
    );
    assert_eq!(dm("U0MAPPED").len(), 1, "notify_users values are allowed");
    let alice = dm("U0ALICE");
    assert_eq!(alice.len(), 3, "two DMs and one coalescing line: {alice:?}");
    // Each DM is its own thread, so their order is not fixed.
    let has = |text: &str| alice.iter().filter(|dm| dm.contains(text)).count();
    assert_eq!(
        (has("cap-0"), has("cap-1"), has("more")),
        (1, 1, 1),
        "{alice:?}"
    );
    assert_eq!(has("cap-2") + has("cap-3") + has("cap-4"), 0, "{alice:?}");
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("ghost_alerter_notify_dropped_total{reason=\"not_allowed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ghost_alerter_notify_dropped_total{reason=\"capped\"} 3"),
        "{metrics}"
    );
}

/// Review M4: pending DMs are counted under `channel="dm"`, never one series per user id.
async fn pending_dms_share_one_backlog_series() {
    let mut cfg = config(Some("http://127.0.0.1:9/api".to_owned()));
    cfg.slack.max_attempts = 50;
    cfg.slack.initial_backoff = Duration::from_secs(5);
    cfg.routing.notify_allowed = vec!["U0ALICE".to_owned(), "U0BOB".to_owned()];
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    for (n, user) in ["U0ALICE", "U0BOB", "U0ALICE"].into_iter().enumerate() {
        let mut request = failure(&format!("bl-{n}"), "MAIN");
        request.notify = user.to_owned();
        send(&mut app, request).await;
    }
    let metrics = wait_for("the dm backlog series at 3", async || {
        let metrics = metrics_text(&app).await;
        if metrics.contains("ghost_alerter_channel_backlog{channel=\"dm\"} 3") {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    })
    .await;
    assert!(
        !metrics.contains("ghost_alerter_channel_backlog{channel=\"U"),
        "{metrics}"
    );
}

/// Review M3: a DM is sent with thread priority, after failures waiting in the channels, not
/// among them.
async fn direct_messages_wait_behind_failures() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    // First life: Slack unreachable, so everything stays pending.
    let mut cfg = config(Some("http://127.0.0.1:9/api".to_owned()));
    cfg.data_dir = Some(dir.clone());
    cfg.slack.max_attempts = 50;
    cfg.slack.initial_backoff = Duration::from_secs(5);
    cfg.routing.notify_allowed = vec!["U0ALICE".to_owned()];
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let mut first = failure("prio-a", "MAIN");
    first.notify = "U0ALICE".to_owned();
    send(&mut app, first).await;
    send(&mut app, failure("prio-b", "MAIN")).await;
    app.stop().await;

    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.data_dir = Some(dir);
    cfg.slack.concurrency = 1;
    cfg.routing.notify_allowed = vec!["U0ALICE".to_owned()];
    // An hour later, so every retry the first life scheduled is due at once.
    let later = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let app = spawn_with(cfg, ghost_runtime::clock::TokioClock::shared(later)).await;
    drained(&app, Duration::from_secs(20)).await;
    let order: Vec<String> = slack
        .requests()
        .await
        .iter()
        .filter(|r| r.method == "chat.postMessage" && r.body.get("thread_ts").is_none())
        .map(|r| {
            if r.body["channel"] == "U0ALICE" {
                "dm".to_owned()
            } else {
                header(&r.body)
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned()
            }
        })
        .collect();
    assert_eq!(order, ["prio-a", "prio-b", "dm"]);
}

/// Review L4: a patch whose later attempt lands in the same digest is one line, its latest
/// outcome, and counted once in the digest's totals.
async fn a_later_attempt_in_the_same_digest_replaces_its_line() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    let mut main = route(&["MAIN"], &[]);
    main.thread = Some(ThreadMode::Digest);
    cfg.routing.routes = vec![main];
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    send(&mut app, success("other", "MAIN")).await;
    send(&mut app, outcome("twice", "MAIN", PatchStatus::Failed, 1)).await;
    send(
        &mut app,
        outcome("twice", "MAIN", PatchStatus::Succeeded, 2),
    )
    .await;
    drained(&app, Duration::from_secs(10)).await;
    let main = slack.channel_id_of("#ghost-test").unwrap();
    let digests: Vec<_> = slack
        .messages()
        .into_iter()
        .filter(|m| m.channel == main && is_digest(&m.body))
        .collect();
    assert_eq!(digests.len(), 1);
    let body = &digests[0].body;
    assert_eq!(digest_lines(body), ["other", "twice"]);
    assert!(header(body).contains(": 2 patches"), "{}", header(body));
    let text = body.to_string();
    assert!(
        text.contains("2 succeeded") && !text.contains("failed"),
        "{text}"
    );
}

/// Review L2: a later attempt updates and replies in every copy of the patch's thread that a
/// `continue` route made, not only the first.
async fn later_attempts_follow_the_copies_made_by_continue_routes() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    let mut main = route(&["MAIN"], &[]);
    main.channel = Some("#main".to_owned());
    main.continue_matching = true;
    let mut audit = route(&[], &[]);
    audit.channel = Some("#audit".to_owned());
    audit.thread = Some(ThreadMode::Own);
    cfg.routing.routes = vec![main, audit];
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    send(&mut app, outcome("copied", "MAIN", PatchStatus::Failed, 1)).await;
    drained(&app, Duration::from_secs(10)).await;
    send(
        &mut app,
        outcome("copied", "MAIN", PatchStatus::Succeeded, 2),
    )
    .await;
    drained(&app, Duration::from_secs(10)).await;
    let messages = slack.messages();
    for name in ["#main", "#audit"] {
        let channel = slack.channel_id_of(name).unwrap();
        let parent = messages
            .iter()
            .find(|m| m.channel == channel && m.thread_ts.is_none())
            .unwrap_or_else(|| panic!("no parent in {name}"));
        assert_eq!(parent.updates, 1, "{name}: the parent shows attempt 2");
        assert!(header(&parent.body).starts_with("✅ copied"), "{name}");
        let replies = messages
            .iter()
            .filter(|m| m.thread_ts.as_deref() == Some(parent.ts.as_str()))
            .count();
        assert_eq!(replies, 1, "{name}: attempt 2's reply");
    }
}

/// Review L3: the backlog switch survives a restart: no second "switched" notice, and
/// successes keep going to the digest while the backlog stays high.
async fn the_backlog_switch_survives_a_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    let life = || {
        // Slack unreachable: everything stays pending, so the backlog only grows.
        let mut cfg = config(Some("http://127.0.0.1:9/api".to_owned()));
        cfg.data_dir = Some(dir.clone());
        cfg.slack.max_attempts = 50;
        cfg.slack.initial_backoff = Duration::from_secs(5);
        let mut own = route(&[], &["succeeded"]);
        own.thread = Some(ThreadMode::Own);
        cfg.routing.routes = vec![own];
        cfg.routing.backlog_threshold = 4;
        cfg
    };
    let switched = |messages: &[alerter::store::NewMessage]| {
        messages
            .iter()
            .filter(|m| {
                m.body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("⏩")
            })
            .count()
    };
    let mut app = spawn_with(life(), Arc::new(SystemClock)).await;
    for n in 0..6 {
        send(&mut app, success(&format!("sw-{n}"), "MAIN")).await;
    }
    assert_eq!(switched(&app.store.all_messages().await.unwrap()), 1);
    app.stop().await;

    let mut app = spawn_with(life(), Arc::new(SystemClock)).await;
    send(&mut app, success("sw-after", "MAIN")).await;
    let messages = app.store.all_messages().await.unwrap();
    assert_eq!(switched(&messages), 1, "no second notice after the restart");
    assert!(
        !messages.iter().any(|m| m.thread == "patch/sw-after"),
        "still switched: the success goes to the digest"
    );
}

on_both_stores!(
    routes_send_targets_to_their_channels_with_their_mention,
    order_within_each_thread_is_kept_while_failures_jump_the_queue,
    a_429_storm_in_the_middle_loses_and_duplicates_nothing,
    a_backlog_switches_success_threads_to_the_digest_and_back,
    a_patch_with_notify_or_a_mapped_key_gets_a_direct_message,
    digests_survive_a_restart_without_loss_or_doubles,
    a_digest_edit_of_a_deleted_digest_posts_the_digest_again,
    long_digest_lines_fill_sections_by_characters_and_lose_nothing,
    notify_is_limited_to_allowed_users_and_capped_per_period,
    pending_dms_share_one_backlog_series,
    direct_messages_wait_behind_failures,
    a_later_attempt_in_the_same_digest_replaces_its_line,
    later_attempts_follow_the_copies_made_by_continue_routes,
    the_backlog_switch_survives_a_restart,
);
