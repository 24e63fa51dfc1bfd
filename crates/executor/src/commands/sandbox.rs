//! Landlock: a command, check or agent may write only in the workspace, its private temp dir,
//! the target's `writable` paths and a few devices (`/dev/null`, the terminal); reading stays
//! allowed everywhere. The ruleset is built in the executor before the fork (opening the
//! paths allocates) and only applied in the child between fork and exec
//! (`landlock_restrict_self`, after `no_new_privs`), which allocates nothing.
//!
//! On a kernel without Landlock, `sandbox = "auto"` (the default) runs the command anyway,
//! logs a warning once and reports `sandbox = "none"`; `sandbox = "required"` refuses it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    ABI, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, path_beneath_rules,
};

use crate::config::{SandboxMode, TargetPolicy};

/// The rights the sandbox takes away outside the allowed paths: every kind of write (ABI 1 to
/// 4). Device ioctls and Unix sockets stay allowed; reading and executing too.
fn handled() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_write(ABI::V4)
}

/// Devices a process writes to just to run.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Whether this kernel enforces Landlock (probed once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let probe = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_write(ABI::V1))
            .and_then(Ruleset::create);
        match probe {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err,
                    "this kernel has no Landlock: commands and agents run without the file-system \
                     sandbox (targets with sandbox = \"required\" refuse them)");
                false
            }
        }
    })
}

/// What a command runs under.
pub enum Plan {
    /// This ruleset, applied in the child.
    Landlock(RulesetCreated),
    /// No sandbox: turned off, or not available under `auto`.
    None,
}

impl Plan {
    /// The report's `sandbox` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Landlock(_) => "landlock",
            Self::None => "none",
        }
    }
}

/// The ruleset for a command of `policy` in `root` with temp dir `tmp`; `Err` when the target
/// requires the sandbox and it cannot be had.
pub fn plan(policy: &TargetPolicy, root: &Path, tmp: &Path) -> Result<Plan, String> {
    match policy.sandbox {
        SandboxMode::Off => return Ok(Plan::None),
        SandboxMode::Auto if !available() => return Ok(Plan::None),
        SandboxMode::Required if !available() => {
            return Err(
                "refused: the target requires the Landlock sandbox (sandbox = \
                        \"required\") and this kernel does not provide it"
                    .to_owned(),
            );
        }
        SandboxMode::Auto | SandboxMode::Required => {}
    }
    let mut writable: Vec<PathBuf> = vec![root.to_owned(), tmp.to_owned()];
    writable.extend(policy.writable.iter().filter(|p| p.exists()).cloned());
    let devices = DEVICES.iter().map(Path::new).filter(|p| p.exists());
    let built = Ruleset::default()
        .handle_access(handled())
        .and_then(Ruleset::create)
        .and_then(|ruleset| ruleset.add_rules(path_beneath_rules(&writable, handled())))
        .and_then(|ruleset| ruleset.add_rules(path_beneath_rules(devices, handled())));
    match built {
        Ok(ruleset) => Ok(Plan::Landlock(ruleset)),
        Err(err) => {
            tracing::error!(error = %err, "cannot build the Landlock ruleset");
            match policy.sandbox {
                SandboxMode::Required => Err(format!(
                    "refused: the Landlock ruleset cannot be built ({err})"
                )),
                _ => Ok(Plan::None),
            }
        }
    }
}

/// In the child between fork and exec: restricts it (and all it runs) to the ruleset.
/// Allocates nothing.
pub fn enforce(ruleset: RulesetCreated) -> std::io::Result<()> {
    ruleset
        .restrict_self()
        .map(|_| ())
        .map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EPERM))
}
