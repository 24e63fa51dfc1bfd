//! Chaos on PostgreSQL (issue 21): two `ghost up --store postgres://…` instances share one
//! PostgreSQL and one workspace (their executors are standbys of each other). 1,000 patches go
//! through both gateways while either instance is kill -9'd, 20 times in all, and started again.
//! Every patch answered 202 ends exactly once, its effect is in the workspace once, it has one
//! summary and it is in one Slack post (its own message or one digest).
//!
//! Every patch appends its id to `log.txt` with a `replace` of the unique `END` marker: a patch
//! applied twice would leave its id twice, a patch half-applied or lost would leave it out. The
//! seed is printed; `GHOST_CHAOS_SEED` replays a run's kill schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::{FakeSlack, POLL_INTERVAL, wait_until};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::helpers::Env;
use crate::up::{PORT_ZERO, Up, ghost_in, keys_of, spawn_up};

const PATCHES: usize = 1_000;
const KILLS: usize = 20;
const SUBMITTERS: usize = 4;
const SETTLE: Duration = Duration::from_secs(300);

/// xorshift64*: a replayable kill schedule.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One `ghost up`: its own directory (ghost.toml, data dir) and gateway port, the shared
/// workspace and database.
struct Instance {
    dir: PathBuf,
    /// `--workspace MAIN=<the shared workspace>`.
    workspace: String,
    port: u16,
    vars: Vec<(String, String)>,
    up: Option<Up>,
    kills: usize,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self, env: &Env) {
        let listen = format!("127.0.0.1:{}", self.port);
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let up = spawn_up(
            env,
            &self.dir,
            &[
                "up",
                "-f",
                "ghost.toml",
                "--listen",
                &listen,
                "--workspace",
                &self.workspace,
            ],
            &vars,
        )
        .await;
        self.up = Some(up);
    }

    async fn kill_9(&mut self) {
        if let Some(up) = self.up.take() {
            up.kill_9().await;
            self.kills += 1;
        }
    }
}

fn patch(n: usize) -> Value {
    json!({
        "id": format!("chaos-{n:04}"),
        "target": "MAIN",
        "description": format!("append {n} to the log"),
        "edits": [{"op": "replace", "path": "log.txt", "search": "END\n",
                   "replace": format!("chaos-{n:04}\nEND\n")}],
    })
}

