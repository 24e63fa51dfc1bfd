//! Issue 27, last must-show: a new user's path through the manual, run as written. The test
//! reads `docs/src/getting-started.md` and does what it says, in order, in a scratch HOME with
//! no environment but HOME, PATH and what the page's own steps set: its command blocks run
//! with `sh -e`, its files are saved where it says, `ghost up` keeps running in the background
//! and the steps after it run in a new terminal, the `mcp` Python SDK client the page gives
//! connects with the snippet `ghost connect` printed, submits the page's patches, and the
//! workspace ends with the fixed file.
//!
//! The page's fences (their marks are listed in the page's opening comment too):
//! - `sh ghost-step`: run in the terminal so far (a `cd` or `export` carries on to the next);
//!   `sh ghost-step background` keeps running (killed by its process group at the end), and the
//!   blocks after it run in a new terminal (at HOME, no variables of its own);
//! - `sh ghost-step install`: replaced, see below;
//! - `text ghost-output`: what the step before it prints, line by line (`…` stands for any text;
//!   a line of its own for any lines); with `path=P`, the file P where the terminal is;
//! - `<lang> ghost-file path=P`: saved as P where the terminal is;
//! - `<lang> ghost-fixture path=P`: saved as P in the workspace (the `root` of ghost.toml's one
//!   target);
//! - `json ghost-example id=… expect=… [diagnostic=path:line] file=F`: a patch saved as F; the
//!   client must print that it ended `expect`, with an error diagnostic at `path:line`.
//!
//! The only substitutions:
//! - the install step `git clone …`, `cd ghost-runner`, `cargo install --locked --path
//!   crates/ghost-cli`: the `ghost` this test was built with is linked as `~/.cargo/bin/ghost`,
//!   on PATH as rustup's installer leaves it (no cargo build here); directories of the test's own
//!   PATH holding another `ghost` are left out;
//! - the install step `python3 -m venv .venv`, `.venv/bin/pip install mcp==X`: the repository's
//!   `.venv` (tests/python/requirements.txt) is linked as `.venv`, and X must be the version
//!   that file pins;
//! - `ghost up`'s listeners on port 0 (`GHOST_<SERVICE>__SERVER__{GRPC,HTTP}_LISTEN`, the
//!   environment layer the manual documents) so tests run side by side, GHOST_URL set in the
//!   new terminal to the address it printed (the page's "if port 8080 is taken"), and
//!   `127.0.0.1:<port>` compared as any port in its output.
//!
//! Any other line in an install step fails the test, so the page cannot grow a step the test
//! skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ghost_testkit::wait_for;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::up::PORT_ZERO;

/// The page, relative to the repository root.
const PAGE: &str = "docs/src/getting-started.md";
/// The longest any one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the whole walkthrough may take.
const WALK_TIMEOUT: Duration = Duration::from_secs(110);

/// One fenced block of the page: ```` ```<language> <kind> <attributes> ````.
#[derive(Debug, Clone)]
struct Fence {
    /// 1-based line of the opening fence.
    line: usize,
    kind: String,
    attributes: String,
    body: String,
}

impl Fence {
    /// The value of `key=value` (a value may be double-quoted to hold spaces).
    fn attribute(&self, key: &str) -> Option<String> {
        let mut rest = self.attributes.trim_start();
        while !rest.is_empty() {
            let (word, after) = rest.split_once('=')?;
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
                None => after.split_once(' ').unwrap_or((after, "")),
            };
            // A bare flag before the pair (`background key=v`) is part of `word`'s text.
            if word.split_whitespace().last() == Some(key) {
                return Some(value.to_owned());
            }
            rest = next.trim_start();
        }
        None
    }

    /// A bare word among the attributes (`background`, `install`).
    fn flag(&self, word: &str) -> bool {
        self.attributes.split_whitespace().any(|w| w == word)
    }

    fn at(&self) -> String {
        format!("{PAGE}:{}", self.line)
    }
}

/// Every fenced block of `page`, in order.
fn fences(page: &str) -> Vec<Fence> {
    let mut found = Vec::new();
    let mut open: Option<Fence> = None;
    for (index, line) in page.lines().enumerate() {
        if let Some(mut fence) = open.take() {
            if line.trim_end() == "```" {
                found.push(fence);
            } else {
                fence.body.push_str(line);
                fence.body.push('\n');
                open = Some(fence);
            }
            continue;
        }
        if let Some(info) = line.strip_prefix("```") {
            // The language, then the kind and its attributes.
            let mut words = info.splitn(3, ' ').skip(1);
            open = Some(Fence {
                line: index + 1,
                kind: words.next().unwrap_or("").to_owned(),
                attributes: words.next().unwrap_or("").to_owned(),
                body: String::new(),
            });
        }
    }
    assert!(open.is_none(), "{PAGE}: a fence is never closed");
    found
}

