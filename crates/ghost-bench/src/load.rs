//! Submitting patches to the gateway: closed loop (a fixed number in flight) or open loop (a
//! fixed rate, each submission on its own task so a slow answer does not delay the next one).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::Semaphore;

/// Most submissions in flight in open-loop mode; beyond it a tick waits (and is counted late).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 4096;

/// What to submit.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Gateway base URL.
    pub url: String,
    /// API key.
    pub api_key: String,
    /// Patches.
    pub count: usize,
    /// Closed loop: in flight at once.
    pub concurrency: usize,
    /// Open loop: per second.
    pub rate: Option<f64>,
    /// Targets, round robin.
    pub targets: Vec<String>,
    /// Files written per patch.
    pub files_per_patch: usize,
    /// Make every patch fail in a command after its edits (and roll back).
    pub fail: bool,
    /// Prefix of the patch ids (unique per run).
    pub run_id: String,
    /// PEM CA the gateway's HTTPS certificate is checked against (`--tls`).
    pub ca_pem: Option<String>,
}

/// One submission as the client saw it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Patch id.
    pub id: String,
    /// Its target.
    pub target: String,
    /// Wall clock when the request was sent, Unix ms.
    pub sent_unix_ms: f64,
    /// Time to the answer.
    pub latency: Duration,
    /// HTTP status, or `None` when the request failed without one.
    pub status: Option<u16>,
    /// The transport error, if any.
    pub error: Option<String>,
}

impl Submission {
    /// True when the gateway answered 202 (stored durably).
    pub fn accepted(&self) -> bool {
        self.status == Some(202)
    }
}

/// The submission phase.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Every submission, in id order.
    pub submissions: Vec<Submission>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Open loop: ticks that started more than 5 ms after their scheduled time.
    pub late_ticks: usize,
}

/// Unix time now in milliseconds (fractional).
pub fn unix_ms_now() -> f64 {
    unix_ms(SystemTime::now())
}

/// `time` as Unix milliseconds (fractional).
pub fn unix_ms(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// The body of patch number `n`.
pub fn patch_body(plan: &LoadPlan, n: usize) -> (String, String, serde_json::Value) {
    let id = format!("{}-{n}", plan.run_id);
    let target = plan.targets[n % plan.targets.len()].clone();
    let edits: Vec<serde_json::Value> = (0..plan.files_per_patch.max(1))
        .map(|file| {
            json!({"op": "write", "path": format!("bench/{id}-{file}.txt"),
                   "contents": format!("patch {id} file {file}\n")})
        })
        .collect();
    let mut body =
        json!({"id": id, "target": target, "description": "ghost-bench", "edits": edits});
    if plan.fail {
        // The files are written, then this command fails: the executor rolls them back.
        body["commands"] = json!(["false"]);
    }
    (id, target, body)
}

async fn submit_one(client: &reqwest::Client, plan: &LoadPlan, n: usize) -> Submission {
    let (id, target, body) = patch_body(plan, n);
    let sent_unix_ms = unix_ms_now();
    let begin = Instant::now();
    let answer = client
        .post(format!("{}/v1/patches", plan.url))
        .bearer_auth(&plan.api_key)
        .json(&body)
        .send()
        .await;
    let (status, error) = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection goes back to the pool.
            let text = response.text().await.unwrap_or_default();
            let error = (status != 202).then(|| text.chars().take(300).collect());
            (Some(status), error)
        }
        Err(err) => (None, Some(err.to_string())),
    };
    Submission {
        id,
        target,
        sent_unix_ms,
        latency: begin.elapsed(),
        status,
        error,
    }
}

/// An HTTP client keeping up to `connections` connections to the gateway; trusting `ca_pem`
/// (a PEM CA) beside the web PKI roots when given.
pub fn client(connections: usize, ca_pem: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(connections.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
    }
    Ok(builder.build()?)
}

/// Submits every patch of `plan`.
pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadOutcome> {
    let plan = Arc::new(plan);
    let started = Instant::now();
    let (mut submissions, late_ticks) = match plan.rate {
        None => (closed_loop(Arc::clone(&plan)).await?, 0),
        Some(rate) => open_loop(Arc::clone(&plan), rate).await?,
    };
    submissions.sort_by_key(|s| s.sent_unix_ms as u64);
    Ok(LoadOutcome {
        submissions,
        elapsed: started.elapsed(),
        late_ticks,
    })
}

async fn closed_loop(plan: Arc<LoadPlan>) -> anyhow::Result<Vec<Submission>> {
    let client = client(plan.concurrency, plan.ca_pem.as_deref())?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency.max(1) {
        let (plan, client, next) = (Arc::clone(&plan), client.clone(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.count {
                    return done;
                }
                done.push(submit_one(&client, &plan, n).await);
            }
        }));
    }
    let mut submissions = Vec::with_capacity(plan.count);
    for worker in workers {
        submissions.extend(worker.await?);
    }
    Ok(submissions)
}

async fn open_loop(plan: Arc<LoadPlan>, rate: f64) -> anyhow::Result<(Vec<Submission>, usize)> {
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    let client = client(64, plan.ca_pem.as_deref())?;
    let permits = Arc::new(Semaphore::new(OPEN_LOOP_MAX_IN_FLIGHT));
    let start = tokio::time::Instant::now();
    let mut late = 0;
    let mut tasks = Vec::with_capacity(plan.count);
    for n in 0..plan.count {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let permit = Arc::clone(&permits).acquire_owned().await?;
        if tokio::time::Instant::now().duration_since(due) > Duration::from_millis(5) {
            late += 1;
        }
        let (plan, client) = (Arc::clone(&plan), client.clone());
        tasks.push(tokio::spawn(async move {
            let submission = submit_one(&client, &plan, n).await;
            drop(permit);
            submission
        }));
    }
    let mut submissions = Vec::with_capacity(plan.count);
    for task in tasks {
        submissions.push(task.await?);
    }
    Ok((submissions, late))
}
