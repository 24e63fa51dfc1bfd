//! `ghost`: run Ghost Runner locally and submit patches to it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ghost_cli::client::{ClientError, GatewayClient};
use ghost_cli::local::{LocalOptions, LocalSystem, SlackOptions};

/// Writes a line to stdout; a closed pipe is not an error worth a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Writes a line to stderr (progress and refusals), ignoring a closed stream.
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "ghost",
    version,
    about = "Run Ghost Runner and send it patches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all five services on this machine with embedded storage until Ctrl-C.
    Up {
        /// Where the services keep their state.
        #[arg(long, default_value = "./.ghost")]
        data_dir: PathBuf,
        /// A workspace as TARGET=DIR (repeatable).
        #[arg(
            long = "workspace",
            value_name = "TARGET=DIR",
            default_value = "MAIN=./workspace"
        )]
        workspaces: Vec<String>,
        /// The gateway's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// API key for the gateway; generated and printed when unset.
        #[arg(long, env = "GHOST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Slack Web API base URL (Slack is off unless set).
        #[arg(long, env = "GHOST_SLACK_API_URL")]
        slack_api_url: Option<String>,
        /// Slack bot token.
        #[arg(
            long,
            env = "GHOST_SLACK_TOKEN",
            hide_env_values = true,
            default_value = ""
        )]
        slack_token: String,
        /// Slack channel.
        #[arg(long, env = "GHOST_SLACK_CHANNEL", default_value = "#ghost-runner")]
        slack_channel: String,
    },
    /// Submit a patch (JSON file, or - for stdin), follow it to its end, print its summary.
    Submit {
        /// The patch file.
        file: PathBuf,
        /// Gateway URL.
        #[arg(long, env = "GHOST_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key.
        #[arg(long, env = "GHOST_API_KEY", hide_env_values = true)]
        key: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            data_dir,
            workspaces,
            listen,
            api_key,
            slack_api_url,
            slack_token,
            slack_channel,
        } => {
            let slack = slack_api_url.map(|api_base_url| SlackOptions {
                api_base_url,
                bot_token: slack_token,
                channel: slack_channel,
            });
            up(data_dir, workspaces, listen, api_key, slack).await
        }
        Command::Submit {
            file,
            url,
            key,
            wait_s,
        } => submit(file, &url, &key, Duration::from_secs(wait_s)).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            err!("ghost: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn up(
    data_dir: PathBuf,
    workspaces: Vec<String>,
    listen: SocketAddr,
    api_key: Option<String>,
    slack: Option<SlackOptions>,
) -> anyhow::Result<ExitCode> {
    let telemetry = ghost_runtime::telemetry::init("ghost", &Default::default())?;
    let mut parsed = Vec::new();
    for spec in workspaces {
        let Some((target, dir)) = spec.split_once('=') else {
            anyhow::bail!("--workspace {spec:?}: expected TARGET=DIR, e.g. MAIN=./workspace");
        };
        parsed.push((target.to_owned(), PathBuf::from(dir)));
    }
    let (api_key, generated) = match api_key.filter(|k| !k.is_empty()) {
        Some(key) => (key, false),
        None => (random_key()?, true),
    };
    let slack_on = slack.is_some();
    let system = LocalSystem::start(LocalOptions {
        data_dir: data_dir.clone(),
        workspaces: parsed.clone(),
        gateway_listen: listen,
        api_key: api_key.clone(),
        slack,
    })
    .await?;
    out!("Ghost Runner is up (state in {}).", data_dir.display());
    for service in &system.services {
        out!(
            "  {:<11} grpc {}  http {}",
            service.name,
            service.grpc,
            service.http
        );
    }
    for (target, dir) in &parsed {
        out!("  workspace   {target} = {}", dir.display());
    }
    out!(
        "  slack       {}",
        if slack_on {
            "on"
        } else {
            "off (messages are logged)"
        }
    );
    if generated {
        out!(
            "\nAPI key (shown once): {api_key}\n  export GHOST_API_KEY={api_key} GHOST_URL=http://{listen}"
        );
    }
    out!("Submit with: ghost submit patch.json    Stop with Ctrl-C.");
    ghost_runtime::shutdown::signal().await;
    system.shutdown().await?;
    telemetry.shutdown();
    Ok(ExitCode::SUCCESS)
}

async fn submit(file: PathBuf, url: &str, key: &str, wait: Duration) -> anyhow::Result<ExitCode> {
    let body = if file.as_os_str() == "-" {
        let mut buffer = Vec::new();
        std::io::stdin().read_to_end(&mut buffer)?;
        buffer
    } else {
        std::fs::read(&file)
            .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?
    };
    let client = GatewayClient::new(url, key)?;
    let accepted = match client.submit(body).await {
        Ok(accepted) => accepted,
        Err(ClientError::Refused { status, detail, .. }) => {
            err!("ghost: patch refused ({status}): {detail}");
            return Ok(ExitCode::from(2));
        }
        Err(err) => return Err(err.into()),
    };
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    err!(
        "accepted {id} (trace {})",
        accepted["trace_id"].as_str().unwrap_or("-")
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_status = String::new();
    let mut poll = Duration::from_millis(10);
    loop {
        let detail = client.patch(&id).await?;
        let status = detail["status"].as_str().unwrap_or("unknown").to_owned();
        if status != last_status {
            err!("  {status}");
            last_status.clone_from(&status);
        }
        let terminal = !matches!(
            status.as_str(),
            "received" | "queued" | "leased" | "applying" | "validating"
        );
        if terminal && !detail["summary"].is_null() {
            out!("{}", detail["summary"].as_str().unwrap_or_default());
            return Ok(if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if tokio::time::Instant::now() >= deadline {
            err!("ghost: gave up waiting after {wait:?}; {id} is {status}");
            return Ok(ExitCode::from(3));
        }
        // Quick first polls so short patches report at once; then settle at 250 ms.
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(250));
    }
}
