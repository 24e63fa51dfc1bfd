//! Landlock: a command, check or agent may write only in the workspace, its private temp dir,
//! the target's `writable` paths and a few devices (`/dev/null`, `/dev/tty`); reading stays
//! allowed everywhere. Where the kernel has Landlock ABI 6 it may also neither signal a
//! process outside its own sandbox (the executor, other targets' commands, the user's
//! processes) nor connect to an abstract Unix socket made outside it; where it has ABI 9,
//! nor connect to a named Unix socket outside the writable paths. Not confined: the network,
//! reading any file the user can read, named Unix sockets below ABI 9, and ioctls on devices
//! below ABI 5. The ruleset is built in the executor before the fork (opening the
//! paths allocates) and only applied in the child between fork and exec
//! (`landlock_restrict_self`, after `no_new_privs`), which allocates nothing.
//!
//! On a kernel without Landlock, `sandbox = "auto"` (the default) runs the command anyway,
//! logs a warning once and reports `sandbox = "none"`; `sandbox = "required"` refuses it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope, path_beneath_rules,
};

use crate::config::{SandboxMode, TargetPolicy};

/// The rights the sandbox takes away outside the allowed paths: every kind of write (ABI 1 to
/// 3), and connecting to a named Unix socket (ABI 9, where the kernel has it). Device ioctls
/// stay allowed; reading and executing too.
fn handled() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_write(ABI::V4) | AccessFs::ResolveUnix
}

/// What else the sandbox confines (ABI 6, where the kernel has it): signals to, and abstract
/// Unix sockets of, processes outside it.
fn scopes() -> landlock::BitFlags<Scope> {
    Scope::AbstractUnixSocket | Scope::Signal
}

/// Devices a process writes to just to run. Not `/dev/pts`: the executor gives commands no
/// terminal, and a writable pty of the user's session would let one type into it.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// The Landlock ABI this kernel has, up to 6 (the highest this sandbox needs in full), probed
/// once; 0 without Landlock.
pub fn abi() -> u8 {
    static ABI_FOUND: OnceLock<u8> = OnceLock::new();
    *ABI_FOUND.get_or_init(|| {
        let has_fs = |abi: ABI| {
            Ruleset::default()
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessFs::from_all(abi))
                .and_then(Ruleset::create)
                .is_ok()
        };
        let has_scopes = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|ruleset| ruleset.scope(scopes()))
            .and_then(Ruleset::create)
            .is_ok();
        if has_scopes {
            6
        } else {
            [
                (5, ABI::V5),
                (4, ABI::V4),
                (3, ABI::V3),
                (2, ABI::V2),
                (1, ABI::V1),
            ]
            .into_iter()
            .find(|(_, abi)| has_fs(*abi))
            .map_or(0, |(n, _)| n)
        }
    })
}

/// The lowest ABI `sandbox = "required"` accepts: 3, where truncating a file outside the
/// writable paths is refused too.
pub const REQUIRED_ABI: u8 = 3;
/// The ABI from which the sandbox is whole (writes, truncation, signals, abstract sockets);
/// below it the report says `"landlock-partial"`.
pub const FULL_ABI: u8 = 6;

/// How a command of a target runs, from its `sandbox` setting, the kernel's Landlock ABI (0:
/// none) and whether it is an agent CLI: `Ok(None)` unconfined, `Ok(Some(name))` under
/// Landlock with the report's name, `Err` refused (the reason).
pub fn decide(mode: SandboxMode, abi: u8, agent: bool) -> Result<Option<&'static str>, String> {
    let name = if abi >= FULL_ABI {
        "landlock"
    } else {
        "landlock-partial"
    };
    match mode {
        SandboxMode::Off => Ok(None),
        SandboxMode::Required if abi < REQUIRED_ABI => Err(format!(
            "refused: the target requires the Landlock sandbox (sandbox = \"required\"), which \
             needs Landlock ABI {REQUIRED_ABI} or later; this kernel has {}",
            if abi == 0 {
                "no Landlock".to_owned()
            } else {
                format!("ABI {abi}")
            }
        )),
        SandboxMode::Auto if abi == 0 && agent => Err(
            "refused: an agent CLI runs only under the Landlock sandbox, which this kernel does \
             not provide; set sandbox = \"off\" for the target to run it unconfined"
                .to_owned(),
        ),
        SandboxMode::Auto if abi == 0 => Ok(None),
        SandboxMode::Auto | SandboxMode::Required => Ok(Some(name)),
    }
}

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
    /// This ruleset, applied in the child, and the report's name for it (`"landlock"` or
    /// `"landlock-partial"`).
    Landlock(RulesetCreated, &'static str),
    /// No sandbox: turned off, or not available under `auto`.
    None,
}

impl Plan {
    /// The report's `sandbox` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Landlock(_, name) => name,
            Self::None => "none",
        }
    }
}

/// The ruleset for a command of `policy` in `root` with temp dir `tmp` (`agent`: an agent
/// CLI); `Err` when the target requires the sandbox and it cannot be had.
pub fn plan(policy: &TargetPolicy, root: &Path, tmp: &Path, agent: bool) -> Result<Plan, String> {
    let abi = if available() { abi().max(1) } else { 0 };
    let Some(name) = decide(policy.sandbox, abi, agent)? else {
        return Ok(Plan::None);
    };
    let mut writable: Vec<PathBuf> = vec![root.to_owned(), tmp.to_owned()];
    writable.extend(policy.writable.iter().filter(|p| p.exists()).cloned());
    let devices = DEVICES.iter().map(Path::new).filter(|p| p.exists());
    let built = Ruleset::default()
        .handle_access(handled())
        .and_then(|ruleset| ruleset.scope(scopes()))
        .and_then(Ruleset::create)
        .and_then(|ruleset| ruleset.add_rules(path_beneath_rules(&writable, handled())))
        .and_then(|ruleset| ruleset.add_rules(path_beneath_rules(devices, handled())));
    match built {
        Ok(ruleset) => Ok(Plan::Landlock(ruleset, name)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_decision_follows_the_setting_the_kernel_and_whether_an_agent_runs() {
        use SandboxMode::{Auto, Off, Required};
        // Off: never confined, agent or not, whatever the kernel.
        assert_eq!(decide(Off, 0, true), Ok(None));
        assert_eq!(decide(Off, 7, false), Ok(None));
        // Auto: confined where the kernel can; an agent refuses to run unconfined.
        assert_eq!(decide(Auto, 0, false), Ok(None));
        assert!(decide(Auto, 0, true).is_err_and(|e| e.contains("sandbox = \"off\"")));
        assert_eq!(decide(Auto, 2, true), Ok(Some("landlock-partial")));
        assert_eq!(decide(Auto, 5, false), Ok(Some("landlock-partial")));
        assert_eq!(decide(Auto, 6, true), Ok(Some("landlock")));
        assert_eq!(decide(Auto, 7, false), Ok(Some("landlock")));
        // Required: at least truncation (ABI 3).
        assert!(decide(Required, 0, false).is_err_and(|e| e.contains("no Landlock")));
        assert!(decide(Required, 2, true).is_err_and(|e| e.contains("ABI 2")));
        assert_eq!(decide(Required, 3, false), Ok(Some("landlock-partial")));
        assert_eq!(decide(Required, 7, true), Ok(Some("landlock")));
    }
}
