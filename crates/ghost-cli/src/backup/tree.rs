//! The plain files that belong with a database (the summarizer's summaries): copied after it,
//! and checked against it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::{
    BackupError, FileEntry, FileKind, MAX_FILE_BYTES, Service, create_private_dir,
    create_private_file, hex, now_rfc3339, safe_relative, service,
};

/// Copies the regular files under `source/tree` to `staging/<service>/tree`, skipping files
/// already there (a second pass); symlinks and special files are not copied (a warning each).
pub(super) fn copy_tree(
    service: Service,
    source: &Path,
    staging: &Path,
    tree: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<FileEntry>, BackupError> {
    let mut copied = Vec::new();
    let mut pending = vec![PathBuf::from(tree)];
    while let Some(relative) = pending.pop() {
        let from_dir = source.join(&relative);
        let entries = match std::fs::read_dir(&from_dir) {
            Ok(entries) => entries,
            // Moved by the archiver since it was listed: its files are found where they went.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(BackupError::io(&from_dir, err)),
        };
        create_private_dir(&staging.join(service.name).join(&relative))?;
        for entry in entries {
            let entry = entry.map_err(|err| BackupError::io(&from_dir, err))?;
            let name = relative.join(entry.file_name());
            let Some(name_text) = name.to_str().map(str::to_owned) else {
                warnings.push(format!(
                    "{}: not copied: the name is not UTF-8",
                    source.join(&name).display()
                ));
                continue;
            };
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(BackupError::io(&source.join(&name), err)),
            };
            if kind.is_dir() {
                pending.push(name);
                continue;
            }
            if !kind.is_file() {
                warnings.push(format!(
                    "{}: not copied: not a regular file",
                    source.join(&name).display()
                ));
                continue;
            }
            let to = staging.join(service.name).join(&name);
            if to.exists() {
                continue;
            }
            match copy_file(&source.join(&name), &to) {
                Ok((sha256, size)) => copied.push(FileEntry {
                    service: service.name.to_owned(),
                    path: format!("{}/{name_text}", service.name),
                    kind: FileKind::File,
                    size,
                    sha256,
                    schema_version: None,
                    copied_at: now_rfc3339(),
                }),
                // A temporary file renamed into place, or a summary moved by the archiver.
                Err(BackupError::Io { source: err, .. })
                    if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(copied)
}

/// Copies one file, hashing what it writes; refuses one over [`MAX_FILE_BYTES`].
fn copy_file(from: &Path, to: &Path) -> Result<(String, u64), BackupError> {
    let source = std::fs::File::open(from).map_err(|err| BackupError::io(from, err))?;
    let mut target = create_private_file(to)?;
    let mut hasher = Sha256::new();
    let mut reader = source.take(MAX_FILE_BYTES + 1);
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|err| BackupError::io(from, err))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        if size > MAX_FILE_BYTES {
            return Err(BackupError::Refused(format!(
                "{} is larger than {MAX_FILE_BYTES} bytes",
                from.display()
            )));
        }
        hasher.update(&buffer[..read]);
        target
            .write_all(&buffer[..read])
            .map_err(|err| BackupError::io(to, err))?;
    }
    target.sync_all().map_err(|err| BackupError::io(to, err))?;
    Ok((hex(&hasher.finalize()), size))
}

/// Every summary the copied index names has its Markdown in the backup: an archive move may
/// have carried a file past the walk, so the tree is walked again (at most 3 times); what is
/// still missing becomes a warning.
pub(super) fn complete_summaries(
    source: &Path,
    staging: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<FileEntry>, BackupError> {
    let Some(summarizer) = service("summarizer") else {
        return Ok(Vec::new());
    };
    let index_path = staging.join("summarizer").join(summarizer.database);
    let rows: Vec<(String, String)> = {
        let index = Connection::open_with_flags(&index_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|err| BackupError::sqlite(&index_path, err))?;
        let mut statement = index
            .prepare("SELECT patch_id, dir FROM summaries")
            .map_err(|err| BackupError::sqlite(&index_path, err))?;
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|err| BackupError::sqlite(&index_path, err))?
    };
    let root = staging.join("summarizer");
    let missing = |rows: &[(String, String)]| -> Vec<String> {
        rows.iter()
            .filter(|(id, dir)| {
                let file = format!("summary-{id}.md");
                !safe_relative(dir) || !found_under_target(&root, dir, &file)
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut more = Vec::new();
    for _ in 0..3 {
        if missing(&rows).is_empty() {
            return Ok(more);
        }
        let mut ignored = Vec::new();
        more.extend(copy_tree(
            summarizer,
            source,
            staging,
            "summaries",
            &mut ignored,
        )?);
    }
    for id in missing(&rows) {
        warnings.push(format!(
            "summary of {id}: its files were not found (deleted by the summarizer's retention \
             while the backup ran?)"
        ));
    }
    Ok(more)
}

/// `dir/file`, or the file in any `.archive/*` of the same target.
fn found_under_target(root: &Path, dir: &str, file: &str) -> bool {
    if root.join(dir).join(file).is_file() {
        return true;
    }
    let mut parts = dir.split('/');
    let (Some("summaries"), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let archive = root.join("summaries").join(target).join(".archive");
    std::fs::read_dir(archive)
        .into_iter()
        .flatten()
        .flatten()
        .any(|month| month.path().join(file).is_file())
}
