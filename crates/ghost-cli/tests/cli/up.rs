//! `ghost init` and `ghost up -f` as a user runs them: the real binary in a scratch directory
//! (its working directory, so `./workspace` and `./.ghost` land there), the file `ghost init`
//! wrote, environment and flags layered over it, and patches submitted through the gateway.

use std::path::Path;
use std::time::Duration;

use ghost_testkit::wait_for;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Env, Run};
use crate::up_guards::{print_config, refused};

/// Every internal listener on port 0 (the gateway's too), through the environment layer.
pub(crate) const PORT_ZERO: [(&str, &str); 10] = [
    ("GHOST_GATEWAY__SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GHOST_GATEWAY__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
    ("GHOST_ROUTER__SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GHOST_ROUTER__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
    ("GHOST_EXECUTOR__SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GHOST_EXECUTOR__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
    ("GHOST_SUMMARIZER__SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GHOST_SUMMARIZER__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
    ("GHOST_ALERTER__SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GHOST_ALERTER__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
];

/// `ghost` in `dir` with the scratch environment plus `extra`.
fn command(
    env: &Env,
    dir: &Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = env.command(args, extra);
    command.current_dir(dir).stdin(std::process::Stdio::null());
    command
}

/// Runs `ghost` in `dir` to its end.
pub(crate) async fn ghost_in(env: &Env, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        command(env, dir, args, extra).output(),
    )
    .await
    .expect("ghost finished within 60 s")
    .expect("ghost ran");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `ghost up` and its gateway URL.
pub(crate) struct Up {
    child: tokio::process::Child,
    pub(crate) url: String,
    /// What it printed up to the gateway's URL.
    pub(crate) printed: String,
}

/// Starts `ghost up` in `dir` and waits (bounded) for the line that says where the gateway is;
/// on failure, panics with what it printed.
pub(crate) async fn spawn_up(env: &Env, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Up {
    match try_spawn_up(env, dir, args, extra).await {
        Ok(up) => up,
        Err(printed) => panic!("ghost up did not come up: {printed}"),
    }
}

async fn try_spawn_up(
    env: &Env,
    dir: &Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Result<Up, String> {
    let mut child = command(env, dir, args, extra)
        .spawn()
        .expect("ghost up starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("GHOST_URL=").nth(1) {
                return Some(rest.trim().to_owned());
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(url)) => {
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(Up {
                child,
                url,
                printed: seen,
            })
        }
        _ => {
            let _ = child.start_kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), pipe.read_to_string(&mut stderr))
                        .await;
            }
            Err(format!("stdout:\n{seen}\nstderr:\n{stderr}"))
        }
    }
}

impl Up {
    /// The process id of `ghost up`.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("ghost up runs")
    }

    /// SIGKILL, wait until the process is gone, and return what it wrote to stderr.
    pub(crate) async fn kill_9_stderr(mut self) -> String {
        self.child.start_kill().expect("kill -9");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), pipe.read_to_string(&mut stderr))
                .await;
        }
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("ghost up died within 10 s")
            .expect("waited");
        stderr
    }

    /// SIGKILL, and wait until the process is gone.
    pub(crate) async fn kill_9(mut self) {
        self.child.start_kill().expect("kill -9");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("ghost up died within 10 s")
            .expect("waited");
    }
}

/// The three keys `ghost --json init DIR` printed, by name.
pub(crate) fn keys_of(run: &Run) -> std::collections::HashMap<String, String> {
    run.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["name"].as_str().expect("name").to_owned(),
                k["key"].as_str().expect("key").to_owned(),
            )
        })
        .collect()
}

