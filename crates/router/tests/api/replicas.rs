//! Router replicas on one PostgreSQL (active-active): two real router Apps share one database
//! in each test. One lease per target across replicas and FIFO kept; work, Cancel and the end
//! of a patch cross from one replica to the other; a restarting replica leaves the others'
//! leases alone; the failover time after a replica is killed (printed, not asserted). Plus the
//! PostgreSQL server stopped and started again under a running router. PostgreSQL only:
//! skipped, with the reason printed, when it is not installed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ghost_proto::executor::v1::router_message;
use ghost_proto::router::v1::{EventsRequest, PatchStatus, SubmitRequest, WaitRequest};

use ghost_testkit::wait::{POLL_INTERVAL, wait_for, wait_until};

use crate::helpers::{
    PATIENCE, POSTGRES, Postgres, TestExecutor, TestRouter, TestSummarizer, cancel, config,
    outbox_settled, patch, spawn_killable_router, spawn_router, state, submit, wait_for_status,
};

/// Runs `test` with a PostgreSQL of its own as the store of every router it configures.
async fn on_postgres<F: std::future::Future<Output = ()>>(name: &str, test: F) {
    let Some(server) = Postgres::start_or_skip(name) else {
        return;
    };
    POSTGRES.scope(Some(server), test).await;
}

/// How many times the trail of `id` shows `status`.
async fn events_with(router: &TestRouter, id: &str, status: &str) -> usize {
    let events = router
        .client
        .clone()
        .events(EventsRequest { id: id.to_owned() })
        .await
        .expect("events")
        .into_inner()
        .events;
    events.iter().filter(|event| event.status == status).count()
}

