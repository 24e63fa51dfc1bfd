//! Storage faults: the alerter's data dir on a small tmpfs (root only: skipped with a printed
//! reason otherwise), filled by a filler file, then freed. While the disk is full the alerter
//! is degraded: `Notify` and `Alert` answer UNAVAILABLE (their callers' outboxes retry),
//! `/readyz` 503 with the reason, `grpc.health.v1` NOT_SERVING, the gauge
//! `ghost_storage_degraded{service="alerter"}` 1, and its own alert
//! `storage_unavailable/alerter`, which it cannot store, goes straight to the ops channel in
//! one direct `chat.postMessage` however many requests it refuses; once space returns it heals
//! by itself, says so, and what was refused is accepted on retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeSlack, SlackRequest};
use tonic_health::pb::health_check_response::ServingStatus;

use ghost_testkit::disk::{self, Tmpfs, build_disk_fault_shim, fill, within};

use crate::helpers::{TestApp, WAIT, config, notify, spawn_with};
use crate::notify::alert_request;

async fn readyz(app: &TestApp) -> (u16, String) {
    disk::readyz(&app.http.clone()).await
}

async fn degraded_gauge(app: &TestApp) -> Option<String> {
    disk::degraded_gauge(&app.http.clone(), "alerter").await
}

/// The service's gRPC health once it says `want` (it may lag `/readyz` by a moment), or the
/// last answer after 5 s.
async fn grpc_health(url: &str, want: ServingStatus) -> ServingStatus {
    disk::grpc_health_settles(url, "ghost.alerter.v1.AlerterService", want).await
}

/// The direct posts of the alerter's own storage alert.
async fn storage_posts(slack: &FakeSlack) -> Vec<SlackRequest> {
    slack
        .requests()
        .await
        .into_iter()
        .filter(|r| {
            r.method == "chat.postMessage" && r.text().contains("storage_unavailable/alerter")
        })
        .collect()
}

