//! Two summarizers on one PostgreSQL database share their outboxes through claims
//! (`FOR UPDATE SKIP LOCKED`, `claimed_by`, `claim_until`): each notification is sent by one
//! replica, once; the rows a killed replica had claimed are sent by the other once its claims
//! have run out.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::config::Secret;
use ghost_testkit::postgres::TempPostgres;

use crate::helpers::{
    FakeAlerter, closed_port, created, record, reserve_port, spawn_with, test_config,
};

/// The claim timeout of these tests.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Each (patch id, attempt) notified, with how many times.
fn counted(alerter: &FakeAlerter) -> BTreeMap<(String, u32), usize> {
    let mut counts = BTreeMap::new();
    for request in alerter.received() {
        *counts
            .entry((request.patch_id, request.attempt))
            .or_insert(0) += 1;
    }
    counts
}

/// Notifications still in the outbox, and how many of them are claimed at `now` (Unix ms).
async fn outbox_rows(url: &str) -> (i64, i64) {
    let pool = crate::helpers::summarizer_pool(url).await;
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE claim_until > \
         (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint) FROM outbox",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (sqlx::Row::get(&row, 0), sqlx::Row::get(&row, 1))
}

/// The outbox's claims against the database's clock, for a failure message.
async fn outbox_claims(url: &str) -> String {
    let pool = crate::helpers::summarizer_pool(url).await;
    let rows = sqlx::query(
        "SELECT id, tries, next_at_ms - n, claimed_by, claim_until - n FROM outbox, \
         (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint AS n) AS now ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut text = String::new();
    for row in &rows {
        let id: i64 = sqlx::Row::get(row, 0);
        let tries: i64 = sqlx::Row::get(row, 1);
        let due_in: i64 = sqlx::Row::get(row, 2);
        let by: Option<String> = sqlx::Row::get(row, 3);
        let until: Option<i64> = sqlx::Row::get(row, 4);
        text.push_str(&format!(
            "#{id} tries {tries} due in {due_in} ms, by {by:?} for {until:?} ms; "
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_notify_each_attempt_exactly_once() {
    let test = "replicas::two_replicas_on_one_database_notify_each_attempt_exactly_once";
    let Some(server) = TempPostgres::start_or_skip(test) else {
        return;
    };
    let url = server.create_database();
    let alerter = FakeAlerter::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica = |dir: &std::path::Path| {
        let mut config = test_config(dir, Some(alerter.url.clone()));
        config.store.url = Some(Secret::new(url.clone()));
        config.outbox_claim_timeout = CLAIM_TIMEOUT;
        config
    };
    let mut a = spawn_with(replica(dir_a.path())).await;
    let mut b = spawn_with(replica(dir_b.path())).await;

    // 30 patches, two attempts each, recorded alternately on the two replicas: both outboxes
    // see every row (one table) and both are woken.
    let mut expected = Vec::new();
    for patch in 0..30 {
        for attempt in 1..=2 {
            let id = format!("rep-{patch}");
            let app = if (patch + attempt) % 2 == 0 {
                &mut a
            } else {
                &mut b
            };
            let status = if attempt == 1 {
                PatchStatus::Failed
            } else {
                PatchStatus::Succeeded
            };
            assert!(created(&mut app.client, record(&id, attempt, status)).await);
            expected.push((id, attempt));
        }
    }
    let arrived = alerter.wait_for(expected.len()).await;
    assert!(arrived.len() >= expected.len(), "{} arrived", arrived.len());
    // Until the outbox is empty (both replicas settled), then a few polls more for a late
    // duplicate.
    let drained = ghost_testkit::disk::within(Duration::from_secs(10), || {
        let url = url.clone();
        async move { outbox_rows(&url).await.0 == 0 }
    })
    .await;
    assert!(drained.is_some(), "the outbox did not drain");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let counts = counted(&alerter);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "notified more than once: {twice:?}");
    expected.sort();
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), expected);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_claimed_notifications_are_sent_by_the_other_after_the_claim_timeout() {
    let test = "replicas::a_killed_replicas_claimed_notifications_are_sent_by_the_other...";
    let Some(server) = TempPostgres::start_or_skip(test) else {
        return;
    };
    let url = server.create_database();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_the_database = |dir: &std::path::Path, alerter: String| {
        let mut config = test_config(dir, Some(alerter));
        config.store.url = Some(Secret::new(url.clone()));
        config.outbox_claim_timeout = CLAIM_TIMEOUT;
        config
    };
    // The rows are recorded by a replica whose alerter is away (nothing listens on its port),
    // which then stops: they wait in the outbox, unclaimed.
    let rows = 8;
    let refusing = closed_port();
    let away = format!("http://{}", refusing.addr);
    let mut recorder = spawn_with(on_the_database(dir_b.path(), away)).await;
    for patch in 0..rows {
        let request = record(&format!("dead-{patch}"), 1, PatchStatus::Failed);
        assert!(created(&mut recorder.client, request).await);
    }
    recorder.stop().await;

    // Replica A (a process) claims them all in its first round and sends them to an alerter
    // that takes every call and never answers; it is killed while it holds the claims.
    let hung = FakeAlerter::start_slow(Duration::from_secs(3_600)).await;
    let (grpc, http) = (reserve_port(), reserve_port());
    let mut replica_a = tokio::process::Command::new(env!("CARGO_BIN_EXE_summarizer"))
        .env("GHOST_SUMMARIZER__DATA_DIR", dir_a.path())
        .env("GHOST_SUMMARIZER__SERVER__GRPC_LISTEN", grpc.to_string())
        .env("GHOST_SUMMARIZER__SERVER__HTTP_LISTEN", http.to_string())
        .env("GHOST_SUMMARIZER__STORE__URL", &url)
        .env("GHOST_SUMMARIZER__ALERTER_URL", &hung.url)
        .env("GHOST_SUMMARIZER__OUTBOX_CLAIM_TIMEOUT", "3s")
        .env("GHOST_SUMMARIZER__ARCHIVE_AFTER", "36500days")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the summarizer binary");
    // (Polled: the slow fake signals an arrival only once it answers.)
    let all_sent = ghost_testkit::disk::within(Duration::from_secs(20), || {
        let sent = hung.received().len();
        async move { sent >= rows }
    })
    .await;
    assert!(
        all_sent.is_some(),
        "{} of {rows} sent",
        hung.received().len()
    );
    replica_a.kill().await.expect("SIGKILL");
    let killed = Instant::now();
    let (pending, claimed) = outbox_rows(&url).await;
    assert_eq!(pending, i64::try_from(rows).unwrap());
    assert_eq!(
        claimed,
        pending,
        "every row is still claimed by the dead replica: {}",
        outbox_claims(&url).await
    );

    // Replica B, on the same database with a working alerter, sends them once A's claims ran out.
    let alerter = FakeAlerter::start().await;
    let b = spawn_with(on_the_database(dir_b.path(), alerter.url.clone())).await;
    let taken_over = ghost_testkit::disk::within(Duration::from_secs(40), || {
        let arrived = alerter.received().len();
        async move { arrived >= rows }
    })
    .await
    .map(|_| killed.elapsed());
    assert!(taken_over.is_some(), "{:?}", counted(&alerter));
    let counts = counted(&alerter);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let drained = ghost_testkit::disk::within(Duration::from_secs(10), || {
        let url = url.clone();
        async move { outbox_rows(&url).await.0 == 0 }
    })
    .await;
    assert!(drained.is_some(), "{}", outbox_claims(&url).await);
    eprintln!(
        "claims of a killed replica (claim timeout 3 s) taken over {} ms after the kill",
        taken_over.unwrap_or_default().as_millis()
    );
    b.stop().await;
}
