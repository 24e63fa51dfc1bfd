//! Versioned schema migrations, the shape the stateful services share: each keeps one list for
//! both of its stores (SQLite and PostgreSQL); migration N is applied once, in order, and
//! recorded in `schema_migrations`. A database whose newest version is above the last one the
//! binary knows was written by a newer release: it is refused rather than written with an older
//! idea of its tables. Applying them stays with each store (its own connection and transaction).

/// The table that records the versions applied (the same in both dialects).
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     BIGINT PRIMARY KEY,
    name        TEXT NOT NULL
)";

/// Which SQL a migration is wanted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded SQLite store.
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
    /// Its SQL for SQLite (a batch of statements).
    pub sqlite: &'static str,
    /// Its SQL for PostgreSQL.
    pub postgres: &'static str,
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

/// The migrations of `all` (oldest first) to apply to a database at `current` (0: none
/// applied), or, when the database is newer than `all` knows, why not: `the <what> is at schema
/// version N, newer than this <service> knows (up to M); …`.
pub fn pending<'a>(
    all: &'a [Migration],
    current: i64,
    what: &str,
    service: &str,
) -> Result<&'a [Migration], String> {
    let known = all.last().map_or(0, |migration| migration.version);
    if current > known {
        return Err(format!(
            "the {what} is at schema version {current}, newer than this {service} knows (up to \
             {known}); run the newer {service} or restore a backup"
        ));
    }
    let from = usize::try_from(current).unwrap_or(0);
    Ok(all.get(from..).unwrap_or_default())
}

/// Checks that `all` counts from 1 without gaps (a test helper for each service's list).
pub fn assert_contiguous(all: &[Migration]) {
    for (position, migration) in all.iter().enumerate() {
        assert_eq!(
            migration.version,
            i64::try_from(position).unwrap_or(i64::MAX) + 1,
            "migration {} is out of place",
            migration.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[Migration] = &[
        Migration {
            version: 1,
            name: "first",
            sqlite: "a",
            postgres: "b",
        },
        Migration {
            version: 2,
            name: "second",
            sqlite: "c",
            postgres: "d",
        },
    ];

    #[test]
    fn pending_is_what_follows_the_current_version_and_a_newer_database_is_refused() {
        assert_contiguous(TWO);
        assert_eq!(pending(TWO, 0, "x", "y").unwrap().len(), 2);
        assert_eq!(
            pending(TWO, 1, "x", "y").unwrap()[0].sql(Dialect::Postgres),
            "d"
        );
        assert!(pending(TWO, 2, "x", "y").unwrap().is_empty());
        let err = pending(TWO, 99, "summary index", "summarizer").unwrap_err();
        assert!(
            err.contains("the summary index is at schema version 99")
                && err.contains("run the newer summarizer"),
            "{err}"
        );
    }
}