/// Whether `actual` matches `expected`, where `…` stands for any text.
fn glob(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return expected == actual;
    }
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// `127.0.0.1:<digits>` as `127.0.0.1:<port>`: the test's ports are not the page's.
fn any_port(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("127.0.0.1:") {
        let after = &rest[at + "127.0.0.1:".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        out.push_str(&rest[..at]);
        out.push_str("127.0.0.1:<port>");
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Every line of the `ghost-output` fence is a line of `printed` (in order).
fn assert_printed(fence: &Fence, printed: &str) {
    let actual: Vec<String> = any_port(printed).lines().map(str::to_owned).collect();
    let mut from = 0;
    for expected in any_port(&fence.body).lines() {
        if expected.trim() == "…" {
            continue;
        }
        let found = actual[from..]
            .iter()
            .position(|line| glob(expected, line))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the page shows {expected:?}; the {} was:\n{printed}",
                    fence.at(),
                    fence
                        .attribute("path")
                        .map_or_else(|| "step's output".to_owned(), |p| format!("file {p}"))
                )
            });
        from += found + 1;
    }
}

/// A shell the user types into: where it is and what it exported.
#[derive(Debug, Clone)]
struct Terminal {
    cwd: PathBuf,
    vars: BTreeMap<String, String>,
}

/// `ghost up`, started by a background step; its process group is killed when dropped.
struct Background {
    child: tokio::process::Child,
    group: u32,
    printed: String,
}

