//! Per-executor tokens in the SQLite store and their bounded audit trail (shared with the
//! runtime API keys).

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{exec, row};
use crate::store::{NewToken, Revoked, StoreError, TokenRow, now_ms};

pub(super) const TOKEN_COLUMNS: &str =
    "id, name, targets_json, created_ms, created_by, revoked_ms, last_used_ms";

pub(super) fn read_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, String)> {
    Ok((
        TokenRow {
            id: row.get(0)?,
            name: row.get(1)?,
            targets: Vec::new(),
            created_ms: row.get(3)?,
            created_by: row.get(4)?,
            revoked_ms: row.get(5)?,
            last_used_ms: row.get(6)?,
        },
        row.get(2)?,
    ))
}

pub(super) fn decode_token(
    (mut token, targets_json): (TokenRow, String),
) -> Result<TokenRow, StoreError> {
    token.targets = serde_json::from_str(&targets_json).map_err(|source| StoreError::Corrupt {
        what: "token targets",
        id: token.name.clone(),
        source,
    })?;
    Ok(token)
}

/// Audit rows kept of each kind (refusals; everything else): older ones of the same kind are
/// deleted as new ones arrive, so a flood of refusals never pushes out the record of what was
/// created, revoked or imported.
pub const AUDIT_KEEP_ROWS: i64 = 10_000;
/// Audit rows older than this (90 days, in ms) are deleted as new ones arrive.
pub(in crate::store) const AUDIT_KEEP_MS: i64 = 90 * 24 * 3600 * 1000;

pub(in crate::store) fn audit_tx(
    conn: &Connection,
    action: &str,
    token_id: i64,
    name: &str,
    actor: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let id: i64 = row(
        conn,
        "INSERT INTO token_audit (at_ms, action, token_id, name, actor, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![now, action, token_id, name, actor, detail],
        |row| row.get(0),
    )?;
    // Bounded retention: the last AUDIT_KEEP_ROWS rows of the same kind (refusals or not),
    // none older than AUDIT_KEEP_MS.
    let refusal = action.ends_with("refused");
    exec(
        conn,
        "DELETE FROM token_audit WHERE at_ms < ?1 OR id IN (
             SELECT id FROM token_audit WHERE id < ?2 AND (action LIKE '%refused') = ?3
             ORDER BY id DESC LIMIT -1 OFFSET ?4)",
        params![now - AUDIT_KEEP_MS, id, refusal, AUDIT_KEEP_ROWS - 1],
    )?;
    Ok(())
}

pub(super) fn token_where(
    conn: &Connection,
    clause: &str,
    key: &str,
) -> Result<Option<TokenRow>, StoreError> {
    let found = row(
        conn,
        &format!("SELECT {TOKEN_COLUMNS} FROM executor_tokens WHERE {clause}"),
        params![key],
        read_token,
    )
    .optional()?;
    found.map(decode_token).transpose()
}

/// The body of [`RouterStore::create_token`](crate::store::RouterStore::create_token), run in one write.
pub(super) fn create_token(
    conn: &Connection,
    token: NewToken,
) -> Result<Option<TokenRow>, StoreError> {
    let targets = serde_json::to_string(&token.targets).map_err(|source| StoreError::Corrupt {
        what: "token targets",
        id: token.name.clone(),
        source,
    })?;
    let inserted = exec(
        conn,
        "INSERT OR IGNORE INTO executor_tokens (name, hash, targets_json, created_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token.name, token.hash, targets, now_ms(), token.actor],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    let created = token_where(conn, "hash = ?1", &token.hash)?;
    let token_id = created.as_ref().map_or(0, |row| row.id);
    audit_tx(
        conn,
        "create",
        token_id,
        &token.name,
        &token.actor,
        &token.targets.join(","),
    )?;
    Ok(created)
}

/// The body of [`RouterStore::tokens`](crate::store::RouterStore::tokens), run in the read connection.
pub(super) fn tokens(conn: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM executor_tokens ORDER BY id"
    ))?
    .query_map([], read_token)?
    .map(|raw| decode_token(raw?))
    .collect()
}

