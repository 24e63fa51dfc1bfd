//! Versioned schema migrations of the alerter's database, one list for both backends:
//! migration N is applied once, in order, and recorded in `schema_migrations`. A database
//! whose newest version is above the last one this binary knows was written by a newer
//! alerter: it is refused rather than written with an older idea of its tables.
//!
//! Version 1 is the schema as it was before versioning (`CREATE … IF NOT EXISTS`), so an
//! SQLite file from an older release is adopted as version 1 without change (plus the
//! `priority` column the oldest files lack, see `sqlite::migrate`).

use super::StoreError;

/// The PostgreSQL schema (namespace) holding the alerter's tables: every connection's
/// `search_path`, created before the first migration, so the three stateful services can share
/// one database without their tables (`schema_migrations`, `outbox`, ...) meeting.
pub const SCHEMA: &str = "alerter";

pub use ghost_runtime::migrations::{Dialect, Migration, TABLE};

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox, threads, digests, alerts, silences, audit (and leases on postgres)",
        sqlite: include_str!("schema/v1.sqlite.sql"),
        postgres: include_str!("schema/v1.postgres.sql"),
    },
    Migration {
        version: 2,
        name: "outbox indexes by thread and by channel",
        sqlite: include_str!("schema/v2.sqlite.sql"),
        postgres: include_str!("schema/v2.postgres.sql"),
    },
];

/// The migrations to apply to a database at `current` (0: none applied), or an error when
/// it is newer than this binary.
pub fn pending(current: i64) -> Result<&'static [Migration], StoreError> {
    ghost_runtime::migrations::pending(MIGRATIONS, current, "alerter database", "alerter")
        .map_err(StoreError::Open)
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