pub(crate) async fn submit(url: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/patches"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET /v1/patches/{id}` until the patch has ended; returns its last answer.
pub(crate) async fn wait_ended(url: &str, key: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    wait_for(&format!("patch {id} to end"), async || {
        let answer = client
            .get(format!("{url}/v1/patches/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("gateway reachable");
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        let ended = !matches!(
            body["status"].as_str(),
            None | Some("received" | "queued" | "leased" | "applying" | "validating")
        );
        if ended { Ok(body) } else { Err(body) }
    })
    .await
}

pub(crate) fn write_patch(id: &str, target: Option<&str>, path: &str) -> Value {
    let mut patch = json!({
        "id": id,
        "edits": [{"op": "write", "path": path, "contents": format!("{id}\n")}],
    });
    if let Some(target) = target {
        patch["target"] = json!(target);
    }
    patch
}

#[tokio::test]
async fn up_runs_the_file_init_wrote_and_its_submit_key_submits_but_its_read_key_cannot() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let init = ghost_in(&env, &dir, &["--json", "init", "."], &[]).await;
    init.expect(0);
    let keys = keys_of(&init);
    assert_eq!(keys.len(), 3, "{init:?}");
    let file = std::fs::read_to_string(dir.join("ghost.toml")).expect("ghost.toml written");
    for key in keys.values() {
        assert!(!file.contains(key.as_str()), "a key is stored in clear");
    }
    let again = ghost_in(&env, &dir, &["init", "."], &[]).await;
    again.expect(10);
    assert!(again.stderr.contains("already exists"), "{again:?}");

    let up = spawn_up(&env, &dir, &["up", "-f", "ghost.toml"], &PORT_ZERO).await;
    let (code, body) = submit(
        &up.url,
        &keys["read"],
        &write_patch("by-reader", None, "r.txt"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = submit(
        &up.url,
        &keys["submit"],
        &write_patch("by-submitter", None, "s.txt"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, &keys["read"], "by-submitter").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(
        std::fs::read_to_string(dir.join("workspace/s.txt")).expect("written"),
        "by-submitter\n"
    );
    up.kill_9().await;
}

#[tokio::test]
async fn with_ops_listen_the_probes_move_off_the_gateways_public_port() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    ghost_in(&env, &dir, &["init", "."], &[]).await.expect(0);
    let mut vars = PORT_ZERO.to_vec();
    vars.push(("GHOST_GATEWAY__SERVER__OPS_LISTEN", "127.0.0.1:0"));
    vars.push(("GHOST_ROUTER__SERVER__OPS_LISTEN", "127.0.0.1:0"));
    let up = spawn_up(&env, &dir, &["up", "-f", "ghost.toml"], &vars).await;
    let gateway_line = up
        .printed
        .lines()
        .find(|line| line.trim_start().starts_with("gateway "))
        .unwrap_or_else(|| panic!("no gateway line: {}", up.printed));
    let ops = gateway_line
        .split("ops ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no ops address: {gateway_line}"));
    for route in ["/healthz", "/readyz", "/metrics"] {
        let public = reqwest::get(format!("{}{route}", up.url))
            .await
            .expect("gateway");
        assert_eq!(public.status().as_u16(), 404, "{route} on {}", up.url);
        let on_ops = reqwest::get(format!("http://{ops}{route}"))
            .await
            .expect("ops port");
        assert_eq!(on_ops.status().as_u16(), 200, "{route} on {ops}");
    }
    let openapi = reqwest::get(format!("{}/openapi.json", up.url))
        .await
        .expect("gateway");
    assert_eq!(openapi.status().as_u16(), 200);
    up.kill_9().await;
}

fn public_url_of(run: &Run) -> String {
    let effective: toml::Table = toml::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("--print-config is not TOML ({err}): {run:?}"));
    effective["gateway"]["public_url"]
        .as_str()
        .expect("public_url")
        .to_owned()
}

#[tokio::test]
async fn env_overrides_the_file_and_a_flag_overrides_env_then_openapi_shows_it() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[gateway]\npublic_url = \"https://file.example\"\n[router]\nmax_attempts = 7\n",
    );
    let print = ["up", "--print-config"];
    let from_file = ghost_in(&env, &dir, &print, &[]).await;
    from_file.expect(0);
    assert_eq!(public_url_of(&from_file), "https://file.example");
    assert!(
        from_file.stdout.contains("max_attempts = 7"),
        "{from_file:?}"
    );

    let env_var = [("GHOST_GATEWAY__PUBLIC_URL", "https://env.example")];
    let from_env = ghost_in(&env, &dir, &print, &env_var).await;
    from_env.expect(0);
    assert_eq!(public_url_of(&from_env), "https://env.example");

    let with_flag = [
        "up",
        "--print-config",
        "--public-url",
        "https://flag.example",
    ];
    let from_flag = ghost_in(&env, &dir, &with_flag, &env_var).await;
    from_flag.expect(0);
    assert_eq!(public_url_of(&from_flag), "https://flag.example");

    // Secrets are redacted in the printed config.
    let secret = [("GHOST_ALERTER__SLACK__BOT_TOKEN", "xoxb-do-not-print")];
    let redacted = ghost_in(&env, &dir, &print, &secret).await;
    redacted.expect(0);
    assert!(
        !redacted.stdout.contains("xoxb-do-not-print"),
        "{redacted:?}"
    );
    assert!(redacted.stdout.contains("[redacted]"), "{redacted:?}");

    // --log-format reaches every service.
    let json_logs = ghost_in(
        &env,
        &dir,
        &["up", "--print-config", "--log-format", "json"],
        &[],
    )
    .await;
    json_logs.expect(0);
    assert_eq!(
        json_logs.stdout.matches("log_format = \"json\"").count(),
        5,
        "{json_logs:?}"
    );

    // The served OpenAPI document advertises the flag's URL.
    let mut extra = PORT_ZERO.to_vec();
    extra.extend(env_var);
    let up = spawn_up(
        &env,
        &dir,
        &["up", "--public-url", "https://flag.example"],
        &extra,
    )
    .await;
    let openapi: Value = reqwest::get(format!("{}/openapi.json", up.url))
        .await
        .expect("gateway reachable")
        .json()
        .await
        .expect("openapi is JSON");
    assert_eq!(
        openapi["servers"][0]["url"], "https://flag.example",
        "{}",
        openapi["servers"]
    );
    up.kill_9().await;
}

