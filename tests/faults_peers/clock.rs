//! Clock jumps: the real router, executor and alerter run under libfaketime with only their
//! wall clock faked (`FAKETIME_DONT_FAKE_MONOTONIC=1`), jumped an hour forward or back through
//! a timestamp file. A lease held during the jump is neither expired by it (+1 h) nor kept past
//! its timeout (-1 h), and the patch completes exactly once; a firing alert is neither repeated
//! and escalated at once (+1 h) nor kept from repeating for an hour (-1 h).
//!
//! Needs Debian's `faketime` package (libfaketime); without it the tests say so and pass.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::alerter::v1::{AlertRequest, Severity};
use ghost_proto::router::v1::PatchStatus;
use ghost_testkit::{POLL_INTERVAL, try_wait_until, wait_until};

use crate::system::{
    Service, append_patch, assert_each_once, event_statuses, executor_toml, reserve_port,
    router_client, state_when, submit, succeeded, summarizer_and_router, workspace,
};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// An alerter posting to `slack` at once (no grouping wait, a 100 ms tick), its gRPC on
/// `grpc_port`; `alerts` adds lines to its `[alerts]` table.
fn alerter_toml(dir: &Path, slack: &str, grpc_port: u16, alerts: &str) -> String {
    format!(
        r##"data_dir = "{data}"
[slack]
api_base_url = "{slack}"
bot_token = "xoxb-faults"
channel = "#ghost"
pacing = "0s"
[alerts]
group_wait = "0s"
{alerts}tick = "100ms"
[server]
grpc_listen = "127.0.0.1:{grpc_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"##,
        data = dir.join("alerter").display()
    )
}

/// libfaketime, or `None` after saying why the test is skipped.
fn libfaketime() -> Option<PathBuf> {
    let path = PathBuf::from(LIBFAKETIME);
    if path.exists() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED: {LIBFAKETIME} is missing (apt-get install faketime); the clock-jump test \
         needs it"
    );
    None
}

