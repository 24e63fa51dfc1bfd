//! Executor tokens, their audit trail and the runtime API keys on PostgreSQL: the same tables,
//! rows and answers as the SQLite store (`store::sqlite` token methods, `store::api_keys`), each
//! change in one transaction.
//!
//! SQLite runs every write on one writer thread; here several replicas write at once, so a
//! check-then-write is made safe by the database: a token is inserted only when no live token
//! has its name (`INSERT … WHERE NOT EXISTS`, with the unique indexes behind it), and every
//! change to the key set first takes `LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE` (it
//! conflicts with itself, not with readers), so the limits hold across replicas and versions
//! are bumped in order. Every query is a constant string; every value is a bind.
//!
//! About 610 lines, one thing: the PostgreSQL half of the token and API-key stores, kept in the
//! order of its SQLite counterparts so the two are read side by side and change together.

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Row as _, Transaction};

use super::super::api_keys::{
    ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, MAX_API_KEYS, MAX_TOTAL_TARGETS, NewApiKey,
    REVOKED_KEPT, Revoker, corrupt, covers, detail,
};
use super::super::sqlite::{AUDIT_KEEP_MS, AUDIT_KEEP_ROWS};
use super::super::{NewToken, Revoked, StoreError, TokenRow, now_ms};

/// The DDL of the tables used here (part of migration 1, after the core tables).
pub const SCHEMA: &str = include_str!("schema/v1_keys.sql");

/// The columns of a token, in [`token_row`]'s order.
macro_rules! token_columns {
    () => {
        "id, name, targets_json, created_ms, created_by, revoked_ms, last_used_ms"
    };
}

/// The columns of an API key, in [`key_row`]'s order.
macro_rules! key_columns {
    () => {
        "id, name, sha256, scopes_json, targets_json, created_ms, created_by, imported"
    };
}

/// Serialises every change to the key set (count, target total, version) across replicas.
const LOCK_KEYS: &str = "LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE";

fn usize_of(value: i64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn token_row(row: &PgRow) -> Result<TokenRow, StoreError> {
    let name: String = row.try_get(1)?;
    let targets_json: String = row.try_get(2)?;
    let targets = serde_json::from_str(&targets_json).map_err(|source| StoreError::Corrupt {
        what: "token targets",
        id: name.clone(),
        source,
    })?;
    Ok(TokenRow {
        id: row.try_get(0)?,
        name,
        targets,
        created_ms: row.try_get(3)?,
        created_by: row.try_get(4)?,
        revoked_ms: row.try_get(5)?,
        last_used_ms: row.try_get(6)?,
    })
}

fn key_row(row: &PgRow) -> Result<ApiKeyRow, StoreError> {
    let name: String = row.try_get(1)?;
    let scopes: String = row.try_get(3)?;
    let targets: String = row.try_get(4)?;
    Ok(ApiKeyRow {
        id: row.try_get(0)?,
        sha256: row.try_get(2)?,
        scopes: serde_json::from_str(&scopes).map_err(|err| corrupt(&name, err))?,
        targets: serde_json::from_str(&targets).map_err(|err| corrupt(&name, err))?,
        created_ms: row.try_get(5)?,
        created_by: row.try_get(6)?,
        imported: row.try_get(7)?,
        name,
    })
}

/// Appends to the token audit trail on `conn` and trims it as SQLite does: the last
/// [`AUDIT_KEEP_ROWS`] rows of the same kind (refusals or not), none older than
/// [`AUDIT_KEEP_MS`].
async fn audit_on(
    conn: &mut PgConnection,
    action: &str,
    token_id: i64,
    name: &str,
    actor: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let id: i64 = sqlx::query(
        "INSERT INTO token_audit (at_ms, action, token_id, name, actor, detail)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(now)
    .bind(action)
    .bind(token_id)
    .bind(name)
    .bind(actor)
    .bind(detail)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    sqlx::query(
        "DELETE FROM token_audit WHERE at_ms < $1 OR id IN (
             SELECT id FROM token_audit WHERE id < $2 AND (action LIKE '%refused') = $3
             ORDER BY id DESC OFFSET $4)",
    )
    .bind(now - AUDIT_KEEP_MS)
    .bind(id)
    .bind(action.ends_with("refused"))
    .bind(AUDIT_KEEP_ROWS - 1)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Audits a refused change to the key set about no stored key.
async fn refuse(
    conn: &mut PgConnection,
    name: &str,
    actor: &str,
    why: &str,
) -> Result<(), StoreError> {
    audit_on(conn, "api_key.refused", 0, name, actor, why).await
}

/// See [`RouterStore::create_token`](super::super::RouterStore::create_token).
pub async fn create_token(pool: &PgPool, token: NewToken) -> Result<Option<TokenRow>, StoreError> {
    let targets = serde_json::to_string(&token.targets).map_err(|source| StoreError::Corrupt {
        what: "token targets",
        id: token.name.clone(),
        source,
    })?;
    let mut tx = pool.begin().await?;
    // The unique indexes (hash; name among live tokens) decide, also between two replicas
    // racing. A refused insert spends an id, as SQLite's `INSERT OR IGNORE` does.
    let created = sqlx::query(concat!(
        "INSERT INTO executor_tokens (name, hash, targets_json, created_ms, created_by)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING ",
        token_columns!()
    ))
    .bind(&token.name)
    .bind(&token.hash)
    .bind(&targets)
    .bind(now_ms())
    .bind(&token.actor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created) = created.as_ref().map(token_row).transpose()? else {
        return Ok(None);
    };
    let targets = token.targets.join(",");
    audit_on(
        &mut tx,
        "create",
        created.id,
        &token.name,
        &token.actor,
        &targets,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(created))
}

/// See [`RouterStore::tokens`](super::super::RouterStore::tokens).
pub async fn tokens(pool: &PgPool) -> Result<Vec<TokenRow>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM executor_tokens ORDER BY id"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(token_row)
    .collect()
}

/// See [`RouterStore::token_by_hash`](super::super::RouterStore::token_by_hash).
pub async fn token_by_hash(pool: &PgPool, hash: String) -> Result<Option<TokenRow>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM executor_tokens WHERE hash = $1"
    ))
    .bind(hash)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(token_row)
    .transpose()
}

