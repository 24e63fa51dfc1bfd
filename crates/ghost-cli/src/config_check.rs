//! `ghost config check FILE`: loads a service's TOML config file with that service's own typed
//! loader (`ghost_runtime::config::load_from` into the service's config struct, so the same
//! defaults, the same `GHOST_<SVC>__*` environment layer and the same unknown-key refusals
//! apply) and renders the effective config with every secret redacted.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CliError;
use crate::render::Output;

/// The services that have a config file.
pub const SERVICES: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];

/// A config file that loaded: which service, and its effective config.
#[derive(Debug)]
pub struct Checked {
    /// The service it configures.
    pub service: &'static str,
    /// How the service was chosen (`--service`, the file name, or the keys).
    pub chosen_by: &'static str,
    /// Effective config as TOML, secrets redacted.
    pub toml: String,
    /// Effective config as JSON, secrets redacted.
    pub json: serde_json::Value,
    /// Environment variables layered over the file.
    pub env_vars: usize,
}

fn load<T>(
    service: &'static str,
    file: &Path,
    env: &HashMap<String, String>,
) -> Result<(String, serde_json::Value), String>
where
    T: DeserializeOwned + Serialize + Default,
{
    let config: T = ghost_runtime::config::load_from(service, Some(file), env.clone())
        .map_err(|err| err.to_string())?;
    let toml = ghost_runtime::config::render(&config).map_err(|err| err.to_string())?;
    let json = serde_json::to_value(&config).map_err(|err| err.to_string())?;
    Ok((toml, json))
}

fn load_as(
    service: &'static str,
    file: &Path,
    env: &HashMap<String, String>,
) -> Result<(String, serde_json::Value), String> {
    match service {
        "gateway" => load::<gateway::GatewayConfig>(service, file, env),
        "router" => load::<router::RouterConfig>(service, file, env),
        "executor" => load::<executor::ExecutorConfig>(service, file, env),
        "summarizer" => load::<summarizer::SummarizerConfig>(service, file, env),
        "alerter" => load::<alerter::AlerterConfig>(service, file, env),
        other => Err(format!("unknown service {other:?}")),
    }
}

/// The service a file name points at, when it names exactly one (`router.toml`,
/// `ghost-executor.prod.toml`).
fn service_from_name(file: &Path) -> Option<&'static str> {
    let name = file.file_name()?.to_str()?.to_ascii_lowercase();
    let mut named = SERVICES.iter().filter(|s| name.contains(*s));
    let first = named.next()?;
    named.next().is_none().then_some(*first)
}

/// Checks `file`; `service` from `--service`, else from the file name, else the one service
/// whose config the file fits. `env` holds the process's `GHOST_*` variables.
pub fn check(
    file: &Path,
    service: Option<&str>,
    env: &HashMap<String, String>,
) -> Result<Checked, CliError> {
    if !file.exists() {
        return Err(CliError::Input(format!(
            "config file {} does not exist",
            file.display()
        )));
    }
    let env_vars_of = |service: &str| {
        let prefix = format!("{}__", ghost_runtime::config::env_prefix(service));
        env.iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    };
    let explicit = match service {
        Some(name) => Some((
            SERVICES.into_iter().find(|s| *s == name).ok_or_else(|| {
                CliError::Input(format!(
                    "unknown service {name:?}: expected one of {}",
                    SERVICES.join(", ")
                ))
            })?,
            "--service",
        )),
        None => service_from_name(file).map(|s| (s, "the file name")),
    };
    if let Some((service, chosen_by)) = explicit {
        let env = env_vars_of(service);
        let (toml, json) = load_as(service, file, &env).map_err(|reason| {
            CliError::Input(format!(
                "{} is not a valid {service} config: {reason}",
                file.display()
            ))
        })?;
        return Ok(Checked {
            service,
            chosen_by,
            toml,
            json,
            env_vars: env.len(),
        });
    }
    let mut fits = Vec::new();
    let mut reasons = Vec::new();
    for service in SERVICES {
        let env = env_vars_of(service);
        match load_as(service, file, &env) {
            Ok(loaded) => fits.push((service, loaded, env.len())),
            Err(reason) => reasons.push(format!("as {service}: {reason}")),
        }
    }
    match fits.len() {
        1 => {
            let (service, (toml, json), env_vars) = fits.remove(0);
            Ok(Checked {
                service,
                chosen_by: "its keys",
                toml,
                json,
                env_vars,
            })
        }
        0 => Err(CliError::Input(format!(
            "{} fits no service config ({}); name the service with --service",
            file.display(),
            reasons.join("; ")
        ))),
        _ => Err(CliError::Input(format!(
            "{} could configure any of {}: name the service with --service",
            file.display(),
            fits.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Prints a checked file: the effective config on stdout (TOML, or JSON with `--json`), what
/// was checked on stderr.
pub fn report(checked: &Checked, file: &Path, output: &Output) {
    output.note(&format!(
        "ok: {} is a valid {} config (service chosen by {}{})",
        file.display(),
        checked.service,
        checked.chosen_by,
        match checked.env_vars {
            0 => String::new(),
            n => format!(
                "; {n} GHOST_{}__* environment variable(s) layered over it",
                checked.service.to_uppercase()
            ),
        }
    ));
    if output.json {
        output.print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "service": checked.service,
            "chosen_by": checked.chosen_by,
            "env_vars": checked.env_vars,
            "config": checked.json,
        }));
    } else {
        output.print(&checked.toml);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_good_file_renders_with_secrets_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "gateway.toml",
            "api_key = \"sk-very-secret\"\nrouter_url = \"http://10.0.0.1:50051\"\n",
        );
        let checked = check(&file, None, &HashMap::new()).unwrap();
        assert_eq!(checked.service, "gateway");
        assert_eq!(checked.chosen_by, "the file name");
        assert!(checked.toml.contains("[redacted]"), "{}", checked.toml);
        assert!(!checked.toml.contains("sk-very-secret"));
        assert!(checked.toml.contains("http://10.0.0.1:50051"));
        assert_eq!(checked.json["api_key"], "[redacted]");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "x.toml", "routr_url = \"http://x\"\n");
        let err = check(&file, Some("gateway"), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("routr_url"), "{err}");
    }

    #[test]
    fn the_environment_layer_applies_like_in_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "router.toml", "");
        let env = HashMap::from([(
            "GHOST_ROUTER__SUMMARIZER_URL".to_owned(),
            "http://from-env:1".to_owned(),
        )]);
        let checked = check(&file, None, &env).unwrap();
        assert_eq!(checked.env_vars, 1);
        assert!(
            checked.toml.contains("http://from-env:1"),
            "{}",
            checked.toml
        );
    }

    #[test]
    fn keys_pick_the_service_when_the_name_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "prod.toml",
            "executor_id = \"e1\"\nreconnect_backoff = \"1s\"\n",
        );
        let checked = check(&file, None, &HashMap::new()).unwrap();
        assert_eq!(checked.service, "executor");
        assert_eq!(checked.chosen_by, "its keys");
        let ambiguous = write(dir.path(), "base.toml", "[server]\n");
        let err = check(&ambiguous, None, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--service"), "{err}");
    }
}
