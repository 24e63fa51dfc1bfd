//! `ghost backup` and `ghost restore`: a copy of every service's state that can be taken while
//! the services run, and put back into a fresh data dir.
//!
//! A backup is a plain directory laid out like `ghost up`'s data dir (`router/router.db`,
//! `summarizer/summarizer.db`, `summarizer/summaries/...`, `alerter/alerter.db`) plus
//! `manifest.json`: for every file its service, path, size, sha256, the schema version of a
//! database (`PRAGMA user_version`) and when it was copied. Each database is copied with
//! SQLite's online backup API in one step, inside one read transaction: the copy is the
//! database as of one commit, and the services (WAL mode) keep writing meanwhile.
//!
//! Order matters for the summarizer: it writes a summary's files before the index row that
//! names them, so the index is copied first and the files after; every summary the copied index
//! names is then on disk (an archive move in between is finished by the summarizer at start).
//!
//! The backup is written under a hidden `.NAME.partial` sibling and renamed into place once
//! complete, so a directory named like a backup is always a whole one. `restore` checks and
//! puts a backup back, `tree` copies the summary files, `retention` names and prunes backups
//! under `--into ROOT`, `database` copies and checks a SQLite file, `render` prints the
//! answers, `command` runs the two commands.

mod command;
mod database;
mod render;
mod restore;
mod retention;
mod tree;

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::command::{run_backup, run_restore};
use self::database::{check_integrity, copy_database};
pub use self::render::{render_backup, render_restore, report_json};
pub use self::restore::{RestoreOptions, RestoreReport, restore};
use self::retention::{prune, unused_name};
use self::tree::{complete_summaries, copy_tree};

/// The manifest's `format`.
pub const FORMAT: &str = "ghost-backup/1";
/// The manifest's file name, at the top of a backup.
pub const MANIFEST: &str = "manifest.json";
/// A backup directory made by `--into` is named this, then the UTC time.
pub const NAME_PREFIX: &str = "backup-";
/// Files larger than this are refused (backup and restore): 64 GiB.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// A manifest larger than this is refused: 64 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// A manifest listing more files than this is refused.
pub const MAX_FILES: usize = 2_000_000;

/// One service whose state a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Its name, the sub-dir of a data dir and of a backup.
    pub name: &'static str,
    /// Its SQLite file inside its data dir.
    pub database: &'static str,
    /// Directories of plain files that belong with the database (copied after it).
    pub trees: &'static [&'static str],
}

/// Every service with state: the gateway keeps its keys and sessions in the router's store, and
/// the executor's state belongs with its workspaces (neither is backed up).
pub const SERVICES: [Service; 3] = [
    Service {
        name: "router",
        database: "router.db",
        trees: &[],
    },
    Service {
        name: "summarizer",
        database: "summarizer.db",
        trees: &["summaries"],
    },
    Service {
        name: "alerter",
        database: "alerter.db",
        trees: &[],
    },
];

/// The service called `name`.
pub fn service(name: &str) -> Option<Service> {
    SERVICES.into_iter().find(|service| service.name == name)
}

/// What a backup holds; `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// When the backup started (RFC 3339, UTC).
    pub started_at: String,
    /// When its last file was copied.
    pub finished_at: String,
    /// The `ghost` that wrote it.
    pub ghost_version: String,
    /// Every file, in copy order.
    pub files: Vec<FileEntry>,
    /// What could not be copied, if anything (each one line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Whether a file is a database or a plain file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A SQLite database (restored with an integrity check).
    Sqlite,
    /// Any other file.
    File,
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The service it belongs to.
    pub service: String,
    /// Its path in the backup, `/`-separated, starting with the service's name.
    pub path: String,
    /// Database or plain file.
    pub kind: FileKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// `PRAGMA user_version` of a database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// When it was copied (RFC 3339, UTC).
    pub copied_at: String,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The input (flags, a backup, a target dir) is refused; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A database could not be copied or checked.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What failed.
        #[source]
        source: rusqlite::Error,
    },
}