/// See [`RouterStore::any_token`](super::super::RouterStore::any_token).
pub async fn any_token(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT EXISTS (SELECT 1 FROM executor_tokens)")
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

/// See [`RouterStore::revoke_token`](super::super::RouterStore::revoke_token).
pub async fn revoke_token(
    pool: &PgPool,
    name: String,
    actor: String,
) -> Result<Revoked, StoreError> {
    let mut tx = pool.begin().await?;
    // A concurrent revocation holds the row until it commits; this one then finds it revoked.
    let revoked = sqlx::query(concat!(
        "UPDATE executor_tokens SET revoked_ms = $2 WHERE name = $1 AND revoked_ms = 0
         RETURNING ",
        token_columns!()
    ))
    .bind(&name)
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(token) = revoked.as_ref().map(token_row).transpose()? else {
        let known: bool =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM executor_tokens WHERE name = $1)")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        return Ok(if known {
            Revoked::Already
        } else {
            Revoked::Unknown
        });
    };
    audit_on(&mut tx, "revoke", token.id, &name, &actor, "").await?;
    tx.commit().await?;
    Ok(Revoked::Now(token))
}

/// See [`RouterStore::token_used`](super::super::RouterStore::token_used).
pub async fn token_used(pool: &PgPool, id: i64, at_ms: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE executor_tokens SET last_used_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(at_ms)
        .execute(pool)
        .await?;
    Ok(())
}

/// See [`RouterStore::audit_token`](super::super::RouterStore::audit_token).
pub async fn audit_token(
    pool: &PgPool,
    action: String,
    token_id: i64,
    name: String,
    actor: String,
    detail: String,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    audit_on(&mut tx, &action, token_id, &name, &actor, &detail).await?;
    tx.commit().await?;
    Ok(())
}

/// The version of the key set (0 before any change). `value` is read as BIGINT whatever width
/// the core schema gave `meta.value`.
async fn version_on(conn: &mut PgConnection) -> Result<u64, StoreError> {
    let value: Option<i64> =
        sqlx::query("SELECT value::bigint FROM meta WHERE key = 'api_keys_version'")
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
    Ok(u64::try_from(value.unwrap_or(0)).unwrap_or(0))
}

async fn bump_on(conn: &mut PgConnection) -> Result<u64, StoreError> {
    let value: i64 = sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('api_keys_version', 1)
         ON CONFLICT (key) DO UPDATE SET value = meta.value + 1 RETURNING value::bigint",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(u64::try_from(value).unwrap_or(0))
}

async fn key_count_on(conn: &mut PgConnection) -> Result<usize, StoreError> {
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    Ok(usize_of(count))
}

