//! Alert states, silences and the audit log on SQLite.

use rusqlite::params;

use super::SqliteStore;
use crate::store::{AuditEntry, Silence, StoreError};

impl SqliteStore {
    /// Saves one alert's state (its JSON text); `active` false once resolved.
    pub async fn save_alert(
        &self,
        key: &str,
        state: String,
        active: bool,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO alerts (key, state, active) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET state = excluded.state, active = excluded.active",
                params![key, state, active],
            )?;
            Ok(())
        })
        .await
    }

    /// The keys and stored states (JSON text) of all active alerts, by key.
    pub async fn active_alerts(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with_tx(|conn| {
            let mut statement =
                conn.prepare("SELECT key, state FROM alerts WHERE active = 1 ORDER BY key")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Stores a silence; returns it with its id.
    pub async fn add_silence(
        &self,
        matcher: String,
        until_ms: i64,
        created_by: String,
        now_ms: i64,
    ) -> Result<Silence, StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO silences (matcher, until_ms, created_by, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![matcher, until_ms, created_by, now_ms],
            )?;
            Ok(Silence {
                id: conn.last_insert_rowid(),
                matcher,
                until_ms,
                created_by,
            })
        })
        .await
    }

    /// Ends silence `id`; false when there is no such active silence.
    pub async fn remove_silence(&self, id: i64) -> Result<bool, StoreError> {
        self.with_tx(move |conn| {
            Ok(conn.execute(
                "UPDATE silences SET removed = 1 WHERE id = ?1 AND removed = 0",
                params![id],
            )? == 1)
        })
        .await
    }

    /// Silences not removed and not yet over at `now_ms`.
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<Silence>, StoreError> {
        self.with_tx(move |conn| {
            let mut statement = conn.prepare(
                "SELECT id, matcher, until_ms, created_by FROM silences
                 WHERE removed = 0 AND until_ms > ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![now_ms], |row| {
                Ok(Silence {
                    id: row.get(0)?,
                    matcher: row.get(1)?,
                    until_ms: row.get(2)?,
                    created_by: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO audit (at_ms, user_id, user_name, channel_id, source, verb, args, allowed, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    entry.at_ms,
                    entry.user_id,
                    entry.user_name,
                    entry.channel_id,
                    entry.source,
                    entry.verb,
                    entry.args,
                    entry.allowed,
                    entry.outcome
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_tx(|conn| {
            let mut statement = conn.prepare(
                "SELECT at_ms, user_id, user_name, channel_id, source, verb, args, allowed, outcome
                 FROM audit ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(AuditEntry {
                    at_ms: row.get(0)?,
                    user_id: row.get(1)?,
                    user_name: row.get(2)?,
                    channel_id: row.get(3)?,
                    source: row.get(4)?,
                    verb: row.get(5)?,
                    args: row.get(6)?,
                    allowed: row.get(7)?,
                    outcome: row.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