/// A file's name and contents, extra environment, and what the refusal must say.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[tokio::test]
async fn an_unknown_key_fails_with_file_line_column_and_the_nearest_key() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let cases: [Case; 4] = [
        (
            "ghost.toml",
            "[[targets]]\nname = \"MAIN\"\nroot = \"./ws\"\n\n[gateway]\npublc_url = \"https://x\"\n",
            &[],
            &["ghost.toml:6:1", "did you mean `public_url`?"],
        ),
        (
            "typo.toml",
            "[gatway]\n",
            &[],
            &["typo.toml:1:", "did you mean `gateway`?"],
        ),
        (
            "ok.toml",
            "",
            &[("GHOST_ROUTER__MAX_ATTEMTPS", "3")],
            &["GHOST_ROUTER__MAX_ATTEMTPS", "did you mean `max_attempts`?"],
        ),
        // Owner checks run now (`up_checks`); one the executor could not run is refused.
        (
            "checks.toml",
            "[[targets]]\nname = \"MAIN\"\nroot = \"./ws\"\n[[targets.checks]]\nname = \"t\"\nrun = \"cargo test\"\nwhen = \"sometimes\"\n",
            &[],
            &["target MAIN", "expected \"always\" or \"changed:<glob>\""],
        ),
    ];
    for (file, contents, extra, needles) in cases {
        env.file(file, contents);
        refused(
            &print_config(&env, &dir, &["-f", file], extra).await,
            needles,
        );
    }
}

#[tokio::test]
async fn a_patch_naming_an_alias_lands_on_its_target_and_one_naming_none_on_the_default() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[[targets]]\nname = \"DEV\"\nroot = \"./dev\"\naliases = [\"OLD_DEV\"]\n\n\
         [[targets]]\nname = \"MAIN\"\nroot = \"./main\"\naliases = [\"BRAUN\"]\ndefault = true\n",
    );
    let up = spawn_up(
        &env,
        &dir,
        &["up", "--api-key", "alias-test-key-0123456789"],
        &PORT_ZERO,
    )
    .await;
    let key = "alias-test-key-0123456789";
    for (id, target) in [("to-alias", Some("OLD_DEV")), ("to-default", None)] {
        let (code, body) =
            submit(&up.url, key, &write_patch(id, target, &format!("{id}.txt"))).await;
        assert_eq!(code, 202, "{id}: {body}");
        let ended = wait_ended(&up.url, key, id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
    }
    assert!(dir.join("dev/to-alias.txt").is_file());
    assert!(!dir.join("main/to-alias.txt").exists());
    assert!(dir.join("main/to-default.txt").is_file());
    assert!(!dir.join("dev/to-default.txt").exists());
    up.kill_9().await;
}