/// Targets named by all keys together.
async fn total_targets_on(conn: &mut PgConnection) -> Result<usize, StoreError> {
    let total: i64 = sqlx::query(
        "SELECT COALESCE(SUM(json_array_length(targets_json::json)), 0)::bigint FROM api_keys",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(usize_of(total))
}

async fn key_by_name_on(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<ApiKeyRow>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(key_row)
    .transpose()
}

async fn insert_key_on(
    conn: &mut PgConnection,
    key: &NewApiKey,
    imported: bool,
) -> Result<ApiKeyRow, StoreError> {
    let scopes = serde_json::to_string(&key.scopes).map_err(|err| corrupt(&key.name, err))?;
    let targets = serde_json::to_string(&key.targets).map_err(|err| corrupt(&key.name, err))?;
    let id: i64 = sqlx::query(
        "INSERT INTO api_keys (name, sha256, scopes_json, targets_json, created_ms, created_by,
                               imported)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&key.name)
    .bind(&key.sha256)
    .bind(scopes)
    .bind(targets)
    .bind(key.created_ms)
    .bind(&key.created_by)
    .bind(imported)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(ApiKeyRow {
        id,
        name: key.name.clone(),
        sha256: key.sha256.clone(),
        scopes: key.scopes.clone(),
        targets: key.targets.clone(),
        created_ms: key.created_ms,
        created_by: key.created_by.clone(),
        imported,
    })
}

/// A transaction holding the key set's lock.
async fn begin_keys(pool: &PgPool) -> Result<Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_KEYS).execute(&mut *tx).await?;
    Ok(tx)
}

/// See [`RouterStore::create_api_key`](super::super::RouterStore::create_api_key).
pub async fn create_api_key(pool: &PgPool, key: NewApiKey) -> Result<KeyCreated, StoreError> {
    let mut tx = begin_keys(pool).await?;
    let taken: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = $1 OR sha256 = $2)")
            .bind(&key.name)
            .bind(&key.sha256)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
    let refused = if taken {
        Some((KeyCreated::NameTaken, "name taken".to_owned()))
    } else if key_count_on(&mut tx).await? >= MAX_API_KEYS {
        Some((KeyCreated::Full, "full".to_owned()))
    } else {
        let targets = total_targets_on(&mut tx)
            .await?
            .saturating_add(key.targets.len());
        (targets > MAX_TOTAL_TARGETS).then(|| {
            (
                KeyCreated::TooManyTargets(targets),
                format!("targets: {targets} across all keys, at most {MAX_TOTAL_TARGETS}"),
            )
        })
    };
    if let Some((outcome, why)) = refused {
        refuse(&mut tx, &key.name, &key.created_by, &why).await?;
        tx.commit().await?;
        return Ok(outcome);
    }
    let created = insert_key_on(&mut tx, &key, false).await?;
    let version = bump_on(&mut tx).await?;
    let what = detail(&created);
    audit_on(
        &mut tx,
        "api_key.create",
        created.id,
        &created.name,
        &created.created_by,
        &what,
    )
    .await?;
    tx.commit().await?;
    Ok(KeyCreated::Created(created, version))
}

/// See [`RouterStore::api_keys`](super::super::RouterStore::api_keys): every key and the
/// version of exactly that set, read from one snapshot.
pub async fn api_keys(pool: &PgPool) -> Result<(Vec<ApiKeyRow>, u64), StoreError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let version = version_on(&mut tx).await?;
    let keys = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys ORDER BY id"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(key_row)
    .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    Ok((keys, version))
}

/// See [`RouterStore::revoke_api_key`](super::super::RouterStore::revoke_api_key).
pub async fn revoke_api_key(
    pool: &PgPool,
    name: String,
    revoker: Revoker,
) -> Result<KeyRevoked, StoreError> {
    let mut tx = begin_keys(pool).await?;
    let Some(key) = key_by_name_on(&mut tx, &name).await? else {
        refuse(&mut tx, &name, &revoker.actor, "revoke: no such key").await?;
        tx.commit().await?;
        return Ok(KeyRevoked::Unknown);
    };
    if !covers(revoker.targets.as_deref(), &key) {
        let why = "revoke: the key has targets the caller may not touch";
        audit_on(
            &mut tx,
            "api_key.refused",
            key.id,
            &name,
            &revoker.actor,
            why,
        )
        .await?;
        tx.commit().await?;
        return Ok(KeyRevoked::Wider(key));
    }
    sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(key.id)
        .execute(&mut *tx)
        .await?;
    let tombstone = remember_revoked_on(&mut tx, &key.sha256).await?;
    sqlx::query("DELETE FROM api_keys_revoked WHERE id <= $1")
        .bind(tombstone - REVOKED_KEPT)
        .execute(&mut *tx)
        .await?;
    let version = bump_on(&mut tx).await?;
    let what = detail(&key);
    audit_on(
        &mut tx,
        "api_key.revoke",
        key.id,
        &name,
        &revoker.actor,
        &what,
    )
    .await?;
    tx.commit().await?;
    Ok(KeyRevoked::Now(key, version))
}

