//! A service's SQLite database in a backup: copied with the online backup API as of one commit
//! while the service keeps writing, then checked with `PRAGMA integrity_check` (restore checks
//! each again before it is put back).

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{
    BackupError, FileEntry, FileKind, MAX_FILE_BYTES, Service, create_private_file, hash_file,
    now_rfc3339,
};

/// Copies `service`'s database from `source` into `into` with the online backup API.
pub(super) fn copy_database(
    service: Service,
    source: &Path,
    into: &Path,
) -> Result<FileEntry, BackupError> {
    let from_path = source.join(service.database);
    let to_path = into.join(service.database);
    // Read-write without create: a WAL reader may need to create the -shm file, and a missing
    // database must be an error, not a new empty one.
    let from = Connection::open_with_flags(
        &from_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| BackupError::sqlite(&from_path, err))?;
    from.busy_timeout(Duration::from_secs(5))
        .map_err(|err| BackupError::sqlite(&from_path, err))?;
    drop(create_private_file(&to_path)?);
    let mut to = Connection::open(&to_path).map_err(|err| BackupError::sqlite(&to_path, err))?;
    {
        let copy = Backup::new(&from, &mut to).map_err(|err| BackupError::sqlite(&to_path, err))?;
        // All pages in one step: one read transaction on the source, so the copy is one
        // commit's database; writers (WAL) are not blocked. Busy only while a writer holds a
        // rollback-journal lock: retried for at most 30 s.
        let mut tries = 0u32;
        loop {
            match copy
                .step(-1)
                .map_err(|err| BackupError::sqlite(&from_path, err))?
            {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked if tries < 300 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    return Err(BackupError::Refused(format!(
                        "{} stayed locked for 30 s: no consistent copy could be taken",
                        from_path.display()
                    )));
                }
            }
        }
    }
    drop(from);
    // The copy is one self-contained file: no -wal beside it.
    to.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|err| BackupError::sqlite(&to_path, err))?;
    check_integrity(&to, &to_path)?;
    let schema_version: i64 = to
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|err| BackupError::sqlite(&to_path, err))?;
    to.close()
        .map_err(|(_, err)| BackupError::sqlite(&to_path, err))?;
    let (sha256, size) = hash_file(&to_path, MAX_FILE_BYTES)?;
    Ok(FileEntry {
        service: service.name.to_owned(),
        path: format!("{}/{}", service.name, service.database),
        kind: FileKind::Sqlite,
        size,
        sha256,
        schema_version: Some(schema_version),
        copied_at: now_rfc3339(),
    })
}

/// `PRAGMA integrity_check` answers `ok`.
pub(super) fn check_integrity(conn: &Connection, path: &Path) -> Result<(), BackupError> {
    let answer: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|err| BackupError::sqlite(path, err))?;
    if answer == "ok" {
        Ok(())
    } else {
        Err(BackupError::Refused(format!(
            "{}: integrity check failed: {answer}",
            path.display()
        )))
    }
}