/// `count` free loopback ports below the kernel's ephemeral range when there is room (there
/// an outgoing connection can never take them), else anywhere.
fn stable_ports(count: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(20000).max(1000);
    let start = 20000 + (std::process::id() as u16 % (span / 2));
    let mut ports = Vec::new();
    let mut candidate = start;
    while ports.len() < count && candidate < u16::MAX {
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            ports.push(candidate);
        }
        candidate += 1;
    }
    ports
}

#[tokio::test]
async fn twenty_restarts_after_kill_9_while_a_client_keeps_connecting_never_fail_to_bind() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let ports = stable_ports(10);
    assert_eq!(ports.len(), 10);
    let mut file = String::from("[[targets]]\nname = \"MAIN\"\nroot = \"./workspace\"\n");
    for (i, service) in ["gateway", "router", "executor", "summarizer", "alerter"]
        .iter()
        .enumerate()
    {
        file.push_str(&format!(
            "[{service}.server]\ngrpc_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n",
            ports[2 * i],
            ports[2 * i + 1]
        ));
    }
    env.file("ghost.toml", &file);
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], ports[1]));

    // A client that connects to the gateway and asks for /healthz over and over, the whole
    // time, through every kill and restart (bounded in count and time).
    let stop = tokio_util::sync::CancellationToken::new();
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let hammer = tokio::spawn({
        let stop = stop.clone();
        let connected = connected.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
            for _ in 0..200_000 {
                if stop.is_cancelled() || tokio::time::Instant::now() > deadline {
                    break;
                }
                match tokio::net::TcpStream::connect(gateway).await {
                    Ok(mut stream) => {
                        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = stream
                            .write_all(
                                b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        let mut answer = Vec::new();
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            stream.read_to_end(&mut answer),
                        )
                        .await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
    });

    let started = tokio::time::Instant::now();
    for round in 1..=20 {
        let up = match try_spawn_up(&env, &dir, &["up", "-f", "ghost.toml"], &[]).await {
            Ok(up) => up,
            Err(printed) => panic!("restart {round} failed: {printed}"),
        };
        assert_eq!(up.url, format!("http://{gateway}"));
        // The client reaches this life of the gateway before it is killed.
        let before = connected.load(std::sync::atomic::Ordering::SeqCst);
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            while connected.load(std::sync::atomic::Ordering::SeqCst) < before + 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "the client did not reach restart {round}");
        up.kill_9().await;
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "20 restarts took too long ({round} done)"
        );
    }
    stop.cancel();
    hammer.await.expect("client task");
}

#[tokio::test]
async fn a_bind_error_names_the_service_and_the_address() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut extra = PORT_ZERO.to_vec();
    extra.retain(|(k, _)| *k != "GHOST_ROUTER__SERVER__GRPC_LISTEN");
    extra.push(("GHOST_ROUTER__SERVER__GRPC_LISTEN", addr.as_str()));
    let run = ghost_in(&env, &dir, &["up"], &extra).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!("router grpc {addr}")),
        "{run:?}"
    );
    drop(taken);
}

/// The `ghost.toml` shown on the manual's Configure page (docs/src/configure.md): the first
/// ```toml block after its "# Configure" heading.
fn manual_example() -> String {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/src/configure.md"
    ))
    .expect("docs/src/configure.md");
    let section = page
        .split_once("# Configure\n")
        .expect("the Configure page has its heading")
        .1;
    let block = section
        .split_once("```toml\n")
        .expect("Configure shows a ghost.toml")
        .1;
    block
        .split_once("```")
        .expect("the toml block ends")
        .0
        .to_owned()
}

#[tokio::test]
async fn the_manuals_example_config_is_accepted_with_its_aliases_default_and_allowlist() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file("ghost.toml", &manual_example());
    let run = ghost_in(
        &env,
        &dir,
        &["up", "-f", "ghost.toml", "--print-config"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let config: toml::Value = toml::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("--print-config is not TOML ({err}): {run:?}"));
    let gateway = &config["gateway"];
    assert_eq!(gateway["default_target"].as_str(), Some("MAIN"), "{run:?}");
    assert_eq!(
        gateway["public_url"].as_str(),
        Some("https://ghost.example.com")
    );
    let main = gateway["targets"]
        .as_array()
        .expect("gateway targets")
        .iter()
        .find(|t| t["name"].as_str() == Some("MAIN"))
        .expect("MAIN among the gateway's targets");
    assert_eq!(main["aliases"], toml::Value::from(vec!["BRAUN", "DEV"]));
    let policy = &config["executor"]["targets"]["MAIN"]["commands"];
    assert_eq!(
        policy["allowlist"],
        toml::Value::from(vec!["npx", "npm", "tsc"]),
        "MAIN's allowlist reaches the executor: {policy}"
    );
    assert_eq!(
        config["executor"]["targets"]["DOCS"]["commands"].as_str(),
        Some("deny")
    );
}

