//! A real, throwaway PostgreSQL: Debian's `postgresql` package, `initdb` into a temp dir and
//! `pg_ctl` on a free loopback port, stopped (by its PID file, through `pg_ctl`) and removed when
//! dropped, also when a test fails — and also when this process is killed (SIGKILL, a nextest
//! timeout): a watchdog process started with the server stops it then (see [`TempPostgres`]).
//!
//! The server listens on 127.0.0.1 only, with trust authentication and its Unix socket in a
//! private folder of the temp dir. `initdb` refuses to run as root, so as root every command
//! runs as the `postgres` user (`runuser`) in a dir that user owns. When PostgreSQL is not
//! installed, [`TempPostgres::start_or_skip`] prints why and returns `None` (CI installs it in
//! `.ci/run`). Tests take the defaults ([`Setup::default`]: fsync off); `ghost-bench --store
//! postgres` starts a durable one beside its work dir ([`Setup::durable`]).

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::disk::is_root;

/// Ids of the temp dirs and databases of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL server of this process's own; stopped and deleted on drop.
///
/// Before `initdb`, a watchdog is started: `sh` in a process group of its own (a signal to
/// the test's group, as nextest sends on a timeout, does not reach it) reading its stdin,
/// whose write end only this process holds. When this process ends without dropping the
/// server (killed), the pipe closes, the read ends, and the watchdog runs `pg_ctl stop -m
/// immediate` and removes the dir. A drop kills the watchdog first (by its PID) and stops the
/// server itself.
pub struct TempPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    durable: bool,
    watchdog: Option<(Child, ChildStdin)>,
    /// How long `initdb` plus `pg_ctl start` took.
    pub start_time: Duration,
}

/// How a [`TempPostgres`] is set up: [`Setup::default`] for tests, [`Setup::durable`] for a
/// benchmark's store.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The folder its temp dir is made in. As root, when the `postgres` user cannot reach
    /// it (a folder on the way lacks `o+x`), the system's temp dir instead.
    pub parent: PathBuf,
    /// The start of the temp dir's name; the process id and a counter follow.
    pub prefix: &'static str,
    /// `fsync` and `synchronous_commit` on and `initdb` syncing its files, for figures that
    /// compare durable stores; off for tests, whose data does not outlive them.
    pub durable: bool,
}

impl Default for Setup {
    /// In the system's temp dir, `ghost-pg-…`, fsync off.
    fn default() -> Self {
        Self {
            parent: std::env::temp_dir(),
            prefix: "ghost-pg-",
            durable: false,
        }
    }
}

impl Setup {
    /// A durable server (fsync on) in `parent`, its dir named `prefix…`.
    pub fn durable(parent: &Path, prefix: &'static str) -> Self {
        Self {
            parent: parent.to_owned(),
            prefix,
            durable: true,
        }
    }

    /// The folder to make the dir in: `parent`, unless root runs it and `postgres` cannot
    /// reach it.
    fn parent(&self) -> PathBuf {
        if is_root() && !reachable_by_others(&self.parent) {
            return std::env::temp_dir();
        }
        self.parent.clone()
    }
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

    /// `initdb` and `pg_ctl start` with the binaries in `bin`, as tests want it
    /// ([`Setup::default`]); tries three free ports.
    pub fn start_in(bin: &Path) -> Result<Self, String> {
        Self::start_with(bin, &Setup::default())
    }

    /// `initdb` and `pg_ctl start` with the binaries in `bin`, set up as `setup` says; tries
    /// three free ports.
    pub fn start_with(bin: &Path, setup: &Setup) -> Result<Self, String> {
        let started = Instant::now();
        let dir = setup.parent().join(format!(
            "{}{}-{}",
            setup.prefix,
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
            durable: setup.durable,
            watchdog: None,
            start_time: Duration::ZERO,
        };
        server.watchdog = Some(server.spawn_watchdog()?);
        if is_root() {
            run_plain(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(&server.dir),
            )?;
        }
        server.initdb()?;
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

    fn initdb(&self) -> Result<(), String> {
        let data = self.data_dir();
        let mut args = vec![
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ];
        if !self.durable {
            args.push("--no-sync");
        }
        self.run("initdb", &args).map(drop)
    }

    /// The watchdog (see [`TempPostgres`]): `sh` waits for the end of its stdin, then stops
    /// the server and removes the dir.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), String> {
        use std::os::unix::process::CommandExt;
        let data = self.data_dir();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"dir=$1; shift; while read -r _; do :; done; "$@" >/dev/null 2>&1; rm -rf "$dir""#,
            )
            .arg("ghost-pg-watchdog")
            .arg(&self.dir)
            .args(self.argv("pg_ctl"))
            .args(["stop", "-D", &data, "-m", "immediate", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|err| format!("cannot start the PostgreSQL watchdog (sh): {err}"))?;
        let stdin = child.stdin.take().ok_or("the watchdog has no stdin")?;
        Ok((child, stdin))
    }

    /// The watchdog's PID (tests check it ends with this process).
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog.as_ref().map(|(child, _)| child.id())
    }

    /// Its temp dir (the data dir, socket folder and log are inside).
    pub fn dir(&self) -> &Path {
        &self.dir
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
        // Loopback only, a private socket folder; fsync off unless durable: a test server's
        // data does not outlive the test.
        let sync = if self.durable {
            "-c fsync=on -c synchronous_commit=on"
        } else {
            "-c fsync=off"
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {sync} -c max_connections=200",
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

    /// The command line of `program` from the PostgreSQL bin folder: through `runuser -u
    /// postgres --` when this process is root.
    fn argv(&self, program: &str) -> Vec<std::ffi::OsString> {
        let path = self.bin.join(program).into_os_string();
        if is_root() {
            ["runuser", "-u", "postgres", "--"]
                .into_iter()
                .map(std::ffi::OsString::from)
                .chain([path])
                .collect()
        } else {
            vec![path]
        }
    }

    /// Runs `program` from the PostgreSQL bin folder, as `postgres` when this process is root.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).args(args).current_dir(&self.dir);
        run_plain(&mut command)
    }
}

fn run_plain(command: &mut Command) -> Result<Output, String> {
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

/// Whether every folder from `/` to `path` lets other users through (`o+x`).
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    path.ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // This process stops the server itself: the watchdog (its own child, by its PID) goes.
        if let Some((mut watchdog, _stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
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