impl Background {
    fn signal(&self, signal: &str) {
        // The step's whole process group: the shell and the `ghost up` it started.
        let _ = std::process::Command::new("kill")
            .args([signal, "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}

/// The walkthrough's state.
struct Walk {
    scratch: tempfile::TempDir,
    home: PathBuf,
    /// HOME and PATH: what a new terminal starts with.
    fresh: BTreeMap<String, String>,
    terminal: Terminal,
    /// Fixtures waiting for the workspace to be known (ghost.toml comes after them).
    pending: Vec<Fence>,
    workspace: Option<PathBuf>,
    background: Option<Background>,
    /// Everything the steps printed on stdout, in order.
    transcript: String,
    /// What the last step printed, for a `ghost-output` fence after it.
    last_printed: Option<String>,
    /// How many steps ran (or were stood in for).
    steps: usize,
}

impl Walk {
    fn new() -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let home = scratch.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let cargo_bin = home.join(".cargo/bin");
        // The system's PATH, but not a directory holding some other `ghost`.
        let system = std::env::var("PATH").unwrap_or_default();
        let mut path = vec![cargo_bin.display().to_string()];
        path.extend(
            system
                .split(':')
                .filter(|dir| !dir.is_empty() && !Path::new(dir).join("ghost").exists())
                .map(str::to_owned),
        );
        let fresh: BTreeMap<String, String> = [
            ("HOME".to_owned(), home.display().to_string()),
            ("PATH".to_owned(), path.join(":")),
        ]
        .into_iter()
        .collect();
        Self {
            terminal: Terminal {
                cwd: home.clone(),
                vars: fresh.clone(),
            },
            scratch,
            home,
            fresh,
            pending: Vec::new(),
            workspace: None,
            background: None,
            transcript: String::new(),
            last_printed: None,
            steps: 0,
        }
    }

    /// A path the page names, relative to `base`; never absolute or with `..`.
    fn relative(fence: &Fence, base: &Path, path: &str) -> PathBuf {
        let relative = Path::new(path);
        assert!(
            relative.is_relative()
                && relative
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{}: {path:?} is not a plain relative path",
            fence.at()
        );
        base.join(relative)
    }

    fn save(path: &Path, body: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("directory");
        std::fs::write(path, body).expect("file written");
    }

    /// `ghost-file path=P`: saved where the terminal is; a ghost.toml names the workspace.
    fn file(&mut self, fence: &Fence) {
        let name = fence
            .attribute("path")
            .unwrap_or_else(|| panic!("{}: a ghost-file names its path", fence.at()));
        let path = Self::relative(fence, &self.terminal.cwd, &name);
        Self::save(&path, &fence.body);
        if path.file_name().is_some_and(|n| n == "ghost.toml") {
            let config: toml::Table = toml::from_str(&fence.body)
                .unwrap_or_else(|err| panic!("{}: ghost.toml is not TOML: {err}", fence.at()));
            let targets = config["targets"].as_array().expect("[[targets]]");
            assert_eq!(targets.len(), 1, "{}: one workspace", fence.at());
            let root = targets[0]["root"].as_str().expect("a root");
            let dir = path.parent().expect("the file's directory");
            self.workspace = Some(Self::relative(fence, dir, root));
        }
    }

    /// Saves the fixtures seen so far in the workspace (which ghost.toml names).
    fn flush_fixtures(&mut self, before: &Fence) {
        if self.pending.is_empty() {
            return;
        }
        let workspace = self.workspace.clone().unwrap_or_else(|| {
            panic!(
                "{}: a workspace file comes before any ghost.toml says where the workspace is",
                before.at()
            )
        });
        for fixture in std::mem::take(&mut self.pending) {
            let name = fixture
                .attribute("path")
                .unwrap_or_else(|| panic!("{}: a ghost-fixture names its path", fixture.at()));
            Self::save(&Self::relative(&fixture, &workspace, &name), &fixture.body);
        }
    }

    /// Stands in for an install step, line by line (see the module comment).
    fn install(&mut self, fence: &Fence) {
        let root = ghost_testkit::repo_root();
        for line in fence.body.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("git clone ") || line == "cd ghost-runner" {
                // This test runs in the clone.
            } else if line == "cargo install --locked --path crates/ghost-cli" {
                assert!(root.join("crates/ghost-cli/Cargo.toml").exists());
                let bin = self.home.join(".cargo/bin");
                std::fs::create_dir_all(&bin).expect("~/.cargo/bin");
                std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ghost"), bin.join("ghost"))
                    .expect("ghost linked");
            } else if line == "python3 -m venv .venv" {
                let venv = ghost_testkit::python()
                    .parent()
                    .and_then(Path::parent)
                    .expect("the venv")
                    .to_owned();
                std::os::unix::fs::symlink(venv, self.terminal.cwd.join(".venv"))
                    .expect(".venv linked");
            } else if let Some(version) = line.strip_prefix(".venv/bin/pip install mcp==") {
                let requirements =
                    std::fs::read_to_string(root.join("tests/python/requirements.txt"))
                        .expect("requirements");
                let pinned = requirements
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("mcp=="))
                    .expect("requirements.txt pins mcp");
                assert_eq!(
                    version,
                    pinned,
                    "{}: the page installs mcp {version}, the tests use {pinned}",
                    fence.at()
                );
            } else {
                panic!(
                    "{}: an install line this test cannot stand in for: {line:?}",
                    fence.at()
                );
            }
        }
    }

    /// Runs a command block in the terminal, then keeps its working directory and exports.
    async fn step(&mut self, fence: &Fence) {
        let cwd_file = self.scratch.path().join("step-cwd");
        let env_file = self.scratch.path().join("step-env");
        let _ = std::fs::remove_file(&cwd_file);
        let _ = std::fs::remove_file(&env_file);
        let script = format!(
            "{}\nprintf '%s' \"$PWD\" > '{}'\nenv -0 > '{}'\n",
            fence.body,
            cwd_file.display(),
            env_file.display()
        );
        let run = tokio::process::Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .current_dir(&self.terminal.cwd)
            .env_clear()
            .envs(&self.terminal.vars)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(STEP_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{}: the step did not end within 60 s", fence.at()))
            .expect("sh runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{}: the step failed ({}):\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            fence.at(),
            output.status,
            fence.body
        );
        if let Ok(cwd) = std::fs::read_to_string(&cwd_file) {
            self.terminal.cwd = PathBuf::from(cwd);
        }
        if let Ok(env) = std::fs::read(&env_file) {
            self.terminal.vars = String::from_utf8_lossy(&env)
                .split('\0')
                .filter_map(|pair| pair.split_once('='))
                .filter(|(key, _)| !matches!(*key, "PWD" | "OLDPWD" | "SHLVL" | "_"))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect();
        }
        self.transcript.push_str(&stdout);
        self.last_printed = Some(stdout);
    }

    /// Starts a block that keeps running (`ghost up`), waits until it said where the gateway is
    /// and the gateway is ready, then opens a new terminal.
    async fn background(&mut self, fence: &Fence) {
        assert!(
            self.background.is_none(),
            "{}: a second background step",
            fence.at()
        );
        let stderr = std::fs::File::create(self.scratch.path().join("background.stderr"))
            .expect("stderr file");
        let mut child = tokio::process::Command::new("sh")
            .arg("-ec")
            .arg(&fence.body)
            .current_dir(&self.terminal.cwd)
            .env_clear()
            .envs(&self.terminal.vars)
            .envs(PORT_ZERO)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("sh starts");
        let group = child.id().expect("a pid");
        let stdout = child.stdout.take().expect("stdout");
        let mut background = Background {
            child,
            group,
            printed: String::new(),
        };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut url = None;
        let read = tokio::time::timeout(STEP_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                background.printed.push_str(&line);
                background.printed.push('\n');
                // `export GHOST_URL=…`, after GHOST_API_KEY=… when it made a key.
                if let Some(rest) = line.split(" GHOST_URL=").nth(1) {
                    url = rest.split_whitespace().next().map(str::to_owned);
                }
                if line.starts_with("Submit with:") {
                    return true;
                }
            }
            false
        })
        .await;
        let logs = || {
            std::fs::read_to_string(self.scratch.path().join("background.stderr"))
                .unwrap_or_default()
        };
        let url = match (read, url) {
            (Ok(true), Some(url)) => url,
            _ => panic!(
                "{}: it did not come up:\n{}\nstdout:\n{}\nstderr:\n{}",
                fence.at(),
                fence.body,
                background.printed,
                logs()
            ),
        };
        // Keep reading so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        wait_ready(&url).await;
        self.last_printed = Some(background.printed.clone());
        self.background = Some(background);
        // The steps after this one are typed into a new terminal.
        self.terminal = Terminal {
            cwd: self.home.clone(),
            vars: self.fresh.clone(),
        };
        self.terminal.vars.insert("GHOST_URL".to_owned(), url);
    }

