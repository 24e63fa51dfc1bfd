//! Real disk faults for the fault tests: a size-limited tmpfs (root only), a filler that makes
//! it full, and the fault suite's `LD_PRELOAD` shim (`tests/faults/disk-fault.c`: EIO on
//! writes, failing or stalling fsync, switched at run time by a control file).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory; unmounted (lazily) when dropped, also when a test fails.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `at` (created if missing), or says why it
    /// cannot (not root, no `mount`).
    pub fn mount(at: &Path, size: &str) -> Result<Self, String> {
        if !is_root() {
            return Err("not root: cannot mount a tmpfs".to_owned());
        }
        std::fs::create_dir_all(at).map_err(|err| format!("{}: {err}", at.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|err| format!("cannot run mount: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self {
            path: at.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Writes `dir/filler` until the file system refuses (bounded: at most 1 GiB), down to the
/// last byte; returns its path (remove it to give the space back).
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return path;
    };
    let chunk = vec![0xa5_u8; 64 * 1024];
    for _ in 0..16 * 1024 {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..64 * 1024 {
        if file.write_all(&[0xa5]).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
    path
}

/// Builds the fault suite's shim (`tests/faults/disk-fault.c`) into `dir/disk-fault.so`, or
/// says why it cannot (no C compiler).
pub fn build_disk_fault_shim(dir: &Path) -> Result<PathBuf, String> {
    let source = crate::repo_root().join("tests/faults/disk-fault.c");
    let out = dir.join("disk-fault.so");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .map_err(|err| format!("no C compiler (cc): {err}"))?;
    if !status.success() {
        return Err(format!("cc failed on {}: {status}", source.display()));
    }
    Ok(out)
}

/// `GET {http}/readyz` of a service (`http` like `http://127.0.0.1:PORT`): status and body.
pub async fn readyz(http: &str) -> (u16, String) {
    let response = reqwest::get(format!("{http}/readyz"))
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The `ghost_storage_degraded{service="…"}` line of the service's `/metrics`, if exported.
pub async fn degraded_gauge(http: &str, service: &str) -> Option<String> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default();
    let prefix = format!("ghost_storage_degraded{{service=\"{service}\"}}");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .map(str::to_owned)
}

/// What `grpc.health.v1` at `url` says of `service` (e.g. `ghost.alerter.v1.AlerterService`).
pub async fn grpc_health(
    url: &str,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a gRPC URL")
        .connect()
        .await
        .expect("the service's gRPC port answers");
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("a health answer")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown)
}

/// What `grpc.health.v1` at `url` says of `service` once it says `want`, or after 5 s (the
/// health status follows the storage state through a watch task, so it may lag a readiness
/// answer by a moment): the last answer either way, for the caller's assertion.
pub async fn grpc_health_settles(
    url: &str,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let start = std::time::Instant::now();
    loop {
        let status = grpc_health(url, service).await;
        if status == want || start.elapsed() > std::time::Duration::from_secs(5) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Starts the service binary `binary` with the config file `config` under the disk-fault shim
/// `shim` (faults on files below `data`, switched by the word in `control`), its output in
/// `log`, and waits up to 30 s for its `/readyz` at `http` (e.g. `http://127.0.0.1:8081`) to
/// answer 200. The child is killed when dropped.
pub async fn spawn_under_shim(
    binary: &Path,
    config: &Path,
    shim: &Path,
    data: &Path,
    control: &Path,
    log: &Path,
    http: &str,
) -> tokio::process::Child {
    let log_file = std::fs::File::create(log).expect("the log file");
    let child = tokio::process::Command::new(binary)
        .env("GHOST_CONFIG", config)
        .env("RUST_LOG", "info")
        .env("LD_PRELOAD", shim)
        .env("GHOST_FAULT_DIR", data)
        .env("GHOST_FAULT_CONTROL", control)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().expect("the log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("the service starts");
    let started = within(std::time::Duration::from_secs(30), || async {
        matches!(reqwest::get(format!("{http}/readyz")).await, Ok(r) if r.status().as_u16() == 200)
    })
    .await;
    assert!(
        started.is_some(),
        "{} did not become ready (log in {})",
        binary.display(),
        log.display()
    );
    child
}

/// Polls `check` every 50 ms until it holds or `bound` passed; how long it took, or `None`.
pub async fn within<F, Fut>(bound: std::time::Duration, mut check: F) -> Option<std::time::Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}