#[tokio::test]
async fn a_full_disk_degrades_the_alerter_which_posts_its_own_alert_directly_once_and_heals() {
    let scratch = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&scratch.path().join("disk"), "8m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED a_full_disk_degrades_the_alerter...: {reason}");
            return;
        }
    };
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.data_dir = Some(disk.path.join("alerter"));
    cfg.routing.ops_channel = Some("#ops".to_owned());
    cfg.alerts.group_wait = Duration::ZERO;
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let grpc_addr = app.grpc_url.clone();
    assert!(
        app.client
            .notify(notify("p-before"))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    assert_eq!(readyz(&app).await.0, 200);

    let filler = fill(&disk.path);
    let started = Instant::now();
    // SQLite may still reuse pages it already has: notify until the disk refuses (bounded).
    let mut accepted_during = Vec::new();
    let mut refused = None;
    for n in 0..500 {
        let id = format!("p-during-{n}");
        match app.client.notify(notify(&id)).await {
            Ok(answer) => {
                assert!(answer.into_inner().accepted);
                accepted_during.push(id);
            }
            Err(status) => {
                refused = Some((id, status));
                break;
            }
        }
    }
    let detection = started.elapsed();
    let (refused_id, status) = refused.expect("the full disk never refused a notification");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "storage unavailable: the alerter's disk is full"
    );
    let (code, body) = readyz(&app).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "degraded: the alerter's disk is full");
    assert_eq!(
        grpc_health(&grpc_addr, ServingStatus::NotServing).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        degraded_gauge(&app).await.as_deref(),
        Some("ghost_storage_degraded{service=\"alerter\"} 1")
    );
    // Alerts are refused too, and more notifications: the callers retry them.
    let alert = app
        .client
        .alert(alert_request("queue_stale/MAIN", false, 1))
        .await
        .unwrap_err();
    assert_eq!(alert.code(), tonic::Code::Unavailable, "{alert:?}");
    for _ in 0..5 {
        let again = app.client.notify(notify(&refused_id)).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    }
    // Its own alert went straight to the ops channel, once.
    let posted = within(WAIT, || async { !storage_posts(&slack).await.is_empty() }).await;
    assert!(
        posted.is_some(),
        "no direct post: {:?}",
        slack.requests().await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = storage_posts(&slack).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].body["channel"], "#ops", "{:?}", posts[0].body);
    assert!(
        posts[0].text().contains("disk is full"),
        "{}",
        posts[0].text()
    );

    // Space returns: the alerter heals by itself, with no request to nudge it.
    std::fs::remove_file(&filler).unwrap();
    let healed = within(WAIT, || async { readyz(&app).await.0 == 200 }).await;
    let Some(recovery) = healed else {
        panic!("not ready again: {:?}", readyz(&app).await);
    };
    assert_eq!(
        grpc_health(&grpc_addr, ServingStatus::Serving).await,
        ServingStatus::Serving
    );
    assert_eq!(
        degraded_gauge(&app).await.as_deref(),
        Some("ghost_storage_degraded{service=\"alerter\"} 0")
    );
    let resolved = within(WAIT, || async { storage_posts(&slack).await.len() >= 2 }).await;
    assert!(
        resolved.is_some(),
        "no resolve post: {:?}",
        storage_posts(&slack).await
    );
    let posts = storage_posts(&slack).await;
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts[1].text().contains("resolved"), "{}", posts[1].text());

    // What was refused is accepted on retry, and delivered: nothing lost.
    assert!(
        app.client
            .notify(notify(&refused_id))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    assert!(
        app.client
            .alert(alert_request("queue_stale/MAIN", false, 1))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    let mut expected: Vec<String> = vec!["p-before".to_owned(), refused_id.clone()];
    expected.extend(accepted_during.iter().cloned());
    let delivered = within(WAIT, || async {
        let texts: Vec<String> = slack
            .requests()
            .await
            .into_iter()
            .filter(|r| r.succeeded())
            .map(|r| r.text().to_owned())
            .collect();
        expected
            .iter()
            .all(|id| texts.iter().any(|text| text.contains(id.as_str())))
            && texts.iter().any(|text| text.contains("queue_stale/MAIN"))
    })
    .await;
    assert!(
        delivered.is_some(),
        "not all delivered: {:?}",
        slack.requests().await
    );
    eprintln!(
        "alerter full disk: {} notifications accepted on the full disk before the first refusal \
         ({} ms after the fill); ready again {} ms after space returned",
        accepted_during.len(),
        detection.as_millis(),
        recovery.as_millis()
    );
    app.stop().await;
}

/// A free loopback port, released for the service to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn eio_and_failing_fsync_degrade_the_alerter_binary_which_posts_directly_and_heals() {
    let scratch = tempfile::tempdir().unwrap();
    let shim = match build_disk_fault_shim(scratch.path()) {
        Ok(shim) => shim,
        Err(reason) => {
            eprintln!("SKIPPED eio_and_failing_fsync_degrade_the_alerter_binary...: {reason}");
            return;
        }
    };
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let control = scratch.path().join("fault");
    std::fs::write(&control, "ok").unwrap();
    let slack = FakeSlack::start().await;
    let (grpc, http) = (free_port(), free_port());
    let config = scratch.path().join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[health]\nwatch_executors = false\n[slack]\napi_base_url = \"{}\"\n\
             bot_token = \"xoxb-test-token\"\nchannel = \"#ghost-test\"\n[routing]\n\
             ops_channel = \"#ops\"\n[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
             http_listen = \"127.0.0.1:{http}\"\ndrain_grace = \"0s\"\n",
            data.display(),
            slack.base_url()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let _child = disk::spawn_under_shim(
        std::path::Path::new(env!("CARGO_BIN_EXE_alerter")),
        &config,
        &shim,
        &data,
        &control,
        &scratch.path().join("alerter.log"),
        &base,
    )
    .await;
    let ready = || disk::readyz(&base);
    let grpc_url = format!("http://127.0.0.1:{grpc}");
    let mut client =
        ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient::connect(
            grpc_url.clone(),
        )
        .await
        .unwrap();
    for (n, mode) in ["eio", "fsync"].into_iter().enumerate() {
        let id = format!("p-{mode}");
        std::fs::write(&control, mode).unwrap();
        // The shim reads its control file at most every 5 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = client.notify(notify(&id)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{mode}: {refused:?}"
        );
        assert!(
            refused
                .message()
                .starts_with("storage unavailable: the alerter's disk "),
            "{mode}: {refused:?}"
        );
        let (status, body) = ready().await;
        assert_eq!(status, 503, "{mode}: {body}");
        assert!(
            body.starts_with("degraded: the alerter's disk "),
            "{mode}: {body}"
        );
        assert_eq!(
            grpc_health(&grpc_url, ServingStatus::NotServing).await,
            ServingStatus::NotServing,
            "{mode}"
        );
        // One direct post for the first fault, then one when it healed; a second fault within
        // `MIN_RAISE_GAP` (60 s) of the first post is only logged (a flapping disk does not
        // flood the ops channel), and its heal is not posted either.
        if n == 0 {
            let posted = within(WAIT, || async { !storage_posts(&slack).await.is_empty() }).await;
            assert!(
                posted.is_some(),
                "{mode}: no direct post: {:?}",
                slack.requests().await
            );
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(storage_posts(&slack).await.len(), 2, "{mode}");
        }

        std::fs::write(&control, "ok").unwrap();
        let healed = within(WAIT, || async { ready().await.0 == 200 }).await;
        let Some(recovery) = healed else {
            panic!("{mode}: not ready again: {:?}", ready().await);
        };
        let resolved = within(WAIT, || async { storage_posts(&slack).await.len() >= 2 }).await;
        assert!(
            resolved.is_some(),
            "{mode}: no resolve post: {:?}",
            storage_posts(&slack).await
        );
        // The caller's retry is accepted once, after the fault, and delivered.
        assert!(
            client
                .notify(notify(&id))
                .await
                .unwrap()
                .into_inner()
                .accepted,
            "{mode}"
        );
        assert!(
            !client
                .notify(notify(&id))
                .await
                .unwrap()
                .into_inner()
                .accepted,
            "{mode}"
        );
        let delivered = within(WAIT, || async {
            slack
                .requests()
                .await
                .iter()
                .any(|r| r.succeeded() && r.text().contains(id.as_str()))
        })
        .await;
        assert!(delivered.is_some(), "{mode}: {:?}", slack.requests().await);
        eprintln!(
            "alerter {mode}: detected on the first refused notification; ready again {} ms after \
             the fault stopped",
            recovery.as_millis()
        );
    }
    // The direct path: one raise and one resolve for the two faults.
    let posts = storage_posts(&slack).await;
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(
        posts[0].text().contains("returns I/O errors"),
        "{}",
        posts[0].text()
    );
    assert!(posts[1].text().contains("resolved"), "{}", posts[1].text());
}
