//! Storage faults: the summarizer's data dir on a small tmpfs (root only: skipped with a
//! printed reason otherwise), filled by a filler file, then freed. While the disk is full the
//! summarizer is degraded: `Record` answers UNAVAILABLE (the router's outbox retries it),
//! `/readyz` 503 with the reason, `grpc.health.v1` NOT_SERVING, the gauge
//! `ghost_storage_degraded{service="summarizer"}` 1 and `storage_unavailable/summarizer` raised
//! at the alerter directly; once space returns it heals by itself and records again.

use std::time::{Duration, Instant};

use ghost_proto::router::v1::PatchStatus;
use tonic_health::pb::health_check_response::ServingStatus;

use ghost_testkit::disk::{self, Tmpfs, build_disk_fault_shim, fill, within};

use crate::helpers::{
    FakeAlerter, TestApp, created, record, record_error, spawn_summarizer, summary,
};

async fn readyz(app: &TestApp) -> (u16, String) {
    disk::readyz(&format!("http://{}", app.http_addr)).await
}

async fn degraded_gauge(app: &TestApp) -> Option<String> {
    disk::degraded_gauge(&format!("http://{}", app.http_addr), "summarizer").await
}

/// The service's gRPC health once it says `want` (it may lag `/readyz` by a moment), or the
/// last answer after 5 s.
async fn grpc_health(url: &str, want: ServingStatus) -> ServingStatus {
    disk::grpc_health_settles(url, "ghost.summarizer.v1.SummarizerService", want).await
}

#[tokio::test]
async fn a_full_disk_degrades_the_summarizer_which_refuses_records_alerts_and_heals_by_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&scratch.path().join("disk"), "8m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED a_full_disk_degrades_the_summarizer...: {reason}");
            return;
        }
    };
    let alerter = FakeAlerter::start().await;
    let mut app = spawn_summarizer(&disk.path, Some(alerter.url.clone())).await;
    assert!(
        created(
            &mut app.client,
            record("p-before", 1, PatchStatus::Succeeded)
        )
        .await
    );
    let grpc_addr = format!("http://{}", app.grpc_addr);
    assert_eq!(readyz(&app).await.0, 200);

    let filler = fill(&disk.path);
    let started = Instant::now();
    let refused = record_error(
        &mut app.client,
        record("p-during", 1, PatchStatus::Succeeded),
    )
    .await;
    let detection = started.elapsed();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message(),
        "storage unavailable: the summarizer's disk is full"
    );
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "degraded: the summarizer's disk is full");
    assert_eq!(
        grpc_health(&grpc_addr, ServingStatus::NotServing).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        degraded_gauge(&app).await.as_deref(),
        Some("ghost_storage_degraded{service=\"summarizer\"} 1")
    );
    let raised = within(Duration::from_secs(10), || async {
        alerter
            .alerts()
            .iter()
            .any(|alert| alert.key == "storage_unavailable/summarizer" && !alert.resolved)
    })
    .await;
    assert!(raised.is_some(), "no alert: {:?}", alerter.alerts());
    let alert = alerter.alerts()[0].clone();
    assert_eq!(alert.source, "summarizer");
    assert_eq!(alert.labels.get("kind").map(String::as_str), Some("full"));
    // Still refused while degraded; the caller (the router's outbox) retries.
    let again = record_error(
        &mut app.client,
        record("p-during", 1, PatchStatus::Succeeded),
    )
    .await;
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    // What was recorded before is still served.
    summary(&mut app.client, "p-before").await;

    // Space returns: the summarizer heals by itself, with no request to nudge it.
    std::fs::remove_file(&filler).unwrap();
    let healed = within(Duration::from_secs(10), || async {
        readyz(&app).await.0 == 200
    })
    .await;
    let Some(recovery) = healed else {
        panic!("not ready again: {:?}", readyz(&app).await);
    };
    assert_eq!(
        grpc_health(&grpc_addr, ServingStatus::Serving).await,
        ServingStatus::Serving
    );
    assert_eq!(
        degraded_gauge(&app).await.as_deref(),
        Some("ghost_storage_degraded{service=\"summarizer\"} 0")
    );
    let resolved = within(Duration::from_secs(10), || async {
        alerter
            .alerts()
            .iter()
            .any(|alert| alert.key == "storage_unavailable/summarizer" && alert.resolved)
    })
    .await;
    assert!(resolved.is_some(), "not resolved: {:?}", alerter.alerts());
    // The retried record is stored once, and later ones too: nothing lost.
    for id in ["p-during", "p-after"] {
        assert!(
            created(&mut app.client, record(id, 1, PatchStatus::Succeeded)).await,
            "{id}"
        );
    }
    let got = summary(&mut app.client, "p-during").await;
    assert!(
        got.markdown.starts_with("# ✅ p-during"),
        "{}",
        got.markdown
    );
    let notified = alerter.wait_for(3).await;
    let mut ids: Vec<_> = notified.iter().map(|n| n.patch_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["p-after", "p-before", "p-during"]);
    eprintln!(
        "summarizer full disk: detected on the first refused record after {} ms; ready again {} ms \
         after space returned",
        detection.as_millis(),
        recovery.as_millis()
    );
    app.stop().await;
}