impl BackupError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> Self {
        Self::Sqlite {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<BackupError> for crate::error::CliError {
    fn from(err: BackupError) -> Self {
        match err {
            BackupError::Refused(message) => Self::Input(message),
            other => Self::Other(anyhow::Error::new(other)),
        }
    }
}

/// Where each service keeps its state: `--data-dir D` means `D/<service>` for each, and a
/// `--<service>-dir` flag names one directly (a k8s volume mounted at `/data`, say).
#[derive(Debug, Clone, Default)]
pub struct StateDirs {
    /// `ghost up`'s data dir.
    pub data_dir: Option<PathBuf>,
    /// The router's own data dir.
    pub router: Option<PathBuf>,
    /// The summarizer's own data dir.
    pub summarizer: Option<PathBuf>,
    /// The alerter's own data dir.
    pub alerter: Option<PathBuf>,
}

impl StateDirs {
    /// (service, its dir, named directly) for every service this names; refuses none.
    pub fn resolve(&self) -> Result<Vec<(Service, PathBuf, bool)>, BackupError> {
        let mut dirs = Vec::new();
        for service in SERVICES {
            let direct = match service.name {
                "router" => &self.router,
                "summarizer" => &self.summarizer,
                _ => &self.alerter,
            };
            if let Some(dir) = direct {
                dirs.push((service, dir.clone(), true));
            } else if let Some(data_dir) = &self.data_dir {
                dirs.push((service, data_dir.join(service.name), false));
            }
        }
        if dirs.is_empty() {
            return Err(BackupError::Refused(
                "no state named: give --data-dir (ghost up's) or --router-dir, \
                 --summarizer-dir, --alerter-dir"
                    .to_owned(),
            ));
        }
        Ok(dirs)
    }
}

/// Where `ghost backup` writes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Exactly this directory (it must not exist, or be empty).
    Exactly(PathBuf),
    /// A new `backup-<UTC time>` directory under this one, keeping the newest `keep` backups
    /// there (all when `None`).
    Under {
        /// The directory of backups.
        root: PathBuf,
        /// How many backups to keep.
        keep: Option<usize>,
    },
}

/// What `ghost backup` did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Services with no state to back up (a `--data-dir` without that sub-dir).
    pub skipped: Vec<String>,
    /// Older backups deleted by `--keep`.
    pub deleted: Vec<PathBuf>,
}

/// The time now, RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Takes a backup of `dirs` into `destination`.
pub fn backup(dirs: &StateDirs, destination: &Destination) -> Result<BackupReport, BackupError> {
    let (present, skipped) = sources(dirs)?;
    let (dir, keep) = match destination {
        Destination::Exactly(dir) => {
            refuse_non_empty(dir)?;
            (dir.clone(), None)
        }
        Destination::Under { root, keep } => {
            create_private_dir(root)?;
            (unused_name(root)?, *keep)
        }
    };
    refuse_inside_sources(&dir, &present)?;
    let staging = partial_name(&dir)?;
    create_private_dir(&staging)?;
    let guard = RemoveOnDrop(Some(staging.clone()));
    let manifest = copy_all(&present, &staging)?;
    if let Destination::Exactly(dir) = destination
        && dir.exists()
    {
        // An empty directory was given: the rename replaces it.
        std::fs::remove_dir(dir).map_err(|err| BackupError::io(dir, err))?;
    }
    std::fs::rename(&staging, &dir).map_err(|err| BackupError::io(&dir, err))?;
    std::mem::forget(guard);
    sync_dir(dir.parent().unwrap_or(Path::new(".")));
    let deleted = match (destination, keep) {
        (Destination::Under { root, .. }, Some(keep)) => prune(root, keep)?,
        _ => Vec::new(),
    };
    Ok(BackupReport {
        dir,
        manifest,
        skipped,
        deleted,
    })
}

/// A service with a database to copy, and its dir.
type Source = (Service, PathBuf);

