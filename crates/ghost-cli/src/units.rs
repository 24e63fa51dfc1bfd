//! `ghost executor install` / `uninstall`: `ghost executor` as a service of this machine — a
//! systemd unit (Linux; user or system) or a launchd agent (macOS). The token is written to a
//! file only its owner can read (systemd's `EnvironmentFile=`, or `--token-file` for launchd),
//! never onto the command line. The unit and plist writers are pure functions; every path and
//! argument is quoted for systemd (`"`, `\`, `%`, `$`) or escaped for XML.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::CliError;
use crate::executor::{Environment, Resolved, TOKEN_ENV};
use crate::exit::Exit;
use crate::render::Output;

/// The systemd unit's name.
pub const UNIT_NAME: &str = "ghost-executor.service";
/// A system unit's data dir when none is given (its `StateDirectory=`).
pub const SYSTEM_DATA_DIR: &str = "/var/lib/ghost-executor";
/// The launchd job's label.
pub const LABEL: &str = "dev.ghost-runner.executor";

/// The service manager to install for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// A systemd unit.
    Systemd,
    /// A launchd agent (user) or daemon (system).
    Launchd,
}

impl Manager {
    /// This OS's: launchd on macOS, systemd elsewhere.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            Self::Launchd
        } else {
            Self::Systemd
        }
    }
}

/// How `install` installs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The user's service manager, not the system's.
    pub user: bool,
    /// systemd or launchd.
    pub manager: Manager,
    /// Run systemctl/launchctl to enable and start it.
    pub enable: bool,
    /// Print instead of writing.
    pub dry_run: bool,
    /// `User=` of a system unit.
    pub service_user: Option<String>,
}

/// Where the service file and the token file go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The unit or plist.
    pub service: PathBuf,
    /// The token: an environment file (systemd) or a token file (launchd), mode 0600.
    pub secret: PathBuf,
}

fn bad(message: String) -> CliError {
    CliError::Input(message)
}

/// The files of `manager`'s service, for the user or the system.
pub fn paths(manager: Manager, user: bool, env: &Environment) -> Result<Paths, CliError> {
    let home = || {
        env.home
            .as_deref()
            .map(PathBuf::from)
            .ok_or_else(|| bad("HOME is not set: cannot find the user's service directory".into()))
    };
    let dir = match (manager, user) {
        (Manager::Systemd, true) => match &env.xdg_config_home {
            Some(config) => PathBuf::from(config).join("systemd/user"),
            None => home()?.join(".config/systemd/user"),
        },
        (Manager::Systemd, false) => PathBuf::from("/etc/systemd/system"),
        (Manager::Launchd, true) => home()?.join("Library/LaunchAgents"),
        (Manager::Launchd, false) => PathBuf::from("/Library/LaunchDaemons"),
    };
    Ok(match manager {
        Manager::Systemd => Paths {
            service: dir.join(UNIT_NAME),
            secret: dir.join("ghost-executor.env"),
        },
        Manager::Launchd => Paths {
            service: dir.join(format!("{LABEL}.plist")),
            secret: dir.join(format!("{LABEL}.token")),
        },
    })
}

/// `ghost executor` with `resolved`'s settings, the token left out (`token_file` instead when
/// given).
pub fn service_args(resolved: &Resolved, token_file: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "executor".to_owned(),
        "--router".to_owned(),
        resolved.router.clone(),
    ];
    if let Some(file) = token_file {
        args.extend(["--token-file".to_owned(), file.display().to_string()]);
    }
    if let Some(ca) = &resolved.ca {
        args.extend(["--ca".to_owned(), ca.display().to_string()]);
    }
    for (target, dir) in &resolved.workspaces {
        args.extend([
            "--workspace".to_owned(),
            format!("{target}={}", dir.display()),
        ]);
    }
    args.extend([
        "--data-dir".to_owned(),
        resolved.data_dir.display().to_string(),
        "--name".to_owned(),
        resolved.name.clone(),
    ]);
    if let Some(listen) = resolved.listen {
        args.extend(["--listen".to_owned(), listen.to_string()]);
    }
    if let Some(backoff) = resolved.reconnect_backoff {
        args.extend([
            "--reconnect-backoff".to_owned(),
            humantime::format_duration(backoff).to_string(),
        ]);
    }
    args
}

/// Refuses control characters (a newline would end the unit's line or the plist's string).
fn plain(what: &str, value: &str) -> Result<(), CliError> {
    if value.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} {value:?} contains a control character; a service file cannot carry it"
        )));
    }
    Ok(())
}