/// The body of [`RouterStore::any_token`](crate::store::RouterStore::any_token), run in the read connection.
pub(super) fn any_token(conn: &Connection) -> Result<bool, StoreError> {
    Ok(row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM executor_tokens)",
        [],
        |row| row.get(0),
    )?)
}

/// The body of [`RouterStore::revoke_token`](crate::store::RouterStore::revoke_token), run in one write.
pub(super) fn revoke_token(
    conn: &Connection,
    name: String,
    actor: String,
) -> Result<Revoked, StoreError> {
    let now = now_ms();
    let revoked = exec(
        conn,
        "UPDATE executor_tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms = 0",
        params![name, now],
    )?;
    if revoked == 0 {
        return Ok(
            match token_where(conn, "name = ?1 ORDER BY id DESC LIMIT 1", &name)? {
                Some(_) => Revoked::Already,
                None => Revoked::Unknown,
            },
        );
    }
    let Some(token) = token_where(conn, "name = ?1 ORDER BY id DESC LIMIT 1", &name)? else {
        return Ok(Revoked::Unknown);
    };
    audit_tx(conn, "revoke", token.id, &name, &actor, "")?;
    Ok(Revoked::Now(token))
}

/// The body of [`RouterStore::token_used`](crate::store::RouterStore::token_used), run in one write.
pub(super) fn token_used(conn: &Connection, id: i64, at_ms: i64) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE executor_tokens SET last_used_ms = ?2 WHERE id = ?1",
        params![id, at_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RouterStore, SqliteStore};

    #[test]
    fn the_token_audit_keeps_the_last_rows_and_none_older_than_90_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("router.db");
        let store = SqliteStore::open(&path).expect("store");
        {
            let mut conn = Connection::open(&path).expect("open");
            let tx = conn.transaction().expect("tx");
            let now = now_ms();
            // One row older than 90 days, then a full trail of recent ones.
            tx.execute(
                "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'refused', 'old', 'x')",
                params![now - AUDIT_KEEP_MS - 1],
            )
            .expect("old row");
            for _ in 0..AUDIT_KEEP_ROWS {
                tx.execute(
                    "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'refused', 'recent', 'x')",
                    params![now],
                )
                .expect("row");
            }
            tx.commit().expect("commit");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(store.audit_token(
                "refused".to_owned(),
                7,
                "newest".to_owned(),
                "x".to_owned(),
                String::new(),
            ))
            .expect("audit");
        let conn = Connection::open(&path).expect("open");
        let (count, old, newest): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), SUM(name = 'old'), SUM(name = 'newest' AND token_id = 7)
                 FROM token_audit",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("count");
        assert_eq!(count, AUDIT_KEEP_ROWS);
        assert_eq!(old, 0);
        assert_eq!(newest, 1);
    }

    #[test]
    fn a_flood_of_refusals_never_pushes_out_the_record_of_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("router.db");
        let store = SqliteStore::open(&path).expect("store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let audit = |action: &str, name: &str| {
            runtime
                .block_on(store.audit_token(
                    action.to_owned(),
                    0,
                    name.to_owned(),
                    "x".to_owned(),
                    String::new(),
                ))
                .expect("audit");
        };
        audit("api_key.create", "made");
        audit("issue", "token");
        {
            let mut conn = Connection::open(&path).expect("open");
            let tx = conn.transaction().expect("tx");
            for _ in 0..AUDIT_KEEP_ROWS {
                tx.execute(
                    "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'api_key.refused', 'flood', 'x')",
                    params![now_ms()],
                )
                .expect("row");
            }
            tx.commit().expect("commit");
        }
        audit("api_key.refused", "newest");
        audit("refused", "newest-token");
        let conn = Connection::open(&path).expect("open");
        let (refusals, changes, newest): (i64, i64, i64) = conn
            .query_row(
                "SELECT SUM(action LIKE '%refused'), SUM(name IN ('made', 'token')),
                        SUM(name LIKE 'newest%')
                 FROM token_audit",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("count");
        assert_eq!(refusals, AUDIT_KEEP_ROWS);
        assert_eq!(changes, 2, "the changes are kept");
        assert_eq!(newest, 2);
    }
}
