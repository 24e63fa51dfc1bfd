//! The janitor: processes a sweep could not kill within its budget, kept process-wide and
//! tried again (killed, and reaped when they are ours) by every later sweep.

use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::procs::stat;
use super::{lock, reap};

/// Processes (pid, start time) a sweep could not kill within its budget; every later sweep
/// tries them again.
static JANITOR: Mutex<Vec<(i32, u64)>> = Mutex::new(Vec::new());

/// Kills again what earlier sweeps left behind; forgets what is gone.
pub(super) fn janitor(me: i32) {
    let mut left = lock(&JANITOR);
    left.retain(|(pid, start)| {
        let Some(proc) = stat(*pid).filter(|proc| proc.start == *start) else {
            return false;
        };
        if proc.is_dead() {
            if proc.ppid == me {
                reap(*pid);
            }
            return stat(*pid).is_some_and(|proc| proc.start == *start);
        }
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        true
    });
}

/// Hands processes a sweep could not kill to the janitor, loudly.
pub(super) fn leave_to_janitor(left: &[(i32, u64)], line: &str) {
    if left.is_empty() {
        return;
    }
    tracing::error!(
        left = left.len(),
        pids = ?left.iter().map(|(pid, _)| *pid).take(20).collect::<Vec<_>>(),
        command = %line,
        "a command's processes outlived its sweep; later sweeps will try again"
    );
    metrics::counter!("ghost_command_sweep_leftovers_total").increment(left.len() as u64);
    let mut janitor = lock(&JANITOR);
    for entry in left {
        if !janitor.contains(entry) {
            janitor.push(*entry);
        }
    }
}
