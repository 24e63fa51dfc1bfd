//! API keys made at run time (the gateway's `/v1/keys`), in the router's database: one row per
//! key with the SHA-256 of its secret (never the secret), and a version in `meta` bumped by
//! every change in the same transaction, so a gateway holding version N knows it is current.
//! Every change and every refused revocation goes to the token audit trail.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::sqlite::audit_tx;

/// Hashes of revoked keys remembered (the most recent), so an import cannot revive them.
pub const REVOKED_KEPT: i64 = 10_000;
/// Runtime API keys kept at most.
pub const MAX_API_KEYS: usize = 1_000;
/// Targets named by all runtime keys together, at most (a key for every target names none).
/// With [`MAX_API_KEYS`] keys of the longest names this keeps the largest snapshot a gateway
/// receives under 2 MiB, well inside the gateway's decoding limit.
pub const MAX_TOTAL_TARGETS: usize = 10_000;

/// A runtime API key as stored (the SHA-256 of its secret, never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Row id.
    pub id: i64,
    /// Unique.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// `read`, `submit`, `admin`.
    pub scopes: Vec<String>,
    /// The targets it may touch; empty: all.
    pub targets: Vec<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// The key that created it.
    pub created_by: String,
    /// Imported (from a gateway's old keys file), not created here.
    pub imported: bool,
}

/// A key to store (validated by the caller).
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Its name.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its targets; empty: all.
    pub targets: Vec<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
}

/// What became of a creation.
#[derive(Debug, Clone)]
pub enum KeyCreated {
    /// Stored; the version of the set holding it.
    Created(ApiKeyRow, u64),
    /// A key has this name already.
    NameTaken,
    /// [`MAX_API_KEYS`] keys exist already.
    Full,
    /// The key's targets would make this many across all keys, past [`MAX_TOTAL_TARGETS`].
    TooManyTargets(usize),
}

/// Who asks to revoke, and what they may touch.
#[derive(Debug, Clone)]
pub struct Revoker {
    /// Their name, for the audit trail.
    pub actor: String,
    /// The targets they may touch; `None`: all.
    pub targets: Option<Vec<String>>,
}

/// What became of a revocation.
#[derive(Debug, Clone)]
pub enum KeyRevoked {
    /// No key has this name (audited).
    Unknown,
    /// The key has a target the revoker may not touch, or is for every target and the revoker
    /// is limited (audited).
    Wider(ApiKeyRow),
    /// Deleted; the version of the set without it.
    Now(ApiKeyRow, u64),
}

/// What became of an import.
#[derive(Debug, Clone)]
pub enum KeysImported {
    /// (stored now, already stored with the same hash, the version after).
    Done(u32, u32, u64),
    /// These names are taken by keys with another secret: nothing was stored.
    Conflict(Vec<String>),
    /// The import would pass [`MAX_API_KEYS`]: nothing was stored.
    Full(usize),
    /// These keys were revoked (their secret's hash is remembered): nothing was stored.
    Revoked(Vec<String>),
    /// The import would make this many targets across all keys, past [`MAX_TOTAL_TARGETS`]:
    /// nothing was stored.
    TooManyTargets(usize),
}

const KEY_COLUMNS: &str =
    "id, name, sha256, scopes_json, targets_json, created_ms, created_by, imported";

pub(super) fn corrupt(name: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what: "api key",
        id: name.to_owned(),
        source,
    }
}

fn read_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiKeyRow, String, String)> {
    Ok((
        ApiKeyRow {
            id: row.get(0)?,
            name: row.get(1)?,
            sha256: row.get(2)?,
            scopes: Vec::new(),
            targets: Vec::new(),
            created_ms: row.get(5)?,
            created_by: row.get(6)?,
            imported: row.get(7)?,
        },
        row.get(3)?,
        row.get(4)?,
    ))
}

fn decode(
    (mut key, scopes, targets): (ApiKeyRow, String, String),
) -> Result<ApiKeyRow, StoreError> {
    key.scopes = serde_json::from_str(&scopes).map_err(|err| corrupt(&key.name, err))?;
    key.targets = serde_json::from_str(&targets).map_err(|err| corrupt(&key.name, err))?;
    Ok(key)
}

/// The version of the key set.
pub fn version(conn: &Connection) -> Result<u64, StoreError> {
    let value: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'api_keys_version'")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(u64::try_from(value.unwrap_or(0)).unwrap_or(0))
}