/// Plays one executor until `done` patches were finished by all: each assignment must find
/// the target free (`busy`), is held a little, then succeeds. Returns the ids it ran, in order,
/// and the executor (still connected: its last result may not be stored yet).
async fn run_executor(
    mut executor: TestExecutor,
    busy: Arc<AtomicBool>,
    finished: Arc<AtomicUsize>,
    done: usize,
) -> (Vec<String>, TestExecutor) {
    let mut ran = Vec::new();
    let work = async {
        while finished.load(Ordering::SeqCst) < done {
            let Some(router_message::Kind::Assign(assign)) =
                executor.try_next(Duration::from_millis(200)).await
            else {
                continue;
            };
            assert!(
                !busy.swap(true, Ordering::SeqCst),
                "two leases of one target at once (second: {assign:?})"
            );
            ran.push(assign.patch.as_ref().expect("patch").id.clone());
            // Held a little, so a second lease of the target meanwhile would be seen.
            tokio::time::sleep(Duration::from_millis(30)).await;
            busy.store(false, Ordering::SeqCst);
            finished.fetch_add(1, Ordering::SeqCst);
            executor.finish(&assign, PatchStatus::Succeeded).await;
        }
    };
    // Bounded: patches never finished end the work here, and the caller's count fails.
    let _ = tokio::time::timeout(PATIENCE * 3, work).await;
    (ran, executor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_lease_one_target_twice_at_once_and_keep_fifo() {
    on_postgres("replicas::one_lease_per_target", async {
        const PATCHES: usize = 24;
        let dir = tempfile::tempdir().unwrap();
        let a = spawn_router(config(dir.path())).await;
        let b = spawn_router(config(dir.path())).await;
        let ids: Vec<String> = (0..PATCHES).map(|n| format!("p{n:02}")).collect();
        for (n, id) in ids.iter().enumerate() {
            submit(if n % 2 == 0 { &a } else { &b }, patch(id, "MAIN")).await;
        }
        let busy = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let on_a = TestExecutor::connect(&a, "exec-a", &["MAIN"]).await;
        let on_b = TestExecutor::connect(&b, "exec-b", &["MAIN"]).await;
        let first = tokio::spawn(run_executor(
            on_a,
            Arc::clone(&busy),
            Arc::clone(&finished),
            PATCHES,
        ));
        let second = tokio::spawn(run_executor(
            on_b,
            Arc::clone(&busy),
            Arc::clone(&finished),
            PATCHES,
        ));
        let ((ran_a, _on_a), (ran_b, _on_b)) = (first.await.unwrap(), second.await.unwrap());
        let mut ran: Vec<&String> = ran_a.iter().chain(&ran_b).collect();
        ran.sort();
        ran.dedup();
        assert_eq!(
            ran.len(),
            PATCHES,
            "each patch ran once: {ran_a:?} {ran_b:?}"
        );
        assert!(
            !ran_a.is_empty() && !ran_b.is_empty(),
            "both replicas' executors got work: {ran_a:?} {ran_b:?}"
        );
        for id in &ids {
            wait_for_status(&a, id, PatchStatus::Succeeded).await;
            assert_eq!(events_with(&b, id, "succeeded").await, 1, "{id} ended once");
        }
        // FIFO across replicas: the patches were leased in the order they were submitted.
        let mut by_lease: Vec<String> = Vec::new();
        for id in ids.iter() {
            let events = a
                .client
                .clone()
                .events(EventsRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner()
                .events;
            let at = events
                .iter()
                .find(|event| event.status == "leased")
                .map(|event| event.at_unix_us)
                .expect("leased once");
            by_lease.push(format!("{at:020}{id}"));
        }
        by_lease.sort();
        let order: Vec<String> = by_lease.iter().map(|key| key[20..].to_owned()).collect();
        assert_eq!(order, ids, "leased in submission order");
        eprintln!(
            "replicas: {} patches on one target, {} by the executor on A and {} on B",
            PATCHES,
            ran_a.len(),
            ran_b.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_cancel_and_the_end_of_a_patch_cross_from_one_replica_to_the_other() {
    on_postgres("replicas::crossing", async {
        let dir = tempfile::tempdir().unwrap();
        let a = spawn_router(config(dir.path())).await;
        let b = spawn_router(config(dir.path())).await;
        let mut on_b = TestExecutor::connect(&b, "exec-b", &["MAIN"]).await;
        // Submitted through A, run by the executor connected to B.
        let started = Instant::now();
        submit(&a, patch("crossing", "MAIN")).await;
        let assign = on_b.assignment().await;
        eprintln!(
            "replicas: submit on A to Assign on B took {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(assign.patch.as_ref().unwrap().id, "crossing");
        // A long-poll on A sees the patch end on B.
        let waiting = {
            let mut client = a.client.clone();
            tokio::spawn(async move {
                client
                    .wait(WaitRequest {
                        id: "crossing".to_owned(),
                        wait_ms: 30_000,
                    })
                    .await
            })
        };
        // Cancel asked on A reaches the executor on B.
        cancel(&a, "crossing", "someone").await;
        let cancelled = on_b.cancellation().await;
        assert_eq!(cancelled.fencing_token, assign.fencing_token);
        assert_eq!(cancelled.reason, "cancelled by someone");
        let ending = Instant::now();
        on_b.finish(&assign, PatchStatus::Cancelled).await;
        let ended = tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("the wait on A answers")
            .unwrap()
            .expect("wait")
            .into_inner()
            .state
            .unwrap();
        eprintln!(
            "replicas: end on B to the long-poll answer on A took {} ms",
            ending.elapsed().as_millis()
        );
        assert_eq!(ended.status, PatchStatus::Cancelled as i32);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_replica_leaves_the_leases_of_the_others_alone() {
    on_postgres("replicas::restart", async {
        let dir = tempfile::tempdir().unwrap();
        let a = spawn_router(config(dir.path())).await;
        let mut on_a = TestExecutor::connect(&a, "exec-a", &["MAIN"]).await;
        submit(&a, patch("held", "MAIN")).await;
        let assign = on_a.assignment().await;
        // Another replica starts, stops and starts again meanwhile.
        let b = spawn_router(config(dir.path())).await;
        b.stop().await;
        let b = spawn_router(config(dir.path())).await;
        let during = state(&b, "held").await;
        assert_eq!(during.status, PatchStatus::Leased as i32, "{during:?}");
        assert_eq!(during.attempt, assign.attempt);
        on_a.finish(&assign, PatchStatus::Succeeded).await;
        let done = wait_for_status(&b, "held", PatchStatus::Succeeded).await;
        assert_eq!(done.attempt, 1, "never interrupted");
        assert_eq!(events_with(&a, "held", "interrupted").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_the_replica_holding_a_lease_is_killed() {
    on_postgres("replicas::failover", async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.lease_timeout = Duration::from_secs(2);
        cfg.heartbeat_interval = Duration::from_millis(200);
        let a = spawn_killable_router(cfg.clone()).await;
        let b = spawn_router(cfg).await;
        let mut on_a = TestExecutor::connect(&a.router, "exec-a", &["MAIN"]).await;
        submit(&b, patch("first", "MAIN")).await;
        submit(&b, patch("second", "MAIN")).await;
        let first = on_a.assignment().await;
        let mut on_b = TestExecutor::connect(&b, "exec-b", &["MAIN"]).await;
        on_b.keep_alive(Duration::from_millis(200));
        on_b.expect_silence(Duration::from_millis(300)).await;
        let killed = Instant::now();
        a.kill();
        let next = on_b.assignment().await;
        let failover = killed.elapsed();
        eprintln!(
            "replicas: failover (kill of the replica holding the lease to the next lease on \
             the other, lease_timeout 2 s) took {} ms",
            failover.as_millis()
        );
        assert_eq!(next.patch.as_ref().unwrap().id, "first");
        assert_eq!(next.attempt, 2);
        assert!(next.fencing_token > first.fencing_token);
        drop(on_a);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_refuses_new_work_then_resumes_and_loses_nothing() {
    let Some(server) = Postgres::start_or_skip("replicas::postgres_restart") else {
        return;
    };
    let postgres = Arc::clone(&server);
    POSTGRES
        .scope(Some(server), async move {
            let dir = tempfile::tempdir().unwrap();
            let router = spawn_router(config(dir.path())).await;
            let mut executor = TestExecutor::connect(&router, "exec", &["MAIN"]).await;
            executor.keep_alive(Duration::from_millis(100));
            let ids: Vec<String> = (0..5).map(|n| format!("before-{n}")).collect();
            for id in &ids {
                submit(&router, patch(id, "MAIN")).await;
            }
            let first = executor.assignment().await;
            postgres.server.stop();
            // Its result arrives while the server is down: kept and stored once it is back.
            executor.finish(&first, PatchStatus::Succeeded).await;
            let refused = router
                .client
                .clone()
                .submit(SubmitRequest {
                    patch: Some(patch("during", "MAIN")),
                    ..Default::default()
                })
                .await
                .expect_err("no 202 while the database is down");
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            let ready = format!("http://{}/readyz", router.http);
            let (status, body) = readyz_until(&ready, 503).await;
            assert_eq!(status, 503);
            assert!(
                body.contains("the router's database is unreachable"),
                "{body}"
            );
            postgres.server.restart();
            let restarted = Instant::now();
            readyz_until(&ready, 200).await;
            eprintln!(
                "stores: ready again {} ms after PostgreSQL started",
                restarted.elapsed().as_millis()
            );
            for _ in 1..ids.len() {
                let assign = executor.assignment().await;
                executor.finish(&assign, PatchStatus::Succeeded).await;
            }
            for id in &ids {
                wait_for_status(&router, id, PatchStatus::Succeeded).await;
                assert_eq!(events_with(&router, id, "succeeded").await, 1, "{id}");
            }
            let never = router
                .client
                .clone()
                .get(ghost_proto::router::v1::GetRequest {
                    id: "during".to_owned(),
                })
                .await
                .expect_err("the refused patch was not stored");
            assert_eq!(never.code(), tonic::Code::NotFound);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_send_one_outcome_twice() {
    on_postgres("replicas::outbox_claims", async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let summarizer = TestSummarizer::new(Duration::from_millis(100), "");
        let _stop = summarizer.serve(listener);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.summarizer_url = Some(url);
        let a = spawn_router(cfg.clone()).await;
        let b = spawn_router(cfg).await;
        // Queued with no executor, then cancelled, half on each replica: each ends at once
        // with an outcome that both replicas' outbox loops see due.
        let ids: Vec<String> = (0..20).map(|n| format!("outcome-{n:02}")).collect();
        for (n, id) in ids.iter().enumerate() {
            let router = if n % 2 == 0 { &a } else { &b };
            submit(router, patch(id, "IDLE")).await;
            cancel(router, id, "test").await;
        }
        summarizer.wait_records(ids.len()).await;
        // Every row settled as delivered (none can be claimed again) and no send still out.
        outbox_settled(&a, "outcomes").await;
        wait_for("no record in flight", async || {
            match summarizer.in_flight.load(Ordering::SeqCst) {
                0 => Ok(()),
                out => Err(out),
            }
        })
        .await;
        let calls = summarizer.calls.lock().unwrap().clone();
        for id in &ids {
            assert_eq!(calls.get(id), Some(&1), "{id} sent once: {calls:?}");
        }
    })
    .await;
}

/// Polls `/readyz` (bounded) until it answers `status`; its status and body.
async fn readyz_until(url: &str, status: u16) -> (u16, String) {
    let what = format!("{url} to answer {status}");
    wait_until(&what, PATIENCE * 2, POLL_INTERVAL, async || {
        let response = reqwest::get(url).await.map_err(|err| err.to_string())?;
        let got = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        if got == status {
            Ok((got, body))
        } else {
            Err(format!("{got}: {body}"))
        }
    })
    .await
}