    /// Stops the background step as Ctrl-C would (SIGINT to its group), bounded.
    async fn stop(&mut self) {
        let Some(mut background) = self.background.take() else {
            return;
        };
        background.signal("-INT");
        let ended = tokio::time::timeout(Duration::from_secs(30), background.child.wait()).await;
        assert!(
            matches!(ended, Ok(Ok(_))),
            "ghost up did not stop on Ctrl-C"
        );
    }
}

/// Polls the gateway's `/readyz` until it answers 200 (bounded).
async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    wait_for(&format!("{url}/readyz to answer 200"), async || {
        let answer = http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status());
        match answer {
            Ok(status) if status.is_success() => Ok(()),
            other => Err(other.map_err(|err| err.to_string())),
        }
    })
    .await;
}

/// The workspace file the succeeded examples wrote: the fixture with their `replace` edits.
fn expected_contents(fixture: &Fence, succeeded: &[Fence]) -> String {
    let mut contents = fixture.body.clone();
    let path = fixture.attribute("path").expect("path");
    for example in succeeded {
        let patch: Value = serde_json::from_str(&example.body)
            .unwrap_or_else(|err| panic!("{}: not JSON: {err}", example.at()));
        for edit in patch["edits"].as_array().expect("edits") {
            assert_eq!(
                edit["op"],
                "replace",
                "{}: only replace edits here",
                example.at()
            );
            if edit["path"] != path.as_str() {
                continue;
            }
            let search = edit["search"].as_str().expect("search");
            let replace = edit["replace"].as_str().expect("replace");
            assert_eq!(contents.matches(search).count(), 1, "{}", example.at());
            contents = contents.replacen(search, replace, 1);
        }
    }
    contents
}