fn bump(conn: &Connection) -> Result<u64, StoreError> {
    let value: i64 = conn
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('api_keys_version', 1)
             ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([], |row| row.get(0))?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Every key and the version of exactly that set, read in one transaction (so a change
/// committed meanwhile never labels the old set with its new version).
pub fn snapshot(conn: &Connection) -> Result<(Vec<ApiKeyRow>, u64), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let version = version(&tx)?;
    let keys = all(&tx)?;
    tx.commit()?;
    Ok((keys, version))
}

/// Every key, oldest first.
pub fn all(conn: &Connection) -> Result<Vec<ApiKeyRow>, StoreError> {
    conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))?
        .query_map([], read_key)?
        .map(|raw| decode(raw?))
        .collect()
}

fn by_name(conn: &Connection, name: &str) -> Result<Option<ApiKeyRow>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ?1"
    ))?
    .query_row(params![name], read_key)
    .optional()?
    .map(decode)
    .transpose()
}

fn count(conn: &Connection) -> Result<usize, StoreError> {
    let count: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM api_keys")?
        .query_row([], |row| row.get(0))?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

/// Targets named by all keys together.
fn total_targets(conn: &Connection) -> Result<usize, StoreError> {
    let total: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(json_array_length(targets_json)), 0) FROM api_keys")?
        .query_row([], |row| row.get(0))?;
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

fn insert(conn: &Connection, key: &NewApiKey, imported: bool) -> Result<ApiKeyRow, StoreError> {
    let scopes = serde_json::to_string(&key.scopes).map_err(|err| corrupt(&key.name, err))?;
    let targets = serde_json::to_string(&key.targets).map_err(|err| corrupt(&key.name, err))?;
    conn.prepare_cached(
        "INSERT INTO api_keys (name, sha256, scopes_json, targets_json, created_ms, created_by,
                               imported)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key.name,
        key.sha256,
        scopes,
        targets,
        key.created_ms,
        key.created_by,
        imported
    ])?;
    Ok(ApiKeyRow {
        id: conn.last_insert_rowid(),
        name: key.name.clone(),
        sha256: key.sha256.clone(),
        scopes: key.scopes.clone(),
        targets: key.targets.clone(),
        created_ms: key.created_ms,
        created_by: key.created_by.clone(),
        imported,
    })
}

pub(super) fn detail(key: &ApiKeyRow) -> String {
    format!(
        "scopes={} targets={}",
        key.scopes.join(","),
        key.targets.join(",")
    )
}

/// Stores `key` unless its name or secret is taken or the set is full; audited.
pub fn create_tx(conn: &Connection, key: &NewApiKey) -> Result<KeyCreated, StoreError> {
    let taken: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = ?1 OR sha256 = ?2)")?
        .query_row(params![key.name, key.sha256], |row| row.get(0))?;
    if taken {
        audit_tx(
            conn,
            "api_key.refused",
            0,
            &key.name,
            &key.created_by,
            "name taken",
        )?;
        return Ok(KeyCreated::NameTaken);
    }
    if count(conn)? >= MAX_API_KEYS {
        audit_tx(
            conn,
            "api_key.refused",
            0,
            &key.name,
            &key.created_by,
            "full",
        )?;
        return Ok(KeyCreated::Full);
    }
    let targets = total_targets(conn)?.saturating_add(key.targets.len());
    if targets > MAX_TOTAL_TARGETS {
        audit_tx(
            conn,
            "api_key.refused",
            0,
            &key.name,
            &key.created_by,
            &format!("targets: {targets} across all keys, at most {MAX_TOTAL_TARGETS}"),
        )?;
        return Ok(KeyCreated::TooManyTargets(targets));
    }
    let created = insert(conn, key, false)?;
    let version = bump(conn)?;
    audit_tx(
        conn,
        "api_key.create",
        created.id,
        &created.name,
        &created.created_by,
        &detail(&created),
    )?;
    Ok(KeyCreated::Created(created, version))
}

/// True when a revoker limited to `allowed` may touch every target of `key`.
pub(super) fn covers(allowed: Option<&[String]>, key: &ApiKeyRow) -> bool {
    match allowed {
        None => true,
        Some(allowed) => {
            !key.targets.is_empty() && key.targets.iter().all(|target| allowed.contains(target))
        }
    }
}

