//! `ghost-bench agent-overhead`: what the executor adds around a coding agent (issue 23's
//! figure). A no-op agent (`cli = "command"`, command `true`) runs on workspaces of the given
//! sizes through the executor's real apply path (`executor::apply::apply`, in this process:
//! real files, a real child process, the real snapshot, journal and ledger on disk). For each
//! run the time from the patch handed to the executor to its report, minus the agent's own
//! run (its child process, as the report gives it, in whole ms), is the overhead: the journal,
//! the snapshot before, the agent's temp dir, task file and sandbox, the scan for what it
//! changed after, and the ledger entry.
//!
//! The first run on a workspace is reported apart: its snapshot reads and stores every file;
//! later ones trust unchanged stat keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use executor::apply::{self, Context, Lease};
use executor::workspace::{Limits, Workspace};
use executor::{AgentConfig, TargetPolicy};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::report::Stats;

/// The command line of `ghost-bench agent-overhead`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverheadArgs {
    /// Workspace sizes to measure, in files (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100_000])]
    pub files: Vec<usize>,
    /// Runs per size after the first (the p50 is over these).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Make each workspace a git work tree with its files committed (the executor then also
    /// asks git which files are ignored, and guards `.git`).
    #[arg(long)]
    pub git: bool,
    /// Folder for the workspaces and the executor's state (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures for one workspace size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeFigures {
    /// Files in the workspace.
    pub files: usize,
    /// Seconds to create them (not measured as overhead).
    pub setup_s: f64,
    /// Overhead of the first run, ms.
    pub first_overhead_ms: f64,
    /// Its snapshot stage, ms.
    pub first_snapshot_ms: f64,
    /// Overhead of the later runs, ms.
    pub overhead_ms: Stats,
    /// Dispatch to report of the later runs, ms.
    pub total_ms: Stats,
    /// The agent's own run in the later runs, ms.
    pub agent_ms: Stats,
    /// The snapshot stage of the later runs, ms.
    pub snapshot_ms: Stats,
    /// The journal stage of the later runs, ms.
    pub journal_ms: Stats,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    /// What the machine is (CPU model and count, kernel), as `/proc` says.
    pub machine: String,
    /// Whether the workspaces were git work trees.
    pub git: bool,
    /// One entry per size.
    pub sizes: Vec<SizeFigures>,
}

impl OverheadReport {
    /// The figures as a table, ms.
    pub fn table(&self) -> String {
        let mut out = format!(
            "no-op agent overhead (dispatch → report minus the agent's own run), ms; {}{}\n",
            self.machine,
            if self.git { "; git work trees" } else { "" }
        );
        out.push_str(&format!(
            "{:>9} {:>7} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
            "files", "runs", "first", "p50", "min", "max", "snapshot", "journal", "agent"
        ));
        for size in &self.sizes {
            out.push_str(&format!(
                "{:>9} {:>7} {:>10.1} {:>10.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9.1}\n",
                size.files,
                size.overhead_ms.n,
                size.first_overhead_ms,
                size.overhead_ms.p50,
                size.overhead_ms.min,
                size.overhead_ms.max,
                size.snapshot_ms.p50,
                size.journal_ms.p50,
                size.agent_ms.p50,
            ));
        }
        out
    }
}

/// Runs the measurement `args` describes.
pub fn run(args: &OverheadArgs) -> anyhow::Result<OverheadReport> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(!args.files.is_empty(), "--files needs at least one size");
    let temp = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir()?,
    };
    let mut sizes = Vec::new();
    for &files in &args.files {
        let base = temp.path().join(format!("ws-{files}"));
        sizes.push(measure(&base, files, args.runs, args.git)?);
        std::fs::remove_dir_all(&base)
            .with_context(|| format!("cannot remove {}", base.display()))?;
    }
    Ok(OverheadReport {
        machine: machine(),
        git: args.git,
        sizes,
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn stage_ms(report: &ghost_core::ApplyReport, name: &str) -> f64 {
    report
        .stages
        .iter()
        .filter(|stage| stage.stage == name)
        .map(|stage| stage.duration_us as f64 / 1e3)
        .sum()
}

/// `files` files under `root`, 100 per directory.
fn fill(root: &Path, files: usize) -> anyhow::Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n"))?;
    }
    Ok(())
}

