//! `[[targets]]` of `ghost.toml` with `--workspace` over them, and what they become: the
//! gateway's targets and default target, the executor's workspaces and per-target policies.
//! Those keys are theirs alone: set by hand in a service section or the environment, they are
//! refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use executor::config::TargetPolicy;
use gateway::config::{ApiKeyConfig, TargetConfig};
use ghost_runtime::config::EnvVar;
use serde::Serialize;

use super::{TargetSpec, invalid, to_tree};
use crate::error::CliError;

/// The targets of the file with the `--workspace` flags over them; `MAIN=./workspace` when
/// there are none; the default target first. Refuses two defaults, duplicate names or
/// aliases, and owner checks or `rollback_ignore` globs the executor would refuse.
pub(super) fn targets(
    file_targets: Vec<TargetSpec>,
    flags: &[String],
) -> Result<Vec<TargetSpec>, CliError> {
    let mut targets = file_targets;
    for spec in flags {
        let Some((name, dir)) = spec.split_once('=') else {
            return Err(CliError::Settings(format!(
                "--workspace {spec:?}: expected TARGET=DIR, e.g. MAIN=./workspace"
            )));
        };
        match targets.iter_mut().find(|t| t.name == name) {
            Some(target) => target.root = PathBuf::from(dir),
            None => targets.push(TargetSpec::bare(name, PathBuf::from(dir), false)),
        }
    }
    if targets.is_empty() {
        targets.push(TargetSpec::bare("MAIN", PathBuf::from("./workspace"), true));
    }
    check_targets(&targets)?;
    let default_index = targets.iter().position(|t| t.is_default).unwrap_or(0);
    let mut default = targets.remove(default_index);
    default.is_default = true;
    targets.insert(0, default);
    Ok(targets)
}

/// Refuses two defaults, a name or alias that is not a target name or is used twice, and a
/// policy the executor would refuse.
fn check_targets(targets: &[TargetSpec]) -> Result<(), CliError> {
    let defaults: Vec<&str> = targets
        .iter()
        .filter(|t| t.is_default)
        .map(|t| t.name.as_str())
        .collect();
    if defaults.len() > 1 {
        return Err(invalid(format!(
            "targets {} are all marked default = true: mark one",
            defaults.join(" and ")
        )));
    }
    let mut names = BTreeSet::new();
    for target in targets {
        for name in std::iter::once(&target.name).chain(&target.aliases) {
            ghost_core::TargetName::parse(name).map_err(|err| {
                invalid(format!(
                    "target name or alias {name:?} in [[targets]]: {err}"
                ))
            })?;
        }
        policy_of(target)?;
        for name in std::iter::once(&target.name).chain(&target.aliases) {
            if !names.insert(name.clone()) {
                return Err(invalid(format!(
                    "target name or alias {name} is used twice in [[targets]]"
                )));
            }
        }
    }
    Ok(())
}

/// The executor's policy of a `[[targets]]` entry, checked as the executor checks it at
/// start (owner check names, `when`, globs).
fn policy_of(target: &TargetSpec) -> Result<TargetPolicy, CliError> {
    let checks = target
        .checks
        .iter()
        .map(|check| {
            let when = match &check.when {
                None => executor::When::Always,
                Some(when) => executor::When::try_from(when.clone()).map_err(|err| {
                    invalid(format!(
                        "target {}: owner check {:?} in [[targets.checks]]: {err}",
                        target.name, check.name
                    ))
                })?,
            };
            Ok(executor::OwnerCheck {
                name: check.name.clone(),
                run: check.run.clone(),
                timeout: check.timeout,
                when,
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let policy = TargetPolicy {
        commands: target.commands.0.clone(),
        agent: target.agent.clone(),
        checks,
        rollback_ignore: target.rollback_ignore.clone(),
        revert_keep: target
            .revert_keep
            .unwrap_or(TargetPolicy::default().revert_keep),
        sandbox: target.sandbox.unwrap_or_default(),
        writable: target.writable.clone(),
        ..TargetPolicy::default()
    };
    policy
        .validate(&target.name)
        .map_err(|err| invalid(format!("{err} (in [[targets]])")))?;
    Ok(policy)
}

/// The tree of `[[targets]]` and `[[keys]]` for each service section.
pub(super) fn derived(
    targets: &[TargetSpec],
    keys: &[ApiKeyConfig],
) -> Result<HashMap<&'static str, toml::Value>, CliError> {
    #[derive(Serialize)]
    struct GatewayPart<'a> {
        targets: Vec<TargetConfig>,
        default_target: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        api_keys: &'a [ApiKeyConfig],
    }
    #[derive(Serialize)]
    struct ExecutorPart {
        workspaces: Vec<executor::WorkspaceConfig>,
        targets: BTreeMap<String, TargetPolicy>,
    }
    let gateway = GatewayPart {
        targets: targets
            .iter()
            .map(|t| TargetConfig {
                name: t.name.clone(),
                aliases: t.aliases.clone(),
                legacy_roots: Vec::new(),
            })
            .collect(),
        default_target: targets.first().map_or("MAIN", |t| t.name.as_str()),
        api_keys: keys,
    };
    let executor = ExecutorPart {
        workspaces: targets
            .iter()
            .map(|t| executor::WorkspaceConfig {
                target: t.name.clone(),
                root: t.root.clone(),
            })
            .collect(),
        targets: targets
            .iter()
            .map(|t| policy_of(t).map(|policy| (t.name.clone(), policy)))
            .collect::<Result<_, _>>()?,
    };
    Ok(HashMap::from([
        ("gateway", to_tree(&gateway)?),
        ("executor", to_tree(&executor)?),
    ]))
}

/// The keys of a service section that `[[targets]]` owns: set by hand they would fight it (a
/// workspace no overlap check saw, a default target that is not one of the targets).
const OWNED_BY_TARGETS: [(&str, &str); 4] = [
    ("gateway", "targets"),
    ("gateway", "default_target"),
    ("executor", "workspaces"),
    ("executor", "targets"),
];

/// Refuses a key of [`OWNED_BY_TARGETS`] set in the file's section or by an environment
/// variable.
pub(super) fn refuse_keys_owned_by_targets(
    section: impl Fn(&str) -> Option<toml::Value>,
    env_for: impl Fn(&str) -> Vec<EnvVar>,
) -> Result<(), CliError> {
    for (service, key) in OWNED_BY_TARGETS {
        if section(service).is_some_and(|s| s.get(key).is_some()) {
            return Err(invalid(format!(
                "[{service}] {key} is set in the file, but [[targets]] sets it: set targets with \
                 [[targets]] (name, root, aliases, default, commands, agent)"
            )));
        }
        if let Some(var) = env_for(service)
            .into_iter()
            .find(|var| var.path.first().is_some_and(|k| k == key))
        {
            return Err(invalid(format!(
                "environment variable {} sets {service}.{key}, but [[targets]] sets it: set \
                 targets with [[targets]] (name, root, aliases, default, commands, agent) or \
                 --workspace TARGET=DIR",
                var.name
            )));
        }
    }
    Ok(())
}
