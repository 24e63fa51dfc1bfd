//! Long-poll and dry run through the whole system (gateway, router, summarizer, alerter and a
//! real executor serving MAIN; CYOPS has none):
//! - `GET /v1/patches/{id}?wait=` answers the terminal state as soon as the patch ends (the
//!   wake latency is measured from the router's end event), the current state when the wait
//!   is over, 400 naming `wait` for a bad value; a client that hangs up frees its waiter;
//! - `POST /v1/patches?dry_run=true` writes nothing (every file hashes the same), stores
//!   nothing (a later real submit of the same id is created fresh), and its diff is what the
//!   real apply then does.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ghost_testkit::wait_for;
use serde_json::{Value, json};

use crate::system::{ADMIN_KEY, System};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn submit(system: &System, query: &str, patch: &Value) -> (u16, Value) {
    send(
        client()
            .post(format!("{}/v1/patches{query}", system.url()))
            .json(patch),
    )
    .await
}

async fn get(system: &System, path: &str) -> (u16, Value) {
    send(client().get(format!("{}{path}", system.url()))).await
}

/// Waits (bounded) until the executor serving MAIN has connected to the router.
async fn executor_online(system: &System) {
    wait_for("an executor for MAIN online", async || {
        let (_, targets) = get(system, "/v1/targets").await;
        let online = targets.as_array().is_some_and(|targets| {
            targets
                .iter()
                .any(|target| target["target"] == "MAIN" && target["executor_online"] == true)
        });
        if online { Ok(()) } else { Err(targets) }
    })
    .await;
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

/// Submits a patch running `sleep` on MAIN, long-polls it, and returns the wake latency in ms
/// (the router's end event to the answer's arrival) and the answered status.
async fn one_waited_patch(system: &System, id: &str, sleep: &str) -> (f64, String) {
    let (status, body) = submit(
        system,
        "",
        &json!({"id": id, "target": "MAIN", "edits": [{"op": "write", "path": format!("{id}.txt"), "contents": "x\n"}],
                "commands": [format!("sleep {sleep}")]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = get(system, &format!("/v1/patches/{id}?wait=30s")).await;
    let answered_us = now_us();
    assert_eq!(status, 200, "{body}");
    let ended = body["status"].as_str().unwrap_or("").to_owned();
    let (_, events) = get(system, &format!("/v1/patches/{id}/events")).await;
    let end_us = events
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .find(|event| event["status"] == ended)
        .and_then(|event| event["at_unix_us"].as_i64())
        .unwrap_or_else(|| panic!("no end event {ended} in {events}"));
    ((answered_us - end_us) as f64 / 1000.0, ended)
}

#[tokio::test]
async fn a_waiting_get_answers_the_end_promptly_a_timeout_the_current_state_and_bad_waits_400() {
    let system = System::start(true, |_| {}).await;
    executor_online(&system).await;
    let (latency_ms, status) = one_waited_patch(&system, "waited-1", "0.5").await;
    assert_eq!(status, "succeeded");
    eprintln!("long-poll wake latency through the gateway: {latency_ms:.2} ms");
    assert!(
        latency_ms < 5_000.0,
        "answered {latency_ms} ms after the end"
    );

    // CYOPS has no executor: the patch stays queued and the wait runs out.
    let (status, body) = submit(
        &system,
        "",
        &json!({"id": "stays-queued", "target": "CYOPS", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let began = Instant::now();
    let (status, body) = get(&system, "/v1/patches/stays-queued?wait=1500ms").await;
    let took = began.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert!(
        took >= Duration::from_millis(1400),
        "answered after {took:?}"
    );

    for bad in ["61s", "abc", "-1", "1m", "1.5s", "60001ms"] {
        let (status, body) = get(&system, &format!("/v1/patches/stays-queued?wait={bad}")).await;
        assert_eq!(status, 400, "wait={bad}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or("").contains("wait"),
            "{body}"
        );
    }
    let (status, _) = get(&system, "/v1/patches/no-such-patch?wait=2s").await;
    assert_eq!(status, 404);
}

/// The router's `ghost_router_waiters` gauge, polled (bounded) until it reads `expected`.
async fn router_waiters_become(system: &System, expected: f64) {
    ghost_testkit::http::wait_for_metric(
        system.service(ghost_cli::system::Service::Router).http,
        "ghost_router_waiters",
        expected,
    )
    .await;
}

#[tokio::test]
async fn a_client_that_hangs_up_frees_its_waiter_and_a_wait_over_the_request_timeout_is_let_through()
 {
    let system = System::start(true, |config| {
        config.request_timeout = Duration::from_secs(1);
    })
    .await;
    let (status, _) = submit(
        &system,
        "",
        &json!({"id": "long-wait", "target": "CYOPS", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}),
    )
    .await;
    assert_eq!(status, 202);
    let url = format!("{}/v1/patches/long-wait?wait=60s", system.url());
    let waiting = tokio::spawn(async move { send(client().get(url)).await });
    router_waiters_become(&system, 1.0).await;
    waiting.abort();
    router_waiters_become(&system, 0.0).await;

    // Longer than the 1 s request timeout: still answered, with the current state.
    let (status, body) = get(&system, "/v1/patches/long-wait?wait=2s").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    // Nothing else got a longer deadline: the events of the same patch are an ordinary call,
    // and a wait on another route is not a long poll.
    let (status, _) = get(&system, "/v1/patches/long-wait/events?wait=2s").await;
    assert_eq!(status, 200);
}

/// Every file under `root` with its bytes and permission bits.
fn tree(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            found.insert(
                rel,
                (
                    std::fs::read(&path).expect("read"),
                    meta.permissions().mode() & 0o777,
                ),
            );
        }
    }
    found
}

fn checksums(root: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    tree(root)
        .into_iter()
        .map(|(rel, (bytes, mode))| {
            let hex: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (rel, format!("{hex} {mode:o}"))
        })
        .collect()
}

#[tokio::test]
async fn a_dry_run_writes_and_stores_nothing_and_its_diff_is_what_the_real_submit_does() {
    let system = System::start(true, |_| {}).await;
    executor_online(&system).await;
    let ws = system.workspace.clone();
    std::fs::create_dir_all(ws.join("src")).expect("dir");
    std::fs::write(
        ws.join("src/app.ts"),
        "const a = 1;   \nconst b = 2;\nexport { a, b };\n",
    )
    .expect("seed");
    std::fs::write(ws.join("old.txt"), "bye\n").expect("seed");
    let patch = json!({"id": "checked-1", "target": "MAIN", "edits": [
        {"op": "replace", "path": "src/app.ts", "search": "const a = 1;\n", "replace": "const a = 10;\n"},
        {"op": "write", "path": "src/new.ts", "contents": "export const c = 3;\n"},
        {"op": "delete", "path": "old.txt"}
    ]});
    let before_sums = checksums(&ws);
    let before = tree(&ws);

    let (status, checked) = submit(&system, "?dry_run=true", &patch).await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["dry_run"], true);
    assert_eq!(checked["status"], "succeeded", "{checked}");
    assert_eq!(checked["id"], "checked-1");
    let rungs: Vec<(String, String)> = checked["edits"]
        .as_array()
        .expect("edits")
        .iter()
        .map(|edit| {
            (
                edit["path"].as_str().unwrap_or("").to_owned(),
                edit["match_step"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        rungs.contains(&("src/app.ts".to_owned(), "trailing_whitespace".to_owned())),
        "{rungs:?}"
    );
    assert!(checked["note"].as_str().unwrap_or("").contains("not run"));
    assert_eq!(
        checksums(&ws),
        before_sums,
        "the dry run changed the workspace"
    );
    let (status, _) = get(&system, "/v1/patches/checked-1").await;
    assert_eq!(status, 404, "the dry run stored a patch");

    // The real submit of the same id is created fresh, and does what the dry run said.
    let (status, accepted) = submit(&system, "", &patch).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["replayed"], false);
    let (status, ended) = get(&system, "/v1/patches/checked-1?wait=30s").await;
    assert_eq!(status, 200);
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let after = tree(&ws);
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changes: Vec<executor::diff::FileChange<'_>> = paths
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| executor::diff::FileChange {
            old_path: path,
            path,
            before: before
                .get(path)
                .map(|(bytes, mode)| executor::diff::Side { bytes, mode: *mode }),
            after: after
                .get(path)
                .map(|(bytes, mode)| executor::diff::Side { bytes, mode: *mode }),
        })
        .collect();
    let observed = executor::diff::render(&changes, executor::diff::MAX_DIFF_BYTES).text;
    assert_eq!(checked["diff"].as_str().unwrap_or(""), observed);
}

#[tokio::test]
async fn a_dry_run_that_finds_a_problem_is_a_200_and_refusals_of_the_request_stay_problems() {
    let system = System::start(true, |_| {}).await;
    executor_online(&system).await;
    std::fs::write(system.workspace.join("a.txt"), "alpha\n").expect("seed");
    let (status, body) = submit(
        &system,
        "?dry_run=true",
        &json!({"id": "miss", "target": "MAIN", "edits": [{"op": "replace", "path": "a.txt", "search": "omega", "replace": "x"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"].as_str().unwrap_or("").contains("a.txt"),
        "{body}"
    );

    // YAML, like a submit.
    let response = client()
        .post(format!("{}/v1/patches?dry_run=true", system.url()))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/yaml")
        .body("id: yaml-dry\ntarget: MAIN\nedits:\n  - op: write\n    path: b.txt\n    contents: \"b\\n\"\n")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["diff"]
            .as_str()
            .unwrap_or("")
            .contains("+++ b/b.txt\n@@ -0,0 +1,1 @@\n+b\n"),
        "{body}"
    );
    assert!(!system.workspace.join("b.txt").exists());

    // No executor serves CYOPS: 409 naming it.
    let (status, body) = submit(
        &system,
        "?dry_run=true",
        &json!({"id": "nobody", "target": "CYOPS", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("CYOPS"),
        "{body}"
    );
    // Unknown target, bad flag, no credentials: as for a submit.
    let (status, _) = submit(
        &system,
        "?dry_run=true",
        &json!({"id": "x", "target": "NOPE", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, body) = submit(
        &system,
        "?dry_run=maybe",
        &json!({"id": "x", "target": "MAIN", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap_or("").contains("dry_run"));
    let anonymous = client()
        .post(format!("{}/v1/patches?dry_run=true", system.url()))
        .json(&json!({"id": "x", "target": "MAIN", "edits": [{"op": "write", "path": "a.txt", "contents": "a"}]}))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status().as_u16(), 401);
}

/// Patch after patch, a long poll answers each one's terminal state; the wake latency of each
/// is printed (the manual's figure, docs/src/performance.md: `GHOST_WAKE_LATENCY_PATCHES=200 cargo nextest run -p
/// gateway --no-capture wake_latency`; 20 patches by default).
#[tokio::test]
async fn wake_latency_every_long_poll_answers_the_patch_terminal_state() {
    let patches: usize = std::env::var("GHOST_WAKE_LATENCY_PATCHES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let system = System::start(true, |_| {}).await;
    executor_online(&system).await;
    let mut latencies = Vec::new();
    for index in 0..patches {
        let (latency, status) = one_waited_patch(&system, &format!("lat-{index}"), "0.05").await;
        assert_eq!(status, "succeeded");
        latencies.push(latency);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "long-poll wake latency over {} patches (router end event -> HTTP answer received): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}
