//! Following patches to their end: Slack posts seen by the fake (a started system) or the
//! router's events polled through the gateway (`--url`), then every patch's stored events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ghost_testkit::{FakeSlack, SlackRequest};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::load::unix_ms;

/// Lifecycle states after which a patch does not move again.
pub const TERMINAL: &[&str] = &[
    "succeeded",
    "failed",
    "rolled_back",
    "cancelled",
    "timed_out",
    "rejected",
    "lost",
];

/// Requests to the gateway in flight at once while collecting events.
const FETCH_CONCURRENCY: usize = 16;

/// One stored lifecycle event, as `GET /v1/patches/{id}/events` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// When, Unix µs (absent or 0 from a gateway that does not report it).
    #[serde(default)]
    pub at_unix_us: i64,
    /// State entered.
    pub status: String,
}

impl Event {
    /// When, Unix ms with the microseconds as a fraction where the router reports them
    /// (whole ms alone would put every stage of a fast patch in a 1 ms grid).
    pub fn at(&self) -> f64 {
        if self.at_unix_us > 0 {
            self.at_unix_us as f64 / 1e3
        } else {
            self.at_unix_ms as f64
        }
    }
}

/// Parent Slack posts per patch id, with their arrival times (Unix ms).
#[derive(Debug, Default)]
pub struct SlackPosts {
    seen: usize,
    /// Patch id → arrival times of its parent posts (more than one is a duplicate).
    pub by_id: HashMap<String, Vec<f64>>,
    /// Requests the fake answered with an error.
    pub failed: usize,
}

/// The patch id of a parent post: the value of its "View summary" button.
fn patch_of(request: &SlackRequest) -> Option<String> {
    if request.method != "chat.postMessage" || request.body.get("thread_ts").is_some() {
        return None;
    }
    let blocks = request.body.get("blocks")?.as_array()?;
    blocks
        .iter()
        .filter_map(|block| block.get("elements")?.as_array())
        .flatten()
        .find(|element| element.get("action_id").and_then(|a| a.as_str()) == Some("view_summary"))
        .and_then(|element| element.get("value")?.as_str().map(str::to_owned))
}

impl SlackPosts {
    /// Takes in the requests the fake received since the last call.
    pub fn poll(&mut self, slack: &FakeSlack) {
        let fresh = slack.requests_since(self.seen);
        self.seen += fresh.len();
        for request in fresh {
            if !request.succeeded() {
                self.failed += 1;
                continue;
            }
            if let Some(id) = patch_of(&request) {
                self.by_id
                    .entry(id)
                    .or_default()
                    .push(unix_ms(request.received_at));
            }
        }
    }
}

/// Waits until every id in `ids` has a Slack post, or `timeout` passed.
pub async fn wait_for_slack(slack: &FakeSlack, ids: &[String], timeout: Duration) -> SlackPosts {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut posts = SlackPosts::default();
    let mut waiting: HashSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        posts.poll(slack);
        waiting.retain(|id| !posts.by_id.contains_key(*id));
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            return posts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The events of one patch; `None` when the gateway could not answer.
pub async fn events_of(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    id: &str,
) -> Option<Vec<Event>> {
    let response = client
        .get(format!("{url}/v1/patches/{id}/events"))
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// True when `events` contain a terminal state.
pub fn ended(events: &[Event]) -> bool {
    events.iter().any(|e| TERMINAL.contains(&e.status.as_str()))
}

/// Fetches the events of every id (a bounded number of requests at once).
pub async fn collect_events(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: &[String],
) -> HashMap<String, Vec<Event>> {
    let permits = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (client, url, key, id) = (client.clone(), url.to_owned(), key.to_owned(), id.clone());
        tasks.push(tokio::spawn(async move {
            let events = events_of(&client, &url, &key, &id).await;
            drop(permit);
            (id, events)
        }));
    }
    let mut all = HashMap::with_capacity(ids.len());
    for task in tasks {
        if let Ok((id, Some(events))) = task.await {
            all.insert(id, events);
        }
    }
    all
}

/// `--url` mode: polls the events of every id not yet ended, until all ended or `timeout`.
pub async fn wait_for_router(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: &[String],
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting: Vec<String> = ids.to_vec();
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let events = collect_events(client, url, key, &waiting).await;
        waiting.retain(|id| !events.get(id).is_some_and(|e| ended(e)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The executor's own account of an attempt (`report` of `GET /v1/patches/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorReport {
    /// Whole attempt, ms.
    pub duration_ms: f64,
    /// Stages in order, e.g. edits (plan), journal, edits (write), commands.
    #[serde(default)]
    pub stages: Vec<ExecutorStage>,
}

/// One stage of an [`ExecutorReport`].
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorStage {
    /// Stage name.
    pub stage: String,
    /// Its duration, ms.
    pub duration_ms: f64,
}

#[derive(Deserialize)]
struct Detail {
    report: Option<ExecutorReport>,
}

/// Reports of up to `limit` ids spread evenly over `ids` (the gateway's detail call also
/// reads the summary, so only a sample is fetched).
pub async fn collect_reports(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: &[String],
    limit: usize,
) -> Vec<ExecutorReport> {
    let step = ids.len().div_ceil(limit.max(1)).max(1);
    let mut reports = Vec::new();
    for id in ids.iter().step_by(step) {
        let Ok(response) = client
            .get(format!("{url}/v1/patches/{id}"))
            .bearer_auth(key)
            .send()
            .await
        else {
            continue;
        };
        if let Ok(Detail {
            report: Some(report),
        }) = response.json().await
        {
            reports.push(report);
        }
    }
    reports
}
