//! What `ghost up` prints once every service is ready: where each listens, the store, the
//! targets, where executors dial in, Slack, and how to reach the gateway (with the API key
//! when one was made, shown only here).

use std::net::SocketAddr;
use std::path::Path;

use crate::error::CliError;
use crate::system::System;
use crate::up_config::UpConfig;

/// The whole text; `ca` is the CA executors trust (when one was made), `generated` the API key
/// made for this run (when the config had none).
pub(super) fn banner(
    config: &UpConfig,
    system: &System,
    ca: Option<&Path>,
    generated: Option<&str>,
) -> Result<String, CliError> {
    let mut text = format!(
        "Ghost Runner is up (state in {}{}).\n",
        config.data_dir.display(),
        config
            .file
            .as_ref()
            .map(|f| format!(", config {}", f.display()))
            .unwrap_or_default()
    );
    for service in &system.services {
        let ops = if service.ops == service.http {
            String::new()
        } else {
            format!("  ops {}", service.ops)
        };
        text.push_str(&format!(
            "  {:<11} grpc {}  http {}{ops}\n",
            service.name, service.grpc, service.http
        ));
    }
    text.push_str(&format!(
        "  store       {}\n",
        match &config.store {
            Some(url) => crate::up_config::store::shown(url),
            None => "SQLite under the data dir".to_owned(),
        }
    ));
    text.push_str(&targets(config));
    text.push_str(&executors(config, ca));
    text.push_str(&format!(
        "  slack       {}\n",
        if config.system.alerter.slack.api_base_url.is_some() {
            "on"
        } else {
            "off (messages are logged)"
        }
    ));
    text.push_str(&reach(config, system, generated)?);
    text.push_str("Submit with: ghost submit patch.json    Stop with Ctrl-C.");
    Ok(text)
}

/// A line per target: its root, aliases, and which is the default.
fn targets(config: &UpConfig) -> String {
    let mut text = String::new();
    for target in &config.targets {
        text.push_str(&format!(
            "  target      {} = {}{}{}\n",
            target.name,
            target.root.display(),
            if target.aliases.is_empty() {
                String::new()
            } else {
                format!(" (aliases {})", target.aliases.join(", "))
            },
            if target.is_default { " (default)" } else { "" }
        ));
    }
    text
}

/// Where executors on other machines dial in, and what they trust; or that none runs here.
fn executors(config: &UpConfig, ca: Option<&Path>) -> String {
    let mut text = String::new();
    if let Some(addr) = config.system.router.executor_listen {
        text.push_str(&format!(
            "  executors   https://{}:{}{}\n",
            dialled_host(config, addr),
            addr.port(),
            ca.map(|ca| format!(" (they trust {})", ca.display()))
                .unwrap_or_default()
        ));
    }
    if config.system.executor.is_none() {
        text.push_str(if config.system.router.executor_listen.is_some() {
            "  executor    none here (--no-local-executor): run `ghost executor` where the code is\n"
        } else {
            "  executor    none here (--no-local-executor), and no executor port: add \
             --executor-listen ADDR for executors on other machines\n"
        });
    }
    text
}

/// The host executors dial for the executor port at `addr`: a name or address, not 0.0.0.0 —
/// the public URL's host, else this machine's name.
fn dialled_host(config: &UpConfig, addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
    }
    reqwest::Url::parse(&config.system.gateway.public_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The gateway's URL (HTTPS when it serves a certificate) to export, with the API key made for
/// this run.
fn reach(config: &UpConfig, system: &System, generated: Option<&str>) -> Result<String, CliError> {
    let gateway_tls = &config.system.gateway.server.tls;
    let gateway = if gateway_tls.cert.is_some() && gateway_tls.http {
        match config.system.gateway.public_url.trim_end_matches('/') {
            "" => system.gateway_url()?.replacen("http://", "https://", 1),
            public => public.to_owned(),
        }
    } else {
        system.gateway_url()?
    };
    Ok(match generated {
        Some(api_key) => format!(
            "\nAPI key (shown once): {api_key}\n  export GHOST_API_KEY={api_key} GHOST_URL={gateway}\n"
        ),
        None => format!("\n  export GHOST_URL={gateway}\n"),
    })
}
