//! Starting a system and running `ghost` against it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ghost_cli::system::{LocalOptions, System, SystemBuilder};
use ghost_testkit::wait_for;
use serde_json::Value;

pub const API_KEY: &str = "cli-test-key-0123456789abcdef";

/// What one `ghost` run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as one JSON document; panics with both streams when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}): {self:?}"))
    }

    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }
}

/// A scratch directory with `ghost`'s environment; usable without a running system.
pub struct Env {
    pub scratch: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// No GHOST_URL and no key; HOME and XDG_CONFIG_HOME in the scratch dir.
    pub fn empty() -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let home = scratch.path().display().to_string();
        Self {
            vars: vec![
                ("HOME".to_owned(), home.clone()),
                ("XDG_CONFIG_HOME".to_owned(), format!("{home}/config")),
            ],
            scratch,
        }
    }

    /// Writes a file under the scratch dir.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// Runs `ghost` with these args and extra environment.
    pub async fn ghost_with(&self, args: &[&str], extra: &[(&str, &str)], stdin: &[u8]) -> Run {
        let child = self.spawn(args, extra);
        let mut child = child;
        {
            use tokio::io::AsyncWriteExt;
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(stdin).await.expect("stdin written");
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("ghost finished within 60 s")
            .expect("ghost ran");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `ghost` with these args.
    pub async fn ghost(&self, args: &[&str]) -> Run {
        self.ghost_with(args, &[], b"").await
    }

    /// Runs another program (e.g. `script` giving ghost a terminal) with this environment.
    pub async fn ghost_via(&self, argv: &[&str], extra: &[(&str, &str)]) -> Run {
        let output = tokio::process::Command::new(argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .expect("finished within 60 s")
            .expect("ran");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `ghost` with `args`, only this environment plus `extra`, stdout and stderr piped, killed
    /// when dropped; stdin is the caller's to set.
    pub fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghost"));
        command
            .args(args)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Starts `ghost` without waiting (for a `submit` that another command will end).
    pub fn spawn(&self, args: &[&str], extra: &[(&str, &str)]) -> tokio::process::Child {
        self.command(args, extra)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("ghost binary starts")
    }
}

/// A running system and `ghost` pointed at it by GHOST_URL and GHOST_API_KEY.
pub struct TestSystem {
    /// Kept alive for the test; dropping it stops the services.
    _system: System,
    pub env: Env,
    pub workspace: PathBuf,
    pub url: String,
}

/// All five services; the executor serves MAIN, where any command may run, and LOCKED, where
/// commands are denied. Target IDLE has no executor, so its patches stay queued.
pub async fn spawn_system() -> TestSystem {
    let env = Env::empty();
    let workspace = env.scratch.path().join("workspace");
    let locked = env.scratch.path().join("locked");
    let system = SystemBuilder::new(&LocalOptions {
        data_dir: env.scratch.path().join("state"),
        workspaces: vec![
            ("MAIN".to_owned(), workspace.clone()),
            // Default policy: commands denied, so a patch with commands is rejected.
            ("LOCKED".to_owned(), locked),
        ],
        // IDLE is served by no executor.
        targets: vec!["IDLE".to_owned()],
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        api_key: API_KEY.to_owned(),
        slack: None,
    })
    .executor(|executor| {
        executor.executor_id = "cli-test-executor".to_owned();
        executor.reconnect_backoff = Duration::from_millis(100);
        executor.targets = [(
            "MAIN".to_owned(),
            executor::TargetPolicy {
                commands: executor::CommandPolicy::Any,
                ..executor::TargetPolicy::default()
            },
        )]
        .into_iter()
        .collect();
    })
    .start()
    .await
    .expect("system starts");
    let url = system.gateway_url().expect("gateway");
    let mut env = env;
    env.vars.push(("GHOST_URL".to_owned(), url.clone()));
    env.vars
        .push(("GHOST_API_KEY".to_owned(), API_KEY.to_owned()));
    let test_system = TestSystem {
        _system: system,
        env,
        workspace,
        url,
    };
    test_system.wait_executor_online().await;
    test_system
}

impl TestSystem {
    pub async fn ghost(&self, args: &[&str]) -> Run {
        self.env.ghost(args).await
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        self.env.file(name, contents)
    }

    /// Polls `ghost --json targets` until MAIN's executor is online (readiness, not time).
    async fn wait_executor_online(&self) {
        wait_for("MAIN's executor online in `ghost targets`", async || {
            let run = self.ghost(&["--json", "targets"]).await;
            let online = run.code == 0
                && run.json().as_array().is_some_and(|targets| {
                    targets
                        .iter()
                        .any(|t| t["target"] == "MAIN" && t["executor_online"] == true)
                });
            if online { Ok(()) } else { Err(run) }
        })
        .await;
    }

    /// Polls `ghost --json show ID` until `done(detail)` holds.
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{id} to become {what}"), async || {
            let run = self.ghost(&["--json", "show", id]).await;
            if run.code == 0 {
                let detail = run.json();
                if done(&detail) {
                    return Ok(detail);
                }
            }
            Err(run)
        })
        .await
    }
}

/// A v1 patch writing one file, as JSON text.
pub fn write_patch(id: &str, target: &str, path: &str, contents: &str) -> String {
    serde_json::json!({
        "id": id,
        "target": target,
        "description": format!("cli test patch {id}"),
        "edits": [{"op": "write", "path": path, "contents": contents}],
    })
    .to_string()
}

/// A patch whose command prints `compiling`, then `error: 42 marker-ID` on stderr (text that is
/// not in the command line itself, so seeing it proves the output is shown), and exits 3.
pub fn failing_patch(id: &str, on_failure: &str) -> String {
    serde_json::json!({
        "id": id,
        "target": "MAIN",
        "description": "a patch whose build breaks",
        "edits": [{"op": "write", "path": format!("{id}.txt"), "contents": "x\n"}],
        "commands": ["sh -c 'echo compiling; echo \"error: $((40+2)) marker-{id}\" >&2; exit 3'"
            .replace("{id}", id)],
        "on_failure": on_failure,
    })
    .to_string()
}

pub fn path_arg(path: &Path) -> String {
    path.display().to_string()
}
