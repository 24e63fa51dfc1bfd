//! Measures the router alone on loopback, with durable (fsync'd) commits:
//!
//! 1. accepted submits per second from `clients` concurrent gRPC clients;
//! 2. the latency from Submit to the executor receiving Assign, one patch at a time.
//!
//! Run: `cargo run --release -p router --example submit_load -- [clients] [submits] [samples]`
//! (defaults 8, 4000, 200). The database lives in a temp dir on the working disk.

use std::io::Write;
use std::time::{Duration, Instant};

use ghost_proto::executor::v1::{
    ExecutorMessage, Hello, Result as WorkResult, Workspace, executor_message, router_message,
};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    ApplyReport, Edit, Patch, PatchStatus, SubmitRequest, WriteFile, edit,
};
use ghost_runtime::config::ServerConfig;
use router::{App, RouterConfig};
use tokio_stream::wrappers::ReceiverStream;

fn patch(id: String, target: &str) -> Patch {
    Patch {
        id: id.clone(),
        target: target.to_owned(),
        description: "load".to_owned(),
        edits: vec![Edit {
            op: Some(edit::Op::Write(WriteFile {
                path: format!("{id}.txt"),
                contents: "x\n".to_owned(),
            })),
        }],
        ..Patch::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let clients = args.first().copied().unwrap_or(8);
    let submits = args.get(1).copied().unwrap_or(4000);
    let samples = args.get(2).copied().unwrap_or(200);

    let dir = tempfile::tempdir_in(".")?;

    // 0. The floor: one 4 KiB write + fdatasync, as a commit costs at least one of these.
    let mut fsyncs = Vec::with_capacity(200);
    {
        let mut file = std::fs::File::create(dir.path().join("fsync-probe"))?;
        let block = [0u8; 4096];
        for _ in 0..200 {
            let begin = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            fsyncs.push(begin.elapsed());
        }
    }
    fsyncs.sort();
    writeln!(
        std::io::stdout().lock(),
        "fsync floor: 4 KiB write + fdatasync p50 {:.2} ms, p99 {:.2} ms (200 samples)",
        percentile(&fsyncs, 0.50).as_secs_f64() * 1e3,
        percentile(&fsyncs, 0.99).as_secs_f64() * 1e3,
    )?;
    let app = App::build(RouterConfig {
        server: ServerConfig::ephemeral(),
        data_dir: dir.path().to_owned(),
        ..RouterConfig::default()
    })
    .await?;
    let addr = app.grpc_addr();
    let metrics_url = format!("http://{}/metrics", app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = RouterServiceClient::connect(format!("http://{addr}")).await?;

    // 1. Throughput: `clients` tasks share `submits`, each waiting for its answer.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = client.clone();
        let share = submits / clients;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for n in 0..share {
                let begin = Instant::now();
                client
                    .submit(SubmitRequest {
                        patch: Some(patch(format!("load-{c}-{n}"), &format!("T{c}"))),
                        ..Default::default()
                    })
                    .await?;
                latencies.push(begin.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    writeln!(
        std::io::stdout().lock(),
        "submit: {} accepted in {:.2}s by {clients} clients = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    )?;

    let metrics = reqwest::get(&metrics_url).await?.text().await?;
    let batch = |suffix: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("ghost_router_commit_batch_size_{suffix}")))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    writeln!(
        std::io::stdout().lock(),
        "group commit: {:.0} commits for {:.0} writes (mean batch {:.1})",
        batch("count"),
        batch("sum"),
        batch("sum") / batch("count").max(1.0)
    )?;

    // 2. Submit -> Assign, one at a time, on an idle target with a connected executor.
    let (outbound, receiver) = tokio::sync::mpsc::channel(16);
    outbound
        .send(ExecutorMessage {
            kind: Some(executor_message::Kind::Hello(Hello {
                executor_id: "bench".to_owned(),
                workspaces: vec![Workspace {
                    target: "BENCH".to_owned(),
                    root: String::new(),
                }],
                capabilities: Vec::new(),
                token: String::new(),
            })),
        })
        .await?;
    let mut inbound = client
        .clone()
        .work(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    inbound.message().await?; // Welcome
    let mut submit_client = client.clone();
    let mut to_assign = Vec::with_capacity(samples);
    for n in 0..samples {
        let begin = Instant::now();
        submit_client
            .submit(SubmitRequest {
                patch: Some(patch(format!("lat-{n}"), "BENCH")),
                ..Default::default()
            })
            .await?;
        let assign = loop {
            let message = inbound.message().await?.expect("stream open");
            if let Some(router_message::Kind::Assign(assign)) = message.kind {
                break assign;
            }
        };
        to_assign.push(begin.elapsed());
        outbound
            .send(ExecutorMessage {
                kind: Some(executor_message::Kind::Result(WorkResult {
                    patch_id: assign
                        .patch
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                    attempt: assign.attempt,
                    fencing_token: assign.fencing_token,
                    report: Some(ApplyReport {
                        status: PatchStatus::Succeeded as i32,
                        ..ApplyReport::default()
                    }),
                    traceparent: String::new(),
                })),
            })
            .await?;
        // Let the result commit before the next submit, so each sample starts on an idle target.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    to_assign.sort();
    writeln!(
        std::io::stdout().lock(),
        "submit->assign: {samples} samples, p50 {:.2} ms, p99 {:.2} ms",
        percentile(&to_assign, 0.50).as_secs_f64() * 1e3,
        percentile(&to_assign, 0.99).as_secs_f64() * 1e3,
    )?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}
