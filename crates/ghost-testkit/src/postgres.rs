//! A real PostgreSQL for tests: Debian's `postgresql` package, `initdb` into a temp dir and
//! `pg_ctl` on a free loopback port, stopped (by its PID file, through `pg_ctl`) and removed when
//! dropped, also when a test fails.
//!
//! The server listens on 127.0.0.1 only, with trust authentication and its Unix socket in a
//! private folder of the temp dir. `initdb` refuses to run as root, so as root every command
//! runs as the `postgres` user (`runuser`) in a dir that user owns. When PostgreSQL is not
//! installed, [`TempPostgres::start_or_skip`] prints why and returns `None` (CI installs it in
//! `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::disk::is_root;

/// Ids of the temp dirs and databases of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL server of this test's own; stopped and deleted on drop.
pub struct TempPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// How long `initdb` plus `pg_ctl start` took.
    pub start_time: Duration,
}

/// The folder of `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/<ver>/bin`, else the
/// `PATH` entry holding `initdb` (resolved through symlinks to find `pg_ctl` beside it).
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = std::fs::canonicalize(dir.join("initdb")).ok()?;
        let bin = initdb.parent()?.to_path_buf();
        bin.join("pg_ctl").is_file().then_some(bin)
    })
}

impl TempPostgres {
    /// Starts a server, or prints (to stderr) why the test skips and returns `None` when PostgreSQL is
    /// not installed. Panics when it is installed but will not start (a real failure).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            eprintln!(
                "SKIP {test}: PostgreSQL is not installed (no initdb under /usr/lib/postgresql \
                 or on PATH; apt-get install postgresql)"
            );
            return None;
        };
        match Self::start_in(&bin) {
            Ok(server) => {
                eprintln!(
                    "{test}: PostgreSQL started in {} ms (initdb + pg_ctl start) on port {}",
                    server.start_time.as_millis(),
                    server.port
                );
                Some(server)
            }
            Err(err) => panic!("{test}: PostgreSQL is installed but did not start: {err}"),
        }
    }

    /// `initdb` and `pg_ctl start` with the binaries in `bin`; tries three free ports.
    pub fn start_in(bin: &Path) -> Result<Self, String> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "ghost-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock"))
            .map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut server = Self {
            bin: bin.to_path_buf(),
            dir,
            port: 0,
            start_time: Duration::ZERO,
        };
        if is_root() {
            server.run_plain(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(&server.dir),
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
                "--no-sync",
            ],
        )?;
        let mut last_error = String::new();
        for _ in 0..3 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.start_time = started.elapsed();
                    return Ok(server);
                }
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a fresh database and returns its URL (`postgres://postgres@127.0.0.1:<port>/<db>`).
    pub fn create_database(&self) -> String {
        let name = format!("ghost_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let port = self.port.to_string();
        if let Err(err) = self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name],
        ) {
            panic!("createdb {name}: {err}");
        }
        self.url(&name)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// `pg_ctl stop -m fast`: the server ends its sessions and shuts down, as an operator's
    /// restart does.
    pub fn stop(&self) {
        let data = self.data_dir();
        if let Err(err) = self.run("pg_ctl", &["stop", "-D", &data, "-m", "fast", "-w"]) {
            panic!("pg_ctl stop: {err}");
        }
    }

    /// Starts it again on the same port after [`Self::stop`].
    pub fn restart(&self) {
        if let Err(err) = self.pg_ctl_start() {
            panic!("pg_ctl start (again): {err}");
        }
    }

    /// The server's PID from its `postmaster.pid`, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(Path::new(&self.data_dir()).join("postmaster.pid"));
        pid_file.ok()?.lines().next()?.trim().parse().ok()
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        // Loopback only, a private socket folder; fsync off: a test server's data does not
        // outlive the test, and the tests stop it with `-m fast` (a clean shutdown).
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.join("sock").display()
        );
        self.run(
            "pg_ctl",
            &[
                "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options,
            ],
        )
        .map_err(|err| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{err}\nserver log:\n{log}")
        })?;
        Ok(())
    }

    /// Runs `program` from the PostgreSQL bin folder, as `postgres` when this process is root.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.args(args).current_dir(&self.dir);
        self.run_plain(&mut command)
    }

    fn run_plain(&self, command: &mut Command) -> Result<Output, String> {
        let output = command
            .output()
            .map_err(|err| format!("cannot run {command:?}: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "{command:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let data = self.data_dir();
            if self
                .run("pg_ctl", &["stop", "-D", &data, "-m", "immediate", "-w"])
                .is_err()
            {
                // Only this server's own PID, from its own PID file.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("cannot bind 127.0.0.1:0: {err}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| err.to_string())
}
