//! Push subscriptions: Standard Webhooks verified by the real `standardwebhooks` Python package,
//! a 30 s receiver outage with a summarizer restart in it, dead letters, and the SSRF guard at
//! config load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::config::Secret;
use ghost_testkit::{POLL_INTERVAL, TEST_TIMEOUT, WebhookReceiver, try_wait_until, wait_for};
use summarizer::SummarizerConfig;
use summarizer::webhooks::subscription::Subscription;
use summarizer::webhooks::webhook_id;

use crate::helpers::{
    TestApp, closed_port, created, record, reserve_port, spawn_with, test_config,
};

/// `whsec_` and the base64 of 32 bytes.
pub(crate) const SECRET: &str = "whsec_C2FtcGxlLXNlY3JldC1mb3ItZ2hvc3QtcnVubmVyISE=";

pub(crate) fn subscription(url: &str, events: &[&str], targets: &[&str]) -> Subscription {
    Subscription {
        name: None,
        previous_secret: None,
        url: url.to_owned(),
        secret: Secret::new(SECRET),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        allow_private: true,
    }
}

/// Fast retries, a long give-up, a summary link.
pub(crate) fn config(dir: &Path, subscriptions: Vec<Subscription>) -> SummarizerConfig {
    SummarizerConfig {
        subscriptions,
        summary_url_template: Some("https://ghost.test/v1/patches/{patch_id}".to_owned()),
        webhook_initial_backoff: Duration::from_millis(50),
        webhook_max_backoff: Duration::from_secs(1),
        webhook_give_up_after: Duration::from_secs(600),
        webhook_timeout: Duration::from_secs(5),
        ..test_config(dir, None)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// [`WebhookReceiver`] (the real `standardwebhooks` package) with its records in a temp dir
/// that lives as long as it.
pub(crate) struct Receiver {
    hooks: WebhookReceiver,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Listening on `port`, answering 503 until the unix time `fail_until`, then `status`.
    pub(crate) async fn start(port: u16, fail_until: f64, status: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let hooks = WebhookReceiver::start(port, SECRET, &out, fail_until, status).await;
        Self { hooks, _dir: dir }
    }
}

impl std::ops::Deref for Receiver {
    type Target = WebhookReceiver;

    fn deref(&self) -> &WebhookReceiver {
        &self.hooks
    }
}

/// Runs Prometheus' own `promtool check metrics` on `text` (names, help, types, units).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `/metrics` of `app`.
async fn metrics(app: &TestApp) -> String {
    reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `series` (name and labels as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// `Ok` when no webhook message is pending, else the pending ones.
fn no_webhook_pending(
    index: &summarizer::index::Index,
) -> Result<(), Vec<summarizer::index::WebhookRow>> {
    let pending = index.webhooks_pending().unwrap();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(pending)
    }
}

/// Waits (bounded) until `/metrics` shows `series` at `value`; returns the last text.
async fn wait_for_metric(app: &TestApp, series: &str, value: f64) -> String {
    let what = format!("/metrics to show {series} at {value}");
    let shown = try_wait_until(&what, TEST_TIMEOUT, POLL_INTERVAL, async || {
        let text = metrics(app).await;
        if sample(&text, series) == Some(value) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    shown.unwrap_or_else(|timed_out| timed_out.last.unwrap_or_default())
}

#[tokio::test]
async fn matching_outcomes_arrive_signed_as_standard_webhooks_with_the_patch_and_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port().port();
    let receiver = Receiver::start(port, 0.0, 204).await;
    let url = format!("http://127.0.0.1:{port}/hooks/ghost");
    let mut app = spawn_with(config(
        dir.path(),
        vec![subscription(
            &url,
            &["patch.failed", "patch.succeeded"],
            &["MAIN"],
        )],
    ))
    .await;

    for (id, attempt, status) in [
        ("hook-1", 1, PatchStatus::Failed),
        ("hook-2", 1, PatchStatus::RolledBack), // an event nobody subscribed to
        ("hook-1", 2, PatchStatus::Succeeded),
    ] {
        app.client
            .record(record(id, attempt, status))
            .await
            .unwrap();
    }
    let mut elsewhere = record("hook-3", 1, PatchStatus::Failed); // a target nobody subscribed to
    elsewhere.outcome.as_mut().unwrap().target = "OTHER".into();
    app.client.record(elsewhere).await.unwrap();

    let received = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "{received:#?}");
    for message in &received {
        assert_eq!(
            message["verified"], true,
            "standardwebhooks refused it: {message:#?}"
        );
        assert_eq!(message["content_type"], "application/json");
    }
    let first = &received[0];
    assert_eq!(first["id"], webhook_id(&url, "hook-1", 1));
    assert_eq!(first["type"], "patch.failed");
    let data = &first["payload"]["data"];
    assert_eq!(data["id"], "hook-1");
    assert_eq!(data["target"], "MAIN");
    assert_eq!(data["status"], "failed");
    assert_eq!(data["attempt"], 1);
    assert_eq!(data["description"], "make login faster");
    assert_eq!(data["error"], "validation failed: tsc exited 2");
    assert_eq!(data["trace_id"], crate::helpers::TRACE_ID);
    assert_eq!(data["finished_at"], "2023-11-14T22:13:21Z");
    assert_eq!(first["timestamp"], "2023-11-14T22:13:21Z");
    assert_eq!(data["report"]["edits"][0]["path"], "src/login.ts");
    assert_eq!(data["report"]["commands"][0]["command"], "tsc --noEmit");
    assert_eq!(data["report"]["commands"][0]["exit_code"], 2);
    assert!(
        data["summary"]["markdown"]
            .as_str()
            .unwrap()
            .starts_with("# ❌ hook-1 failed"),
        "{data:#?}"
    );
    assert_eq!(
        data["summary"]["url"],
        "https://ghost.test/v1/patches/hook-1"
    );
    let second = &received[1];
    assert_eq!(second["id"], webhook_id(&url, "hook-1", 2));
    assert_eq!(second["type"], "patch.succeeded");
    assert_eq!(second["attempt"], 2);

    // Delivered messages leave the outbox; a replayed record queues nothing again.
    let index = app.summaries.index().clone();
    wait_for("no webhook pending", async || no_webhook_pending(&index)).await;
    assert!(!created(&mut app.client, record("hook-1", 1, PatchStatus::Failed)).await);
    assert_eq!(index.webhooks_pending().unwrap(), Vec::new());
    let text = wait_for_metric(
        &app,
        "ghost_webhook_deliveries_total{result=\"delivered\"}",
        2.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "ghost_webhook_deliveries_total{result=\"delivered\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("ghost_webhook_attempt_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ghost_webhook_outbox_depth"),
        Some(0.0),
        "{text}"
    );
    app.stop().await;
}

const PATCHES: usize = 20;
const OUTAGE: f64 = 30.0;

#[tokio::test]
async fn after_a_30s_outage_and_a_restart_every_event_arrives_once_in_order_per_patch() {
    let dir = tempfile::tempdir().unwrap();
    let addr = reserve_port();
    let url = format!("http://{addr}/hook");
    let outage_ends = unix_now() + OUTAGE;
    let settings = || config(dir.path(), vec![subscription(&url, &["*"], &[])]);
    let patch = |n: usize| format!("outage-{n:02}");
    let status_of = |attempt: u32| match attempt {
        1 => PatchStatus::RolledBack,
        2 => PatchStatus::Failed,
        _ => PatchStatus::Succeeded,
    };

    // The receiver's port is closed: attempts 1 and 2 of every patch wait in the outbox.
    let mut app = spawn_with(settings()).await;
    for attempt in 1..=2 {
        for n in 0..PATCHES {
            app.client
                .record(record(&patch(n), attempt, status_of(attempt)))
                .await
                .unwrap();
        }
    }
    let index = app.summaries.index().clone();
    let pending = wait_for("the first event of each patch tried", async || {
        let pending = index.webhooks_pending().unwrap();
        assert_eq!(pending.len(), 2 * PATCHES);
        // Only the first event of each patch is tried: the second waits behind it.
        if pending.iter().filter(|row| row.tries > 0).count() == PATCHES {
            Ok(pending)
        } else {
            Err(pending)
        }
    })
    .await;
    let tried: Vec<_> = pending.iter().filter(|row| row.tries > 0).collect();
    assert!(tried.iter().all(|row| row.attempt == 1), "{pending:#?}");

    // A restart during the outage loses nothing.
    app.stop().await;
    let mut app = spawn_with(settings()).await;
    assert_eq!(
        app.summaries.index().webhooks_pending().unwrap().len(),
        2 * PATCHES
    );
    for n in 0..PATCHES {
        app.client
            .record(record(&patch(n), 3, status_of(3)))
            .await
            .unwrap();
    }

    // The receiver is up but answers 503 until the outage has lasted 30 s, then accepts.
    let receiver = Receiver::start(addr.port(), outage_ends, 204).await;
    let total = 3 * PATCHES;
    let wait = Duration::from_secs_f64((outage_ends - unix_now()).max(0.0) + 60.0);
    let received = receiver.wait_for(total, wait).await;

    assert!(
        receiver.records().iter().any(|r| r["refused"] == true),
        "the receiver answered 503 during the outage"
    );
    assert!(
        received
            .iter()
            .all(|r| r["at"].as_f64().unwrap() >= outage_ends),
        "nothing was accepted before the outage ended"
    );
    assert!(
        received.iter().all(|r| r["verified"] == true),
        "{received:#?}"
    );
    let ids: Vec<&str> = received.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), total, "each event exactly once: {ids:?}");
    let expected: BTreeSet<String> = (0..PATCHES)
        .flat_map(|n| (1..=3).map(move |attempt| (n, attempt)))
        .map(|(n, attempt)| webhook_id(&url, &patch(n), attempt))
        .collect();
    assert_eq!(
        distinct,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let mut order: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for r in &received {
        order
            .entry(r["patch"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                r["attempt"].as_u64().unwrap(),
                r["type"].as_str().unwrap().to_owned(),
            ));
    }
    for (patch, events) in &order {
        assert_eq!(
            events,
            &vec![
                (1, "patch.rolled_back".to_owned()),
                (2, "patch.failed".to_owned()),
                (3, "patch.succeeded".to_owned()),
            ],
            "{patch}"
        );
    }
    // A figure, not an assertion: how long the backlog took to drain once the receiver accepted.
    let last = received
        .iter()
        .map(|r| r["at"].as_f64().unwrap())
        .fold(0.0, f64::max);
    eprintln!(
        "{total} events drained {:.0} ms after the outage ended",
        (last - outage_ends) * 1000.0
    );
    let text = wait_for_metric(&app, "ghost_webhook_outbox_depth", 0.0).await;
    assert_eq!(
        sample(&text, "ghost_webhook_outbox_depth"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "ghost_webhook_deliveries_total{result=\"retry\"}").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert_eq!(
        app.summaries.index().webhook_dead_letters().unwrap(),
        Vec::new()
    );
    app.stop().await;
}

#[tokio::test]
async fn messages_are_dead_lettered_after_give_up_or_410_and_counted_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = closed_port();
    let closed = format!("http://{}/hook", refusing.addr);
    let gone_port = reserve_port().port();
    let receiver = Receiver::start(gone_port, 0.0, 410).await;
    let gone = format!("http://127.0.0.1:{gone_port}/hook");
    let mut app = spawn_with(SummarizerConfig {
        webhook_give_up_after: Duration::from_secs(2),
        webhook_max_backoff: Duration::from_millis(300),
        ..config(
            dir.path(),
            vec![
                subscription(&closed, &["*"], &[]),
                subscription(&gone, &["*"], &[]),
            ],
        )
    })
    .await;
    app.client
        .record(record("dead", 1, PatchStatus::RolledBack))
        .await
        .unwrap();
    app.client
        .record(record("dead", 2, PatchStatus::Failed))
        .await
        .unwrap();

    let index = app.summaries.index().clone();
    let dead = wait_for("four dead letters", async || {
        let dead = index.webhook_dead_letters().unwrap();
        if dead.len() >= 4 { Ok(dead) } else { Err(dead) }
    })
    .await;
    assert_eq!(dead.len(), 4, "{dead:#?}");
    let of = |key: &str| -> Vec<_> { dead.iter().filter(|d| d.subscription == key).collect() };
    let given_up = of(&closed);
    assert_eq!(
        given_up.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        vec![1, 2],
        "in order: {given_up:#?}"
    );
    for letter in &given_up {
        assert!(letter.reason.starts_with("gave up after"), "{letter:#?}");
        assert!(letter.reason.contains("cannot connect"), "{letter:#?}");
        assert!(letter.tries >= 2, "{letter:#?}");
        assert_eq!(
            letter.webhook_id,
            webhook_id(&closed, "dead", letter.attempt)
        );
    }
    let refused = of(&gone);
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for letter in &refused {
        assert!(letter.reason.contains("410 Gone"), "{letter:#?}");
        assert_eq!(letter.tries, 1, "410 dead-letters at once: {letter:#?}");
    }
    // After 410 the subscription is disabled: the second message is not POSTed.
    assert_eq!(receiver.accepted().len(), 1);
    assert!(refused[1].reason.contains("disabled"), "{refused:#?}");
    assert!(receiver.accepted().iter().all(|r| r["verified"] == true));
    assert_eq!(index.webhooks_pending().unwrap(), Vec::new());

    let text = wait_for_metric(&app, "ghost_webhook_dead_letters", 4.0).await;
    assert_eq!(
        sample(&text, "ghost_webhook_dead_letters"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ghost_webhook_deliveries_total{result=\"dead_letter\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ghost_webhook_outbox_depth"),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("# HELP ghost_webhook_attempt_duration_seconds "),
        "{text}"
    );
    promtool_check(&text);
    app.stop().await;

    // Dead letters are kept across a restart.
    let app = spawn_with(config(dir.path(), vec![subscription(&closed, &["*"], &[])])).await;
    assert_eq!(
        app.summaries.index().webhook_dead_letters().unwrap().len(),
        4
    );
    let text = wait_for_metric(&app, "ghost_webhook_dead_letters", 4.0).await;
    assert_eq!(
        sample(&text, "ghost_webhook_dead_letters"),
        Some(4.0),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_loopback_url_without_allow_private_is_refused_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("summarizer.toml");
    let write = |allow_private: bool| {
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\n\n[[subscriptions]]\nurl = \"https://hooks.example.com/ok\"\n\
                 secret = \"{SECRET}\"\nevents = [\"*\"]\n\n[[subscriptions]]\n\
                 url = \"http://127.0.0.1:9/hook\"\nsecret = \"{SECRET}\"\n\
                 events = [\"patch.failed\"]\nallow_private = {allow_private}\n",
                dir.path().join("data")
            ),
        )
        .unwrap();
    };
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_summarizer"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .env_remove("GHOST_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    write(false);
    let output = run(&["--print-config"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("subscriptions[1] (http://127.0.0.1:9): 127.0.0.1 is a loopback address"),
        "{stderr}"
    );
    assert!(stderr.contains("unless allow_private = true"), "{stderr}");
    assert!(
        !stderr.contains(SECRET),
        "the secret is never shown: {stderr}"
    );

    write(true);
    let output = run(&["--print-config"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"http://127.0.0.1:9/…\""), "{stdout}");
    assert!(
        !stdout.contains(":9/hook"),
        "no path, it may carry a token: {stdout}"
    );
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(
        !stdout.contains(SECRET),
        "the secret is never shown: {stdout}"
    );

    // A config built in code is checked too.
    let mut refused = subscription("http://[::ffff:127.0.0.1]:9/hook", &["*"], &[]);
    refused.allow_private = false;
    let err = summarizer::App::build(config(dir.path(), vec![refused]))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("subscriptions[0]") && err.contains("loopback"),
        "{err}"
    );
}

/// A receiver that accepts connections and never answers; counts what it accepted.
struct Stalled {
    url: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stalled", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded: the test aborts the task at its end.
            for _ in 0..1000 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        Self {
            url,
            accepted,
            task,
        }
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_delay_delivery_to_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let stalled = Stalled::start().await;
    let port = reserve_port().port();
    let receiver = Receiver::start(port, 0.0, 204).await;
    let healthy = format!("http://127.0.0.1:{port}/hook");
    let mut app = spawn_with(SummarizerConfig {
        // Far longer than the test waits for the healthy receiver.
        webhook_timeout: Duration::from_secs(60),
        ..config(
            dir.path(),
            vec![
                subscription(&stalled.url, &["*"], &[]),
                subscription(&healthy, &["*"], &[]),
            ],
        )
    })
    .await;

    app.client
        .record(record("stall-0", 1, PatchStatus::Failed))
        .await
        .unwrap();
    assert_eq!(receiver.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    wait_for(
        "the stalled receiver to accept a connection",
        async || match stalled.accepted.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Err(0),
            _ => Ok(()),
        },
    )
    .await;

    // While the stalled receiver holds its first message, later events still reach the
    // healthy one.
    for n in 1..=3 {
        app.client
            .record(record(&format!("stall-{n}"), 1, PatchStatus::Failed))
            .await
            .unwrap();
    }
    let received = receiver.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 4, "{received:#?}");
    // The healthy receiver has its messages a moment before the summarizer records them as
    // delivered: wait (bounded) for that, then only the stalled subscription's rows remain.
    let only_stalled = |pending: &[summarizer::index::WebhookRow]| {
        pending
            .iter()
            .all(|row| row.subscription == stalled.url && row.tries == 0)
    };
    // Only the stalled subscription's messages wait, still on their first try.
    wait_for(
        "only the stalled subscription's messages pending",
        async || {
            let pending = app.summaries.index().webhooks_pending().unwrap();
            if only_stalled(&pending) {
                Ok(())
            } else {
                Err(pending)
            }
        },
    )
    .await;

    // Each subscription has its own depth and oldest-pending age, labelled without its URL.
    let stalled_label = summarizer::webhooks::subscription::hashed_label(&stalled.url);
    let age =
        format!("ghost_webhook_oldest_pending_age_seconds{{subscription=\"{stalled_label}\"}}");
    let depth = format!("ghost_webhook_subscription_depth{{subscription=\"{stalled_label}\"}}");
    let text = wait_for_metric(&app, &depth, 4.0).await;
    assert_eq!(sample(&text, &depth), Some(4.0), "{text}");
    assert!(sample(&text, &age).is_some(), "{text}");
    assert!(!text.contains("/stalled"), "no URL in the labels: {text}");
    promtool_check(&text);
    stalled.task.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_removed_subscription_keeps_its_backlog_and_gets_it_when_it_comes_back_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = closed_port();
    let closed = format!("http://{}/old-token", refusing.addr);
    let port = reserve_port().port();
    let receiver = Receiver::start(port, 0.0, 204).await;
    let named = |url: &str| Subscription {
        name: Some("ops".to_owned()),
        ..subscription(url, &["*"], &[])
    };

    // The receiver of "ops" is down: its message waits.
    let mut app = spawn_with(config(dir.path(), vec![named(&closed)])).await;
    app.client
        .record(record("kept", 1, PatchStatus::Failed))
        .await
        .unwrap();
    let index = app.summaries.index().clone();
    wait_for("a webhook tried", async || {
        let pending = index.webhooks_pending().unwrap();
        if pending.iter().all(|r| r.tries == 0) {
            Err(pending)
        } else {
            Ok(())
        }
    })
    .await;
    app.stop().await;

    // "ops" is removed: its message is kept, counted, not dead-lettered; others still flow.
    let other = format!("http://127.0.0.1:{port}/other");
    let mut app = spawn_with(config(dir.path(), vec![subscription(&other, &["*"], &[])])).await;
    app.client
        .record(record("flows", 1, PatchStatus::Failed))
        .await
        .unwrap();
    let received = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0]["patch"], "flows");
    let text = wait_for_metric(&app, "ghost_webhook_orphaned", 1.0).await;
    assert_eq!(sample(&text, "ghost_webhook_orphaned"), Some(1.0), "{text}");
    let index = app.summaries.index().clone();
    assert_eq!(index.webhook_dead_letters().unwrap(), Vec::new());
    let pending = index.webhooks_pending().unwrap();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0].subscription, "ops");
    app.stop().await;

    // "ops" comes back under a new URL (a rotated token): it gets its backlog, same id.
    let rotated = format!("http://127.0.0.1:{port}/new-token");
    let app = spawn_with(config(dir.path(), vec![named(&rotated)])).await;
    let received = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "{received:#?}");
    assert_eq!(received[1]["patch"], "kept");
    assert_eq!(received[1]["id"], webhook_id("ops", "kept", 1));
    assert_eq!(received[1]["verified"], true);
    let index = app.summaries.index().clone();
    assert_eq!(index.webhook_dead_letters().unwrap(), Vec::new());
    let text = wait_for_metric(&app, "ghost_webhook_orphaned", 0.0).await;
    assert_eq!(sample(&text, "ghost_webhook_orphaned"), Some(0.0), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_full_outbox_dead_letters_new_messages_and_dead_letters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = closed_port();
    let closed = format!("http://{}/hook", refusing.addr);
    let gone_port = reserve_port().port();
    let _gone = Receiver::start(gone_port, 0.0, 410).await;
    let gone = format!("http://127.0.0.1:{gone_port}/hook");
    let mut app = spawn_with(SummarizerConfig {
        webhook_outbox_max: 3,
        ..config(
            dir.path(),
            vec![
                subscription(&closed, &["patch.failed"], &[]),
                subscription(&gone, &["patch.rolled_back"], &[]),
            ],
        )
    })
    .await;

    // The closed receiver's messages wait; beyond 3 the outbox is full, yet every record
    // succeeds and the message is dead-lettered at once, named and counted.
    for n in 0..5 {
        assert!(
            created(
                &mut app.client,
                record(&format!("full-{n}"), 1, PatchStatus::Failed)
            )
            .await
        );
    }
    let index = app.summaries.index().clone();
    assert_eq!(index.webhooks_pending().unwrap().len(), 3);
    let dead = index.webhook_dead_letters().unwrap();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for letter in &dead {
        assert!(letter.reason.starts_with("outbox full"), "{letter:#?}");
        assert_eq!(letter.tries, 0, "{letter:#?}");
    }
    assert_eq!(dead[0].patch_id, "full-3");
    let text = wait_for_metric(&app, "ghost_webhook_outbox_full_total", 2.0).await;
    assert_eq!(
        sample(&text, "ghost_webhook_outbox_full_total"),
        Some(2.0),
        "{text}"
    );

    app.stop().await;

    // Dead letters beyond 4 are deleted, the oldest first.
    let mut app = spawn_with(SummarizerConfig {
        webhook_dead_letter_max: 4,
        ..config(
            dir.path(),
            vec![
                subscription(&closed, &["patch.failed"], &[]),
                subscription(&gone, &["patch.rolled_back"], &[]),
            ],
        )
    })
    .await;
    let index = app.summaries.index().clone();
    for n in 0..4 {
        app.client
            .record(record(&format!("gone-{n}"), 1, PatchStatus::RolledBack))
            .await
            .unwrap();
    }
    // Waited for until trimmed: the fourth is dead-lettered a moment before the oldest go.
    let dead = wait_for("the four gone-* events the only dead letters", async || {
        let dead = index.webhook_dead_letters().unwrap();
        let gone = dead
            .iter()
            .filter(|d| d.patch_id.starts_with("gone"))
            .count();
        if gone == 4 && dead.len() == 4 {
            Ok(dead)
        } else {
            Err(dead)
        }
    })
    .await;
    let patches: Vec<&str> = dead.iter().map(|d| d.patch_id.as_str()).collect();
    let mut sorted = patches.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["gone-0", "gone-1", "gone-2", "gone-3"],
        "{dead:#?}"
    );
    app.stop().await;

    // And by age.
    let app = spawn_with(SummarizerConfig {
        webhook_dead_letter_max_age: Duration::ZERO,
        ..config(dir.path(), vec![subscription(&closed, &["*"], &[])])
    })
    .await;
    let index = app.summaries.index().clone();
    wait_for("no dead letter left", async || {
        let dead = index.webhook_dead_letters().unwrap();
        if dead.is_empty() { Ok(()) } else { Err(dead) }
    })
    .await;
    app.stop().await;
}

