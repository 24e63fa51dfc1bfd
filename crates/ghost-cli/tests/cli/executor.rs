//! `ghost executor` as a user on the machine where the code lives runs it: the real binary
//! against the real router (`router::App` on loopback, no `ghost up`), patches submitted over
//! the router's gRPC API; and `ghost executor install/uninstall` writing a systemd unit that
//! `systemd-analyze verify` accepts and a launchd plist valid against Apple's plist DTD.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{Edit, Patch, Priority, SubmitRequest, WriteFile, edit};
use ghost_runtime::config::{Secret, ServerConfig};
use ghost_testkit::{POLL_INTERVAL, TEST_TIMEOUT, try_wait_until};
use tokio::sync::oneshot;

use crate::helpers::{Env, Run};

const TOKEN: &str = "executor-test-token-0123456789";

/// A running router; stopped (and drained) by `stop`.
struct TestRouter {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl TestRouter {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// The real router on `grpc` (port 0 for a free one) with its state in `data_dir`, accepting
/// executors that present `TOKEN`.
async fn start_router(data_dir: &Path, grpc: SocketAddr) -> TestRouter {
    let app = router::App::build(router::RouterConfig {
        server: ServerConfig {
            grpc_listen: grpc,
            ..ServerConfig::ephemeral()
        },
        data_dir: data_dir.to_owned(),
        executor_token: Secret::new(TOKEN.to_owned()),
        heartbeat_interval: Duration::from_millis(200),
        sweep_interval: Duration::from_millis(50),
        ..router::RouterConfig::default()
    })
    .await
    .expect("router builds");
    let addr = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .expect("router runs");
    });
    TestRouter { addr, stop, done }
}

/// Submits a patch to MAIN writing `{id}.txt`.
async fn submit(router: SocketAddr, id: &str) {
    let mut client = RouterServiceClient::connect(format!("http://{router}"))
        .await
        .expect("router reachable");
    let patch = Patch {
        id: id.to_owned(),
        target: "MAIN".to_owned(),
        description: format!("remote executor patch {id}"),
        priority: Priority::Normal as i32,
        edits: vec![Edit {
            op: Some(edit::Op::Write(WriteFile {
                path: format!("{id}.txt"),
                contents: format!("{id}\n"),
            })),
        }],
        ..Patch::default()
    };
    client
        .submit(SubmitRequest {
            patch: Some(patch),
            ..Default::default()
        })
        .await
        .expect("submit accepted");
}

/// Waits (bounded) until `path` holds `contents`; panics with the executor's output if not.
async fn wait_for_file(path: &Path, contents: &str, executor: &mut tokio::process::Child) {
    let written = format!("{} to hold {contents:?}", path.display());
    let waited =
        try_wait_until(
            &written,
            TEST_TIMEOUT,
            POLL_INTERVAL,
            async || match std::fs::read_to_string(path) {
                Ok(text) if text == contents => Ok(()),
                other => Err(other.map_err(|err| err.to_string())),
            },
        )
        .await;
    let Err(timed_out) = waited else {
        return;
    };
    let _ = executor.start_kill();
    let stderr = match executor.stderr.take() {
        Some(mut pipe) => {
            use tokio::io::AsyncReadExt;
            let mut text = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), pipe.read_to_string(&mut text)).await;
            text
        }
        None => String::new(),
    };
    panic!("{timed_out}; the executor said:\n{stderr}");
}

/// A workspace and a data dir whose paths have spaces in them.
fn dirs(env: &Env) -> (PathBuf, PathBuf) {
    let workspace = env.scratch.path().join("my work/app");
    std::fs::create_dir_all(&workspace).expect("workspace");
    (workspace, env.scratch.path().join("executor state"))
}

fn executor_args<'a>(router: &'a str, workspace: &'a str, data_dir: &'a str) -> Vec<&'a str> {
    vec![
        "executor",
        "--router",
        router,
        "--workspace",
        workspace,
        "--data-dir",
        data_dir,
        "--name",
        "laptop",
        "--reconnect-backoff",
        "100ms",
    ]
}

