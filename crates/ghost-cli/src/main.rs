//! `ghost`: run Ghost Runner locally, submit patches, read and steer a running system.
//! Argument parsing and dispatch only; the commands live in the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ghost_cli::backup;
use ghost_cli::client::GatewayClient;
use ghost_cli::commands::{self, ListOptions};
use ghost_cli::config_check;
use ghost_cli::error::CliError;
use ghost_cli::exit::{self, Exit};
use ghost_cli::init;
use ghost_cli::render::Output;
use ghost_cli::revert::{self, RevertOptions};
use ghost_cli::settings::{self, ConfigFile};
use ghost_cli::submit::{self, SubmitOptions};
use ghost_cli::up::{self, UpArgs};

#[derive(Parser)]
#[command(
    name = "ghost",
    version,
    about = "Run Ghost Runner, send it patches, watch and steer it",
    after_help = exit::TABLE
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Gateway URL [default: http://127.0.0.1:8080, or `url` in the config file].
    #[arg(long, global = true, env = "GHOST_URL")]
    url: Option<String>,
    /// API key (`ghost up` prints one) [or `api_key` in the config file]. Given to `ghost up`
    /// as a flag (never through GHOST_API_KEY), it is an extra all-scopes gateway key.
    #[arg(long, global = true, env = "GHOST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// ghost's config file (TOML: url, api_key) [default: $XDG_CONFIG_HOME/ghost/config.toml].
    #[arg(long, global = true, env = "GHOST_CLI_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one machine-readable JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run all five services on this machine with embedded storage until Ctrl-C.
    ///
    /// Config layers, each over the one before: built-in defaults, the file (-f, else
    /// ./ghost.toml when present), GHOST_<SERVICE>__KEY environment variables, these flags.
    Up(UpArgs),
    /// The private CA, a server certificate and a service credential for a deployment
    /// (compose runs this into a volume; `ghost up` does it by itself under <data-dir>/tls/).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Write a commented ghost.toml (one example target, an admin, a submit-only and a
    /// read-only API key, printed once; only their hashes are stored).
    Init {
        /// The directory to write ghost.toml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Replace an existing ghost.toml (and its keys).
        #[arg(long)]
        force: bool,
    },
    // The commands that call the gateway, listed in `--help` among the others.
    #[command(flatten)]
    Gateway(GatewayCommand),
    /// Service config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run only an executor, on the machine where the code lives, against a router elsewhere;
    /// `install` makes it a service of this machine, `uninstall` removes that.
    Executor(ghost_cli::executor::ExecutorCommand),
    /// Copy every service's state (the router's, summarizer's and alerter's databases with
    /// SQLite's online backup, and the summary files) into a new directory with a manifest,
    /// while the services run.
    Backup {
        #[command(flatten)]
        dirs: StateDirFlags,
        /// Write the backup into this new (or empty) directory.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "into",
            conflicts_with = "into"
        )]
        out: Option<PathBuf>,
        /// Write the backup into a new directory backup-<UTC time> under ROOT.
        #[arg(long, value_name = "ROOT")]
        into: Option<PathBuf>,
        /// With --into: keep the newest N backups under ROOT and delete older ones.
        #[arg(long, value_name = "N", requires = "into", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Check a backup (manifest, sizes, sha256, database integrity) and put it into fresh data
    /// dirs; stop the services first.
    Restore {
        /// The backup directory (one `ghost backup` wrote).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[command(flatten)]
        dirs: StateDirFlags,
        /// Restore into non-empty dirs: what is there moves to <dir>/.before-restore-<time>/.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The commands that read or steer a running system through the gateway.
#[derive(Subcommand)]
enum GatewayCommand {
    /// Submit a patch (JSON or YAML file, - for stdin), follow it to its end, print its summary;
    /// the exit code is the outcome.
    Submit {
        /// The patch file, or - for stdin.
        file: PathBuf,
        /// Stop following after this many seconds (exit 14; the patch goes on).
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
        /// Return once the gateway has accepted the patch.
        #[arg(long)]
        no_wait: bool,
        /// Only check the patch: print the diff it would apply and the rung each edit matched;
        /// nothing is written, queued or stored (exit 0 when it would apply).
        #[arg(long, conflicts_with = "no_wait")]
        dry_run: bool,
    },
    /// Overview: targets, executors, patch counts by status.
    Status,
    /// Patches, newest first.
    List {
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Only this status.
        #[arg(long, value_parser = status_names())]
        status: Option<String>,
        /// At most this many (pages are fetched as needed).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Continue an earlier listing (its `next_page_token`).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// One patch: state, error, report, summary.
    Show {
        /// Patch id.
        id: String,
    },
    /// The audit trail of one patch.
    Events {
        /// Patch id.
        id: String,
    },
    /// The output of a patch's commands.
    Logs {
        /// Patch id.
        id: String,
    },
    /// Cancel a queued or running patch (admin scope).
    Cancel {
        /// Patch id.
        id: String,
    },
    /// Queue a failed, cancelled or lost patch again (admin scope).
    Retry {
        /// Patch id.
        id: String,
    },
    /// Undo a succeeded patch: queue `revert-ID`, which restores every file the patch changed
    /// (admin scope, or submit scope on its target). Refused (exit 10) when files changed since
    /// it succeeded: each is printed, one per line.
    Revert {
        /// Id of the succeeded patch.
        id: String,
        /// Follow the revert patch to its end for at most this long (e.g. 30s, 5m) and exit by
        /// its outcome (exit 14 when it still runs).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Stop handing out a target's patches (admin scope).
    Pause {
        /// Target name, e.g. MAIN.
        target: String,
    },
    /// Hand out a paused target's patches again (admin scope).
    Resume {
        /// Target name, e.g. MAIN.
        target: String,
    },
    /// Every target's queue.
    Targets,
    /// Connected executors.
    Executors,
    /// Per-executor tokens for executors on other machines (admin scope).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the exact setup of a model client against the gateway: ChatGPT's Action import,
    /// or an MCP client's config snippet (URL and Authorization header).
    Connect {
        /// The client.
        #[arg(value_enum)]
        client: ghost_cli::connect::Client,
        /// Create an API key with just these scopes for the client (comma-separated: submit,
        /// read, admin; needs an admin key) and put it in the snippet [default: a
        /// <YOUR_API_KEY> placeholder].
        #[arg(long, value_name = "SCOPES")]
        key_scope: Option<String>,
    },
}

/// Where the services keep their state, for `backup` and `restore`.
#[derive(Args)]
struct StateDirFlags {
    /// `ghost up`'s data dir: router/, summarizer/ and alerter/ under it.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["router_dir", "summarizer_dir", "alerter_dir"])]
    data_dir: Option<PathBuf>,
    /// The router's data dir (its `data_dir`), instead of <data-dir>/router.
    #[arg(long, value_name = "DIR")]
    router_dir: Option<PathBuf>,
    /// The summarizer's data dir, instead of <data-dir>/summarizer.
    #[arg(long, value_name = "DIR")]
    summarizer_dir: Option<PathBuf>,
    /// The alerter's data dir, instead of <data-dir>/alerter.
    #[arg(long, value_name = "DIR")]
    alerter_dir: Option<PathBuf>,
}

impl From<StateDirFlags> for backup::StateDirs {
    fn from(flags: StateDirFlags) -> Self {
        Self {
            data_dir: flags.data_dir,
            router: flags.router_dir,
            summarizer: flags.summarizer_dir,
            alerter: flags.alerter_dir,
        }
    }
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write ca.pem, ca-key.pem, server.pem, server-key.pem and internal-token into DIR, keeping
    /// what is there (the server certificate is issued again when a name is missing or it
    /// expires within 30 days).
    Init {
        /// The directory (created 0700).
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address the server certificate must carry (repeatable), beside
        /// localhost, 127.0.0.1 and ::1.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Keep ca-key.pem in this directory instead (e.g. a volume only this step mounts).
        #[arg(long, value_name = "DIR")]
        ca_key_dir: Option<PathBuf>,
        /// Also copy ca.pem, alone, into this directory (for executors: they run untrusted
        /// commands and must not see the keys or the credential).
        #[arg(long, value_name = "DIR")]
        export_ca: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token scoped to targets; it is printed once, only its hash is kept.
    Create {
        /// A target the executor may serve (repeatable; at least one).
        #[arg(long = "target", value_name = "TARGET", required = true)]
        targets: Vec<String>,
        /// The token's name, e.g. alice-laptop (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
    },
    /// Every token: targets, state, last use, open streams (never a secret).
    List,
    /// Revoke a token: its executors are disconnected and their work goes to others.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a service's TOML config file and print the effective config, secrets redacted.
    Check {
        /// The file.
        file: PathBuf,
        /// The service it configures [default: from the file name, else from its keys].
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(config_check::SERVICES))]
        service: Option<String>,
    },
}

fn status_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(ghost_core::Status::ALL.map(|s| s.as_str()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let api_key_flag = api_key_on_command_line(&matches);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let output = Output::detect(cli.global.json, no_color);
    match run(cli, api_key_flag, &output).await {
        Ok(exit) => exit.into(),
        Err(err) => {
            output.note(&format!("{} {err}", output.err.red("ghost:")));
            if let Some(hint) = err.hint() {
                output.note(&format!("hint: {hint}"));
            }
            err.exit().into()
        }
    }
}

/// True when `--api-key` was given on the command line (not through `GHOST_API_KEY`, the
/// client's variable, which `ghost up` must never turn into an all-scopes gateway key).
fn api_key_on_command_line(matches: &ArgMatches) -> bool {
    let given = |m: &ArgMatches| m.value_source("api_key") == Some(ValueSource::CommandLine);
    given(matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub))
}

fn client(global: Global) -> Result<GatewayClient, CliError> {
    let file = match global.config {
        Some(path) => ConfigFile::Explicit(path),
        None => ConfigFile::default_location(
            std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        ),
    };
    let settings = settings::resolve(global.url, global.api_key, &file)?;
    Ok(GatewayClient::new(
        &settings.url,
        settings.api_key.as_deref(),
    )?)
}

/// The process's `GHOST_*` environment variables.
fn ghost_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(key, _)| key.starts_with("GHOST_"))
        .collect()
}

