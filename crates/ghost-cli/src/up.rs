//! `ghost up`: all five services in this process until Ctrl-C, with what a developer needs to
//! talk to them printed once they are ready.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::CliError;
use crate::exit::Exit;
use crate::local::{LocalOptions, LocalSystem, SlackOptions};
use crate::render::Output;

/// What `ghost up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the services keep their state.
    pub data_dir: PathBuf,
    /// Workspaces as `TARGET=DIR`.
    pub workspaces: Vec<String>,
    /// The gateway's HTTP address.
    pub listen: SocketAddr,
    /// The API key; generated and printed when `None`.
    pub api_key: Option<String>,
    /// Slack, or `None` to log messages.
    pub slack: Option<SlackOptions>,
}

fn random_key() -> Result<String, CliError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(|err| CliError::Other(anyhow::anyhow!("cannot generate an API key: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs until SIGINT/SIGTERM, then drains every service.
pub async fn run(options: UpOptions, output: &Output) -> Result<Exit, CliError> {
    let telemetry = ghost_runtime::telemetry::init("ghost", &Default::default())?;
    let mut parsed = Vec::new();
    for spec in options.workspaces {
        let Some((target, dir)) = spec.split_once('=') else {
            return Err(CliError::Settings(format!(
                "--workspace {spec:?}: expected TARGET=DIR, e.g. MAIN=./workspace"
            )));
        };
        parsed.push((target.to_owned(), PathBuf::from(dir)));
    }
    let (api_key, generated) = match options.api_key.filter(|k| !k.is_empty()) {
        Some(key) => (key, false),
        None => (random_key()?, true),
    };
    let slack_on = options.slack.is_some();
    let system = LocalSystem::start(LocalOptions {
        data_dir: options.data_dir.clone(),
        workspaces: parsed.clone(),
        gateway_listen: options.listen,
        api_key: api_key.clone(),
        slack: options.slack,
    })
    .await?;
    let mut text = format!(
        "Ghost Runner is up (state in {}).\n",
        options.data_dir.display()
    );
    for service in &system.services {
        text.push_str(&format!(
            "  {:<11} grpc {}  http {}\n",
            service.name, service.grpc, service.http
        ));
    }
    for (target, dir) in &parsed {
        text.push_str(&format!("  workspace   {target} = {}\n", dir.display()));
    }
    text.push_str(&format!(
        "  slack       {}\n",
        if slack_on {
            "on"
        } else {
            "off (messages are logged)"
        }
    ));
    let gateway = system.gateway_url()?;
    if generated {
        text.push_str(&format!(
            "\nAPI key (shown once): {api_key}\n  export GHOST_API_KEY={api_key} GHOST_URL={gateway}\n"
        ));
    }
    text.push_str("Submit with: ghost submit patch.json    Stop with Ctrl-C.");
    output.print(&text);
    ghost_runtime::shutdown::signal().await;
    system.shutdown().await?;
    telemetry.shutdown();
    Ok(Exit::Success)
}