async fn walk(page: &str) -> Walk {
    let all = fences(page);
    // The patches and workspace files are the ones the manual's example test reads.
    let shared = gateway::guide::examples(page);
    let marked: Vec<&Fence> = all
        .iter()
        .filter(|f| matches!(f.kind.as_str(), "ghost-example" | "ghost-fixture"))
        .collect();
    assert_eq!(shared.len(), marked.len(), "examples and fixtures");
    for (theirs, ours) in shared.iter().zip(marked) {
        assert_eq!(theirs.body, ours.body, "{}", ours.at());
        for key in ["id", "expect", "diagnostic", "path", "file"] {
            assert_eq!(
                theirs.attribute(key),
                ours.attribute(key).as_deref(),
                "{}: {key}",
                ours.at()
            );
        }
    }
    let mut walk = Walk::new();
    let mut examples = Vec::new();
    let mut fixtures = Vec::new();
    for fence in &all {
        match fence.kind.as_str() {
            "ghost-step" => {
                walk.flush_fixtures(fence);
                walk.last_printed = None;
                if fence.flag("install") {
                    walk.install(fence);
                } else if fence.flag("background") {
                    walk.background(fence).await;
                } else {
                    walk.step(fence).await;
                }
                walk.steps += 1;
            }
            "ghost-output" => {
                let printed = match fence.attribute("path") {
                    Some(name) => {
                        let path = Walk::relative(fence, &walk.terminal.cwd, &name);
                        std::fs::read_to_string(&path)
                            .unwrap_or_else(|err| panic!("{}: {name}: {err}", fence.at()))
                    }
                    None => walk.last_printed.take().unwrap_or_else(|| {
                        panic!("{}: an output fence after no step that ran", fence.at())
                    }),
                };
                assert_printed(fence, &printed);
            }
            "ghost-file" => walk.file(fence),
            "ghost-fixture" => {
                walk.pending.push(fence.clone());
                fixtures.push(fence.clone());
            }
            "ghost-example" => {
                let file = fence.attribute("file").unwrap_or_else(|| {
                    panic!("{}: every patch on this page is saved (file=)", fence.at())
                });
                let path = Walk::relative(fence, &walk.terminal.cwd, &file);
                Walk::save(&path, &fence.body);
                examples.push(fence.clone());
            }
            "" => {}
            other => panic!("{}: a fence of unknown kind {other:?}", fence.at()),
        }
    }
    assert!(walk.steps >= 8, "only {} steps on the page", walk.steps);

    // ghost up came up (waited for above); ghost connect saved a snippet with a scoped key.
    assert!(walk.background.is_some(), "no step started ghost up");
    let url = walk.terminal.vars["GHOST_URL"].clone();
    let connect = std::fs::read_to_string(walk.terminal.cwd.join("connect.json"))
        .expect("the connect step saved connect.json");
    let connect: Value = serde_json::from_str(&connect).expect("connect.json is JSON");
    assert_eq!(
        connect["key"]["scopes"],
        serde_json::json!(["submit", "read"])
    );
    let snippet: Value =
        serde_json::from_str(connect["snippet"].as_str().expect("a snippet")).expect("JSON");
    assert_eq!(snippet["url"], format!("{url}/mcp"), "{snippet}");
    let header = snippet["headers"]["Authorization"].as_str().unwrap_or("");
    assert!(header.starts_with("Bearer gr_"), "{snippet}");

    // The client printed how each patch ended, and the diagnostic of the broken one.
    assert!(
        examples.len() >= 2,
        "a broken patch and its fix, found {}",
        examples.len()
    );
    for example in &examples {
        let id = example.attribute("id").expect("an id");
        let expect = example.attribute("expect").expect("expect");
        let said = format!("{id}: {expect}");
        assert!(
            walk.transcript.lines().any(|l| l.starts_with(&said)),
            "{}: the client never said {said:?}:\n{}",
            example.at(),
            walk.transcript
        );
        if let Some(located) = example.attribute("diagnostic") {
            let at = format!("  {located}:");
            assert!(
                walk.transcript
                    .lines()
                    .any(|l| l.starts_with(&at) && l.contains(": error: ")),
                "{}: no error diagnostic at {located} in:\n{}",
                example.at(),
                walk.transcript
            );
        }
    }
    assert!(
        examples
            .iter()
            .any(|e| e.attribute("expect").as_deref() != Some("succeeded")),
        "no patch on the page fails"
    );

    // The workspace holds the fixed file.
    let workspace = walk.workspace.clone().expect("a workspace");
    let succeeded: Vec<Fence> = examples
        .iter()
        .filter(|e| e.attribute("expect").as_deref() == Some("succeeded"))
        .cloned()
        .collect();
    for fixture in &fixtures {
        let path = fixture.attribute("path").expect("path");
        let now = std::fs::read_to_string(workspace.join(&path)).expect("workspace file");
        assert_eq!(
            now,
            expected_contents(fixture, &succeeded),
            "{path} in the workspace"
        );
    }
    walk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_page_works_as_written() {
    let page = std::fs::read_to_string(ghost_testkit::repo_root().join(PAGE)).expect("the page");
    let started = std::time::Instant::now();
    let mut walk = tokio::time::timeout(WALK_TIMEOUT, walk(&page))
        .await
        .expect("the walkthrough ended within its deadline");
    walk.stop().await;
    eprintln!(
        "walkthrough: {} steps in {:.1} s",
        walk.steps,
        started.elapsed().as_secs_f64()
    );
}
