//! `--store`: where the router, the summarizer and the alerter of a started system keep their
//! state (`[store] url` of each, as `ghost up --store` sets it).
//!
//! - `sqlite` (the default): each in SQLite under its data dir, as before.
//! - `postgres`: a throwaway PostgreSQL of the run's own: Debian's binaries (the newest
//!   `/usr/lib/postgresql/<ver>/bin`, as [`ghost_testkit::postgres::bin_dir`] finds them),
//!   `initdb` into a temp dir beside the run's work dir (same disk; as root, in the system's
//!   temp dir when the `postgres` user cannot reach that folder), `pg_ctl start` on a free
//!   loopback port, **`fsync` on** (unlike the tests' server: the figures compare durable
//!   stores), trust authentication on 127.0.0.1 only; stopped (`pg_ctl stop`, then its own PID
//!   from its PID file) and removed when the run ends. As root, `initdb` and `pg_ctl` run as the
//!   `postgres` user (`runuser`), in a dir that user owns.
//! - `postgres://…`: a server someone else runs; the services' schemas are used as found.
//!
//! On PostgreSQL the summaries are rows, not files: their write times come from
//! `summarizer.summaries.recorded_ms` (whole ms), read with `psql`. The server's own CPU (its
//! postmaster and every backend) is reported beside the services' as `postgres`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::system::Memory;

/// The value of `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// SQLite under each service's data dir.
    Sqlite,
    /// A throwaway PostgreSQL started for the run.
    Throwaway,
    /// A running PostgreSQL at this URL.
    Url(String),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Throwaway),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Url(url.to_owned()))
            }
            _ => Err(
                "--store is sqlite, postgres (a throwaway server for the run) or a \
                      postgres://USER@HOST:PORT/DB URL"
                    .to_owned(),
            ),
        }
    }
}

/// The store of a started system, and the server when the run started one.
pub struct BenchStore {
    url: Option<String>,
    server: Option<Throwaway>,
}

impl BenchStore {
    /// Opens the store `choice` names; a throwaway server's dir goes in `parent` (the folder
    /// the run's work dir is in).
    pub fn open(choice: &StoreChoice, parent: &Path) -> anyhow::Result<Self> {
        Ok(match choice {
            StoreChoice::Sqlite => Self {
                url: None,
                server: None,
            },
            StoreChoice::Url(url) => Self {
                url: Some(url.clone()),
                server: None,
            },
            StoreChoice::Throwaway => {
                let server = Throwaway::start(parent)?;
                Self {
                    url: Some(server.url()),
                    server: Some(server),
                }
            }
        })
    }

    /// The PostgreSQL URL every stored service gets, `None` for SQLite.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// `sqlite`, `postgres (throwaway, fsync on)` or `postgres (URL)`, for the report.
    pub fn describe(&self) -> String {
        match (&self.url, &self.server) {
            (None, _) => "sqlite".to_owned(),
            (Some(_), Some(server)) => format!(
                "postgres {} (throwaway, fsync on, started in {} ms)",
                server.version,
                server.start_time.as_millis()
            ),
            (Some(_), None) => "postgres (--store URL)".to_owned(),
        }
    }

    /// How long the throwaway server took to start (`initdb` + `pg_ctl start`), ms.
    pub fn start_ms(&self) -> Option<f64> {
        let server = self.server.as_ref()?;
        Some(server.start_time.as_secs_f64() * 1e3)
    }

    /// When the summarizer recorded each summary (Unix ms), from its PostgreSQL table; empty
    /// (with a warning) when `psql` cannot read it.
    pub fn summary_times(&self) -> HashMap<String, f64> {
        let Some(url) = &self.url else {
            return HashMap::new();
        };
        let psql = ghost_testkit::postgres::bin_dir()
            .map_or_else(|| PathBuf::from("psql"), |bin| bin.join("psql"));
        let output = Command::new(&psql)
            .args(["-X", "-A", "-t", "-F", " ", "-d", url, "-c"])
            .arg("SELECT patch_id, recorded_ms FROM summarizer.summaries")
            .output();
        let text = match output {
            Ok(output) if output.status.success() => output.stdout,
            Ok(output) => {
                eprintln!(
                    "ghost-bench: cannot read the summaries' times: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return HashMap::new();
            }
            Err(err) => {
                eprintln!("ghost-bench: cannot run {}: {err}", psql.display());
                return HashMap::new();
            }
        };
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|line| {
                let (id, ms) = line.trim().split_once(' ')?;
                Some((id.to_owned(), ms.parse().ok()?))
            })
            .collect()
    }