/// Remembers a revoked key's hash (the last [`REVOKED_KEPT`]), so no import brings the secret
/// back; its row id. A hash revoked again keeps its id, as on SQLite (an upsert here would
/// spend an identity value and leave gaps); the caller holds the key set's lock.
async fn remember_revoked_on(conn: &mut PgConnection, sha256: &str) -> Result<i64, StoreError> {
    let now = now_ms();
    let updated =
        sqlx::query("UPDATE api_keys_revoked SET revoked_ms = $2 WHERE sha256 = $1 RETURNING id")
            .bind(sha256)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
    let row =
        match updated {
            Some(row) => row,
            None => sqlx::query(
                "INSERT INTO api_keys_revoked (sha256, revoked_ms) VALUES ($1, $2) RETURNING id",
            )
            .bind(sha256)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?,
        };
    Ok(row.try_get(0)?)
}

/// The keys of an import sorted as SQLite sorts them: (new ones, names held by other secrets,
/// already stored, revoked).
async fn sort_import_on<'k>(
    conn: &mut PgConnection,
    keys: &'k [NewApiKey],
) -> Result<(Vec<&'k NewApiKey>, Vec<String>, u32, Vec<String>), StoreError> {
    let mut fresh = Vec::new();
    let mut conflicts = Vec::new();
    let mut present = 0u32;
    let mut revoked = Vec::new();
    for key in keys {
        let was_revoked: bool =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM api_keys_revoked WHERE sha256 = $1)")
                .bind(&key.sha256)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        if was_revoked {
            revoked.push(key.name.clone());
            continue;
        }
        match key_by_name_on(conn, &key.name).await? {
            Some(stored) if stored.sha256 == key.sha256 => present += 1,
            Some(_) => conflicts.push(key.name.clone()),
            None => fresh.push(key),
        }
    }
    Ok((fresh, conflicts, present, revoked))
}

/// Why an import of `fresh` keys is refused as a whole, if it is.
async fn import_refusal_on(
    conn: &mut PgConnection,
    fresh: &[&NewApiKey],
    conflicts: Vec<String>,
    revoked: Vec<String>,
) -> Result<Option<(KeysImported, String)>, StoreError> {
    if !revoked.is_empty() {
        let why = format!("import: revoked keys: {}", revoked.join(","));
        return Ok(Some((KeysImported::Revoked(revoked), why)));
    }
    if !conflicts.is_empty() {
        let why = format!(
            "import: names held by other secrets: {}",
            conflicts.join(",")
        );
        return Ok(Some((KeysImported::Conflict(conflicts), why)));
    }
    let total = key_count_on(conn).await? + fresh.len();
    if total > MAX_API_KEYS {
        let why = format!("import: {total} keys, at most {MAX_API_KEYS}");
        return Ok(Some((KeysImported::Full(total), why)));
    }
    let targets = fresh
        .iter()
        .fold(total_targets_on(conn).await?, |sum, key| {
            sum.saturating_add(key.targets.len())
        });
    if targets > MAX_TOTAL_TARGETS {
        let why = format!("import: {targets} targets across all keys, at most {MAX_TOTAL_TARGETS}");
        return Ok(Some((KeysImported::TooManyTargets(targets), why)));
    }
    Ok(None)
}

/// See [`RouterStore::import_api_keys`](super::super::RouterStore::import_api_keys): all or
/// none; a key stored already with the same name and hash is skipped.
pub async fn import_api_keys(
    pool: &PgPool,
    keys: Vec<NewApiKey>,
    actor: String,
) -> Result<KeysImported, StoreError> {
    let mut tx = begin_keys(pool).await?;
    let (fresh, conflicts, present, revoked) = sort_import_on(&mut tx, &keys).await?;
    if let Some((outcome, why)) = import_refusal_on(&mut tx, &fresh, conflicts, revoked).await? {
        refuse(&mut tx, "*", &actor, &why).await?;
        tx.commit().await?;
        return Ok(outcome);
    }
    for key in &fresh {
        let stored = insert_key_on(&mut tx, key, true).await?;
        let what = detail(&stored);
        audit_on(
            &mut tx,
            "api_key.import",
            stored.id,
            &stored.name,
            &actor,
            &what,
        )
        .await?;
    }
    let version = if fresh.is_empty() {
        version_on(&mut tx).await?
    } else {
        bump_on(&mut tx).await?
    };
    // Every import call audited, even one that changed nothing.
    let summary = format!("{} imported, {present} present already", fresh.len());
    audit_on(&mut tx, "api_key.import", 0, "*", &actor, &summary).await?;
    tx.commit().await?;
    Ok(KeysImported::Done(
        u32::try_from(fresh.len()).unwrap_or(u32::MAX),
        present,
        version,
    ))
}

#[cfg(test)]
pub(super) mod tests;