#[tokio::test]
async fn eio_and_failing_fsync_degrade_the_summarizer_binary_and_it_heals_when_they_stop() {
    let scratch = tempfile::tempdir().unwrap();
    let shim = match build_disk_fault_shim(scratch.path()) {
        Ok(shim) => shim,
        Err(reason) => {
            eprintln!("SKIPPED eio_and_failing_fsync_degrade_the_summarizer_binary...: {reason}");
            return;
        }
    };
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let control = scratch.path().join("fault");
    std::fs::write(&control, "ok").unwrap();
    let alerter = FakeAlerter::start().await;
    let grpc = crate::helpers::reserve_port();
    let http = crate::helpers::reserve_port();
    let config = scratch.path().join("summarizer.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nalerter_url = \"{}\"\n[server]\ngrpc_listen = \"{grpc}\"\n\
             http_listen = \"{http}\"\ndrain_grace = \"0s\"\n",
            data.display(),
            alerter.url
        ),
    )
    .unwrap();
    let base = format!("http://{http}");
    let _child = disk::spawn_under_shim(
        std::path::Path::new(env!("CARGO_BIN_EXE_summarizer")),
        &config,
        &shim,
        &data,
        &control,
        &scratch.path().join("summarizer.log"),
        &base,
    )
    .await;
    let ready = || disk::readyz(&base);
    let mut client =
        ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient::connect(
            format!("http://{grpc}"),
        )
        .await
        .unwrap();
    let grpc_url = format!("http://{grpc}");
    for (n, mode) in ["eio", "fsync"].into_iter().enumerate() {
        let id = format!("p-{mode}");
        std::fs::write(&control, mode).unwrap();
        // The shim reads its control file at most every 5 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = client
            .record(record(&id, 1, PatchStatus::Succeeded))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{mode}: {refused:?}"
        );
        assert!(
            refused
                .message()
                .starts_with("storage unavailable: the summarizer's disk "),
            "{mode}: {refused:?}"
        );
        let (status, body) = ready().await;
        assert_eq!(status, 503, "{mode}: {body}");
        assert!(
            body.starts_with("degraded: the summarizer's disk "),
            "{mode}: {body}"
        );
        assert_eq!(
            grpc_health(&grpc_url, ServingStatus::NotServing).await,
            ServingStatus::NotServing,
            "{mode}"
        );
        let raised = within(Duration::from_secs(10), || async {
            alerter
                .alerts()
                .iter()
                .filter(|alert| alert.key == "storage_unavailable/summarizer" && !alert.resolved)
                .count()
                > n
        })
        .await;
        assert!(raised.is_some(), "{mode}: no alert: {:?}", alerter.alerts());

        std::fs::write(&control, "ok").unwrap();
        let healed = within(Duration::from_secs(10), || async { ready().await.0 == 200 }).await;
        let Some(recovery) = healed else {
            panic!("{mode}: not ready again: {:?}", ready().await);
        };
        let resolved = within(Duration::from_secs(10), || async {
            alerter
                .alerts()
                .iter()
                .filter(|alert| alert.key == "storage_unavailable/summarizer" && alert.resolved)
                .count()
                > n
        })
        .await;
        assert!(
            resolved.is_some(),
            "{mode}: not resolved: {:?}",
            alerter.alerts()
        );
        // The caller's retry is stored once, after the fault.
        let recorded = client
            .record(record(&id, 1, PatchStatus::Succeeded))
            .await
            .unwrap()
            .into_inner();
        assert!(recorded.created, "{mode}");
        let got = summary(&mut client, &id).await;
        assert!(
            got.markdown.starts_with(&format!("# ✅ {id}")),
            "{}",
            got.markdown
        );
        eprintln!(
            "summarizer {mode}: detected on the first refused record; ready again {} ms after \
             the fault stopped",
            recovery.as_millis()
        );
    }
}