/// One word of a systemd command line: double-quoted, `\` and `"` escaped, `%` and `$`
/// doubled (specifiers and variables are expanded in `ExecStart=`).
pub fn systemd_word(word: &str) -> Result<String, CliError> {
    plain("argument", word)?;
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    Ok(quoted)
}

/// A path as the value of a systemd setting that takes one path (`EnvironmentFile=`): not
/// split on spaces, so only `%` is special.
fn systemd_path(path: &Path) -> Result<String, CliError> {
    let text = path.display().to_string();
    plain("path", &text)?;
    Ok(text.replace('%', "%%"))
}

/// The systemd unit running `binary args…` with the token from `env_file`.
pub fn systemd_unit(
    binary: &Path,
    args: &[String],
    env_file: &Path,
    user: bool,
    service_user: Option<&str>,
) -> Result<String, CliError> {
    let mut command = vec![systemd_word(&binary.display().to_string())?];
    for arg in args {
        command.push(systemd_word(arg)?);
    }
    let mut unit = String::from(
        "# Written by `ghost executor install`; `ghost executor uninstall` removes it.\n\
         [Unit]\n\
         Description=Ghost Runner executor\n",
    );
    if !user {
        unit.push_str("After=network-online.target\nWants=network-online.target\n");
    }
    unit.push_str("\n[Service]\nType=exec\n");
    unit.push_str(&format!("ExecStart={}\n", command.join(" ")));
    unit.push_str(&format!(
        "# {TOKEN_ENV}, readable by its owner only\nEnvironmentFile={}\n",
        systemd_path(env_file)?
    ));
    unit.push_str("Restart=on-failure\nRestartSec=5s\n");
    // Patches run the target's commands; none of them may gain privileges.
    unit.push_str("NoNewPrivileges=yes\n");
    if !user {
        if let Some(account) = service_user {
            plain("--service-user", account)?;
            unit.push_str(&format!("User={}\n", account.replace('%', "%%")));
        }
        if args
            .windows(2)
            .any(|pair| pair[0] == "--data-dir" && pair[1] == SYSTEM_DATA_DIR)
        {
            unit.push_str("StateDirectory=ghost-executor\nStateDirectoryMode=0700\n");
        }
        // `full`, not `strict`: /usr, /boot and /etc read-only, the workspaces (wherever they
        // are) and the data dir still writable.
        unit.push_str(
            "PrivateTmp=yes\nProtectSystem=full\nProtectKernelTunables=yes\n\
             ProtectKernelModules=yes\nProtectControlGroups=yes\nRestrictSUIDSGID=yes\n\
             LockPersonality=yes\n",
        );
    }
    unit.push_str(&format!(
        "\n[Install]\nWantedBy={}\n",
        if user {
            "default.target"
        } else {
            "multi-user.target"
        }
    ));
    Ok(unit)
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for XML.
pub fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The launchd property list running `binary args…` at load, restarted when it fails, its
/// output appended to `log`.
pub fn launchd_plist(binary: &Path, args: &[String], log: &Path) -> Result<String, CliError> {
    let string = |value: &str| -> Result<String, CliError> {
        plain("argument", value)?;
        Ok(format!("<string>{}</string>", xml_escape(value)))
    };
    let mut program = vec![format!(
        "        {}",
        string(&binary.display().to_string())?
    )];
    for arg in args {
        program.push(format!("        {}", string(arg)?));
    }
    let log = string(&log.display().to_string())?;
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `ghost executor install`; `ghost executor uninstall` removes it. -->
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{LABEL}</string>
    <key>ProgramArguments</key>
    <array>
{program}
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ThrottleInterval</key>
    <integer>5</integer>
    <key>ProcessType</key>
    <string>Background</string>
    <key>StandardOutPath</key>
    {log}
    <key>StandardErrorPath</key>
    {log}
</dict>
</plist>
"#,
        program = program.join("\n"),
    ))
}

