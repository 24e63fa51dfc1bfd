//! Issue 24: the executor's own storage fails (its state dir: journal, ledger). The real router
//! (in this process, its data dir on a healthy disk, a recording alerter) and the real
//! executor binary, whose state dir is a size-limited tmpfs (full disk; root only) or is
//! failed by the fault suite's `LD_PRELOAD` shim (EIO, failing fsync; needs `cc`). Patches
//! are submitted before, during and after the fault, each appending its id to `log.txt`.
//!
//! Asserted: the executor never applies what it cannot roll back or record: it hands the
//! lease back (the router requeues), is degraded (`/readyz` 503 with the reason,
//! `ghost_storage_degraded{service="executor"}` 1, the fault counted), the router raises
//! `executor_lost/MAIN`; nothing of a patch handed back stays in the workspace; once the disk
//! heals the executor is ready again within [`RECOVERY_BOUND`] and every patch ends
//! `succeeded` exactly once, its id once in the log, in submission order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    Edit, GetRequest, Patch, PatchState, PatchStatus, Priority, ReplaceText, SubmitRequest, edit,
};
use ghost_runtime::config::{Secret, ServerConfig};
use ghost_testkit::RecordingAlerter;
use ghost_testkit::disk::{self, Tmpfs, build_disk_fault_shim, fill, within};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The fault must make the executor not ready within this after the first patch during it.
const DETECTION_BOUND: Duration = Duration::from_secs(15);
/// Once the disk heals the executor must be ready again within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Every patch must have ended within this after the disk healed.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// Patches per phase (before, during, after).
const PER_PHASE: usize = 3;

pub(crate) fn reserve_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real router (in process, its data in `scratch/router`, short heartbeats and sweeps)
/// with a recording alerter; both stop when this is dropped.
pub(crate) struct RouterSide {
    pub addr: std::net::SocketAddr,
    pub client: RouterServiceClient<Channel>,
    pub alerts: RecordingAlerter,
    _router_stop: oneshot::Sender<()>,
}

/// The token the router of these tests accepts from executors.
pub(crate) const TOKEN: &str = "storage-test-token";

pub(crate) async fn start_router(scratch: &Path, lease_timeout: Duration) -> RouterSide {
    let alerts = RecordingAlerter::start().await;
    let alerter_url = alerts.url.clone();
    let app = router::App::build(router::RouterConfig {
        server: ServerConfig::ephemeral(),
        data_dir: scratch.join("router"),
        executor_token: Secret::new(TOKEN.to_owned()),
        alerter_url: Some(alerter_url),
        heartbeat_interval: Duration::from_millis(200),
        lease_timeout,
        sweep_interval: Duration::from_millis(50),
        ..router::RouterConfig::default()
    })
    .await
    .expect("router builds");
    let addr = app.grpc_addr();
    let (router_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = RouterServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("router answers"),
    );
    RouterSide {
        addr,
        client,
        alerts,
        _router_stop: router_stop,
    }
}

/// The executor binary `name` dialling `router`, serving MAIN at `workspace` with `state` as its
/// state dir, `extra` appended to its config's top level and `env` in its environment; its
/// log in `scratch/<name>.log`. Returns it and its HTTP base URL.
pub(crate) fn spawn_executor(
    scratch: &Path,
    name: &str,
    router: std::net::SocketAddr,
    state: &Path,
    workspace: &Path,
    extra: &str,
    env: &[(&str, String)],
) -> (tokio::process::Child, String) {
    let (grpc, http) = (reserve_port(), reserve_port());
    let config = scratch.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "router_url = \"http://{router}\"\nexecutor_id = \"{name}\"\n\
             token = \"{TOKEN}\"\nstate_dir = \"{}\"\nreconnect_backoff = \"100ms\"\n{extra}\n\
             [[workspaces]]\ntarget = \"MAIN\"\nroot = \"{}\"\n\
             [server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             drain_grace = \"0s\"\n",
            state.display(),
            workspace.display()
        ),
    )
    .unwrap();
    let output = std::fs::File::create(scratch.join(format!("{name}.log"))).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_executor"));
    command
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("the executor starts");
    (child, format!("http://127.0.0.1:{http}"))
}