/// Runs `service` under libfaketime, its wall clock offset by what `clock_file` says.
fn fake_wall_clock(service: &mut Service, library: &Path, clock_file: &Path) {
    service
        .env("LD_PRELOAD", &library.display().to_string())
        .env("FAKETIME_TIMESTAMP_FILE", &clock_file.display().to_string())
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// Jumps the wall clock of every process reading `clock_file` to `offset` (e.g. `+3600`).
fn jump(clock_file: &Path, offset: &str) {
    std::fs::write(clock_file, format!("{offset}\n")).expect("write the faketime file");
}

/// Router, summarizer and executor (router and executor under libfaketime) and a patch that
/// holds its lease for about four seconds (`sleep 4`), leased and applying when this returns.
struct Jumped {
    _scratch: tempfile::TempDir,
    clock_file: PathBuf,
    workspace: PathBuf,
    router_url: String,
    _router: Service,
    _summarizer: Service,
    executor: Service,
}

async fn applying(library: &Path, id: &str) -> Jumped {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let ws = workspace(dir);
    let clock_file = dir.join("faketime");
    jump(&clock_file, "+0");
    let (mut summarizer, mut router, router_port) = summarizer_and_router(dir);
    let router_url = format!("http://127.0.0.1:{router_port}");
    fake_wall_clock(&mut router, library, &clock_file);
    let mut executor = Service::new(dir, "executor", &executor_toml(dir, &router_url, &ws));
    fake_wall_clock(&mut executor, library, &clock_file);
    summarizer.start();
    router.start();
    executor.start();
    let mut client = router_client(&router_url);
    submit(&mut client, append_patch(id, &["sleep 4"])).await;
    state_when(
        &mut client,
        id,
        Duration::from_secs(60),
        "applying",
        |state| state.status == PatchStatus::Applying as i32,
    )
    .await;
    Jumped {
        _scratch: scratch,
        clock_file,
        workspace: ws,
        router_url,
        _router: router,
        _summarizer: summarizer,
        executor,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_an_hour_forward_does_not_expire_a_held_lease() {
    let Some(library) = libfaketime() else {
        return;
    };
    let id = "jump-forward";
    let system = applying(&library, id).await;
    jump(&system.clock_file, "+3600");
    let mut client = router_client(&system.router_url);
    let state = succeeded(&mut client, id, Duration::from_secs(60)).await;
    let events = event_statuses(&mut client, id).await;
    eprintln!("+1 h jump during the lease: {events:?}");
    assert_eq!(
        state.attempt, 1,
        "the jump expired the lease and the patch ran again: {events:?}"
    );
    assert!(
        !events.iter().any(|status| status == "interrupted"),
        "the jump interrupted the attempt: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|status| *status == "queued").count(),
        1,
        "requeued by the jump: {events:?}"
    );
    assert_each_once(&system.workspace, &[id.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_an_hour_back_does_not_keep_a_dead_executors_lease() {
    let Some(library) = libfaketime() else {
        return;
    };
    let id = "jump-back";
    let mut system = applying(&library, id).await;
    // The executor goes silent (no heartbeats) just before the clock goes back an hour: its
    // lease (2 s) must still end in about 2 s, not in an hour.
    system.executor.stop();
    jump(&system.clock_file, "-3600");
    let stopped_at = Instant::now();
    let mut client = router_client(&system.router_url);
    state_when(
        &mut client,
        id,
        Duration::from_secs(30),
        "taken back from the silent executor",
        |state| state.attempt >= 2 || state.status == PatchStatus::Queued as i32,
    )
    .await;
    eprintln!(
        "-1 h jump: the silent executor's 2 s lease ended after {:?}",
        stopped_at.elapsed()
    );
    // The executor comes back (a new process, the clock still an hour back) and the patch
    // completes once.
    system.executor.kill9().await;
    system.executor.start();
    succeeded(&mut client, id, Duration::from_secs(60)).await;
    assert_each_once(&system.workspace, &[id.to_owned()]);
}

/// An alerter under libfaketime posting to a fake Slack, one alert firing and posted.
struct Alerting {
    _scratch: tempfile::TempDir,
    clock_file: PathBuf,
    slack: ghost_testkit::FakeSlack,
    client: AlerterServiceClient<tonic::transport::Channel>,
    _alerter: Service,
}

fn raise(key: &str) -> AlertRequest {
    AlertRequest {
        key: key.to_owned(),
        resolved: false,
        severity: Severity::Critical as i32,
        summary: format!("{key} is firing"),
        labels: std::collections::HashMap::new(),
        source: "faults".to_owned(),
        at_unix_ms: ghost_runtime::clock::wall_ms(),
    }
}

async fn alert_firing(library: &Path, repeat_interval: &str, escalate_after: &str) -> Alerting {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let clock_file = dir.join("faketime");
    jump(&clock_file, "+0");
    let slack = ghost_testkit::FakeSlack::start().await;
    let reserved = reserve_port();
    let port = reserved.port;
    let mut alerter = Service::new(
        dir,
        "alerter",
        &alerter_toml(
            dir,
            &slack.base_url(),
            port,
            &format!(
                "repeat_interval = \"{repeat_interval}\"\nescalate_after = \"{escalate_after}\"\n"
            ),
        ),
    )
    .holding(reserved);
    fake_wall_clock(&mut alerter, library, &clock_file);
    alerter.start();
    let mut client = AlerterServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("url")
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    wait_until(
        "the alerter to take the alert",
        Duration::from_secs(60),
        POLL_INTERVAL,
        async || client.alert(raise("queue_stale/MAIN")).await.map(drop),
    )
    .await;
    let first = slack.wait_for_posts(1, Duration::from_secs(30)).await.len();
    assert_eq!(first, 1, "one post for the alert");
    Alerting {
        _scratch: scratch,
        clock_file,
        slack,
        client,
        _alerter: alerter,
    }
}

async fn post_texts(slack: &ghost_testkit::FakeSlack) -> Vec<String> {
    slack
        .posts()
        .await
        .iter()
        .map(|post| post.text().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_an_hour_forward_neither_repeats_nor_escalates_a_firing_alert() {
    let Some(library) = libfaketime() else {
        return;
    };
    let mut system = alert_firing(&library, "30m", "45m").await;
    jump(&system.clock_file, "+3600");
    // Thirty ticks after the jump, then one more alert: its post is the only new one. A wall
    // clock would have made the first alert's repeat (30 min) and escalation (45 min) due.
    tokio::time::sleep(Duration::from_secs(3)).await;
    system
        .client
        .alert(raise("executor_lost/MAIN"))
        .await
        .expect("the second alert is taken");
    system
        .slack
        .wait_for_posts(2, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts = post_texts(&system.slack).await;
    eprintln!("+1 h jump with a firing alert: Slack posts {texts:#?}");
    assert_eq!(
        texts.len(),
        2,
        "the jump repeated or escalated the firing alert: {texts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_an_hour_back_does_not_silence_a_firing_alerts_repeats() {
    let Some(library) = libfaketime() else {
        return;
    };
    let system = alert_firing(&library, "2s", "1h").await;
    jump(&system.clock_file, "-3600");
    let jumped_at = Instant::now();
    // The repeat is due 2 s after the alert: a wall clock would hold it back an hour.
    let posts = system
        .slack
        .wait_for_posts(2, Duration::from_secs(30))
        .await
        .len();
    eprintln!(
        "-1 h jump with a firing alert: the next repeat came {:?} after the jump",
        jumped_at.elapsed()
    );
    assert!(
        posts >= 2,
        "no repeat within 30 s of a -1 h jump: {:#?}",
        post_texts(&system.slack).await
    );
}

/// Router (under libfaketime, no executor, `stale_after` 4 s) raising its alerts through a real
/// alerter to a fake Slack. Submits one patch for MAIN, jumps the router's wall clock by
/// `offset`, and returns how long after the submit the `queue_stale` post came (`None`: not
/// within 30 s).
async fn queue_stale_after_a_jump(library: &Path, offset: &str) -> Option<Duration> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let clock_file = dir.join("faketime");
    jump(&clock_file, "+0");
    let slack = ghost_testkit::FakeSlack::start().await;
    let (router_reserved, alerter_reserved) = (reserve_port(), reserve_port());
    let (router_port, alerter_port) = (router_reserved.port, alerter_reserved.port);
    let mut alerter = Service::new(
        dir,
        "alerter",
        &alerter_toml(dir, &slack.base_url(), alerter_port, ""),
    )
    .holding(alerter_reserved);
    let mut router = Service::new(
        dir,
        "router",
        &format!(
            r#"data_dir = "{data}"
alerter_url = "http://127.0.0.1:{alerter_port}"
stale_after = "4s"
sweep_interval = "200ms"
[server]
grpc_listen = "127.0.0.1:{router_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
            data = dir.join("router").display()
        ),
    )
    .holding(router_reserved);
    fake_wall_clock(&mut router, library, &clock_file);
    alerter.start();
    router.start();
    let mut client = router_client(&format!("http://127.0.0.1:{router_port}"));
    submit(&mut client, append_patch("waits", &["true"])).await;
    let submitted = Instant::now();
    jump(&clock_file, offset);
    let posted = try_wait_until(
        "a queue_stale post",
        Duration::from_secs(30),
        POLL_INTERVAL,
        async || {
            let texts = post_texts(&slack).await;
            let stale = texts
                .iter()
                .find(|text| text.contains("queue_stale") || text.contains("queued on MAIN"));
            stale.cloned().ok_or(texts)
        },
    )
    .await;
    match posted {
        Ok(text) => {
            eprintln!("{offset} s jump: {text}");
            Some(submitted.elapsed())
        }
        Err(timed_out) => {
            eprintln!("{timed_out}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_neither_raises_queue_stale_early_nor_silences_it() {
    let Some(library) = libfaketime() else {
        return;
    };
    for offset in ["+3600", "-3600"] {
        let raised = queue_stale_after_a_jump(&library, offset).await;
        eprintln!(
            "{offset} s jump right after the submit: queue_stale (stale_after 4 s) posted after {raised:?}"
        );
        let raised = raised.unwrap_or_else(|| {
            panic!("{offset} s jump: a queue stale for 30 s raised no queue_stale (silenced)")
        });
        assert!(
            raised >= Duration::from_secs(4),
            "{offset} s jump: queue_stale came {raised:?} after the submit, before the queue \
             had waited stale_after (4 s)"
        );
    }
}