/// Submits `n` through `urls[n % 2]`, then the other, until one answers 202 (or says the id is
/// already taken after an earlier 202 whose answer was lost). Returns whether it was accepted.
async fn submit_until_accepted(urls: &[String; 2], key: &str, n: usize) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(180);
    let body = patch(n);
    for round in 0.. {
        let url = &urls[(n + round) % 2];
        if let Ok(answer) = client
            .post(format!("{url}/v1/patches"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
        {
            let status = answer.status().as_u16();
            let text = answer.text().await.unwrap_or_default();
            match status {
                202 => return true,
                // The same id again after a 202 whose answer the kill swallowed.
                200 | 409 => return true,
                500..=599 | 429 => {}
                other => panic!("chaos-{n:04} refused with {other}: {text}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "chaos-{n:04} not accepted by either gateway within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

async fn get(client: &reqwest::Client, url: &str, key: &str) -> Option<Value> {
    let answer = client.get(url).bearer_auth(key).send().await.ok()?;
    if !answer.status().is_success() {
        return None;
    }
    answer.json().await.ok()
}

/// `get`, tried again (bounded) while a gateway restarts or rate-limits; panics with the last
/// answer.
async fn get_surely(client: &reqwest::Client, url: &str, key: &str) -> Value {
    let mut last = String::new();
    for _ in 0..300 {
        match client.get(url).bearer_auth(key).send().await {
            Ok(answer) if answer.status().is_success() => {
                if let Ok(body) = answer.json().await {
                    return body;
                }
            }
            Ok(answer) => {
                last = format!(
                    "{} {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                )
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {url}: {last}")
}

/// The end of a patch: a terminal status other than `interrupted`, which ends only an attempt
/// (the patch is queued again).
fn is_terminal(status: &str) -> bool {
    status
        .parse::<ghost_core::Status>()
        .is_ok_and(|status| status.is_terminal() && status != ghost_core::Status::Interrupted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ghost_ups_on_one_postgres_lose_nothing_under_20_kill_9s() {
    let Some(postgres) = TempPostgres::start_or_skip("chaos on PostgreSQL") else {
        return;
    };
    let seed = std::env::var("GHOST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64 | 1)
        });
    eprintln!("chaos seed {seed} (GHOST_CHAOS_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);

    let url = postgres.create_database();
    let slack = FakeSlack::start().await;
    let env = Env::empty();
    let root = env.scratch.path().to_owned();
    let workspace = root.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::write(workspace.join("log.txt"), "END\n").expect("log");

    let first = root.join("a");
    std::fs::create_dir_all(&first).expect("dir");
    let init = ghost_in(&env, &first, &["--json", "init", "."], &[]).await;
    init.expect(0);
    let keys = keys_of(&init);
    let second = root.join("b");
    std::fs::create_dir_all(&second).expect("dir");
    std::fs::copy(first.join("ghost.toml"), second.join("ghost.toml")).expect("copy");

    let mut instances = Vec::new();
    for dir in [first, second] {
        let mut vars: Vec<(String, String)> = PORT_ZERO
            .iter()
            .filter(|(k, _)| *k != "GHOST_GATEWAY__SERVER__HTTP_LISTEN")
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (k, v) in [
            ("GHOST_STORE", url.as_str()),
            ("GHOST_ROUTER__LEASE_TIMEOUT", "3s"),
            ("GHOST_ROUTER__HEARTBEAT_INTERVAL", "200ms"),
            ("GHOST_ROUTER__SWEEP_INTERVAL", "200ms"),
            ("GHOST_ROUTER__MAX_ATTEMPTS", "50"),
            ("GHOST_EXECUTOR__RECONNECT_BACKOFF", "100ms"),
            ("GHOST_EXECUTOR__RECONNECT_BACKOFF_MAX", "500ms"),
            ("GHOST_ALERTER__SLACK__PACING", "0s"),
            ("GHOST_SLACK_API_URL", &slack.base_url()),
            ("GHOST_SLACK_TOKEN", "xoxb-chaos"),
            ("GHOST_SLACK_CHANNEL", "#ghost"),
        ] {
            vars.push((k.to_owned(), v.to_owned()));
        }
        instances.push(Instance {
            workspace: format!("MAIN={}", workspace.display()),
            dir,
            port: free_port(),
            vars,
            up: None,
            kills: 0,
        });
    }
    for instance in &mut instances {
        instance.start(&env).await;
    }
    let urls = [instances[0].url(), instances[1].url()];

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let urls = urls.clone();
        let key = keys["submit"].clone();
        let accepted = accepted.clone();
        submitters.push(tokio::spawn(async move {
            for n in (s..PATCHES).step_by(SUBMITTERS) {
                if submit_until_accepted(&urls, &key, n).await {
                    accepted.lock().await.insert(format!("chaos-{n:04}"));
                }
            }
        }));
    }
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1_200))).await;
        let victim = &mut instances[usize::from(rng.below(2) == 1)];
        victim.kill_9().await;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        victim.start(&env).await;
    }
    for submitter in submitters {
        submitter.await.expect("submitter finished");
    }
    eprintln!("kills: a {}, b {}", instances[0].kills, instances[1].kills);
    assert_eq!(instances[0].kills + instances[1].kills, KILLS);

    settle_and_check(&urls, &keys["read"], &accepted.lock().await.clone(), &root).await;
    check_workspace(&workspace);
    check_slack(&slack, &accepted.lock().await.clone()).await;
    for instance in &mut instances {
        instance.kill_9().await;
    }
}

/// Time enough for one look at a patch.
const LOOK: Duration = Duration::from_secs(5);

/// Every accepted patch ends, with one terminal event and one summary.
async fn settle_and_check(urls: &[String; 2], key: &str, accepted: &BTreeSet<String>, root: &Path) {
    assert_eq!(accepted.len(), PATCHES, "every patch was accepted once");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut statuses = BTreeMap::new();
    for (n, id) in accepted.iter().enumerate() {
        let url = &urls[n % 2];
        // One bound for all; each is looked at at least once.
        let left = SETTLE.saturating_sub(started.elapsed()).max(LOOK);
        let what = format!(
            "{id} to end with its summary (logs under {})",
            root.display()
        );
        let status = wait_until(&what, left, POLL_INTERVAL, async || {
            let state = get(&client, &format!("{url}/v1/patches/{id}"), key).await;
            let status = state
                .as_ref()
                .and_then(|s| s["status"].as_str().map(str::to_owned));
            let summarized = state.as_ref().is_some_and(|s| s["summary"].is_string());
            status.filter(|s| is_terminal(s) && summarized).ok_or(state)
        })
        .await;
        statuses.insert(id.clone(), status);
    }
    let not_succeeded: Vec<_> = statuses.iter().filter(|(_, s)| *s != "succeeded").collect();
    assert!(not_succeeded.is_empty(), "not succeeded: {not_succeeded:?}");
    for (n, id) in accepted.iter().enumerate() {
        let url = &urls[n % 2];
        let events = get_surely(&client, &format!("{url}/v1/patches/{id}/events"), key).await;
        let terminal = events
            .as_array()
            .unwrap_or_else(|| panic!("{id}: events are not a list: {events}"))
            .iter()
            .filter(|e| e["status"].as_str().is_some_and(is_terminal))
            .count();
        assert_eq!(terminal, 1, "{id}: {events}");
    }
}

/// Each patch's line once, the marker last.
fn check_workspace(workspace: &Path) {
    let log = std::fs::read_to_string(workspace.join("log.txt")).expect("log");
    let mut lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.pop(), Some("END"), "the marker stays last");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &lines {
        *counts.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert_eq!(lines.len(), PATCHES, "every patch's line is in the log");
}

/// Each patch reached Slack, and nothing was posted twice: at most one top-level message of its
/// own (its thread: a failure or an interrupted attempt is posted at once, later attempts reply
/// in the thread) and at most one line in one digest (where successes go under a backlog).
/// Alerts that name a patch (`patch_interrupted/MAIN/<id>/<attempt>`) are not its posts.
async fn check_slack(slack: &FakeSlack, accepted: &BTreeSet<String>) {
    let what = "every accepted patch on Slack";
    let every = Duration::from_millis(500);
    wait_until(what, Duration::from_secs(120), every, async || {
        let messages = slack.messages();
        let mut own: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut digested: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for message in messages.iter().filter(|m| m.thread_ts.is_none()) {
            let body = message.body.to_string();
            if body.contains("patch_interrupted/") {
                continue;
            }
            let kind = if body.contains("Digest since") {
                &mut digested
            } else {
                &mut own
            };
            for id in accepted {
                if body.contains(&format!("{id} ")) || body.contains(&format!("`{id}`")) {
                    kind.entry(id.as_str()).or_default().push(body.clone());
                }
            }
        }
        for (what, posts) in [("own message", &own), ("digest line", &digested)] {
            let twice: Vec<_> = posts.iter().filter(|(_, p)| p.len() > 1).collect();
            assert!(twice.is_empty(), "more than one {what}: {twice:#?}");
        }
        let reached = accepted
            .iter()
            .filter(|id| own.contains_key(id.as_str()) || digested.contains_key(id.as_str()))
            .count();
        if reached == accepted.len() {
            eprintln!(
                "slack: {} patches in their own message, {} in a digest",
                own.len(),
                digested.len()
            );
            Ok(())
        } else {
            Err(format!(
                "{reached} of {} patches reached Slack",
                accepted.len()
            ))
        }
    })
    .await;
}

/// A free loopback port for a gateway that must keep its address across restarts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}