#[tokio::test]
async fn ghost_executor_serves_patches_and_carries_on_after_a_router_restart() {
    let env = Env::empty();
    let (workspace, data_dir) = dirs(&env);
    let router_dir = env.scratch.path().join("router");
    let router = start_router(&router_dir, "127.0.0.1:0".parse().expect("addr")).await;
    let addr = router.addr;
    let url = format!("http://{addr}");
    let workspace_arg = format!("MAIN={}", workspace.display());
    let data_arg = data_dir.display().to_string();
    let mut executor = env
        .command(
            &executor_args(&url, &workspace_arg, &data_arg),
            &[("GHOST_EXECUTOR_TOKEN", TOKEN)],
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ghost executor starts");

    submit(addr, "first").await;
    wait_for_file(&workspace.join("first.txt"), "first\n", &mut executor).await;

    // The router restarts on the same port with the same state; the executor reconnects on
    // its own and takes the next lease.
    router.stop().await;
    let router = start_router(&router_dir, addr).await;
    submit(addr, "second").await;
    wait_for_file(&workspace.join("second.txt"), "second\n", &mut executor).await;
    router.stop().await;
}

#[tokio::test]
async fn plaintext_to_another_host_is_refused_and_a_token_is_required() {
    let env = Env::empty();
    let (workspace, data_dir) = dirs(&env);
    let workspace_arg = format!("MAIN={}", workspace.display());
    let data_arg = data_dir.display().to_string();
    let args = executor_args("http://ghost.example.com:50051", &workspace_arg, &data_arg);
    let run = env
        .ghost_with(&args, &[("GHOST_EXECUTOR_TOKEN", TOKEN)], b"")
        .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(
            "the token would cross the network in plaintext: use https://ghost.example.com:50051"
        ),
        "{run:?}"
    );
    let args = executor_args("https://ghost.example.com", &workspace_arg, &data_arg);
    let run = env.ghost(&args).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("GHOST_EXECUTOR_TOKEN"), "{run:?}");
}

/// `ghost executor install ARGS --workspace ... --data-dir ...` with the token in the
/// environment.
async fn install(env: &Env, extra: &[&str], workspace: &Path, data_dir: &Path) -> Run {
    let workspace_arg = format!("MAIN={}", workspace.display());
    let data_arg = data_dir.display().to_string();
    let mut args = vec!["executor", "install"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--router",
        "https://ghost.example.com:50443",
        "--workspace",
        &workspace_arg,
        "--data-dir",
        &data_arg,
        "--name",
        "laptop",
    ]);
    env.ghost_with(&args, &[("GHOST_EXECUTOR_TOKEN", TOKEN)], b"")
        .await
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn install_user_writes_a_unit_systemd_accepts_and_uninstall_removes_it() {
    let env = Env::empty();
    // Spaces, a specifier and a variable in the workspace path: all must stay literal.
    let workspace = env.scratch.path().join("my work/100% $HOME app");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = env.scratch.path().join("executor state");

    let dry = install(&env, &["--user", "--dry-run"], &workspace, &data_dir).await;
    dry.expect(0);
    assert!(dry.stdout.contains("ExecStart="), "{dry:?}");
    let unit_dir = env.scratch.path().join("config/systemd/user");
    assert!(!unit_dir.exists(), "a dry run wrote {}", unit_dir.display());

    install(&env, &["--user", "--no-enable"], &workspace, &data_dir)
        .await
        .expect(0);
    let unit_path = unit_dir.join("ghost-executor.service");
    let env_path = unit_dir.join("ghost-executor.env");
    let unit = std::fs::read_to_string(&unit_path).expect("unit written");
    assert!(!unit.contains(TOKEN), "the token is in the unit:\n{unit}");
    assert!(
        unit.contains("100%% $$HOME app"),
        "the workspace path is not escaped:\n{unit}"
    );
    assert!(
        unit.contains(&format!("EnvironmentFile={}", env_path.display())),
        "{unit}"
    );
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    assert_eq!(mode(&env_path), 0o600);
    assert_eq!(
        std::fs::read_to_string(&env_path).expect("env file"),
        format!("GHOST_EXECUTOR_TOKEN={TOKEN}\n")
    );

    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("ghost-executor.service:"),
        "systemd-analyze verify refused the unit ({}):\n{stderr}\n{unit}",
        verify.status
    );

    env.ghost(&["executor", "uninstall", "--user", "--no-disable"])
        .await
        .expect(0);
    assert!(!unit_path.exists() && !env_path.exists());
}

