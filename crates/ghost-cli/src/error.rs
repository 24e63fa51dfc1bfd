//! Why a `ghost` command failed: one enum, with its single mapping to an exit code and to the
//! `hint:` line printed under the error.

use crate::client::ClientError;
use crate::exit::Exit;

/// A failed `ghost` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A call to the gateway failed.
    #[error(transparent)]
    Gateway(#[from] ClientError),
    /// A patch or config file could not be read or is invalid.
    #[error("{0}")]
    Input(String),
    /// `ghost`'s own settings (flags, env, its config file) are unusable.
    #[error("{0}")]
    Settings(String),
    /// Anything else (I/O, a service failing to start under `ghost up`).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Gateway(ClientError::Unreachable { .. }) => Exit::Unavailable,
            Self::Gateway(ClientError::Refused(problem)) => Exit::for_http(problem.status),
            Self::Gateway(ClientError::BadUrl { .. }) | Self::Settings(_) => Exit::Usage,
            Self::Gateway(ClientError::Malformed { .. }) | Self::Other(_) => Exit::Error,
            Self::Input(_) => Exit::Refused,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Gateway(ClientError::Unreachable { url, .. }) => Some(format!(
                "is `ghost up` running? GHOST_URL={url} (set GHOST_URL or --url to point elsewhere)"
            )),
            Self::Gateway(ClientError::BadUrl { .. }) => {
                Some("GHOST_URL or --url must look like http://127.0.0.1:8080".to_owned())
            }
            Self::Gateway(ClientError::Refused(problem)) => match problem.status {
                401 => {
                    Some("set GHOST_API_KEY or --api-key (the key `ghost up` printed)".to_owned())
                }
                403 => Some(
                    "this key lacks the scope or target: reads need `read`, submit `submit`, \
                     cancel/retry/pause/resume `admin`, revert `admin` or `submit` on the \
                     patch's target"
                        .to_owned(),
                ),
                404 if !problem.is_problem_document => Some(format!(
                    "the gateway does not serve {}; is it older than this ghost?",
                    problem.request
                )),
                404 => {
                    Some("`ghost list` shows known patches, `ghost targets` the targets".to_owned())
                }
                429 | 503 => Some(match problem.retry_after {
                    Some(seconds) => format!("try again in {seconds} s"),
                    None => "try again shortly; `ghost status` shows what is up".to_owned(),
                }),
                422 | 400 if problem.pointer.is_some() || problem.position.is_some() => {
                    Some("fix the field named above and submit again".to_owned())
                }
                _ => None,
            },
            Self::Settings(_) => Some(
                "settings come from flags, then GHOST_URL/GHOST_API_KEY, then the config file \
                 (--config, default $XDG_CONFIG_HOME/ghost/config.toml)"
                    .to_owned(),
            ),
            Self::Input(_) | Self::Gateway(ClientError::Malformed { .. }) | Self::Other(_) => None,
        }
    }
}