/// The services with a database to copy, with their dirs, and the names of those skipped (a
/// `--data-dir` without that service's). Refuses a database that is not a regular file, one
/// missing from a dir named directly, and a data dir with no router database.
fn sources(dirs: &StateDirs) -> Result<(Vec<Source>, Vec<String>), BackupError> {
    let mut present = Vec::new();
    let mut skipped = Vec::new();
    for (service, dir, direct) in dirs.resolve()? {
        let database = dir.join(service.database);
        match std::fs::symlink_metadata(&database) {
            Ok(meta) if meta.is_file() => present.push((service, dir)),
            Ok(_) => {
                return Err(BackupError::Refused(format!(
                    "{} is not a regular file",
                    database.display()
                )));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !direct => {
                skipped.push(service.name.to_owned());
            }
            Err(err) => return Err(BackupError::io(&database, err)),
        }
    }
    if !present.iter().any(|(service, _)| service.name == "router")
        && dirs.router.is_none()
        && let Some(data_dir) = &dirs.data_dir
    {
        return Err(BackupError::Refused(format!(
            "{} holds no router/router.db: is it ghost up's data dir?",
            data_dir.display()
        )));
    }
    Ok((present, skipped))
}

/// Copies every present service into `staging` (its database, then its trees, then for the
/// summarizer the summaries the copied index names) and writes the manifest there.
fn copy_all(present: &[Source], staging: &Path) -> Result<Manifest, BackupError> {
    let started_at = now_rfc3339();
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for (service, source) in present {
        let into = staging.join(service.name);
        create_private_dir(&into)?;
        files.push(copy_database(*service, source, &into)?);
        for tree in service.trees {
            let copied = copy_tree(*service, source, staging, tree, &mut warnings)?;
            files.extend(copied);
        }
        if service.name == "summarizer" {
            let more = complete_summaries(source, staging, &mut warnings)?;
            files.extend(more);
        }
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        started_at,
        finished_at: now_rfc3339(),
        ghost_version: env!("CARGO_PKG_VERSION").to_owned(),
        files,
        warnings,
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|err| BackupError::io(staging, std::io::Error::other(err)))?;
    write_synced(&staging.join(MANIFEST), &text)?;
    Ok(manifest)
}

/// Removes a directory tree when dropped (a backup or restore that failed half way).
pub(crate) struct RemoveOnDrop(pub(crate) Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn refuse_non_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::Refused(format!(
                "{} is not empty: a backup goes into a new directory (or use --into ROOT)",
                dir.display()
            ))),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(BackupError::io(dir, err)),
    }
}

/// A backup written inside a service's dir would copy itself (and a restore would nest it).
fn refuse_inside_sources(dir: &Path, sources: &[Source]) -> Result<(), BackupError> {
    // The nearest existing ancestor, resolved, then the rest of the path as given.
    let absolute = std::path::absolute(dir).map_err(|err| BackupError::io(dir, err))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut at = existing
        .canonicalize()
        .map_err(|err| BackupError::io(existing, err))?;
    at.extend(rest.iter().rev());
    for (service, source) in sources {
        let source = source
            .canonicalize()
            .map_err(|err| BackupError::io(source, err))?;
        if at.starts_with(&source) {
            return Err(BackupError::Refused(format!(
                "{} is inside the {} state it would back up ({}): write the backup elsewhere",
                dir.display(),
                service.name,
                source.display()
            )));
        }
    }
    Ok(())
}

/// The hidden sibling a backup is written into before it is renamed to `dir`.
fn partial_name(dir: &Path) -> Result<PathBuf, BackupError> {
    let Some(name) = dir.file_name() else {
        return Err(BackupError::Refused(format!(
            "{} names no directory",
            dir.display()
        )));
    };
    Ok(dir.with_file_name(format!(".{}.partial", name.to_string_lossy())))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| BackupError::io(dir, err))
}

pub(crate) fn create_private_file(path: &Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| BackupError::io(path, err))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut file = create_private_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| BackupError::io(path, err))
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SHA-256 and size of a file, reading at most `limit` bytes (more is an error).
pub(crate) fn hash_file(path: &Path, limit: u64) -> Result<(String, u64), BackupError> {
    let file = std::fs::File::open(path).map_err(|err| BackupError::io(path, err))?;
    let mut hasher = Sha256::new();
    let mut reader = file.take(limit.saturating_add(1));
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|err| BackupError::io(path, err))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
    if size > limit {
        return Err(BackupError::Refused(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok((hex(&hasher.finalize()), size))
}

/// A relative `/`-separated path of plain names (no `..`, `.`, root or empty part).
pub(crate) fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|part| !part.is_empty())
        && Path::new(path)
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        for good in ["router/router.db", "summarizer/summaries/MAIN/summary-a.md"] {
            assert!(safe_relative(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "router/../../x",
            "router//x",
            "./router",
            "router/",
            "a\\b",
        ] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
