//! The keys file a gateway kept before runtime keys moved to the router
//! (`<data_dir>/api-keys.json`): read once at start with the checks it always had, imported
//! into the router (hashes as they are) and renamed `api-keys.json.imported`. A file that
//! cannot be read or parsed, or that the router refuses, fails the start with a clear error
//! and is left where it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ghost_proto::router::v1::{self as wire, api_key_service_client::ApiKeyServiceClient};
use ghost_runtime::propagation::TracedChannel;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Scope;

/// Largest keys file read (1,000 keys take about 300 KB).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The file under `data_dir`.
pub const FILE_NAME: &str = "api-keys.json";
/// What it is renamed to once imported.
pub const IMPORTED_NAME: &str = "api-keys.json.imported";
/// Tries of the import while the router is not reachable yet, one second apart.
const TRIES: u32 = 10;

/// One key as the file keeps it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    name: String,
    /// Lowercase hex SHA-256 of the secret.
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    targets: Vec<String>,
    created_at: String,
    created_by: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    keys: Vec<Record>,
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Submit => "submit",
        Scope::Read => "read",
        Scope::Admin => "admin",
    }
}

/// The bytes of `file`: never through a symlink (`O_NOFOLLOW`, also when one replaces the
/// file after the first check), only a regular file (`O_NONBLOCK` and an fstat: a FIFO
/// never blocks the start), and at most [`MAX_FILE_BYTES`] of it, however it grows.
fn read_capped(file: &Path) -> anyhow::Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read as _;
    let cannot =
        |err: &dyn std::fmt::Display| anyhow::anyhow!("cannot read {}: {err}", file.display());
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let opened = match rustix::fs::open(file, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::LOOP) => anyhow::bail!(
            "{} is a symbolic link; runtime keys are not read through one",
            file.display()
        ),
        Err(err) => return Err(cannot(&err)),
    };
    let meta = opened.metadata().map_err(|err| cannot(&err))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", file.display());
    }
    let too_large = |len: u64| {
        anyhow::anyhow!(
            "{} is {len} bytes or more; at most {MAX_FILE_BYTES} are read",
            file.display()
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut text = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    opened
        .take(MAX_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut text)
        .map_err(|err| cannot(&err))?;
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if len > MAX_FILE_BYTES {
        return Err(too_large(len));
    }
    Ok(text)
}

/// The keys of `file`, checked as the gateway always checked them at start.
fn read(file: &Path) -> anyhow::Result<Vec<wire::StoredApiKey>> {
    let text = read_capped(file)?;
    let parsed: File = serde_json::from_slice(&text)
        .map_err(|err| anyhow::anyhow!("{} is not a keys file: {err}", file.display()))?;
    if parsed.version != 1 {
        anyhow::bail!("{}: unknown version {}", file.display(), parsed.version);
    }
    let mut keys = Vec::with_capacity(parsed.keys.len());
    for record in parsed.keys {
        if crate::auth::decode_hex32(&record.sha256).is_none() {
            anyhow::bail!("key {}: sha256 must be 64 hex digits", record.name);
        }
        for target in &record.targets {
            ghost_core::TargetName::parse(target)
                .map_err(|err| anyhow::anyhow!("key {}: {err}", record.name))?;
        }
        let created = OffsetDateTime::parse(&record.created_at, &Rfc3339)
            .map_err(|err| anyhow::anyhow!("key {}: created_at: {err}", record.name))?;
        keys.push(wire::StoredApiKey {
            key: Some(wire::ApiKey {
                name: record.name,
                scopes: record
                    .scopes
                    .into_iter()
                    .map(|s| scope_name(s).to_owned())
                    .collect(),
                targets: record.targets,
                imported: true,
                created_unix_ms: i64::try_from(created.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(0),
                created_by: record.created_by,
            }),
            sha256: record.sha256.trim().to_ascii_lowercase(),
        });
    }
    Ok(keys)
}

/// Imports `<data_dir>/api-keys.json` into the router when there is one; the file it was
/// renamed to.
pub async fn import_old_file(
    data_dir: Option<&Path>,
    client: &ApiKeyServiceClient<TracedChannel>,
    timeout: Duration,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(dir) = data_dir else {
        return Ok(None);
    };
    let file = dir.join(FILE_NAME);
    match std::fs::symlink_metadata(&file) {
        Ok(meta) if meta.file_type().is_symlink() => {
            anyhow::bail!(
                "{} is a symbolic link; runtime keys are not read through one",
                file.display()
            );
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => anyhow::bail!("cannot read {}: {err}", file.display()),
    }
    let keys = read(&file)?;
    let count = keys.len();
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        let mut request = tonic::Request::new(wire::ImportApiKeysRequest {
            keys: keys.clone(),
            actor: "gateway import".to_owned(),
        });
        request.set_timeout(timeout);
        match client.clone().import_api_keys(request).await {
            Ok(answer) => break answer.into_inner(),
            Err(status)
                if tries < TRIES
                    && matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(status) => anyhow::bail!(
                "cannot import the runtime keys of {} into the router ({:?}: {}); the file is kept",
                file.display(),
                status.code(),
                status.message()
            ),
        }
    };
    let renamed = dir.join(IMPORTED_NAME);
    std::fs::rename(&file, &renamed).map_err(|err| {
        anyhow::anyhow!(
            "imported the keys of {} but cannot rename it to {}: {err}",
            file.display(),
            renamed.display()
        )
    })?;
    tracing::info!(
        target: "audit",
        file = %file.display(),
        keys = count,
        imported = answer.imported,
        present = answer.present,
        "runtime api keys imported into the router"
    );
    Ok(Some(renamed))
}
