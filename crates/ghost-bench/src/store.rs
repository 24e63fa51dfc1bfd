//! `--store`: where the router, the summarizer and the alerter of a started system keep their
//! state (`[store] url` of each, as `ghost up --store` sets it).
//!
//! - `sqlite` (the default): each in SQLite under its data dir, as before.
//! - `postgres`: a throwaway PostgreSQL of the run's own, the tests' server
//!   ([`ghost_testkit::postgres::TempPostgres`]: Debian's binaries, `initdb` into a temp dir,
//!   `pg_ctl start` on a free loopback port, trust authentication on 127.0.0.1 only, as the
//!   `postgres` user when root; stopped and removed when the run ends, or by its watchdog when
//!   ghost-bench is killed) set up durable: **`fsync` on** (unlike the tests': the figures
//!   compare durable stores), in a dir beside the run's work dir (same disk; as root, in the
//!   system's temp dir when the `postgres` user cannot reach that folder).
//! - `postgres://…`: a server someone else runs; the services' schemas are used as found.
//!
//! On PostgreSQL the summaries are rows, not files: their write times come from
//! `summarizer.summaries.recorded_ms` (whole ms), read with `psql`. The server's own CPU (its
//! postmaster and every backend) is reported beside the services' as `postgres`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use ghost_testkit::postgres::{Setup, TempPostgres};

use crate::procfs::{self, Memory};

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
            (Some(_), Some(throwaway)) => format!(
                "postgres {} (throwaway, fsync on, started in {} ms)",
                throwaway.version,
                throwaway.server.start_time.as_millis()
            ),
            (Some(_), None) => "postgres (--store URL)".to_owned(),
        }
    }

    /// How long the throwaway server took to start (`initdb` + `pg_ctl start`), ms.
    pub fn start_ms(&self) -> Option<f64> {
        let throwaway = self.server.as_ref()?;
        Some(throwaway.server.start_time.as_secs_f64() * 1e3)
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

/// A PostgreSQL server of the run's own: the tests' [`TempPostgres`], durable.
struct Throwaway {
    server: TempPostgres,
    /// The major version (the name of the folder above its `bin`).
    version: String,
}

impl Throwaway {
    /// `initdb` and `pg_ctl start` in a new dir under `parent`, fsync on.
    fn start(parent: &Path) -> anyhow::Result<Self> {
        let bin = ghost_testkit::postgres::bin_dir().context(
            "--store postgres needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)",
        )?;
        let version = bin
            .parent()
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let server = TempPostgres::start_with(&bin, &Setup::durable(parent, "ghost-bench-pg-"))
            .map_err(|err| anyhow::anyhow!("the throwaway PostgreSQL did not start: {err}"))?;
        Ok(Self { server, version })
    }

    fn url(&self) -> String {
        self.server.url("postgres")
    }

    /// The postmaster's CPU (with its ended children's) plus each live backend's; RSS summed.
    fn memory(&self) -> Option<Memory> {
        let postmaster = self.server.pid()?;
        let mut total = procfs::memory_of(postmaster).ok()?;
        total.cpu_ms += procfs::children_cpu_ms(postmaster).unwrap_or(0);
        for child in procfs::children_of(postmaster) {
            if let Ok(memory) = procfs::memory_of(child) {
                total.rss_kib += memory.rss_kib;
                total.peak_kib += memory.peak_kib;
                total.anon_kib += memory.anon_kib;
                total.cpu_ms += memory.cpu_ms;
            }
        }
        Some(total)
    }
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
