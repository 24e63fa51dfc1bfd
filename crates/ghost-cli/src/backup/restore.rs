//! `ghost restore`: checks a whole backup before it touches anything, then puts each service's
//! files into its data dir.
//!
//! Refused, with nothing changed: a manifest that is missing, too large, not this format, or
//! names a path outside its service (absolute, `..`, a second service's dir); a symlink or a
//! special file anywhere in the backup; a file the manifest does not list, or one it lists that
//! is missing, of another size or another SHA-256; a database failing `PRAGMA
//! integrity_check`; a target dir that is not empty (unless `--force`, which moves what was
//! there into `<dir>/.before-restore-<time>/`, deleting nothing).
//!
//! Files are copied into `<dir>/.restore-staging/` (hashed while copied), the databases checked
//! there, then renamed into place. The services must be stopped while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    BackupError, FORMAT, FileKind, MANIFEST, MAX_FILE_BYTES, MAX_FILES, MAX_MANIFEST_BYTES,
    Manifest, RemoveOnDrop, Service, StateDirs, check_integrity, create_private_dir,
    create_private_file, hex, safe_relative, service, sync_dir,
};

/// The staging dir inside each target dir.
const STAGING: &str = ".restore-staging";
/// What a freshly made ext4 volume holds (root's, not ours to move): an empty volume still.
const LOST_AND_FOUND: &str = "lost+found";

/// What `ghost restore` restores.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup directory.
    pub from: PathBuf,
    /// Where each service's state goes.
    pub dirs: StateDirs,
    /// Restore into non-empty dirs, moving what is there aside.
    pub force: bool,
}

/// What `ghost restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// When the backup was taken.
    pub backup_started_at: String,
    /// Per restored service: its dir, files and bytes, and where its old state went.
    pub services: Vec<RestoredService>,
    /// Services in the backup that no flag named (not restored).
    pub not_restored: Vec<String>,
}

/// One restored service.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredService {
    /// The service.
    pub service: String,
    /// Its data dir.
    pub dir: PathBuf,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// `PRAGMA user_version` of its database.
    pub schema_version: Option<i64>,
    /// Where the dir's earlier contents were moved (`--force`).
    pub moved_aside: Option<PathBuf>,
}

fn refused(message: String) -> BackupError {
    BackupError::Refused(message)
}

/// Checks the backup at `options.from` and restores it; see the module doc.
pub fn restore(options: &RestoreOptions) -> Result<RestoreReport, BackupError> {
    let from = &options.from;
    let manifest = read_manifest(from)?;
    check_manifest(&manifest)?;
    check_tree(from, &manifest)?;
    let in_backup: BTreeSet<&str> = manifest.files.iter().map(|f| f.service.as_str()).collect();
    let targets = targets_in_backup(options, &in_backup)?;
    for (_, dir, _) in &targets {
        check_target(dir, options.force)?;
    }
    let not_restored = in_backup
        .iter()
        .filter(|name| !targets.iter().any(|(svc, _, _)| svc.name == **name))
        .map(|name| (*name).to_owned())
        .collect();
    // Stage every service first: nothing is moved into place unless all of them are good.
    let mut staged = Vec::new();
    let mut guards = Vec::new();
    for (svc, dir, _) in &targets {
        let staging = fresh_staging(dir)?;
        guards.push(RemoveOnDrop(Some(staging.clone())));
        staged.push(stage(from, &manifest, *svc, dir, &staging)?);
    }
    let stamp = super::now_rfc3339().replace(':', "");
    for restored in &mut staged {
        restored.moved_aside = put_in_place(&restored.dir, &stamp)?;
    }
    drop(guards);
    Ok(RestoreReport {
        backup_started_at: manifest.started_at,
        services: staged,
        not_restored,
    })
}

