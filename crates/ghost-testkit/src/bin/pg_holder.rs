//! `pg_holder`: holds a [`TempPostgres`](ghost_testkit::postgres::TempPostgres) until it is
//! killed, for `tests/postgres_watchdog.rs`, which SIGKILLs it (as a nextest timeout kills a
//! test) and checks that the server's watchdog stops the server and removes its dir.
//!
//! Prints one line on stdout: `HOLDING <postmaster pid> <watchdog pid> <dir>` once the server
//! runs, or `SKIP` when PostgreSQL is not installed; then waits at most [`HOLD`] and ends
//! (dropping the server) if nobody killed it.

use std::io::Write;
use std::time::Duration;

use ghost_testkit::postgres::TempPostgres;

/// How long the holder waits to be killed before it ends by itself (bounded).
const HOLD: Duration = Duration::from_secs(120);

fn main() {
    let server = TempPostgres::start_or_skip("pg_holder");
    let line = match &server {
        None => "SKIP".to_owned(),
        Some(server) => format!(
            "HOLDING {} {} {}",
            server.pid().expect("postmaster pid"),
            server.watchdog_pid().expect("watchdog pid"),
            server.dir().display()
        ),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").expect("write to the parent");
    stdout.flush().expect("flush to the parent");
    drop(stdout);
    if server.is_some() {
        std::thread::sleep(HOLD);
    }
}