/// Runs the command; the commands that work on this machine are here, those that call the
/// gateway in [`call_gateway`].
async fn run(cli: Cli, api_key_flag: bool, output: &Output) -> Result<Exit, CliError> {
    let global = cli.global;
    match cli.command {
        Command::Up(args) => {
            let print_config = args.print_config;
            let flags = args.into_flags(global.api_key.filter(|_| api_key_flag));
            up::run(flags, print_config, &ghost_env(), output).await
        }
        Command::Init { dir, force } => init::run(&dir, force, output),
        Command::Tls {
            command:
                TlsCommand::Init {
                    dir,
                    names,
                    ca_key_dir,
                    export_ca,
                },
        } => {
            let (ensured, token) =
                ghost_cli::tls::init(&dir, &names, ca_key_dir.as_deref(), export_ca.as_deref())?;
            output.print(&ghost_cli::tls::init_report(&ensured, &token));
            Ok(Exit::Success)
        }
        Command::Config {
            command: ConfigCommand::Check { file, service },
        } => {
            let checked = config_check::check(&file, service.as_deref(), &ghost_env())?;
            config_check::report(&checked, &file, output);
            Ok(Exit::Success)
        }
        Command::Executor(command) => ghost_cli::executor::run(command, &ghost_env(), output).await,
        Command::Backup {
            dirs,
            out,
            into,
            keep,
        } => {
            let destination = backup::Destination::from_flags(out, into, keep)?;
            backup::run_backup(dirs.into(), destination, output).await
        }
        Command::Restore { from, dirs, force } => {
            let options = backup::RestoreOptions {
                from,
                dirs: dirs.into(),
                force,
            };
            backup::run_restore(options, output).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ghost", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        Command::Gateway(command) => call_gateway(command, global, output).await,
    }
}

/// Runs a command that reads or steers a running system through the gateway. Each builds the
/// client only after its own arguments are read, so an unreadable patch file is reported
/// before missing settings.
async fn call_gateway(
    command: GatewayCommand,
    global: Global,
    output: &Output,
) -> Result<Exit, CliError> {
    match command {
        GatewayCommand::Submit {
            file,
            wait_s,
            no_wait,
            dry_run,
        } => {
            let patch = submit::read_patch(&file)?;
            let options = SubmitOptions {
                wait: Duration::from_secs(wait_s),
                no_wait,
                dry_run,
            };
            submit::run(&client(global)?, output, patch, &options).await
        }
        GatewayCommand::Status => commands::status(&client(global)?, output).await,
        GatewayCommand::List {
            target,
            status,
            limit,
            page_token,
        } => {
            let options = ListOptions {
                target,
                status,
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                page_token,
            };
            commands::list(&client(global)?, output, options).await
        }
        GatewayCommand::Show { id } => commands::show(&client(global)?, output, &id).await,
        GatewayCommand::Events { id } => commands::events(&client(global)?, output, &id).await,
        GatewayCommand::Logs { id } => commands::logs(&client(global)?, output, &id).await,
        GatewayCommand::Cancel { id } => commands::cancel(&client(global)?, output, &id).await,
        GatewayCommand::Retry { id } => commands::retry(&client(global)?, output, &id).await,
        GatewayCommand::Revert { id, wait } => {
            let options = RevertOptions { wait };
            revert::run(&client(global)?, output, &id, &options).await
        }
        GatewayCommand::Pause { target } => {
            commands::pause(&client(global)?, output, &target, true).await
        }
        GatewayCommand::Resume { target } => {
            commands::pause(&client(global)?, output, &target, false).await
        }
        GatewayCommand::Targets => commands::targets(&client(global)?, output).await,
        GatewayCommand::Executors => commands::executors(&client(global)?, output).await,
        GatewayCommand::Token { command } => token(command, &client(global)?, output).await,
        GatewayCommand::Connect {
            client: which,
            key_scope,
        } => {
            let options = ghost_cli::connect::ConnectOptions {
                client: which,
                key_scopes: key_scope
                    .as_deref()
                    .map(ghost_cli::connect::parse_scopes)
                    .transpose()?,
            };
            ghost_cli::connect::run(&client(global)?, output, &options).await
        }
    }
}

/// `ghost token create|list|revoke`.
async fn token(
    command: TokenCommand,
    client: &GatewayClient,
    output: &Output,
) -> Result<Exit, CliError> {
    match command {
        TokenCommand::Create { targets, name } => {
            commands::token_create(client, output, &name, &targets).await
        }
        TokenCommand::List => commands::token_list(client, output).await,
        TokenCommand::Revoke { name } => commands::token_revoke(client, output, &name).await,
    }
}