/// A real legacy patch file from crates/ghost-core's fixtures.
fn legacy_fixture(name: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ghost-core/tests/fixtures/legacy/"
    );
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn submit_raw(url: &str, key: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/patches"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn plain_ghost_up_takes_real_legacy_patches_without_target_or_id_or_with_trailing_commas() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    // No file, no flags but a key: the one default workspace, MAIN=./workspace.
    let key = "legacy-defaults-key-0123456789";
    let up = spawn_up(&env, &dir, &["up", "--api-key", key], &PORT_ZERO).await;

    for fixture in [
        "command-trailing-comma.json",
        "phase-no-id-no-target.json",
        "command-no-target.json",
    ] {
        let (code, body) = submit_raw(&up.url, key, legacy_fixture(fixture)).await;
        assert_eq!(code, 202, "{fixture}: {body}");
        assert_eq!(body["target"], "MAIN", "{fixture}: {body}");
        assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let (_, lenient) =
        submit_raw(&up.url, key, legacy_fixture("command-trailing-comma.json")).await;
    let warnings = lenient["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("trailing comma"))),
        "{lenient}"
    );

    // Shapes that mean nothing are refused, saying what is missing.
    for fixture in ["manifest-move-log.json", "prose-status-note.json"] {
        let (code, body) = submit_raw(&up.url, key, legacy_fixture(fixture)).await;
        assert_eq!(code, 422, "{fixture}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("nothing to do") && detail.contains("edits"),
            "{fixture}: {body}"
        );
    }
    up.kill_9().await;
}

#[tokio::test]
async fn relative_paths_in_the_file_are_relative_to_the_file_not_to_where_ghost_up_runs() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    std::fs::create_dir_all(dir.join("project")).expect("project dir");
    std::fs::create_dir_all(dir.join("elsewhere")).expect("elsewhere dir");
    env.file(
        "project/ghost.toml",
        "[[targets]]\nname = \"MAIN\"\nroot = \"./workspace\"\n\n[router]\ndata_dir = \"./router-state\"\n",
    );
    let from = dir.join("elsewhere");
    let file = "../project/ghost.toml";
    let run = ghost_in(&env, &from, &["up", "-f", file, "--print-config"], &[]).await;
    run.expect(0);
    let config: toml::Value = toml::from_str(&run.stdout).expect("printed config is TOML");
    assert_eq!(
        config["data_dir"].as_str(),
        Some("../project/.ghost"),
        "{run:?}"
    );
    assert_eq!(
        config["router"]["data_dir"].as_str(),
        Some("../project/router-state")
    );
    assert_eq!(
        config["executor"]["workspaces"][0]["root"].as_str(),
        Some("../project/workspace")
    );
    // Flags stay relative to the working directory.
    let run = ghost_in(
        &env,
        &from,
        &["up", "-f", file, "--data-dir", "./state", "--print-config"],
        &[],
    )
    .await;
    let config: toml::Value = toml::from_str(&run.stdout).expect("printed config is TOML");
    assert_eq!(config["data_dir"].as_str(), Some("./state"), "{run:?}");

    // And for real: a patch lands in the file's workspace, state beside the file.
    let key = "relative-paths-key-0123456789";
    let up = spawn_up(
        &env,
        &from,
        &["up", "-f", file, "--api-key", key],
        &PORT_ZERO,
    )
    .await;
    let (code, body) = submit(&up.url, key, &write_patch("rel-1", None, "rel.txt")).await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, key, "rel-1").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    up.kill_9().await;
    assert!(dir.join("project/workspace/rel.txt").is_file());
    assert!(dir.join("project/router-state").is_dir());
    assert!(dir.join("project/.ghost").is_dir());
    assert!(!from.join("workspace").exists() && !from.join(".ghost").exists());
}