/// True once `GET {http}/readyz` answers 200 (polled up to 30 s).
pub(crate) async fn ready(http: &str) -> bool {
    within(Duration::from_secs(30), || async {
        reqwest::get(format!("{http}/readyz"))
            .await
            .is_ok_and(|response| response.status().as_u16() == 200)
    })
    .await
    .is_some()
}

/// A patch on MAIN appending `id` to `log.txt` (before its `END` line).
pub(crate) fn appending(id: &str) -> Patch {
    Patch {
        id: id.to_owned(),
        target: "MAIN".to_owned(),
        description: format!("test patch {id}"),
        priority: Priority::Normal as i32,
        edits: vec![Edit {
            op: Some(edit::Op::Replace(ReplaceText {
                path: "log.txt".to_owned(),
                search: "END\n".to_owned(),
                replace: format!("{id}\nEND\n"),
            })),
        }],
        ..Patch::default()
    }
}

/// The router side and one executor binary.
struct Rig {
    client: RouterServiceClient<Channel>,
    executor_http: String,
    workspace: PathBuf,
    log: PathBuf,
    _executor: tokio::process::Child,
    router: RouterSide,
}

impl Rig {
    /// Starts the router (data in `scratch`), then the executor with `state` as its state dir
    /// and `env` (the shim) in its environment, and waits until it is ready.
    async fn start(scratch: &Path, state: &Path, env: &[(&str, String)]) -> Self {
        let router = start_router(scratch, Duration::from_secs(30)).await;
        let workspace = scratch.join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        let log = workspace.join("log.txt");
        std::fs::write(&log, "END\n").unwrap();
        let (executor, executor_http) =
            spawn_executor(scratch, "executor", router.addr, state, &workspace, "", env);
        assert!(ready(&executor_http).await, "the executor never got ready");
        Self {
            client: router.client.clone(),
            executor_http,
            workspace,
            log,
            _executor: executor,
            router,
        }
    }

    async fn readyz(&self) -> (u16, String) {
        disk::readyz(&self.executor_http).await
    }

    async fn submit(&self, id: &str) {
        submit(&self.client, id).await;
    }

    async fn state(&self, id: &str) -> PatchState {
        state_of(&self.client, id).await
    }

    async fn all_ended(&self, ids: &[String]) -> bool {
        for id in ids {
            if !terminal(self.state(id).await.status) {
                return false;
            }
        }
        true
    }

