//! What a command runs in: its temp dir, its Landlock sandbox and its pids cgroup, made
//! before the spawn, and what the child does to itself between fork and exec (a session of
//! its own, the cgroup, rlimits, the sandbox).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::config::TargetPolicy;
use crate::workspace::Workspace;

use super::tmp::{TmpGuard, private_tmp};
use super::tree::become_subreaper;
use super::{Extra, cgroup, sandbox};

/// Between fork and exec: gives the child a session of its own, moves it into its cgroup
/// (`procs`) and sets its rlimits.
#[allow(unsafe_code)]
pub(super) fn confine(
    command: &mut Command,
    policy: &TargetPolicy,
    procs: Option<Arc<File>>,
    ruleset: Option<landlock::RulesetCreated>,
) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let cpu = policy.max_cpu_seconds;
    let memory = policy.max_memory_bytes;
    let files = policy.max_open_files;
    // Above the hard limit setrlimit would fail, and with it every command: keep what we have.
    let processes = getrlimit(Resource::RLIMIT_NPROC).map_or(policy.max_processes, |(_, hard)| {
        policy.max_processes.min(hard)
    });
    let mut ruleset = ruleset;
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // write(2), setrlimit(2), prctl(2) and landlock_restrict_self(2), which are
    // async-signal-safe; it allocates nothing (the ruleset was built before the fork) and
    // touches no lock.
    unsafe {
        command.pre_exec(move || {
            // A session, not just a group: no descendant can ever get back into the
            // executor's session, which is how a sweep tells the executor's own children
            // (git) from a command's orphans. The leader's group id is its pid, as before.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(procs) = &procs {
                // "0" is the writer itself. Failing to join fails the spawn: the target asked
                // for the cap, so the command does not run without it.
                nix::unistd::write(procs.as_ref(), b"0").map_err(std::io::Error::from)?;
            }
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu).map_err(std::io::Error::from)?;
            setrlimit(Resource::RLIMIT_AS, memory, memory).map_err(std::io::Error::from)?;
            setrlimit(Resource::RLIMIT_NOFILE, files, files).map_err(std::io::Error::from)?;
            // Counted per user, and not enforced for root (CAP_SYS_RESOURCE): the tree kill,
            // not this, is what stops a fork bomb run as root.
            setrlimit(Resource::RLIMIT_NPROC, processes, processes)
                .map_err(std::io::Error::from)?;
            // Last, so nothing above needs a write it would forbid.
            if let Some(ruleset) = ruleset.take() {
                sandbox::enforce(ruleset)?;
            }
            Ok(())
        });
    }
}

/// Where and how a command runs: its temp dir (removed after the run when made for it), the
/// Landlock ruleset, the sandbox's name for the report, and its pids cgroup.
pub(super) struct Confinement {
    /// The command's temp dir.
    pub(super) tmp: PathBuf,
    /// Removes the temp dir when dropped, when it was made for this run.
    pub(super) tmp_guard: TmpGuard,
    /// The Landlock ruleset the child enforces on itself before exec.
    pub(super) ruleset: Option<landlock::RulesetCreated>,
    /// The sandbox's name in the report.
    pub(super) sandbox: &'static str,
    /// The pids cgroup the child joins, when the target caps its processes.
    pub(super) cgroup: Option<cgroup::CommandCgroup>,
}

/// Makes what the command runs in: its temp dir, its sandbox and its pids cgroup. `Err` is
/// the refusal the report shows (the path and the error stay in the log: clients see no
/// internals).
pub(super) fn confinement(
    workspace: &Workspace,
    line: &str,
    extra: &Extra,
) -> Result<Confinement, String> {
    let (tmp, tmp_guard) = match &extra.tmp {
        Some(tmp) => (tmp.clone(), TmpGuard(None)),
        None => match private_tmp("ghost-cmd") {
            Ok(tmp) => (tmp.clone(), TmpGuard(Some(tmp))),
            Err(err) => {
                tracing::error!(error = %err, command = %line, "cannot make the command's temp dir");
                return Err("refused: the command's temp dir cannot be made".to_owned());
            }
        },
    };
    let plan = sandbox::plan(&workspace.policy, &workspace.root, &tmp, extra.agent)?;
    let sandbox = plan.name();
    let ruleset = match plan {
        sandbox::Plan::Landlock(ruleset, _) => Some(ruleset),
        sandbox::Plan::None => None,
    };
    // Orphans must come to us, not to init, for the tree kill to find them; App::build sets
    // it too, this keeps any other caller (and an early failure there) covered.
    let _ = become_subreaper();
    let cgroup = match workspace.policy.pids_cgroup.as_deref() {
        None => None,
        Some(parent) => {
            match cgroup::CommandCgroup::create(parent, workspace.policy.max_processes) {
                Ok(cgroup) => Some(cgroup),
                Err(err) => {
                    tracing::error!(cgroup = %parent.display(), error = %err, command = %line, "cannot create the command's pids cgroup; refusing the command");
                    return Err("refused: the command's pids cgroup cannot be created".to_owned());
                }
            }
        }
    };
    Ok(Confinement {
        tmp,
        tmp_guard,
        ruleset,
        sandbox,
        cgroup,
    })
}
