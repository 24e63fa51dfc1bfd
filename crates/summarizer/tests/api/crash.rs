//! Must-show 2: kill -9 of the real summarizer binary at arbitrary moments while it records
//! leaves every summary file either old or new, never half-written, and the next start serves
//! and heals them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ghost_proto::router::v1::{ApplyReport, CommandReport, PatchStatus};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_testkit::wait_for;
use summarizer::doc::SummaryDoc;

use crate::helpers::{T0, TRACE_ID, reserve_port, spawn_summarizer, summary};
use crate::snapshot;

const TRIALS: u64 = 30;

fn big_output() -> String {
    (0..4_000)
        .map(|i| format!("line {i:05} of a long build log\n"))
        .collect()
}

fn outcome(patch_id: &str, attempt: u32) -> RecordRequest {
    RecordRequest {
        outcome: Some(Outcome {
            notify: String::new(),
            priority: String::new(),
            key_name: String::new(),
            patch_id: patch_id.to_owned(),
            target: "MAIN".to_owned(),
            attempt,
            description: "crash test".to_owned(),
            report: Some(ApplyReport {
                status: if attempt.is_multiple_of(2) {
                    PatchStatus::Succeeded
                } else {
                    PatchStatus::RolledBack
                } as i32,
                commands: vec![CommandReport {
                    command: "make".to_owned(),
                    exit_code: Some(0),
                    output_tail: big_output(),
                    kind: "command".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            trace_id: TRACE_ID.to_owned(),
            created_unix_ms: T0,
            finished_unix_ms: T0 + i64::from(attempt),
            intake_warnings: Vec::new(),
        }),
    }
}

/// Deterministic pseudo-random delays (xorshift), so a failure can be replayed.
fn delay_ms(trial: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (trial + 1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    5 + x % 60
}

/// Every file under `summaries/` is complete: JSON parses, Markdown has its first and last line,
/// artifacts hold exactly the output. Returns the attempts in the JSON of `crash`.
fn assert_no_torn_files(data_dir: &Path) -> usize {
    let main = data_dir.join("summaries/MAIN");
    let mut crash_attempts = 0;
    for (path, bytes) in snapshot(&main) {
        let name = path.rsplit('/').next().unwrap().to_owned();
        if name.starts_with(".tmp-") {
            continue; // never read; swept at start
        }
        if name.ends_with(".json") && name.starts_with("summary-") {
            let doc: SummaryDoc =
                serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("torn {path}: {err}"));
            if doc.patch_id.as_str() == "crash" {
                crash_attempts = doc.attempts.len();
            }
        } else if name.ends_with(".md") {
            let text = String::from_utf8(bytes).unwrap();
            let id = name.trim_start_matches("summary-").trim_end_matches(".md");
            assert!(text.starts_with("# "), "torn {path}");
            assert!(
                text.ends_with(&format!("\npatchName: {id}\n")),
                "torn {path}"
            );
        } else if name.ends_with(".log") {
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                big_output(),
                "torn {path}"
            );
        } else if name == "patch-manifest.json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|err| panic!("torn {path}: {err}"));
        }
    }
    crash_attempts
}

async fn connect(port: std::net::SocketAddr) -> SummarizerServiceClient<tonic::transport::Channel> {
    let what = format!("the summarizer binary to answer on {port}");
    wait_for(&what, async || {
        SummarizerServiceClient::connect(format!("http://{port}")).await
    })
    .await
}

#[tokio::test]
async fn kill_9_while_recording_never_leaves_a_half_written_summary() {
    let dir = tempfile::tempdir().unwrap();
    let next_attempt = Arc::new(AtomicU32::new(1));
    let mut previous_attempts = 0;
    let mut kills_mid_write = 0;
    for trial in 0..TRIALS {
        let grpc = reserve_port();
        let http = reserve_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_summarizer"))
            .env("GHOST_SUMMARIZER__DATA_DIR", dir.path())
            .env("GHOST_SUMMARIZER__SERVER__GRPC_LISTEN", grpc.to_string())
            .env("GHOST_SUMMARIZER__SERVER__HTTP_LISTEN", http.to_string())
            .env("GHOST_SUMMARIZER__ARCHIVE_AFTER", "36500days")
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the summarizer binary");
        let client = connect(grpc).await;
        let writer = {
            let next_attempt = next_attempt.clone();
            let mut client = client.clone();
            tokio::spawn(async move {
                loop {
                    let attempt = next_attempt.fetch_add(1, Ordering::SeqCst);
                    let fresh = format!("crash-{attempt}");
                    if client.record(outcome("crash", attempt)).await.is_err()
                        || client.record(outcome(&fresh, 1)).await.is_err()
                    {
                        return;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms(trial))).await;
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().unwrap();
        let _ = writer.await;
        if snapshot(&dir.path().join("summaries"))
            .keys()
            .any(|k| k.contains(".tmp-"))
        {
            kills_mid_write += 1;
        }
        let attempts = assert_no_torn_files(dir.path());
        assert!(
            attempts >= previous_attempts,
            "history went back: {attempts} < {previous_attempts}"
        );
        previous_attempts = attempts;
    }
    eprintln!(
        "{TRIALS} kills, {kills_mid_write} left a temp file behind (caught mid-write), {} attempts recorded",
        previous_attempts
    );
    assert!(previous_attempts > 0, "no trial got to record anything");

    // The next start serves everything and heals what a kill left unfinished.
    let mut app = spawn_summarizer(dir.path(), None).await;
    assert!(
        !snapshot(&dir.path().join("summaries"))
            .keys()
            .any(|k| k.contains(".tmp-"))
    );
    let last = next_attempt.load(Ordering::SeqCst) - 1;
    for attempt in 1..=last {
        app.client.record(outcome("crash", attempt)).await.unwrap();
    }
    let summary = summary(&mut app.client, "crash").await;
    assert_eq!(summary.attempts, last);
    assert_eq!(assert_no_torn_files(dir.path()), last as usize);
    app.stop().await;
}
