//! Versioned migrations of the PostgreSQL store: version N is applied once, in order, and
//! recorded in `schema_migrations`, by one replica at a time (an advisory lock); a database
//! newer than this binary is refused.

use sqlx::{PgPool, Row as _};

use super::keys;
use crate::store::StoreError;

/// Taken by the replica that migrates; the others wait, then find it done.
const MIGRATION_LOCK: i64 = 7_368_011;

/// The migrations, oldest first: version N is applied once, in order, and recorded in
/// `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "patches, events, attempts, outboxes, alerts; tokens, api keys, gateway state",
        &[include_str!("schema/v1_core.sql"), keys::SCHEMA],
    ),
    (
        2,
        "outbox claims name their replica",
        &[include_str!("schema/v2_claimed_by.sql")],
    ),
];

/// The PostgreSQL schema (namespace) holding the router's tables: every connection's
/// `search_path`, created by the first migration, so the three stateful services can share one
/// database without their tables (`schema_migrations`, `outbox`, ...) meeting.
pub const SCHEMA: &str = "router";

/// Applies the migrations not yet recorded, under an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS router")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             name    TEXT NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    let current = current.unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if current > known {
        return Err(StoreError::Commit(format!(
            "the router's database is at schema version {current}, newer than this router \
             knows (up to {known}); run the newer router or restore a backup"
        )));
    }
    for (version, name, parts) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        for part in parts.iter().filter(|part| !part.trim().is_empty()) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*part))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "router schema migrated (postgres)");
    }
    tx.commit().await?;
    Ok(())
}