    /// CPU time (and RSS, summed over its processes: shared buffers counted in each) of the
    /// throwaway server now; `None` without one.
    pub fn memory(&self) -> Option<Memory> {
        self.server.as_ref()?.memory()
    }
}

/// A PostgreSQL server of the run's own.
struct Throwaway {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    version: String,
    start_time: Duration,
}

impl Throwaway {
    /// `initdb` and `pg_ctl start` in a new temp dir under `parent`.
    fn start(parent: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin = ghost_testkit::postgres::bin_dir().context(
            "--store postgres needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)",
        )?;
        // As root the server runs as `postgres`, which must be able to reach its dir.
        let root = ghost_testkit::disk::is_root();
        let parent = if root && !reachable_by_others(parent) {
            std::env::temp_dir()
        } else {
            parent.to_owned()
        };
        let dir = tempfile::Builder::new()
            .prefix("ghost-bench-pg-")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot make a dir in {}", parent.display()))?;
        let version = bin
            .parent()
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut server = Self {
            bin,
            dir,
            port: 0,
            version,
            start_time: Duration::ZERO,
        };
        if root {
            run_plain(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(server.dir.path()),
            )?;
        }
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        server.port = free_port()?;
        let log = server.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=200",
            server.port,
            server.dir.path().display()
        );
        let log_arg = log.to_string_lossy().into_owned();
        server
            .run(
                "pg_ctl",
                &[
                    "start", "-D", &data, "-l", &log_arg, "-w", "-t", "60", "-o", &options,
                ],
            )
            .map_err(|err| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                err.context(format!("server log:\n{log}"))
            })?;
        server.start_time = started.elapsed();
        Ok(server)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    /// The postmaster's PID, from its PID file.
    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(Path::new(&self.data_dir()).join("postmaster.pid"));
        text.ok()?.lines().next()?.trim().parse().ok()
    }

    /// The postmaster's CPU (with its ended children's) plus each live backend's; RSS summed.
    fn memory(&self) -> Option<Memory> {
        let postmaster = self.pid()?;
        let mut total = crate::system::memory_of(postmaster).ok()?;
        total.cpu_ms += children_cpu_ms(postmaster).unwrap_or(0);
        for child in children_of(postmaster) {
            if let Ok(memory) = crate::system::memory_of(child) {
                total.rss_kib += memory.rss_kib;
                total.peak_kib += memory.peak_kib;
                total.anon_kib += memory.anon_kib;
                total.cpu_ms += memory.cpu_ms;
            }
        }
        Some(total)
    }

    /// Runs `program` from the PostgreSQL bin folder, as `postgres` when this process is root.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.bin.join(program);
        let mut command = if ghost_testkit::disk::is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.args(args).current_dir(self.dir.path());
        run_plain(&mut command)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        let data = self.data_dir();
        if self
            .run(
                "pg_ctl",
                &["stop", "-D", &data, "-m", "fast", "-w", "-t", "30"],
            )
            .is_err()
            && let Ok(pid) = i32::try_from(pid)
        {
            // Only this server's own PID, from its own PID file.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether every folder from `/` to `path` lets other users through (`o+x`).
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    path.ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

fn run_plain(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The live children of `pid` (from `/proc/<pid>/task/*/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU of `pid`'s ended and waited-for children (`cutime` + `cstime`), ms.
fn children_cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> u64 {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    // After the command name: cutime and cstime are fields 16 and 17 of the line.
    Some((ticks(13) + ticks(14)) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_choices_parse_and_anything_else_is_refused() {
        assert_eq!("sqlite".parse(), Ok(StoreChoice::Sqlite));
        assert_eq!("postgres".parse(), Ok(StoreChoice::Throwaway));
        assert_eq!(
            "postgres://u@127.0.0.1:5432/db".parse(),
            Ok(StoreChoice::Url(
                "postgres://u@127.0.0.1:5432/db".to_owned()
            ))
        );
        assert!("mysql://x".parse::<StoreChoice>().is_err());
    }
}