/// The (service, dir, named directly) to restore: those the flags name that the backup holds.
/// Refuses a dir named directly for a service the backup lacks, and a `--data-dir` restore of a
/// backup without the router.
fn targets_in_backup(
    options: &RestoreOptions,
    in_backup: &BTreeSet<&str>,
) -> Result<Vec<(Service, PathBuf, bool)>, BackupError> {
    let targets = options.dirs.resolve()?;
    for (svc, _, direct) in &targets {
        if *direct && !in_backup.contains(svc.name) {
            return Err(refused(format!(
                "the backup holds no {} state (it has: {})",
                svc.name,
                in_backup.iter().copied().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|(svc, _, _)| in_backup.contains(svc.name))
        .collect();
    if !targets.iter().any(|(svc, _, _)| svc.name == "router") && options.dirs.data_dir.is_some() {
        return Err(refused(
            "the backup holds no router state: not a backup of ghost up's data dir".to_owned(),
        ));
    }
    Ok(targets)
}

/// `dir` (created) with an empty staging dir in it: one a restore left when interrupted is
/// removed first (its files are not in use).
fn fresh_staging(dir: &Path) -> Result<PathBuf, BackupError> {
    create_private_dir(dir)?;
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|err| BackupError::io(&staging, err))?;
    }
    create_private_dir(&staging)?;
    Ok(staging)
}

/// Copies `svc`'s files of the backup into `staging`, each checked against its size and
/// SHA-256, its database by `PRAGMA integrity_check`.
fn stage(
    from: &Path,
    manifest: &Manifest,
    svc: Service,
    dir: &Path,
    staging: &Path,
) -> Result<RestoredService, BackupError> {
    let mut files = 0usize;
    let mut bytes = 0u64;
    let mut schema_version = None;
    let prefix = format!("{}/", svc.name);
    for entry in manifest.files.iter().filter(|f| f.service == svc.name) {
        let inside = entry.path.strip_prefix(&prefix).unwrap_or(&entry.path);
        let to = staging.join(inside);
        if let Some(parent) = to.parent() {
            create_private_dir(parent)?;
        }
        copy_checked(&from.join(&entry.path), &to, entry.size, &entry.sha256)?;
        if entry.kind == FileKind::Sqlite {
            schema_version = check_database(&to, entry.schema_version)?;
        }
        files += 1;
        bytes += entry.size;
    }
    Ok(RestoredService {
        service: svc.name.to_owned(),
        dir: dir.to_owned(),
        files,
        bytes,
        schema_version,
        moved_aside: None,
    })
}

/// Moves what `dir` holds into `.before-restore-<stamp>/` (made only when there is something),
/// then the staged files into `dir`; where the old files went.
fn put_in_place(dir: &Path, stamp: &str) -> Result<Option<PathBuf>, BackupError> {
    let staging = dir.join(STAGING);
    let aside = dir.join(format!(".before-restore-{stamp}"));
    let mut moved = false;
    for entry in std::fs::read_dir(dir).map_err(|err| BackupError::io(dir, err))? {
        let entry = entry.map_err(|err| BackupError::io(dir, err))?;
        let name = entry.file_name();
        if name == STAGING
            || name == LOST_AND_FOUND
            || name.to_string_lossy().starts_with(".before-restore-")
        {
            continue;
        }
        if !moved {
            create_private_dir(&aside)?;
            moved = true;
        }
        std::fs::rename(entry.path(), aside.join(&name))
            .map_err(|err| BackupError::io(&entry.path(), err))?;
    }
    for entry in std::fs::read_dir(&staging).map_err(|err| BackupError::io(&staging, err))? {
        let entry = entry.map_err(|err| BackupError::io(&staging, err))?;
        std::fs::rename(entry.path(), dir.join(entry.file_name()))
            .map_err(|err| BackupError::io(&entry.path(), err))?;
    }
    sync_dir(dir);
    Ok(moved.then_some(aside))
}

fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let meta = std::fs::symlink_metadata(from).map_err(|err| BackupError::io(from, err))?;
    if !meta.is_dir() {
        return Err(refused(format!(
            "{} is not a directory (a backup is one, not a symlink)",
            from.display()
        )));
    }
    let path = from.join(MANIFEST);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(format!(
                "{} has no {MANIFEST}: not a ghost backup (or an unfinished one)",
                from.display()
            )));
        }
        Err(err) => return Err(BackupError::io(&path, err)),
    };
    if !meta.is_file() {
        return Err(refused(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(refused(format!(
            "{} is {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may be",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read(&path).map_err(|err| BackupError::io(&path, err))?;
    serde_json::from_slice(&text).map_err(|err| {
        refused(format!(
            "{} is not a backup manifest: {err}",
            path.display()
        ))
    })
}

/// Every path plain and inside its service's dir, each listed once, sizes within bounds, and
/// exactly one database per service.
fn check_manifest(manifest: &Manifest) -> Result<(), BackupError> {
    if manifest.format != FORMAT {
        return Err(refused(format!(
            "manifest format {:?} is not {FORMAT:?}: written by another version of ghost?",
            manifest.format
        )));
    }
    if manifest.files.len() > MAX_FILES {
        return Err(refused(format!(
            "the manifest lists {} files, more than {MAX_FILES}",
            manifest.files.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut databases = BTreeMap::new();
    for entry in &manifest.files {
        let Some(svc) = service(&entry.service) else {
            return Err(refused(format!(
                "manifest: {:?} is not a service with state (router, summarizer, alerter)",
                entry.service
            )));
        };
        let inside = entry
            .path
            .strip_prefix(&format!("{}/", svc.name))
            .unwrap_or("");
        if !safe_relative(&entry.path) || !safe_relative(inside) {
            return Err(refused(format!(
                "manifest: path {:?} is not a plain relative path under {}/",
                entry.path, svc.name
            )));
        }
        if inside == super::restore::STAGING
            || inside.starts_with(&format!("{STAGING}/"))
            || inside.starts_with(".before-restore-")
        {
            return Err(refused(format!(
                "manifest: path {:?} uses a name restore reserves",
                entry.path
            )));
        }
        if !seen.insert(entry.path.as_str()) {
            return Err(refused(format!(
                "manifest: {:?} is listed twice",
                entry.path
            )));
        }
        if entry.size > MAX_FILE_BYTES {
            return Err(refused(format!(
                "manifest: {} is {} bytes, more than the {MAX_FILE_BYTES} a file may be",
                entry.path, entry.size
            )));
        }
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refused(format!(
                "manifest: {}: sha256 {:?} is not 64 hex digits",
                entry.path, entry.sha256
            )));
        }
        let is_database = inside == svc.database;
        if is_database != (entry.kind == FileKind::Sqlite) {
            return Err(refused(format!(
                "manifest: {} is listed as {:?}, but only {}/{} is the database",
                entry.path, entry.kind, svc.name, svc.database
            )));
        }
        if is_database {
            databases.insert(svc.name, ());
        }
    }
    let services: BTreeSet<&str> = manifest.files.iter().map(|f| f.service.as_str()).collect();
    for name in services {
        if !databases.contains_key(name) {
            return Err(refused(format!(
                "manifest: the {name} files come without {name}'s database"
            )));
        }
    }
    Ok(())
}

/// The backup holds exactly the manifest's files (and directories), nothing else: no symlink,
/// no special file, no unlisted file; each listed one with its size.
fn check_tree(from: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let listed: BTreeMap<&str, u64> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.size))
        .collect();
    let mut found = 0usize;
    let mut pending = vec![PathBuf::new()];
    let mut visited = 0usize;
    while let Some(relative) = pending.pop() {
        let dir = from.join(&relative);
        for entry in std::fs::read_dir(&dir).map_err(|err| BackupError::io(&dir, err))? {
            visited += 1;
            if visited > MAX_FILES * 2 {
                return Err(refused(format!(
                    "{} holds more than {} entries",
                    from.display(),
                    MAX_FILES * 2
                )));
            }
            let entry = entry.map_err(|err| BackupError::io(&dir, err))?;
            let name = relative.join(entry.file_name());
            let path = from.join(&name);
            let meta =
                std::fs::symlink_metadata(&path).map_err(|err| BackupError::io(&path, err))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(refused(format!(
                    "{} is a symlink: a backup holds only plain files",
                    path.display()
                )));
            }
            if kind.is_dir() {
                pending.push(name);
                continue;
            }
            if !kind.is_file() {
                return Err(refused(format!("{} is not a regular file", path.display())));
            }
            let text = name.to_string_lossy();
            if text == MANIFEST {
                continue;
            }
            let Some(size) = listed.get(text.as_ref()) else {
                return Err(refused(format!(
                    "{} is not in the manifest: the backup was changed after it was taken",
                    path.display()
                )));
            };
            if meta.len() != *size {
                return Err(refused(format!(
                    "{} is {} bytes, the manifest says {size}: the backup is damaged",
                    path.display(),
                    meta.len()
                )));
            }
            found += 1;
        }
    }
    if found != listed.len() {
        let missing = manifest
            .files
            .iter()
            .find(|f| !from.join(&f.path).is_file())
            .map(|f| f.path.clone())
            .unwrap_or_default();
        return Err(refused(format!(
            "{} lacks {missing}, which the manifest lists: the backup is incomplete",
            from.display()
        )));
    }
    Ok(())
}

/// Refuses a non-empty target dir without `--force`, and any target that is not a directory.
fn check_target(dir: &Path, force: bool) -> Result<(), BackupError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(refused(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(BackupError::io(dir, err)),
    }
    let first = std::fs::read_dir(dir)
        .map_err(|err| BackupError::io(dir, err))?
        .flatten()
        .find(|entry| entry.file_name() != STAGING && entry.file_name() != LOST_AND_FOUND);
    match first {
        Some(entry) if !force => Err(refused(format!(
            "{} is not empty (it holds {}): restore into a fresh dir, or give --force to move \
             what is there into {}/.before-restore-<time>/",
            dir.display(),
            entry.file_name().to_string_lossy(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Copies `from` to `to` (new, 0600), refusing it unless it is a regular file of exactly `size`
/// bytes whose SHA-256 is `sha256`.
fn copy_checked(from: &Path, to: &Path, size: u64, sha256: &str) -> Result<(), BackupError> {
    let source = std::fs::File::open(from).map_err(|err| BackupError::io(from, err))?;
    let meta = source
        .metadata()
        .map_err(|err| BackupError::io(from, err))?;
    if !meta.is_file() || meta.len() != size {
        return Err(refused(format!(
            "{} changed while it was read: the backup is damaged",
            from.display()
        )));
    }
    let mut target = create_private_file(to)?;
    let mut hasher = Sha256::new();
    let mut reader = source.take(size.saturating_add(1));
    let mut buffer = vec![0u8; 1 << 16];
    let mut copied = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|err| BackupError::io(from, err))?;
        if read == 0 {
            break;
        }
        copied += read as u64;
        hasher.update(&buffer[..read]);
        target
            .write_all(&buffer[..read])
            .map_err(|err| BackupError::io(to, err))?;
    }
    let actual = hex(&hasher.finalize());
    if copied != size || !actual.eq_ignore_ascii_case(sha256) {
        return Err(refused(format!(
            "{}: sha256 {actual} ({copied} bytes), the manifest says {sha256} ({size} bytes): \
             the backup is damaged",
            from.display()
        )));
    }
    target.sync_all().map_err(|err| BackupError::io(to, err))
}

/// `PRAGMA integrity_check` of a restored database, and its schema version as the manifest says.
fn check_database(path: &Path, expected: Option<i64>) -> Result<Option<i64>, BackupError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| BackupError::sqlite(path, err))?;
    check_integrity(&conn, path).map_err(|err| match err {
        BackupError::Sqlite { source, .. } => refused(format!(
            "{}: not a readable SQLite database ({source})",
            path.display()
        )),
        other => other,
    })?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|err| BackupError::sqlite(path, err))?;
    if expected.is_some_and(|expected| expected != version) {
        return Err(refused(format!(
            "{}: schema version {version}, the manifest says {}",
            path.display(),
            expected.unwrap_or_default()
        )));
    }
    Ok(Some(version))
}
