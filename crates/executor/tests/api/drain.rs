//! The executor drains on a stop signal (SIGTERM): it finishes the patch it runs, sends its
//! result, takes no new patch, and only then exits. The deployments' grace periods
//! (compose `stop_grace_period`, k8s `terminationGracePeriodSeconds`) rely on this.

use std::time::Duration;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;
use ghost_testkit::{POLL_INTERVAL, wait_until};

use crate::helpers::{RunningExecutor, patch, workspace_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_lets_the_running_patch_finish_and_takes_no_new_one() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        ..TargetPolicy::default()
    });
    let mut executor = RunningExecutor::start(&ws).await;
    // A patch whose command is still running when the stop arrives.
    let long = patch(
        "drain-running",
        r#""edits":[{"op":"write","path":"done.txt","contents":"finished"}],"commands":["sleep 4"]"#,
    );
    let running = executor.assign(&long).await;
    // The stop arrives once the executor holds the lease (a heartbeat lists it): the attempt
    // runs, its command sleeping.
    assert!(
        executor.wait_held(running, Duration::from_secs(30)).await,
        "the executor took the patch within 30 s"
    );
    executor.signal_stop();
    // The stop reaches the session through the service's shutdown (asynchronously); a patch
    // sent a moment later finds it draining.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = executor
        .assign(&patch(
            "drain-new",
            r#""edits":[{"op":"write","path":"late.txt","contents":"x"}]"#,
        ))
        .await;

    let result = executor.next_result(Duration::from_secs(30)).await;

    // The patch assigned after the stop is never started, and the executor ends.
    wait_until(
        "the executor to end after its last patch",
        Duration::from_secs(15),
        POLL_INTERVAL,
        async || if executor.ended() { Ok(()) } else { Err(()) },
    )
    .await;
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

    // The running patch finished. Its result went out on the stream before the executor ended,
    // or, when the stream closed first, the router requeues the lease and the executor's ledger
    // answers the re-delivery with the stored outcome.
    let report = match result {
        Some((token, report)) => {
            assert_eq!(token, running, "the result is the running patch's");
            report
        }
        None => {
            let mut again = RunningExecutor::start(&ws).await;
            let report = again.apply(&long).await;
            again.stop().await;
            report
        }
    };
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("done.txt"), "finished");
}
