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

pub use ghost_runtime::migrations::{Dialect, Migration, TABLE};

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
    ghost_runtime::migrations::pending(MIGRATIONS, current, "summary index", "summarizer")
        .map_err(SummarizerError::Store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_from_one_without_gaps_and_newer_databases_are_refused() {
        ghost_runtime::migrations::assert_contiguous(MIGRATIONS);
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
