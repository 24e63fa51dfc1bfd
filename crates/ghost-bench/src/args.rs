//! The command line of `ghost-bench`.

use std::path::PathBuf;
use std::time::Duration;

/// What to run and how hard.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ghost-bench", about = "Benchmark Ghost Runner end to end", long_about = None)]
pub struct BenchArgs {
    /// A separate measurement instead of the end-to-end benchmark.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Patches to submit (with `--rate` and `--duration`, rate × duration instead).
    #[arg(short = 'n', long, default_value_t = 200)]
    pub patches: usize,
    /// Submissions in flight at once (closed loop); ignored with `--rate`.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub concurrency: usize,
    /// Open loop: submit at this many patches per second instead of a fixed concurrency.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// With `--rate`: submit for this long (sets the patch count to rate × duration).
    #[arg(long, value_parser = humantime_duration)]
    pub duration: Option<Duration>,
    /// Targets (workspaces), one executor each; patches are spread round robin.
    #[arg(short = 't', long, default_value_t = 1)]
    pub targets: usize,
    /// Benchmark a running gateway at this base URL instead of starting the system.
    #[arg(long)]
    pub url: Option<String>,
    /// API key for `--url` (a started system uses its own).
    #[arg(long, env = "GHOST_API_KEY")]
    pub api_key: Option<String>,
    /// Target names for `--url` (default `BENCH-1` … `BENCH-<targets>`).
    #[arg(long = "target-name")]
    pub target_names: Vec<String>,
    /// Folder of the service binaries (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Folder for state, workspaces and the fsync probe (default: a temp dir); same disk as
    /// the services' data.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Files created in each workspace before the run (to measure large workspaces).
    #[arg(long, default_value_t = 0)]
    pub workspace_files: usize,
    /// Files each patch writes (one `write` edit per file).
    #[arg(long, default_value_t = 1)]
    pub files_per_patch: usize,
    /// Every patch runs the command `false` after its edits, fails and rolls back (the started
    /// executors allow exactly that command).
    #[arg(long)]
    pub fail: bool,
    /// Longest wait for every patch to end after the last submission.
    #[arg(long, default_value = "120s", value_parser = humantime_duration)]
    pub timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Leave the services running after the report and wait for Ctrl-C (for wrk runs).
    #[arg(long)]
    pub serve: bool,
    /// Write the started gateway's URL and API key to this file (`URL KEY`), once ready.
    #[arg(long)]
    pub url_file: Option<PathBuf>,
    /// Extra config for the started services: `SERVICE.KEY=VALUE` (dotted keys nest, VALUE is
    /// a TOML value or else a string; SERVICE is alerter, summarizer, router, executor or
    /// gateway), e.g. `summarizer.manifest_delay=0s`.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Run the started system as on separate machines: every gRPC hop over TLS (a private CA
    /// made for the run) carrying the service credential, executors on the router's executor
    /// port with their own TLS connection, and the gateway over HTTPS.
    #[arg(long)]
    pub tls: bool,
    /// Where the started router, summarizer and alerter keep their state: `sqlite` (each
    /// under its data dir), `postgres` (a throwaway PostgreSQL started for the run, fsync on)
    /// or a `postgres://USER@HOST:PORT/DB` URL (`[store] url` of the three).
    #[arg(long, default_value = "sqlite")]
    pub store: crate::store::StoreChoice,
    /// fsync samples for the floor.
    #[arg(long, default_value_t = 500)]
    pub fsync_samples: usize,
}

/// Measurements other than the end-to-end benchmark.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// The executor's overhead around a no-op coding agent (hand-off and snapshot), on
    /// workspaces of the given sizes.
    AgentOverhead(crate::agent_overhead::OverheadArgs),
}

impl BenchArgs {
    /// The number of patches this run submits.
    pub fn patch_count(&self) -> usize {
        match (self.rate, self.duration) {
            (Some(rate), Some(duration)) => (rate * duration.as_secs_f64()).round() as usize,
            _ => self.patches,
        }
    }

    /// The target names patches are spread over.
    pub fn target_list(&self) -> Vec<String> {
        if !self.target_names.is_empty() {
            return self.target_names.clone();
        }
        (1..=self.targets.max(1))
            .map(|n| format!("BENCH-{n}"))
            .collect()
    }
}

fn humantime_duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| format!("{raw:?} is not a duration like 500ms, 10s or 2m"))
}

/// Parses `500ms`, `10s`, `2m` or a plain number of seconds.
fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" | "min" => value * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("3h"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn rate_and_duration_set_the_count() {
        use clap::Parser;
        let args = BenchArgs::parse_from(["ghost-bench", "--rate", "50", "--duration", "4s"]);
        assert_eq!(args.patch_count(), 200);
        assert_eq!(args.target_list(), ["BENCH-1"]);
    }
}