/// Deletes the key `name` when `revoker` may; every outcome audited.
pub fn revoke_tx(
    conn: &Connection,
    name: &str,
    revoker: &Revoker,
) -> Result<KeyRevoked, StoreError> {
    let Some(key) = by_name(conn, name)? else {
        audit_tx(
            conn,
            "api_key.refused",
            0,
            name,
            &revoker.actor,
            "revoke: no such key",
        )?;
        return Ok(KeyRevoked::Unknown);
    };
    if !covers(revoker.targets.as_deref(), &key) {
        audit_tx(
            conn,
            "api_key.refused",
            key.id,
            name,
            &revoker.actor,
            "revoke: the key has targets the caller may not touch",
        )?;
        return Ok(KeyRevoked::Wider(key));
    }
    conn.prepare_cached("DELETE FROM api_keys WHERE id = ?1")?
        .execute(params![key.id])?;
    // Remembered (the last REVOKED_KEPT), so no import brings the secret back.
    let tombstone: i64 = conn
        .prepare_cached(
            "INSERT INTO api_keys_revoked (sha256, revoked_ms) VALUES (?1, ?2)
             ON CONFLICT (sha256) DO UPDATE SET revoked_ms = excluded.revoked_ms RETURNING id",
        )?
        .query_row(params![key.sha256, super::now_ms()], |row| row.get(0))?;
    conn.prepare_cached("DELETE FROM api_keys_revoked WHERE id <= ?1")?
        .execute(params![tombstone - REVOKED_KEPT])?;
    let version = bump(conn)?;
    audit_tx(
        conn,
        "api_key.revoke",
        key.id,
        name,
        &revoker.actor,
        &detail(&key),
    )?;
    Ok(KeyRevoked::Now(key, version))
}

/// The keys of an import, sorted by what storing them would do.
struct SortedImport<'a> {
    /// Not stored yet under their name: stored by the import.
    fresh: Vec<&'a NewApiKey>,
    /// Names held by another secret.
    conflicts: Vec<String>,
    /// Stored already with the same name and hash: skipped.
    present: u32,
    /// Secrets revoked before: never stored again.
    revoked: Vec<String>,
}

fn sort_import<'a>(
    conn: &Connection,
    keys: &'a [NewApiKey],
) -> Result<SortedImport<'a>, StoreError> {
    let mut sorted = SortedImport {
        fresh: Vec::new(),
        conflicts: Vec::new(),
        present: 0,
        revoked: Vec::new(),
    };
    for key in keys {
        let was_revoked: bool = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM api_keys_revoked WHERE sha256 = ?1)")?
            .query_row(params![key.sha256], |row| row.get(0))?;
        if was_revoked {
            sorted.revoked.push(key.name.clone());
            continue;
        }
        match by_name(conn, &key.name)? {
            Some(stored) if stored.sha256 == key.sha256 => sorted.present += 1,
            Some(_) => sorted.conflicts.push(key.name.clone()),
            None => sorted.fresh.push(key),
        }
    }
    Ok(sorted)
}

/// Why an import is refused as a whole, with the line its audit row gives, or `None`.
fn import_refusal(
    conn: &Connection,
    sorted: &SortedImport<'_>,
) -> Result<Option<(KeysImported, String)>, StoreError> {
    if !sorted.revoked.is_empty() {
        return Ok(Some((
            KeysImported::Revoked(sorted.revoked.clone()),
            format!("import: revoked keys: {}", sorted.revoked.join(",")),
        )));
    }
    if !sorted.conflicts.is_empty() {
        return Ok(Some((
            KeysImported::Conflict(sorted.conflicts.clone()),
            format!(
                "import: names held by other secrets: {}",
                sorted.conflicts.join(",")
            ),
        )));
    }
    let total = count(conn)? + sorted.fresh.len();
    if total > MAX_API_KEYS {
        return Ok(Some((
            KeysImported::Full(total),
            format!("import: {total} keys, at most {MAX_API_KEYS}"),
        )));
    }
    let targets = sorted.fresh.iter().fold(total_targets(conn)?, |sum, key| {
        sum.saturating_add(key.targets.len())
    });
    Ok((targets > MAX_TOTAL_TARGETS).then(|| {
        (
            KeysImported::TooManyTargets(targets),
            format!("import: {targets} targets across all keys, at most {MAX_TOTAL_TARGETS}"),
        )
    }))
}

/// Stores `keys` (all or none); a key stored already with the same name and hash is skipped.
pub fn import_tx(
    conn: &Connection,
    keys: &[NewApiKey],
    actor: &str,
) -> Result<KeysImported, StoreError> {
    let sorted = sort_import(conn, keys)?;
    if let Some((outcome, why)) = import_refusal(conn, &sorted)? {
        audit_tx(conn, "api_key.refused", 0, "*", actor, &why)?;
        return Ok(outcome);
    }
    for key in &sorted.fresh {
        let stored = insert(conn, key, true)?;
        audit_tx(
            conn,
            "api_key.import",
            stored.id,
            &stored.name,
            actor,
            &detail(&stored),
        )?;
    }
    let version = if sorted.fresh.is_empty() {
        version(conn)?
    } else {
        bump(conn)?
    };
    // Every import call audited, even one that changed nothing.
    audit_tx(
        conn,
        "api_key.import",
        0,
        "*",
        actor,
        &format!(
            "{} imported, {} present already",
            sorted.fresh.len(),
            sorted.present
        ),
    )?;
    Ok(KeysImported::Done(
        u32::try_from(sorted.fresh.len()).unwrap_or(u32::MAX),
        sorted.present,
        version,
    ))
}
