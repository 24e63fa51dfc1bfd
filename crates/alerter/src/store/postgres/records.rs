//! Alert states, silences and the audit log on PostgreSQL.

use sqlx::Row as _;

use super::PgStore;
use crate::store::{AuditEntry, Silence, StoreError};

impl PgStore {
    /// Saves one alert's state (its JSON text); `active` false once resolved.
    pub async fn save_alert(
        &self,
        key: &str,
        state: String,
        active: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alerts (key, state, active) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET state = excluded.state, active = excluded.active",
        )
        .bind(key)
        .bind(state)
        .bind(active)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The keys and stored states (JSON text) of all active alerts, by key.
    pub async fn active_alerts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT key, state FROM alerts WHERE active ORDER BY key")
            .fetch_all(&self.pool)
            .await?;
        let states = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(states)
    }

    /// Stores a silence; returns it with its id.
    pub async fn add_silence(
        &self,
        matcher: String,
        until_ms: i64,
        created_by: String,
        now_ms: i64,
    ) -> Result<Silence, StoreError> {
        let id: i64 = sqlx::query(
            "INSERT INTO silences (matcher, until_ms, created_by, created_ms)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&matcher)
        .bind(until_ms)
        .bind(&created_by)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(Silence {
            id,
            matcher,
            until_ms,
            created_by,
        })
    }

    /// Ends silence `id`; false when there is no such active silence.
    pub async fn remove_silence(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE silences SET removed = TRUE WHERE id = $1 AND NOT removed")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Silences not removed and not yet over at `now_ms`.
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<Silence>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, matcher, until_ms, created_by FROM silences
             WHERE NOT removed AND until_ms > $1 ORDER BY id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let silences = rows
            .iter()
            .map(|row| {
                Ok(Silence {
                    id: row.try_get(0)?,
                    matcher: row.try_get(1)?,
                    until_ms: row.try_get(2)?,
                    created_by: row.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(silences)
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at_ms, user_id, user_name, channel_id, source, verb, args, allowed,
                                outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(entry.at_ms)
        .bind(entry.user_id)
        .bind(entry.user_name)
        .bind(entry.channel_id)
        .bind(entry.source)
        .bind(entry.verb)
        .bind(entry.args)
        .bind(entry.allowed)
        .bind(entry.outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, user_id, user_name, channel_id, source, verb, args, allowed, outcome
             FROM audit ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    at_ms: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    user_name: row.try_get(2)?,
                    channel_id: row.try_get(3)?,
                    source: row.try_get(4)?,
                    verb: row.try_get(5)?,
                    args: row.try_get(6)?,
                    allowed: row.try_get(7)?,
                    outcome: row.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(entries)
    }
}
