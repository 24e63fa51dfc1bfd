//! One benchmark run: start (or reach) the system, measure the fsync floor, submit, follow
//! every patch to its end, and build the [`Report`].

mod analysis;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;

use crate::args::BenchArgs;
use crate::follow::{self, Event, TERMINAL};
use crate::load::{self, LoadPlan, unix_ms};
use crate::report::{Report, RunShape, Stage, Stats};
use crate::store::BenchStore;
use crate::system::{self, API_KEY, StartOptions, System};

/// Executor reports fetched per run (spread over the run).
const REPORT_SAMPLE: usize = 300;
/// Wait after start before idle RSS is read.
const SETTLE: Duration = Duration::from_millis(1000);

/// Runs the benchmark `args` describes. SIGINT and SIGTERM are caught from the start: either
/// ends the run with an error, after the services it started are stopped (by their PIDs:
/// SIGTERM, then SIGKILL after a grace) and its throwaway PostgreSQL with them.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let mut interrupt = Interrupt::catch()?;
    let temp = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir()?,
    };
    let work = temp.path();
    let load_before = loadavg();
    let fsync = crate::floor::measure(work, args.fsync_samples).context("fsync probe")?;
    let targets = args.target_list();
    let (system, store, url, key) = match &args.url {
        Some(url) => {
            let key = args
                .api_key
                .clone()
                .context("--url needs --api-key (or GHOST_API_KEY)")?;
            (None, None, url.trim_end_matches('/').to_owned(), key)
        }
        None => {
            let (system, store) = start(args, work, &targets, &mut interrupt).await?;
            let url = system.gateway_url.clone();
            (Some(system), Some(store), url, API_KEY.to_owned())
        }
    };
    let started = system.as_ref().zip(store.as_ref());
    let result = tokio::select! {
        result = measure(args, started, &url, &key, targets) => result,
        signal = interrupt.recv() => Err(anyhow::anyhow!("{signal}: the run was stopped")),
    };
    if args.serve && result.is_ok() {
        interrupt.recv().await;
    }
    if let Some(system) = system {
        system.stop(Duration::from_secs(10)).await;
    }
    // The services are stopped: now their PostgreSQL may go.
    drop(store);
    let mut report = result?;
    report.fsync = fsync;
    report.loadavg = [load_before, loadavg()];
    report.relate_to_floor();
    Ok(report)
}

/// Opens the store and starts the services; a signal meanwhile stops what was started (each
/// service by its child handle, the store's server by its drop) and ends the run.
async fn start(
    args: &BenchArgs,
    work: &std::path::Path,
    targets: &[String],
    interrupt: &mut Interrupt,
) -> anyhow::Result<(System, BenchStore)> {
    let bins = system::bin_dir(args.bin_dir.as_deref())?;
    let store = BenchStore::open(&args.store, work.parent().unwrap_or(work))?;
    let options = StartOptions {
        workspace_files: args.workspace_files,
        allow_false: args.fail,
        overrides: &args.overrides,
        tls: args.tls,
        store_url: store.url(),
    };
    let system = tokio::select! {
        system = System::start(&bins, work, targets, options) => system?,
        signal = interrupt.recv() => anyhow::bail!("{signal} while the services started"),
    };
    Ok((system, store))
}

