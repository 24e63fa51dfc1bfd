//! [`AlertState`]: one system alert as the lifecycle keeps it and the store holds it (as JSON
//! text in `alerts.state`, the format since the first version: no migration), with its
//! [`Severity`], [`Phase`] and [`Ack`]. Reading a stored state back is typed too: a state
//! this alerter cannot read is [`StoreError::UnreadableAlert`], naming the alert, never a
//! default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Someone should look.
    Warning,
    /// Someone must act now.
    Critical,
}

impl Severity {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Raised, waiting for its group window (or a silence) before it is posted.
    Pending,
    /// Posted and still firing.
    Firing,
    /// Over.
    Resolved,
}

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Slack user id (or another actor name).
    pub by: String,
    /// Unix ms.
    pub at_ms: i64,
}

/// One alert's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Dedup key.
    pub key: String,
    /// The key up to its first `/`: alerts of one group share a message.
    pub group: String,
    /// How bad.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Who raised it.
    pub source: String,
    /// When it was raised here (Unix ms).
    pub raised_ms: i64,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its Slack thread key, once posted.
    pub thread: Option<String>,
    /// When it was first posted.
    pub notified_ms: Option<i64>,
    /// When it was last posted or repeated.
    pub last_notified_ms: i64,
    /// Set once acknowledged.
    pub ack: Option<Ack>,
    /// True once escalated.
    pub escalated: bool,
    /// When it was resolved.
    pub resolved_ms: Option<i64>,
}

impl AlertState {
    /// True until resolved: the store lists it among the active alerts.
    pub fn is_active(&self) -> bool {
        self.phase != Phase::Resolved
    }

    /// The stored text of this state.
    pub(crate) fn to_stored(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(StoreError::Corrupt)
    }

    /// Reads back the stored state of alert `key`: a clear error, naming the alert, when
    /// this alerter cannot read it (an unknown phase or severity, a field missing).
    pub(crate) fn from_stored(key: &str, text: &str) -> Result<Self, StoreError> {
        serde_json::from_str(text).map_err(|err| StoreError::UnreadableAlert {
            key: key.to_owned(),
            reason: err.to_string(),
        })
    }
}