    fn logged(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.executor_http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Submits [`appending`]`(id)`; the router must accept it.
pub(crate) async fn submit(client: &RouterServiceClient<Channel>, id: &str) {
    client
        .clone()
        .submit(SubmitRequest {
            patch: Some(appending(id)),
            ..Default::default()
        })
        .await
        .expect("the router accepts the patch");
}

/// The router's state of `id`.
pub(crate) async fn state_of(client: &RouterServiceClient<Channel>, id: &str) -> PatchState {
    client
        .clone()
        .get(GetRequest { id: id.to_owned() })
        .await
        .expect("get")
        .into_inner()
        .state
        .expect("state")
}

pub(crate) fn terminal(status: i32) -> bool {
    ![
        PatchStatus::Unspecified,
        PatchStatus::Received,
        PatchStatus::Queued,
        PatchStatus::Leased,
        PatchStatus::Applying,
        PatchStatus::Validating,
    ]
    .iter()
    .any(|open| *open as i32 == status)
}

fn ids(phase: &str) -> Vec<String> {
    (0..PER_PHASE).map(|i| format!("{phase}-{i}")).collect()
}

/// One fault: before, during (fault started by `start`), after (`heal`); `reason` is the
/// expected `/readyz` body while degraded, `kind` the counted fault kind.
async fn scenario(
    name: &str,
    rig: &Rig,
    start: impl FnOnce(),
    heal: impl FnOnce(),
    reason: &str,
    kind: &str,
) {
    let (before, during, after) = (ids("before"), ids("during"), ids("after"));
    for id in &before {
        rig.submit(id).await;
    }
    let settled = within(SETTLE_BOUND, || rig.all_ended(&before)).await;
    assert!(
        settled.is_some(),
        "{name}: the patches before the fault did not end"
    );
    assert_eq!(rig.readyz().await.0, 200);

    start();
    let started = Instant::now();
    for id in &during {
        rig.submit(id).await;
    }
    let detected = within(DETECTION_BOUND, || async { rig.readyz().await.0 == 503 }).await;
    let Some(detection) = detected.map(|_| started.elapsed()) else {
        panic!(
            "{name}: the executor stayed ready: {:?}",
            rig.readyz().await
        );
    };
    let (status, body) = rig.readyz().await;
    assert_eq!((status, body.as_str()), (503, reason), "{name}");
    assert_eq!(
        disk::degraded_gauge(&rig.executor_http, "executor")
            .await
            .as_deref(),
        Some("ghost_storage_degraded{service=\"executor\"} 1"),
        "{name}"
    );
    let metrics = rig.metrics().await;
    let counted = format!("ghost_storage_faults_total{{service=\"executor\",kind=\"{kind}\"}}");
    assert!(
        metrics.lines().any(|line| line.starts_with(&counted)),
        "{name}: no {counted} in\n{metrics}"
    );
    // The executor left: the router requeued the lease and raised the alert that does not
    // need the executor's disk.
    let lost = within(Duration::from_secs(10), || async {
        rig.router.alerts.has("executor_lost/MAIN", false)
    })
    .await;
    assert!(lost.is_some(), "{name}: no executor_lost/MAIN alert");
    // While degraded: not one patch of the fault ended, and none left a trace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &during {
        let state = rig.state(id).await;
        assert!(
            !terminal(state.status),
            "{name}: {id} ended during the fault: {state:?}"
        );
    }
    assert_eq!(
        rig.logged()
            .iter()
            .filter(|line| line.starts_with("during"))
            .count(),
        0,
        "{name}: a patch handed back left its effect: {:?}",
        rig.logged()
    );
    assert_eq!(rig.readyz().await.0, 503, "{name}: healed by itself");

    heal();
    let healed_at = Instant::now();
    let ready = within(RECOVERY_BOUND, || async { rig.readyz().await.0 == 200 }).await;
    let Some(recovery) = ready else {
        panic!("{name}: not ready again: {:?}", rig.readyz().await);
    };
    assert_eq!(
        disk::degraded_gauge(&rig.executor_http, "executor")
            .await
            .as_deref(),
        Some("ghost_storage_degraded{service=\"executor\"} 0"),
        "{name}"
    );
    let settled = within(SETTLE_BOUND, || rig.all_ended(&during)).await;
    assert!(
        settled.is_some(),
        "{name}: the patches of the fault did not end"
    );
    let ended = healed_at.elapsed();
    for id in &after {
        rig.submit(id).await;
    }
    let settled = within(SETTLE_BOUND, || rig.all_ended(&after)).await;
    assert!(
        settled.is_some(),
        "{name}: the patches after the fault did not end"
    );

    let mut attempts = HashMap::new();
    for id in before.iter().chain(&during).chain(&after) {
        let state = rig.state(id).await;
        assert_eq!(
            state.status,
            PatchStatus::Succeeded as i32,
            "{name}: {id}: {state:?}"
        );
        attempts.insert(id.clone(), state.attempt);
    }
    let expected: Vec<String> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .chain(["END".to_owned()])
        .collect();
    assert_eq!(rig.logged(), expected, "{name}: each effect once, in order");
    // Every attempt's journal was closed (the handed-back ones too).
    let metrics = rig.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "ghost_executor_journals_unclosed{target=\"MAIN\"} 0"),
        "{name}: journals_unclosed is not 0:\n{metrics}"
    );
    let resolved = within(Duration::from_secs(10), || async {
        rig.router.alerts.has("executor_lost/MAIN", true)
    })
    .await;
    assert!(
        resolved.is_some(),
        "{name}: executor_lost/MAIN not resolved"
    );
    assert!(
        !rig.workspace
            .join(executor::beneath::temp_name("log.txt"))
            .exists(),
        "{name}: a temp file was left"
    );
    eprintln!(
        "executor {name}: accepted {}, lost 0, doubled 0; not ready {} ms after the fault \
         began, ready {} ms after it healed, the handed-back patches ended {} ms after it \
         healed (attempts of the first: {})",
        before.len() + during.len() + after.len(),
        detection.as_millis(),
        recovery.as_millis(),
        ended.as_millis(),
        attempts.get("during-0").copied().unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_hands_the_lease_back_and_every_patch_ends_once_after_it_heals() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch_path = std::fs::canonicalize(scratch.path()).unwrap();
    let tmpfs = match Tmpfs::mount(&scratch_path.join("state"), "4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("SKIPPED a_full_state_dir_hands_the_lease_back...: {reason}");
            return;
        }
    };
    let rig = Rig::start(&scratch_path, &tmpfs.path, &[]).await;
    let mount = tmpfs.path.clone();
    scenario(
        "full state dir",
        &rig,
        || {
            fill(&mount);
        },
        || std::fs::remove_file(mount.join("filler")).unwrap(),
        "degraded: the executor's disk is full",
        "full",
    )
    .await;
}

