//! Exit codes of `ghost`: one table, so scripts can branch on an outcome without parsing text.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `submit`, the patch succeeded |
//! | 1 | an unexpected error (I/O, an answer `ghost` does not understand) |
//! | 2 | bad command line (clap's usage error) |
//! | 3 | the patch failed and its workspace was kept (`on_failure: keep`) |
//! | 4 | the patch failed and its workspace was rolled back |
//! | 5 | the patch was cancelled |
//! | 6 | the patch ran past its deadline (and was rolled back) |
//! | 7 | the executor rejected the patch before any write (policy, confinement) |
//! | 8 | the patch was lost (executor vanished, retries spent) or interrupted |
//! | 10 | input refused: invalid or unreadable patch or config file, a bad filter, a conflict |
//! | 11 | authentication or permission refused (401, 403) |
//! | 12 | no such patch, target or route (404) |
//! | 13 | the gateway is unreachable or unavailable (connection failed, 429, 503) |
//! | 14 | `submit` stopped waiting (`--wait-s`) while the patch still runs |

use ghost_core::Status;

/// Every exit code `ghost` uses; see the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; the patch succeeded.
    Success,
    /// 1: unexpected error.
    Error,
    /// 2: usage error (clap reports these itself).
    Usage,
    /// 3: the patch failed, workspace kept.
    Failed,
    /// 4: the patch failed, workspace restored.
    RolledBack,
    /// 5: cancelled.
    Cancelled,
    /// 6: past its deadline.
    TimedOut,
    /// 7: refused by the executor before any write.
    Rejected,
    /// 8: lost or interrupted.
    Lost,
    /// 10: the input was refused.
    Refused,
    /// 11: not authenticated or not allowed.
    Auth,
    /// 12: not found.
    NotFound,
    /// 13: the gateway cannot be reached or is unavailable.
    Unavailable,
    /// 14: gave up waiting for the patch to end.
    WaitExpired,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Error => 1,
            Self::Usage => 2,
            Self::Failed => 3,
            Self::RolledBack => 4,
            Self::Cancelled => 5,
            Self::TimedOut => 6,
            Self::Rejected => 7,
            Self::Lost => 8,
            Self::Refused => 10,
            Self::Auth => 11,
            Self::NotFound => 12,
            Self::Unavailable => 13,
            Self::WaitExpired => 14,
        }
    }

    /// The exit of a patch that ended in `status` (a non-terminal status means `submit`
    /// stopped waiting).
    pub fn for_status(status: Status) -> Self {
        match status {
            Status::Succeeded => Self::Success,
            Status::Failed => Self::Failed,
            Status::RolledBack => Self::RolledBack,
            Status::Cancelled => Self::Cancelled,
            Status::TimedOut => Self::TimedOut,
            Status::Rejected => Self::Rejected,
            Status::Lost | Status::Interrupted => Self::Lost,
            Status::Received
            | Status::Queued
            | Status::Leased
            | Status::Applying
            | Status::Validating => Self::WaitExpired,
        }
    }

    /// The exit for an HTTP error status from the gateway.
    pub fn for_http(status: u16) -> Self {
        match status {
            401 | 403 => Self::Auth,
            404 => Self::NotFound,
            429 | 502..=504 => Self::Unavailable,
            400..=499 => Self::Refused,
            _ => Self::Error,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// The table above as text, for `ghost --help`.
pub const TABLE: &str = "Exit codes:
  0  success; for submit, the patch succeeded
  1  unexpected error
  2  bad command line
  3  patch failed, workspace kept (on_failure: keep)
  4  patch failed, workspace rolled back
  5  patch cancelled
  6  patch timed out
  7  patch rejected by the executor before any write
  8  patch lost or interrupted
 10  input refused (invalid patch or config file, bad filter, conflict)
 11  authentication or permission refused (401/403)
 12  not found (404)
 13  gateway unreachable or unavailable (connection failed, 429, 503)
 14  submit stopped waiting while the patch still runs";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_terminal_status_has_its_own_non_zero_code_except_success() {
        let mut seen = std::collections::BTreeMap::new();
        for status in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            let code = Exit::for_status(status).code();
            if status == Status::Succeeded {
                assert_eq!(code, 0);
            } else {
                assert_ne!(code, 0, "{status}");
            }
            seen.entry(code).or_insert_with(Vec::new).push(status);
        }
        // Only lost and interrupted share a code (both: the executor went away).
        for (code, statuses) in seen {
            assert!(
                statuses.len() == 1 || statuses == [Status::Lost, Status::Interrupted],
                "{code}: {statuses:?}"
            );
        }
    }

    #[test]
    fn table_lists_every_code() {
        for exit in [
            Exit::Success,
            Exit::Error,
            Exit::Usage,
            Exit::Failed,
            Exit::RolledBack,
            Exit::Cancelled,
            Exit::TimedOut,
            Exit::Rejected,
            Exit::Lost,
            Exit::Refused,
            Exit::Auth,
            Exit::NotFound,
            Exit::Unavailable,
            Exit::WaitExpired,
        ] {
            let line = format!("{:>3}  ", exit.code());
            assert!(TABLE.contains(&line), "{exit:?} missing from the table");
        }
    }

    #[test]
    fn http_statuses_map_to_classes() {
        assert_eq!(Exit::for_http(401), Exit::Auth);
        assert_eq!(Exit::for_http(422), Exit::Refused);
        assert_eq!(Exit::for_http(409), Exit::Refused);
        assert_eq!(Exit::for_http(404), Exit::NotFound);
        assert_eq!(Exit::for_http(503), Exit::Unavailable);
        assert_eq!(Exit::for_http(500), Exit::Error);
    }
}
