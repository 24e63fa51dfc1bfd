//! Measures the summarizer alone on loopback: `Record` calls per second and their latency at a
//! given concurrency, with summaries fsync'd on the working disk and no alerter (so only the
//! recording path is timed). Spread over 8 targets, one fresh patch per call.
//!
//! Run: `cargo run --release -p summarizer --example record_load -- [concurrency] [records]
//! [targets] [manifest_delay_ms]` (defaults 1, 2000, 8, 500; a delay of 0 rewrites the
//! manifest in every record, as before deferred manifests). With `GHOST_SUMMARIZER__STORE__URL`
//! set to a `postgres://` URL the index and bodies go to that database instead (a fresh one:
//! the run's patch ids are fixed).

use std::io::Write;
use std::time::{Duration, Instant};

use ghost_proto::router::v1::{ApplyReport, EditReport, PatchStatus};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::config::ServerConfig;
use summarizer::{App, SummarizerConfig};

fn request(n: usize, targets: usize) -> RecordRequest {
    RecordRequest {
        outcome: Some(Outcome {
            patch_id: format!("load-{n}"),
            target: format!("T{}", n % targets),
            attempt: 1,
            description: "record load".to_owned(),
            report: Some(ApplyReport {
                status: PatchStatus::Succeeded as i32,
                edits: vec![EditReport {
                    op: "write".to_owned(),
                    path: format!("bench/{n}.txt"),
                    added: 1,
                    ..Default::default()
                }],
                duration_ms: 3,
                ..Default::default()
            }),
            created_unix_ms: 1_700_000_000_000,
            finished_unix_ms: 1_700_000_000_500,
            intake_warnings: Vec::new(),
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let concurrency = args.first().copied().unwrap_or(1).max(1);
    let records = args.get(1).copied().unwrap_or(2000);
    let targets = args.get(2).copied().unwrap_or(8).max(1);
    let delay = Duration::from_millis(args.get(3).copied().unwrap_or(500) as u64);
    let dir = tempfile::tempdir_in(".")?;
    let store = summarizer::config::StoreConfig {
        url: std::env::var("GHOST_SUMMARIZER__STORE__URL")
            .ok()
            .map(ghost_runtime::config::Secret::new),
    };
    let app = App::build(SummarizerConfig {
        store,
        server: ServerConfig::ephemeral(),
        data_dir: dir.path().to_owned(),
        archive_after: None,
        manifest_delay: delay,
        ..SummarizerConfig::default()
    })
    .await?;
    let client = SummarizerServiceClient::connect(format!("http://{}", app.grpc_addr())).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for n in (c..records).step_by(concurrency) {
                let begin = Instant::now();
                client.record(request(n, targets)).await?;
                latencies.push(begin.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(records);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    writeln!(
        std::io::stdout().lock(),
        "record ({}): {} over {targets} target(s) in {:.2}s at concurrency {concurrency}, manifest delay {delay:?} = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms",
        if std::env::var_os("GHOST_SUMMARIZER__STORE__URL").is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    )?;
    drop(stop);
    server.await??;
    Ok(())
}