/// The executor binary with the shim failing files under `fault_dir` (inside its state dir)
/// as the control file says.
async fn shim_scenario(
    name: &str,
    word: &'static str,
    ledger_only: bool,
    reason: &str,
    kind: &str,
) {
    let scratch = tempfile::tempdir().unwrap();
    let scratch_path = std::fs::canonicalize(scratch.path()).unwrap();
    let shim = match build_disk_fault_shim(&scratch_path) {
        Ok(shim) => shim,
        Err(reason) => {
            eprintln!("SKIPPED executor {name}: {reason}");
            return;
        }
    };
    let state = scratch_path.join("state");
    let fault_dir = if ledger_only {
        state.join("ledger")
    } else {
        state.clone()
    };
    std::fs::create_dir_all(&fault_dir).unwrap();
    let control = scratch_path.join("fault");
    std::fs::write(&control, "ok").unwrap();
    let env = [
        ("LD_PRELOAD", shim.display().to_string()),
        ("GHOST_FAULT_DIR", fault_dir.display().to_string()),
        ("GHOST_FAULT_CONTROL", control.display().to_string()),
    ];
    let rig = Rig::start(&scratch_path, &state, &env).await;
    let (on, off) = (control.clone(), control);
    scenario(
        name,
        &rig,
        move || std::fs::write(&on, word).unwrap(),
        move || std::fs::write(&off, "ok").unwrap(),
        reason,
        kind,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_in_the_state_dir_hands_the_lease_back_before_anything_is_written() {
    shim_scenario(
        "EIO",
        "eio",
        false,
        "degraded: the executor's disk returns I/O errors",
        "io",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_of_the_journal_hands_the_lease_back_before_anything_is_written() {
    shim_scenario(
        "failing fsync",
        "fsync",
        false,
        "degraded: the executor's disk failed to flush a write (fsync)",
        "fsync",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_applied_whose_ledger_entry_cannot_be_written_is_rolled_back_and_handed_back() {
    shim_scenario(
        "EIO on the ledger only",
        "eio",
        true,
        "degraded: the executor's disk returns I/O errors",
        "io",
    )
    .await;
}