/// Refuses a token a service file could mangle (they are printable ASCII without spaces or
/// quotes, as `ghost token create` makes them).
fn check_token(token: &str) -> Result<(), CliError> {
    let fine = |c: char| c.is_ascii_alphanumeric() || "._~+/=:@-".contains(c);
    if !token.chars().all(fine) {
        return Err(bad(
            "the executor token has characters a service file cannot carry safely (only \
             letters, digits and ._~+/=:@- are allowed); use a token `ghost token create` made"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Writes `text` to `path` with `mode`, replacing what was there.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let failed = |err: std::io::Error| {
        CliError::Other(anyhow::anyhow!("cannot write {}: {err}", path.display()))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    // An existing file keeps its mode through open(): set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)
}

/// Runs a service manager command; its failure as an error naming the command.
fn run_command(argv: &[String]) -> Result<(), CliError> {
    let shown = argv.join(" ");
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|err| CliError::Other(anyhow::anyhow!("cannot run `{shown}`: {err}")))?;
    if !status.success() {
        return Err(CliError::Other(anyhow::anyhow!(
            "`{shown}` failed ({status})"
        )));
    }
    Ok(())
}

/// `gui/UID` for a user agent, `system` for a daemon.
fn launchd_domain(user: bool) -> Result<String, CliError> {
    if !user {
        return Ok("system".to_owned());
    }
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(|err| CliError::Other(anyhow::anyhow!("cannot run `id -u`: {err}")))?;
    Ok(format!(
        "gui/{}",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

fn systemctl(user: bool, rest: &[&str]) -> Vec<String> {
    let mut argv = vec!["systemctl".to_owned()];
    if user {
        argv.push("--user".to_owned());
    }
    argv.extend(rest.iter().map(|s| (*s).to_owned()));
    argv
}

/// The commands that enable and start the installed service.
fn enable_commands(options: &InstallOptions, paths: &Paths) -> Result<Vec<Vec<String>>, CliError> {
    Ok(match options.manager {
        Manager::Systemd => vec![
            systemctl(options.user, &["daemon-reload"]),
            systemctl(options.user, &["enable", UNIT_NAME]),
            // restart, not start: a re-install with other flags takes effect.
            systemctl(options.user, &["restart", UNIT_NAME]),
        ],
        Manager::Launchd => vec![vec![
            "launchctl".to_owned(),
            "bootstrap".to_owned(),
            launchd_domain(options.user)?,
            paths.service.display().to_string(),
        ]],
    })
}

/// `ghost executor install`.
pub fn install(
    resolved: &Resolved,
    options: &InstallOptions,
    env: &Environment,
    output: &Output,
) -> Result<Exit, CliError> {
    check_token(&resolved.token)?;
    if options.service_user.is_some() && (options.user || options.manager == Manager::Launchd) {
        return Err(bad(
            "--service-user applies to a system systemd unit only (a user service runs as you; \
             a launchd daemon would run as root)"
                .to_owned(),
        ));
    }
    let paths = paths(options.manager, options.user, env)?;
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|err| CliError::Other(anyhow::anyhow!("cannot find this ghost binary: {err}")))?;
    let (service, secret) = service_files(resolved, options, &paths, &binary)?;
    if options.dry_run {
        output.print(&service);
        output.note(&format!(
            "(dry run: would write {} and the token to {}, mode 0600)",
            paths.service.display(),
            paths.secret.display()
        ));
        return Ok(Exit::Success);
    }
    if !options.user {
        only_root_may_change(&binary)?;
    }
    std::fs::create_dir_all(&resolved.data_dir).map_err(|err| {
        CliError::Other(anyhow::anyhow!(
            "cannot create the data dir {}: {err}",
            resolved.data_dir.display()
        ))
    })?;
    write_file(&paths.secret, &secret, 0o600)?;
    write_file(&paths.service, &service, 0o644)?;
    output.note(&format!(
        "wrote {} and {} (the token, mode 0600)",
        paths.service.display(),
        paths.secret.display()
    ));
    enable(options, &paths, output)?;
    Ok(Exit::Success)
}

/// The service file (a systemd unit or a launchd plist running `binary`) and the secret file's
/// text (the token, as the manager reads it).
fn service_files(
    resolved: &Resolved,
    options: &InstallOptions,
    paths: &Paths,
    binary: &Path,
) -> Result<(String, String), CliError> {
    Ok(match options.manager {
        Manager::Systemd => {
            let args = service_args(resolved, None);
            let unit = systemd_unit(
                binary,
                &args,
                &paths.secret,
                options.user,
                options.service_user.as_deref(),
            )?;
            (unit, format!("{TOKEN_ENV}={}\n", resolved.token))
        }
        Manager::Launchd => {
            let args = service_args(resolved, Some(&paths.secret));
            let log = resolved.data_dir.join("executor.log");
            let plist = launchd_plist(binary, &args, &log)?;
            (plist, format!("{}\n", resolved.token))
        }
    })
}

/// Enables and starts the installed service, or with `--no-enable` prints the commands that
/// would; a user systemd service gets the note on lingering.
fn enable(options: &InstallOptions, paths: &Paths, output: &Output) -> Result<(), CliError> {
    let commands = enable_commands(options, paths)?;
    let linger = "a user service runs only while you are logged in, unless you run \
                  `loginctl enable-linger $USER` once";
    if !options.enable {
        output.note("not enabled (--no-enable); to enable and start it, run:");
        for argv in &commands {
            output.note(&format!("  {}", argv.join(" ")));
        }
        if options.user && options.manager == Manager::Systemd {
            output.note(&format!("({linger})"));
        }
        return Ok(());
    }
    if options.manager == Manager::Launchd {
        // A job already loaded (an earlier install) makes bootstrap fail: unload it first;
        // when none is loaded, this fails harmlessly.
        let _ = std::process::Command::new("launchctl")
            .args([
                "bootout",
                &format!("{}/{LABEL}", launchd_domain(options.user)?),
            ])
            .output();
    }
    for argv in &commands {
        run_command(argv)?;
    }
    output.note("enabled and started");
    if options.user && options.manager == Manager::Systemd {
        output.note(&format!("note: {linger}"));
    }
    Ok(())
}

/// A system service runs `binary` as root (or its service user) at every start: refuses one
/// that anybody but root could replace (the file or any directory above it owned by another
/// user, or writable by group or others), e.g. `~/.cargo/bin/ghost`.
fn only_root_may_change(binary: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    for path in binary.ancestors() {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let others_write = meta.mode() & 0o022 != 0
            && !(meta.is_dir() && meta.mode() & 0o1000 != 0 && path != binary);
        if meta.uid() != 0 || others_write {
            return Err(bad(format!(
                "a system service would run {} as root at every start, but {} can be changed by \
                 someone other than root: copy ghost to a root-owned place first (e.g. `sudo \
                 install -m 0755 {} /usr/local/bin/ghost`, then run that one), or install a \
                 --user service",
                binary.display(),
                path.display(),
                binary.display()
            )));
        }
    }
    Ok(())
}

/// `ghost executor uninstall`: stops and disables the service (unless `disable` is false),
/// then removes its files.
pub fn uninstall(
    user: bool,
    manager: Manager,
    disable: bool,
    env: &Environment,
    output: &Output,
) -> Result<Exit, CliError> {
    let paths = paths(manager, user, env)?;
    if disable {
        let argv = match manager {
            Manager::Systemd => systemctl(user, &["disable", "--now", UNIT_NAME]),
            Manager::Launchd => vec![
                "launchctl".to_owned(),
                "bootout".to_owned(),
                format!("{}/{LABEL}", launchd_domain(user)?),
            ],
        };
        // Already stopped or never enabled: the files still go.
        if let Err(err) = run_command(&argv) {
            output.note(&format!("warning: {err}"));
        }
    }
    let mut removed = Vec::new();
    for path in [&paths.service, &paths.secret] {
        match std::fs::remove_file(path) {
            Ok(()) => removed.push(path.display().to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "cannot remove {}: {err}",
                    path.display()
                )));
            }
        }
    }
    if disable
        && manager == Manager::Systemd
        && let Err(err) = run_command(&systemctl(user, &["daemon-reload"]))
    {
        output.note(&format!("warning: {err}"));
    }
    if removed.is_empty() {
        output.note(&format!(
            "nothing to remove: no {} installed",
            paths.service.display()
        ));
    } else {
        output.note(&format!("removed {}", removed.join(" and ")));
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_words_escape_quotes_backslashes_specifiers_and_variables() {
        let word = systemd_word(r#"/a b/"c"\d%e$f"#).expect("quoted");
        assert_eq!(word, r#""/a b/\"c\"\\d%%e$$f""#);
        assert!(systemd_word("a\nb").is_err());
    }

    #[test]
    fn the_plist_escapes_xml() {
        let plist = launchd_plist(
            Path::new("/opt/ghost & co/ghost"),
            &["--workspace".to_owned(), "MAIN=/src/<a>'b'\"c\"".to_owned()],
            Path::new("/tmp/log"),
        )
        .expect("plist");
        assert!(plist.contains("<string>/opt/ghost &amp; co/ghost</string>"));
        assert!(plist.contains("<string>MAIN=/src/&lt;a&gt;&apos;b&apos;&quot;c&quot;</string>"));
    }
}
