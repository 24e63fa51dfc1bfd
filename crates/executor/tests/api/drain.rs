//! The executor drains on a stop signal (SIGTERM): it finishes the patch it runs, sends its
//! result, takes no new patch, and only then exits. The deployments' grace periods
//! (compose `stop_grace_period`, k8s `terminationGracePeriodSeconds`) rely on this.

use std::time::Duration;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{RunningExecutor, patch, workspace_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_lets_the_running_patch_finish_and_takes_no_new_one() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        ..TargetPolicy::default()
    });
    let mut executor = RunningExecutor::start(&ws).await;
    // A patch whose command outlasts the drain settings of the test server (0.5 s + 5 s would
    // not matter: the executor waits for its patches, not for a timer).
    let running = executor
        .assign(&patch(
            "drain-running",
            r#""edits":[{"op":"write","path":"done.txt","contents":"finished"}],"commands":["sleep 2"]"#,
        ))
        .await;
    // Let the attempt start (its command is running) before the stop arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    executor.signal_stop();
    let refused = executor
        .assign(&patch(
            "drain-new",
            r#""edits":[{"op":"write","path":"late.txt","contents":"x"}]"#,
        ))
        .await;

    let (token, report) = executor
        .next_result(Duration::from_secs(30))
        .await
        .expect("the running patch's result arrives after the stop signal");
    assert_eq!(token, running, "the result is the running patch's");
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("done.txt"), "finished");

    // The patch assigned after the stop is never started, and the executor ends.
    let mut ended = false;
    for _ in 0..150 {
        if executor.ended() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the executor ended within 15 s of its last patch");
    assert!(
        executor
            .next_result(Duration::from_millis(200))
            .await
            .is_none(),
        "no result for the patch {refused} assigned after the stop"
    );
    assert!(
        !ws.root().join("late.txt").exists(),
        "the late patch was not applied"
    );
}