/// The executor's context for target `BENCH` at `root`, whose agent is the command `true`.
fn context(root: &Path, state: std::path::PathBuf) -> anyhow::Result<Context> {
    Ok(Context {
        workspace: Workspace {
            target: "BENCH".to_owned(),
            root: root.to_owned(),
            state_dir: state,
            policy: TargetPolicy {
                agent: Some(AgentConfig {
                    cli: Some("command".to_owned()),
                    command: Some("true".to_owned()),
                    timeout: Duration::from_secs(600),
                    ..AgentConfig::default()
                }),
                ..TargetPolicy::default()
            },
        },
        limits: Limits {
            max_file_bytes: 1024 * 1024,
            max_patch_bytes: 4 * 1024 * 1024,
        },
        default_timeout: Duration::from_secs(600),
        write_delay: Duration::ZERO,
        root_id: executor::beneath::RootId::of(root)?,
    })
}

/// Creates `files` files under `base/ws` (100 per directory) and measures `runs + 1` no-op
/// agent patches on it.
fn measure(base: &Path, files: usize, runs: usize, git: bool) -> anyhow::Result<SizeFigures> {
    let root = base.join("ws");
    let state = base.join("state");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&state)?;
    let root = std::fs::canonicalize(&root)?;
    let setup = Instant::now();
    fill(&root, files)?;
    if git {
        commit_all(&root)?;
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let ctx = context(&root, state)?;
    let cancel = CancellationToken::new();
    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    let mut agents = Vec::new();
    let mut snapshots = Vec::new();
    let mut journals = Vec::new();
    let (mut first_overhead_ms, mut first_snapshot_ms) = (0.0, 0.0);
    for run in 0..=runs {
        let body = format!(
            r#"{{"id":"noop-{files}-{run}","target":"BENCH","agent":{{"task":"nothing"}}}}"#
        );
        let patch = ghost_core::parse_json(body.as_bytes())
            .map_err(|err| anyhow::anyhow!("the benchmark's patch does not parse: {err}"))?;
        let started = Instant::now();
        let report = apply::apply(&ctx, &patch, Lease::default(), false, &cancel);
        let total = ms(started.elapsed());
        ensure!(
            report.status == ghost_core::Status::Succeeded,
            "the no-op agent patch ended {:?}: {}",
            report.status,
            report.error
        );
        let agent = report
            .agent
            .as_ref()
            .map_or(0.0, |agent| agent.duration_ms as f64);
        let overhead = total - agent;
        if run == 0 {
            first_overhead_ms = overhead;
            first_snapshot_ms = stage_ms(&report, "snapshot");
            continue;
        }
        overheads.push(overhead);
        totals.push(total);
        agents.push(agent);
        snapshots.push(stage_ms(&report, "snapshot"));
        journals.push(stage_ms(&report, "journal"));
    }
    Ok(SizeFigures {
        files,
        setup_s,
        first_overhead_ms,
        first_snapshot_ms,
        overhead_ms: Stats::of(&mut overheads),
        total_ms: Stats::of(&mut totals),
        agent_ms: Stats::of(&mut agents),
        snapshot_ms: Stats::of(&mut snapshots),
        journal_ms: Stats::of(&mut journals),
    })
}

/// `git init`, then one commit of every file (identity and hooks fixed on the command line).
fn commit_all(root: &Path) -> anyhow::Result<()> {
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &["commit", "-qm", "base"],
    ] {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=ghost-bench",
                "-c",
                "user.email=bench@ghost.invalid",
                "-c",
                "core.hooksPath=/dev/null",
            ])
            .args(args)
            .current_dir(root)
            .status()
            .context("cannot run git")?;
        ensure!(
            status.success(),
            "git {args:?} failed in {}",
            root.display()
        );
    }
    Ok(())
}

/// CPU model and count and the kernel, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim())
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {}", kernel.trim())
}