/// SIGINT and SIGTERM, caught (so neither ends the process before the run stops what it
/// started; also a script stopping `--serve` by PID).
struct Interrupt {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Interrupt {
    /// Catches both from now on.
    fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the signal's name when one arrives (or has arrived since [`Self::catch`]).
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// When each patch's summary was written, for a started system: its file's mtime (Unix ms)
/// on SQLite, its row's `recorded_ms` on PostgreSQL.
fn summary_times(
    started: Option<(&System, &BenchStore)>,
    outcome: &load::LoadOutcome,
) -> HashMap<String, f64> {
    let Some((system, store)) = started else {
        return HashMap::new();
    };
    if store.url().is_some() {
        return store.summary_times();
    }
    outcome
        .submissions
        .iter()
        .filter_map(|s| {
            let meta = std::fs::metadata(system.summary_json(&s.target, &s.id)).ok()?;
            Some((s.id.clone(), unix_ms(meta.modified().ok()?)))
        })
        .collect()
}

/// Idle RSS and anonymous memory (KiB) of the five services, one executor.
fn idle_of_the_five(idle: &[(String, crate::procfs::Memory)]) -> (u64, u64) {
    let five = ["gateway", "router", "summarizer", "alerter", "executor-1"];
    let of_five = |part: fn(&crate::procfs::Memory) -> u64| -> u64 {
        idle.iter()
            .filter(|(name, _)| five.contains(&name.as_str()))
            .map(|(_, m)| part(m))
            .sum()
    };
    (of_five(|m| m.rss_kib), of_five(|m| m.anon_kib))
}

/// Memory and CPU of every service now, and of the store's PostgreSQL when the run started
/// one (`postgres`).
fn memories(started: Option<(&System, &BenchStore)>) -> Vec<(String, crate::procfs::Memory)> {
    let Some((system, store)) = started else {
        return Vec::new();
    };
    let mut all = system.memory();
    all.extend(store.memory().map(|m| ("postgres".to_owned(), m)));
    all
}

/// Each started service's time to ready, ms (and the throwaway PostgreSQL's start).
fn ready_times(started: Option<(&System, &BenchStore)>) -> Vec<(String, f64)> {
    let Some((system, store)) = started else {
        return Vec::new();
    };
    let mut ready: Vec<(String, f64)> = system
        .services
        .iter()
        .map(|p| (p.name.clone(), p.ready_after.as_secs_f64() * 1e3))
        .collect();
    ready.extend(store.start_ms().map(|ms| ("postgres".to_owned(), ms)));
    ready
}

async fn measure(
    args: &BenchArgs,
    started: Option<(&System, &BenchStore)>,
    url: &str,
    key: &str,
    targets: Vec<String>,
) -> anyhow::Result<Report> {
    let system = started.map(|(system, _)| system);
    let ready = ready_times(started);
    if started.is_some() {
        tokio::time::sleep(SETTLE).await;
    }
    let idle = memories(started);
    if let Some(path) = &args.url_file {
        std::fs::write(path, format!("{url} {key}\n"))?;
    }
    let run_id = format!("gb{}", load::unix_ms_now() as u64 % 100_000_000);
    let ca_pem = system.and_then(|s| s.ca_pem.clone());
    let plan = LoadPlan {
        url: url.to_owned(),
        api_key: key.to_owned(),
        count: args.patch_count(),
        concurrency: args.concurrency,
        rate: args.rate,
        targets: targets.clone(),
        files_per_patch: args.files_per_patch,
        fail: args.fail,
        run_id,
        ca_pem: ca_pem.clone(),
    };
    let outcome = load::run(plan).await?;
    let accepted: Vec<String> = outcome
        .submissions
        .iter()
        .filter(|s| s.accepted())
        .map(|s| s.id.clone())
        .collect();
    let client = load::client(16, ca_pem.as_deref())?;
    let slack = match system {
        Some(system) => Some(follow::wait_for_slack(&system.slack, &accepted, args.timeout).await),
        None => {
            follow::wait_for_router(&client, url, key, &accepted, args.timeout).await;
            None
        }
    };
    let events = follow::collect_events(&client, url, key, &accepted).await;
    let reports = follow::collect_reports(&client, url, key, &accepted, REPORT_SAMPLE).await;
    let summaries = summary_times(started, &outcome);
    let end = memories(started);
    let services = Report::service_figures(&ready, &idle, &end);
    let idle_five = idle_of_the_five(&idle);
    let shape = RunShape {
        mode: if system.is_some() { "started" } else { "url" }.to_owned(),
        patches: outcome.submissions.len(),
        concurrency: args.rate.is_none().then_some(args.concurrency),
        rate: args.rate,
        targets: targets.len(),
        files_per_patch: args.files_per_patch,
        workspace_files: args.workspace_files,
        fail: args.fail,
        store: started.map_or_else(String::new, |(_, store)| store.describe()),
    };
    let mut report = analysis::analyse(
        shape,
        &outcome,
        &events,
        &summaries,
        slack.as_ref(),
        services,
        idle_five,
    );
    report.executor_stages = executor_stages(&reports);
    Ok(report)
}

/// Percentiles of the executor's own stage timings (ms resolution); a stage name seen twice
/// in one report gets `#2`.
fn executor_stages(reports: &[follow::ExecutorReport]) -> Vec<Stage> {
    let mut named: Vec<(String, Vec<f64>)> = vec![(
        "executor: whole attempt".to_owned(),
        reports.iter().map(|r| r.duration_ms).collect(),
    )];
    for report in reports {
        let mut seen: Vec<&str> = Vec::new();
        for stage in &report.stages {
            let count = seen.iter().filter(|s| **s == stage.stage).count();
            seen.push(&stage.stage);
            let name = if count == 0 {
                format!("executor: {}", stage.stage)
            } else {
                format!("executor: {}#{}", stage.stage, count + 1)
            };
            match named.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push(stage.duration_ms),
                None => named.push((name, vec![stage.duration_ms])),
            }
        }
    }
    named
        .into_iter()
        .map(|(name, samples)| stage(&name, samples))
        .collect()
}

fn first_terminal(events: &[Event]) -> Option<f64> {
    events
        .iter()
        .find(|e| TERMINAL.contains(&e.status.as_str()))
        .map(Event::at)
}

fn stage(name: &str, mut samples: Vec<f64>) -> Stage {
    Stage {
        name: name.to_owned(),
        stats: Stats::of(&mut samples),
    }
}

/// Per target, from one patch's end to the lease of the next one that was already queued by
/// then: the router's share of a serialised target's cycle.
fn hand_offs(cycles: HashMap<&str, Vec<(f64, f64, f64)>>) -> Vec<f64> {
    let mut gaps = Vec::new();
    for (_, mut patches) in cycles {
        patches.sort_by(|a, b| a.1.total_cmp(&b.1));
        for pair in patches.windows(2) {
            let ((_, _, ended), (queued, leased, _)) = (pair[0], pair[1]);
            if queued <= ended {
                gaps.push((leased - ended).max(0.0));
            }
        }
    }
    gaps
}

fn rate(count: usize, from: f64, to: f64) -> f64 {
    if count == 0 || to <= from {
        return 0.0;
    }
    count as f64 / ((to - from) / 1e3)
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
