//! Executors anywhere (issue 19): the control plane (`ghost up --no-local-executor
//! --executor-listen`) in one process, `ghost executor` in another, in its own network namespace
//! behind a veth pair when the test runs as root (as in CI), else on another loopback address.
//! The executor dials the router's executor port over TLS with a per-executor token, a patch
//! succeeds in the executor's workspace, and its trace spans all five services.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ghost_testkit::{OtlpReceiver, ReceivedSpan, try_wait_until};
use serde_json::{Value, json};

use crate::helpers::{API_KEY, Env};
use crate::up::{PORT_ZERO, ghost_in, spawn_up};

const SERVICES: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];

/// A network namespace joined to this one by a veth pair; removed when dropped.
struct Netns {
    name: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl Netns {
    /// A namespace `ghr<pid>` with `10.231.N.2/30` inside and `10.231.N.1/30` here; `None`
    /// when this process may not make one (not root, no `ip`).
    fn create() -> Option<Self> {
        let is_root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        });
        if !is_root {
            return None;
        }
        let pid = std::process::id();
        let octet = u8::try_from(pid % 250).unwrap_or(0) + 1;
        let name = format!("ghr{pid}");
        let (host_if, ns_if) = (format!("gh{pid}h"), format!("gh{pid}n"));
        let host = Ipv4Addr::new(10, 231, octet, 1);
        let inside = Ipv4Addr::new(10, 231, octet, 2);
        let netns = Self { name, host, inside };
        let ok = ip(&["netns", "add", &netns.name])
            && ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ip(&["link", "set", &ns_if, "netns", &netns.name])
            && ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if])
            && ip(&["link", "set", &host_if, "up"])
            && ip(&[
                "netns",
                "exec",
                &netns.name,
                "ip",
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                &ns_if,
            ])
            && ip(&[
                "netns",
                "exec",
                &netns.name,
                "ip",
                "link",
                "set",
                &ns_if,
                "up",
            ])
            && ip(&[
                "netns",
                "exec",
                &netns.name,
                "ip",
                "link",
                "set",
                "lo",
                "up",
            ]);
        if !ok {
            let _ = ip(&["link", "del", &host_if]);
            return None;
        }
        Some(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn all_five(spans: &[ReceivedSpan]) -> bool {
    let seen: BTreeSet<&str> = spans.iter().map(|s| s.service_name.as_str()).collect();
    SERVICES.iter().all(|service| seen.contains(service))
}

/// The executor port `ghost up` printed (`executors   https://ADDR ...`).
fn executor_port(printed: &str) -> SocketAddr {
    printed
        .lines()
        .find_map(|line| line.trim().strip_prefix("executors"))
        .and_then(|rest| rest.trim().strip_prefix("https://"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no executor port in:\n{printed}"))
}

async fn patch_state(gateway: &str, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{gateway}/v1/patches/{id}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway reachable")
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// `ghost executor` started in `netns` (or here), its output in `log`.
fn start_executor(
    netns: Option<&Netns>,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> tokio::process::Child {
    let ghost = env!("CARGO_BIN_EXE_ghost");
    let mut command = match netns {
        Some(netns) => {
            let mut command = tokio::process::Command::new("ip");
            command.args(["netns", "exec", &netns.name, ghost]);
            command
        }
        None => tokio::process::Command::new(ghost),
    };
    let out = std::fs::File::create(log).expect("executor log");
    let err = out.try_clone().expect("executor log");
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .expect("ghost executor starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_in_another_network_namespace_serves_a_patch_over_tls_with_its_own_token() {
    let netns = Netns::create();
    let (listen_ip, receiver_ip): (IpAddr, IpAddr) = match &netns {
        Some(netns) => (netns.host.into(), netns.host.into()),
        None => (
            Ipv4Addr::new(127, 0, 0, 2).into(),
            Ipv4Addr::LOCALHOST.into(),
        ),
    };
    // Which one ran, for whoever reads the test output.
    eprintln!(
        "remote executor test: {}",
        match &netns {
            Some(netns) => format!(
                "executor in network namespace {} ({} -> router {})",
                netns.name, netns.inside, netns.host
            ),
            None =>
                "not root: executor on this host, router's executor port on 127.0.0.2".to_owned(),
        }
    );
    let receiver = OtlpReceiver::start_on(SocketAddr::new(receiver_ip, 0))
        .await
        .expect("otlp receiver");
    let env = Env::empty();
    let dir = env.scratch.path().join("control");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("ghost.toml"),
        "[[targets]]\nname = \"MAIN\"\nroot = \"remote-only\"\n",
    )
    .expect("ghost.toml");
    let mut extra = PORT_ZERO.to_vec();
    let endpoint = receiver.endpoint();
    extra.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    let executor_listen = SocketAddr::new(listen_ip, 0).to_string();
    let up = spawn_up(
        &env,
        &dir,
        &[
            "up",
            "--api-key",
            API_KEY,
            "--no-local-executor",
            "--executor-listen",
            &executor_listen,
        ],
        &extra,
    )
    .await;
    let port = executor_port(&up.printed);
    assert!(
        !dir.join("remote-only").exists(),
        "no local executor: the control plane makes no workspace"
    );
    let ca = dir.join(".ghost/tls/ca.pem");
    assert!(ca.is_file(), "ghost up made its CA: {}", up.printed);

    let created = ghost_in(
        &env,
        &dir,
        &[
            "token",
            "create",
            "--target",
            "MAIN",
            "--name",
            "remote-box",
            "--json",
        ],
        &[("GHOST_URL", up.url.as_str()), ("GHOST_API_KEY", API_KEY)],
    )
    .await;
    created.expect(0);
    let token = created.json()["token"]
        .as_str()
        .expect("the token, once")
        .to_owned();

    let remote = env.scratch.path().join("remote");
    let workspace = remote.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let token_file = remote.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let router = format!("https://{port}");
    let args: Vec<String> = [
        "executor",
        "--router",
        &router,
        "--ca",
        &ca.display().to_string(),
        "--token-file",
        &token_file.display().to_string(),
        "--workspace",
        &format!("MAIN={}", workspace.display()),
        "--data-dir",
        &remote.join("state").display().to_string(),
        "--name",
        "remote-box",
    ]
    .map(str::to_owned)
    .to_vec();
    let log = remote.join("executor.log");
    let mut executor = start_executor(
        netns.as_ref(),
        &args,
        &[
            ("HOME", remote.display().to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ],
        &log,
    );

    let response = reqwest::Client::new()
        .post(format!("{}/v1/patches", up.url))
        .bearer_auth(API_KEY)
        .json(&json!({
            "id": "remote-1",
            "target": "MAIN",
            "edits": [{"op": "write", "path": "from-afar.txt", "contents": "over TLS\n"}],
        }))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 202);
    let waited = try_wait_until(
        "remote-1 to succeed with a summary",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let state = patch_state(&up.url, "remote-1").await;
            if state["status"] == "succeeded" && !state["summary"].is_null() {
                Ok(state)
            } else {
                Err(state)
            }
        },
    )
    .await;
    let finished = waited.unwrap_or_else(|timed_out| {
        let _ = executor.start_kill();
        panic!(
            "{timed_out}\nexecutor log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    });
    assert_eq!(
        std::fs::read_to_string(workspace.join("from-afar.txt")).expect("written remotely"),
        "over TLS\n"
    );

    let trace_id = finished["trace_id"].as_str().expect("trace id").to_owned();
    let spans = receiver
        .wait_for_trace(&trace_id, Duration::from_secs(30), all_five)
        .await;
    let seen: BTreeSet<&str> = spans.iter().map(|s| s.service_name.as_str()).collect();
    assert!(
        all_five(&spans),
        "the trace spans all five services across both processes, got {seen:?}"
    );
    let executors: Value = reqwest::Client::new()
        .get(format!("{}/v1/executors", up.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway reachable")
        .json()
        .await
        .expect("json");
    assert!(
        executors.to_string().contains("remote-box"),
        "the remote executor is listed: {executors}"
    );
    let _ = executor.start_kill();
    let _ = executor.wait().await;
    up.kill_9().await;
    drop(netns);
}

/// `--tls-cert/--tls-key` (e.g. a Let's Encrypt pair): the gateway serves HTTPS with it and the
/// executor port serves the same certificate; no private CA is made; plaintext to the gateway
/// is told to use https.
#[tokio::test]
async fn a_given_certificate_serves_the_gateway_over_https_and_the_executor_port() {
    let env = Env::empty();
    let dir = env.scratch.path().join("control");
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = env.scratch.path().join("pki");
    let pki_arg = pki.display().to_string();
    ghost_in(
        &env,
        &dir,
        &["tls", "init", "--dir", &pki_arg, "--name", "localhost"],
        &[],
    )
    .await
    .expect(0);
    let (cert, key) = (pki.join("server.pem"), pki.join("server-key.pem"));
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let up = spawn_up(
        &env,
        &dir,
        &[
            "up",
            "--api-key",
            API_KEY,
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--executor-listen",
            "127.0.0.1:0",
        ],
        &PORT_ZERO,
    )
    .await;
    assert!(up.url.starts_with("https://"), "{}", up.printed);
    assert!(
        !dir.join(".ghost/tls").exists(),
        "a given certificate makes no private CA"
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).expect("ca"))
        .expect("pem");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    // The URL names 127.0.0.1; the certificate names localhost and 127.0.0.1 (tls init's names).
    let health = https
        .get(format!("{}/healthz", up.url))
        .send()
        .await
        .expect("https to the gateway");
    assert_eq!(health.status().as_u16(), 200);
    let plain = up.url.replacen("https://", "http://", 1);
    let told = reqwest::get(format!("{plain}/healthz"))
        .await
        .expect("an answer in plaintext")
        .text()
        .await
        .expect("text");
    assert!(told.contains("this port speaks TLS"), "{told}");
    let port = executor_port(&up.printed);
    let served = tokio::net::TcpStream::connect(port).await;
    assert!(served.is_ok(), "the executor port listens: {}", up.printed);
    up.kill_9().await;
}
