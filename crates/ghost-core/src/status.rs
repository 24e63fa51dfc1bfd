//! Patch lifecycle states (see DESIGN.md, "Lifecycle").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a patch is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted by the gateway, not yet stored.
    Received,
    /// Stored and waiting for an executor.
    Queued,
    /// Assigned to an executor under a lease.
    Leased,
    /// The executor is editing files.
    Applying,
    /// The executor is running commands and checks.
    Validating,
    /// Applied and validated.
    Succeeded,
    /// Failed and left as `on_failure: keep` asked.
    Failed,
    /// Failed and the workspace was restored.
    RolledBack,
    /// Cancelled before or while running.
    Cancelled,
    /// Ran past its deadline (and was rolled back).
    TimedOut,
    /// Refused by the executor before any write (policy, confinement, unsupported).
    Rejected,
    /// The executor vanished and the retries are spent.
    Lost,
    /// The executor crashed mid-apply and rolled back on restart.
    Interrupted,
}

/// A status string that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown patch status {0:?}")]
pub struct UnknownStatus(pub String);

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 13] = [
        Self::Received,
        Self::Queued,
        Self::Leased,
        Self::Applying,
        Self::Validating,
        Self::Succeeded,
        Self::Failed,
        Self::RolledBack,
        Self::Cancelled,
        Self::TimedOut,
        Self::Rejected,
        Self::Lost,
        Self::Interrupted,
    ];

    /// The snake_case name used in APIs, storage and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Applying => "applying",
            Self::Validating => "validating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Rejected => "rejected",
            Self::Lost => "lost",
            Self::Interrupted => "interrupted",
        }
    }

    /// True once the patch will not change state again (short of a retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::Failed
                | Self::RolledBack
                | Self::Cancelled
                | Self::TimedOut
                | Self::Rejected
                | Self::Lost
                | Self::Interrupted
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == raw)
            .ok_or_else(|| UnknownStatus(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn only_end_states_are_terminal() {
        assert!(!Status::Queued.is_terminal());
        assert!(!Status::Applying.is_terminal());
        assert!(Status::Succeeded.is_terminal());
        assert!(Status::Lost.is_terminal());
    }
}