/// Apple's plist DTD (http://www.apple.com/DTDs/PropertyList-1.0.dtd), as published.
const PLIST_DTD: &str = r#"<!ENTITY % plistObject "(array | data | date | dict | real | integer | string | true | false )" >
<!ELEMENT plist %plistObject;>
<!ATTLIST plist version CDATA "1.0" >
<!ELEMENT array (%plistObject;)*>
<!ELEMENT dict (key, %plistObject;)*>
<!ELEMENT key (#PCDATA)>
<!ELEMENT string (#PCDATA)>
<!ELEMENT data (#PCDATA)>
<!ELEMENT date (#PCDATA)>
<!ELEMENT true EMPTY>
<!ELEMENT false EMPTY>
<!ELEMENT real (#PCDATA)>
<!ELEMENT integer (#PCDATA)>
"#;

/// Validates `plist` against the DTD with lxml (no network), and prints its
/// ProgramArguments one per line; `None` when lxml is not installed.
fn validate_plist(plist: &Path, dtd: &Path) -> Option<Vec<String>> {
    let python = ghost_testkit::python();
    let has_lxml = std::process::Command::new(&python)
        .args(["-c", "import lxml"])
        .status()
        .expect("python runs");
    if !has_lxml.success() {
        return None;
    }
    let script = r#"
import sys
from lxml import etree
parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
tree = etree.parse(sys.argv[1], parser)
dtd = etree.DTD(open(sys.argv[2], 'rb'))
if tree.docinfo.public_id != '-//Apple//DTD PLIST 1.0//EN':
    sys.exit('wrong DOCTYPE: %r' % tree.docinfo.public_id)
if not dtd.validate(tree):
    sys.exit('invalid plist: %s' % dtd.error_log.filter_from_errors())
root = tree.getroot().find('dict')
keys = [k.text for k in root.findall('key')]
for needed in ('Label', 'ProgramArguments', 'RunAtLoad', 'KeepAlive'):
    if needed not in keys:
        sys.exit('missing key ' + needed)
args = root[keys.index('ProgramArguments') * 2 + 1]
for arg in args:
    print(arg.text)
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(plist)
        .arg(dtd)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the plist is not valid: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(plist).unwrap_or_default()
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[tokio::test]
async fn install_launchd_writes_a_valid_plist_and_uninstall_removes_it() {
    let env = Env::empty();
    // XML's special characters and spaces in the workspace path.
    let workspace = env.scratch.path().join("my work/a & b <c> 'd' \"e\"");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = env.scratch.path().join("executor state");
    install(
        &env,
        &["--user", "--manager", "launchd", "--no-enable"],
        &workspace,
        &data_dir,
    )
    .await
    .expect(0);
    let agents = env.scratch.path().join("Library/LaunchAgents");
    let plist_path = agents.join("dev.ghost-runner.executor.plist");
    let token_path = agents.join("dev.ghost-runner.executor.token");
    let plist = std::fs::read_to_string(&plist_path).expect("plist written");
    assert!(
        !plist.contains(TOKEN),
        "the token is in the plist:\n{plist}"
    );
    assert_eq!(mode(&token_path), 0o600);
    assert_eq!(
        std::fs::read_to_string(&token_path).expect("token file"),
        format!("{TOKEN}\n")
    );

    let dtd = env.file("PropertyList-1.0.dtd", PLIST_DTD);
    match validate_plist(&plist_path, &dtd) {
        Some(args) => {
            let workspace_arg = format!("MAIN={}", workspace.display());
            assert!(
                args.contains(&workspace_arg),
                "{workspace_arg} not among {args:?}"
            );
            assert!(args.contains(&token_path.display().to_string()), "{args:?}");
        }
        None => eprintln!(
            "SKIPPED the plist DTD check: lxml is not installed in .venv \
             (pip install -r tests/python/requirements.txt)"
        ),
    }

    env.ghost(&[
        "executor",
        "uninstall",
        "--user",
        "--manager",
        "launchd",
        "--no-disable",
    ])
    .await
    .expect(0);
    assert!(!plist_path.exists() && !token_path.exists());
}

#[tokio::test]
async fn a_refused_token_is_said_once_while_the_executor_keeps_retrying() {
    use tokio::io::AsyncBufReadExt;
    let env = Env::empty();
    let (workspace, data_dir) = dirs(&env);
    let router = start_router(
        &env.scratch.path().join("router"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await;
    let url = format!("http://{}", router.addr);
    let workspace_arg = format!("MAIN={}", workspace.display());
    let data_arg = data_dir.display().to_string();
    let mut executor = env
        .command(
            &executor_args(&url, &workspace_arg, &data_arg),
            &[
                ("GHOST_EXECUTOR_TOKEN", "not-the-router-token"),
                ("RUST_LOG", "info,executor=debug"),
            ],
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ghost executor starts");
    let mut lines = tokio::io::BufReader::new(executor.stdout.take().expect("stdout")).lines();
    let (mut said, mut retried, mut seen) = (0, 0, Vec::new());
    // Until three retries were refused again (bounded in lines and time).
    while retried < 3 && seen.len() < 500 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the executor keeps logging")
            .expect("stdout readable")
            .expect("the executor still runs");
        if line.contains("failed again") {
            retried += 1;
        } else if line.contains("refused the executor token") {
            said += 1;
        }
        seen.push(line);
    }
    assert_eq!(said, 1, "said {said} times:\n{}", seen.join("\n"));
    assert!(
        seen.iter()
            .any(|l| l.contains("UNAUTHENTICATED") && l.contains("ghost token create")),
        "{}",
        seen.join("\n")
    );
    router.stop().await;
}

/// A private CA's certificate (PEM) and a server certificate and key for 127.0.0.1 it signed.
fn private_ca() -> (
    String,
    tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "executor test ca");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca_pem = params.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    (
        ca_pem,
        cert.der().clone(),
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A TLS front (rustls with ring, ALPN h2) on loopback port 0 that forwards every connection
/// to `backend` in plaintext: the router's executor port as a remote executor sees it.
async fn tls_front(
    backend: SocketAddr,
    cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    key: tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio_rustls::rustls;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn ghost_executor_dials_https_with_the_private_ca_and_serves_a_patch() {
    let env = Env::empty();
    let (workspace, data_dir) = dirs(&env);
    let router = start_router(
        &env.scratch.path().join("router"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await;
    let (ca_pem, cert, key) = private_ca();
    let (front, front_task) = tls_front(router.addr, cert, key).await;
    let ca = env.file("router ca.pem", &ca_pem);
    let token_file = env.file("token", &format!("{TOKEN}\n"));
    let url = format!("https://127.0.0.1:{}", front.port());
    let workspace_arg = format!("MAIN={}", workspace.display());
    let data_arg = data_dir.display().to_string();
    let ca_arg = ca.display().to_string();
    let token_arg = token_file.display().to_string();
    let mut args = executor_args(&url, &workspace_arg, &data_arg);
    args.extend_from_slice(&["--ca", &ca_arg, "--token-file", &token_arg]);
    let mut executor = env
        .command(&args, &[])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ghost executor starts");
    submit(router.addr, "over-tls").await;
    wait_for_file(&workspace.join("over-tls.txt"), "over-tls\n", &mut executor).await;
    front_task.abort();
    router.stop().await;
}

#[tokio::test]
async fn a_system_unit_printed_by_dry_run_is_hardened_and_verifies() {
    let env = Env::empty();
    let workspace = env.scratch.path().join("srv/my app");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let workspace_arg = format!("MAIN={}", workspace.display());
    let run = env
        .ghost_with(
            &[
                "executor",
                "install",
                "--dry-run",
                "--router",
                "https://ghost.example.com:50443",
                "--workspace",
                &workspace_arg,
            ],
            &[("GHOST_EXECUTOR_TOKEN", TOKEN)],
            b"",
        )
        .await;
    run.expect(0);
    let unit = &run.stdout;
    assert!(!unit.contains(TOKEN), "{unit}");
    for line in [
        "\"--data-dir\" \"/var/lib/ghost-executor\"",
        "StateDirectory=ghost-executor",
        "ProtectSystem=full",
        "NoNewPrivileges=yes",
        "EnvironmentFile=/etc/systemd/system/ghost-executor.env",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.contains(line), "{line} missing:\n{unit}");
    }
    let path = env.file("ghost-executor.service", unit);
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("ghost-executor.service:"),
        "systemd-analyze verify refused the unit ({}):\n{stderr}\n{unit}",
        verify.status
    );
    assert!(run.stderr.contains("dry run: would write"), "{run:?}");
}

/// A system service runs its binary as root at every start: one that others could replace
/// (here in a world-writable directory) is refused before anything is written.
#[tokio::test]
async fn a_system_install_from_a_binary_others_could_replace_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::empty();
    let loose = env.scratch.path().join("loose");
    std::fs::create_dir_all(&loose).expect("dir");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let copy = loose.join("ghost");
    std::fs::copy(env!("CARGO_BIN_EXE_ghost"), &copy).expect("copy ghost");
    let workspace = env.scratch.path().join("ws");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let output = tokio::process::Command::new(&copy)
        .args([
            "executor",
            "install",
            "--no-enable",
            "--router",
            "https://ghost.example.com:50443",
            "--workspace",
            &format!("MAIN={}", workspace.display()),
            "--data-dir",
            &env.scratch.path().join("state").display().to_string(),
        ])
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GHOST_EXECUTOR_TOKEN", TOKEN)
        .output()
        .await
        .expect("ghost runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("can be changed by someone other than root"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new("/etc/systemd/system/ghost-executor.service").exists()
            || std::fs::read_to_string("/etc/systemd/system/ghost-executor.service")
                .is_ok_and(|unit| !unit.contains(&copy.display().to_string())),
        "nothing written for the loose binary"
    );

    let run = env
        .ghost_with(
            &[
                "executor",
                "install",
                "--user",
                "--service-user",
                "nobody",
                "--dry-run",
                "--router",
                "https://ghost.example.com:50443",
                "--workspace",
                &format!("MAIN={}", workspace.display()),
            ],
            &[("GHOST_EXECUTOR_TOKEN", TOKEN)],
            b"",
        )
        .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("--service-user applies to a system systemd unit only"),
        "{run:?}"
    );
}