/// A receiver on `listener` that answers 204 to every message except those whose
/// `webhook-id` is `stall` (held unanswered); returns the ids it answered, in order.
fn selective(
    listener: tokio::net::TcpListener,
    stall: Option<String>,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = answered.clone();
    let task = tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let stall = stall.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0_u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65_536 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let id = text
                    .lines()
                    .find_map(|line| line.strip_prefix("webhook-id: "))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                if stall.as_deref() == Some(id.as_str()) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
                log.lock().unwrap().push(id);
            });
        }
    });
    (answered, task)
}

#[tokio::test]
async fn a_delivery_that_finished_before_shutdown_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let addr = reserve_port();
    let url = format!("http://{addr}/hook");
    let settings = || config(dir.path(), vec![subscription(&url, &["*"], &[])]);
    let done = webhook_id(&url, "done", 1);
    let held = webhook_id(&url, "held", 1);

    // The port is closed: both messages fail once and wait.
    let mut app = spawn_with(settings()).await;
    for patch in ["done", "held"] {
        app.client
            .record(record(patch, 1, PatchStatus::Failed))
            .await
            .unwrap();
    }
    let index = app.summaries.index().clone();
    wait_for("every webhook tried", async || {
        let pending = index.webhooks_pending().unwrap();
        if pending.iter().any(|r| r.tries == 0) {
            Err(pending)
        } else {
            Ok(())
        }
    })
    .await;
    app.stop().await;
    // Past the longest backoff: both are due together at the next start, in one round.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // One is answered, the other held; the summarizer stops while the round still waits.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (answered, task) = selective(listener, Some(held.clone()));
    let app = spawn_with(settings()).await;
    wait_for("an answered webhook", async || {
        if answered.lock().unwrap().is_empty() {
            Err(())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(*answered.lock().unwrap(), vec![done.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    task.abort();
    let _ = task.await;

    // After the restart only the held one is sent: the answered one was recorded at shutdown.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (answered, task) = selective(listener, None);
    let app = spawn_with(settings()).await;
    let index = app.summaries.index().clone();
    wait_for("no webhook pending", async || no_webhook_pending(&index)).await;
    assert_eq!(*answered.lock().unwrap(), vec![held]);
    app.stop().await;
    task.abort();
}

#[tokio::test]
async fn after_410_gone_a_subscription_stays_disabled_across_restarts_until_its_url_changes() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port().port();
    let receiver = Receiver::start(port, 0.0, 410).await;
    let gone = format!("http://127.0.0.1:{port}/hook");
    let named = |url: &str| Subscription {
        name: Some("ops".to_owned()),
        ..subscription(url, &["*"], &[])
    };
    let dead_of = |app: &TestApp, patch: &str| {
        let index = app.summaries.index().clone();
        let patch = patch.to_owned();
        async move {
            let what = format!("{patch} dead-lettered");
            wait_for(&what, async || {
                let dead = index.webhook_dead_letters().unwrap();
                dead.iter()
                    .find(|d| d.patch_id == patch)
                    .cloned()
                    .ok_or(dead)
            })
            .await
        }
    };

    let mut app = spawn_with(config(dir.path(), vec![named(&gone)])).await;
    app.client
        .record(record("first", 1, PatchStatus::Failed))
        .await
        .unwrap();
    assert!(dead_of(&app, "first").await.reason.contains("410 Gone"));
    assert_eq!(receiver.records().len(), 1);
    app.stop().await;

    // The same URL after a restart: still disabled, nothing is POSTed.
    let mut app = spawn_with(config(dir.path(), vec![named(&gone)])).await;
    app.client
        .record(record("second", 1, PatchStatus::Failed))
        .await
        .unwrap();
    let letter = dead_of(&app, "second").await;
    assert!(
        letter.reason.contains("disabled until its url changes"),
        "{letter:#?}"
    );
    assert_eq!(receiver.records().len(), 1);
    app.stop().await;

    // A new URL enables it again.
    let moved = format!("http://127.0.0.1:{port}/moved");
    let mut app = spawn_with(config(dir.path(), vec![named(&moved)])).await;
    app.client
        .record(record("third", 1, PatchStatus::Failed))
        .await
        .unwrap();
    let letter = dead_of(&app, "third").await;
    assert_eq!(
        letter.reason, "the receiver answered 410 Gone",
        "{letter:#?}"
    );
    assert_eq!(receiver.records().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn during_a_secret_rotation_receivers_on_the_old_or_the_new_secret_both_verify() {
    const NEW: &str = "whsec_bmV3LXNlY3JldC1mb3ItZ2hvc3QtcnVubmVyLXJvdGF0ZWQ=";
    let dir = tempfile::tempdir().unwrap();
    let old_port = reserve_port().port();
    let on_old = Receiver::start(old_port, 0.0, 204).await;
    let new_port = reserve_port().port();
    let new_dir = tempfile::tempdir().unwrap();
    let on_new =
        WebhookReceiver::start(new_port, NEW, &new_dir.path().join("r.jsonl"), 0.0, 204).await;
    let rotating = |port: u16| Subscription {
        secret: Secret::new(NEW),
        previous_secret: Some(Secret::new(SECRET)),
        ..subscription(&format!("http://127.0.0.1:{port}/hook"), &["*"], &[])
    };
    let mut app = spawn_with(config(
        dir.path(),
        vec![rotating(old_port), rotating(new_port)],
    ))
    .await;
    app.client
        .record(record("rotate", 1, PatchStatus::Failed))
        .await
        .unwrap();
    for received in [
        on_old.wait_for(1, Duration::from_secs(20)).await,
        on_new.wait_for(1, Duration::from_secs(20)).await,
    ] {
        assert_eq!(received.len(), 1);
        assert_eq!(received[0]["verified"], true, "{received:#?}");
    }
    app.stop().await;
}
