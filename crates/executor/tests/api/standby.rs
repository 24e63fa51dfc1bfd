//! Issue 21, point 4: an executor standby. Two executor binaries serve one workspace
//! (`standby = true`): the one holding `<root>/.ghost/lock` is active, the other waits. The
//! active one is killed with SIGKILL in the middle of a slow apply (a pause after each write:
//! the debug build's `executor::TEST_WRITE_DELAY_VAR`); the
//! standby takes the lock within the router's lease time, rolls the half-applied patch back
//! from the journal in `<root>/.ghost/` before it applies anything, and the requeued patch
//! then ends exactly once, its effect once.

use std::time::{Duration, Instant};

use ghost_proto::router::v1::{Edit, PatchStatus, SubmitRequest, WriteFile, edit};
use ghost_testkit::disk::within;

use crate::storage::{appending, ready, spawn_executor, start_router, state_of, submit, terminal};

/// The router's lease time in this test: the standby must take over within it.
const LEASE: Duration = Duration::from_secs(10);
/// Files the slow patch writes after `log.txt`.
const SLOW_FILES: usize = 20;

/// `ghost_executor_active{target="MAIN"}` of the executor whose base URL is `http`.
async fn active_gauge(http: &str) -> Option<f64> {
    let addr = http.strip_prefix("http://")?.parse().ok()?;
    ghost_testkit::http::metric(addr, "ghost_executor_active{target=\"MAIN\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_executor_rolls_back_first_and_the_patch_ends_once() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch = std::fs::canonicalize(scratch.path()).unwrap();
    let router = start_router(&scratch, LEASE).await;
    let workspace = scratch.join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("log.txt"), "END\n").unwrap();
    let before = ghost_executor_tree(&workspace);
    let extra = "standby = true";
    let slow_writes = [(executor::TEST_WRITE_DELAY_VAR, "200".to_owned())];
    let (state_a, state_b) = (scratch.join("state-a"), scratch.join("state-b"));
    for state in [&state_a, &state_b] {
        std::fs::create_dir_all(state).unwrap();
    }
    let (mut active, active_http) = spawn_executor(
        &scratch,
        "executor-a",
        router.addr,
        &state_a,
        &workspace,
        extra,
        &slow_writes,
    );
    assert!(ready(&active_http).await, "executor A never got ready");
    assert_eq!(active_gauge(&active_http).await, Some(1.0));
    let (_standby, standby_http) = spawn_executor(
        &scratch,
        "executor-b",
        router.addr,
        &state_b,
        &workspace,
        extra,
        &slow_writes,
    );
    assert!(ready(&standby_http).await, "executor B never got ready");
    assert_eq!(
        active_gauge(&standby_http).await,
        Some(0.0),
        "B must wait on standby while A holds the lock"
    );
    assert_eq!(before, ghost_executor_tree(&workspace));

    submit(&router.client, "before-0").await;
    let done = within(Duration::from_secs(30), || async {
        terminal(state_of(&router.client, "before-0").await.status)
    })
    .await;
    assert!(done.is_some(), "the first patch did not end");

    // The slow patch: log.txt first (paths are written in order), then 20 files 200 ms apart.
    let mut slow = appending("slow");
    slow.edits.extend((0..SLOW_FILES).map(|i| Edit {
        op: Some(edit::Op::Write(WriteFile {
            path: format!("slow/f{i:02}.txt"),
            contents: format!("slow {i}\n"),
        })),
    }));
    router
        .client
        .clone()
        .submit(SubmitRequest {
            patch: Some(slow),
            ..Default::default()
        })
        .await
        .expect("the router accepts the slow patch");
    let log = workspace.join("log.txt");
    let half = within(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("slow\n"))
            && workspace.join("slow/f01.txt").exists()
    })
    .await;
    assert!(half.is_some(), "A never started writing the slow patch");
    active.start_kill().unwrap();
    let killed = Instant::now();
    let _ = active.wait().await;
    assert!(
        !workspace
            .join(format!("slow/f{:02}.txt", SLOW_FILES - 1))
            .exists(),
        "A finished before it was killed: the test is too fast"
    );

    let took_over = within(LEASE, || async {
        active_gauge(&standby_http).await == Some(1.0)
    })
    .await;
    let Some(takeover) = took_over else {
        panic!("B did not take over within the lease time {LEASE:?}");
    };
    let ended = within(LEASE + Duration::from_secs(30), || async {
        terminal(state_of(&router.client, "slow").await.status)
    })
    .await;
    assert!(
        ended.is_some(),
        "the slow patch did not end after the takeover"
    );
    let ended_after = killed.elapsed();
    let state = state_of(&router.client, "slow").await;
    assert_eq!(state.status, PatchStatus::Succeeded as i32, "{state:?}");
    assert_eq!(
        state.attempt, 2,
        "A's attempt was interrupted, B's succeeded"
    );
    // Rolled back first: A's half-applied `slow` line is not there twice.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before-0\nslow\nEND\n",
        "each effect once"
    );
    for i in 0..SLOW_FILES {
        assert_eq!(
            std::fs::read_to_string(workspace.join(format!("slow/f{i:02}.txt"))).unwrap(),
            format!("slow {i}\n")
        );
    }
    // B serves the target from now on.
    submit(&router.client, "after-0").await;
    let done = within(Duration::from_secs(30), || async {
        terminal(state_of(&router.client, "after-0").await.status)
    })
    .await;
    assert!(done.is_some(), "B does not serve the target");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before-0\nslow\nafter-0\nEND\n"
    );
    eprintln!(
        "standby takeover: B active {} ms after A was killed (lease {} s); the interrupted \
         patch ended (attempt 2) {} ms after the kill",
        takeover.as_millis(),
        LEASE.as_secs(),
        ended_after.as_millis()
    );
}

/// The workspace's files outside `.ghost` (the executors' own state folder).
fn ghost_executor_tree(root: &std::path::Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".ghost")
        .collect();
    found.sort();
    found
}
