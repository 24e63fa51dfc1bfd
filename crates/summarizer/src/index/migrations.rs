//! Versioned schema migrations of the index, one list for both stores: migration N is applied
//! once, in order, and recorded in `schema_migrations`. A database whose newest version is
//! above the last one this binary knows was written by a newer summarizer: it is refused
//! rather than written with an older idea of its tables.
//!
//! Version 1 is the schema as it was before versioning (`CREATE … IF NOT EXISTS`), so an
//! SQLite index from an older release is adopted as version 1 without change.

use crate::error::SummarizerError;

/// The PostgreSQL schema (namespace) holding the summarizer's tables: every connection's
/// `search_path`, created before the first migration, so the three stateful services can share
/// one database without their tables (`schema_migrations`, `outbox`, ...) meeting.
pub const SCHEMA: &str = "summarizer";

/// The table that records the versions applied (the same in both dialects).
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     BIGINT PRIMARY KEY,
    name        TEXT NOT NULL
)";

/// Which SQL a migration is wanted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded SQLite index.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    /// Its number, from 1, without gaps.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Migration {
    /// Its SQL in `dialect` (a batch of statements).
    pub fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "summaries, attempts, outbox, changelog, webhook outbox",
        sqlite: concat!(
            include_str!("schema/v1_index.sqlite.sql"),
            include_str!("schema/v1_webhooks.sqlite.sql")
        ),
        postgres: include_str!("schema/v1.postgres.sql"),
    },
    Migration {
        version: 2,
        name: "outbox claims (claimed_by, claim_until) for replicas on one database",
        sqlite: include_str!("schema/v2_claims.sql"),
        postgres: include_str!("schema/v2_claims.sql"),
    },
];

/// The migrations to apply to a database at `current` (0: none applied), or an error when
/// it is newer than this binary.
pub fn pending(current: i64) -> Result<&'static [Migration], SummarizerError> {
    let known = MIGRATIONS.last().map_or(0, |migration| migration.version);
    if current > known {
        return Err(SummarizerError::Store(format!(
            "the summary index is at schema version {current}, newer than this summarizer \
             knows (up to {known}); run the newer summarizer or restore a backup"
        )));
    }
    let from = usize::try_from(current).unwrap_or(0);
    Ok(MIGRATIONS.get(from..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_from_one_without_gaps_and_newer_databases_are_refused() {
        for (position, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i64::try_from(position).unwrap() + 1);
        }
        assert_eq!(pending(0).unwrap().len(), MIGRATIONS.len());
        assert!(
            pending(i64::try_from(MIGRATIONS.len()).unwrap())
                .unwrap()
                .is_empty()
        );
        let err = pending(99).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
