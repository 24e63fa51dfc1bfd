//! [`Secret`]: a configuration value (token, key, URL with a password) that is never printed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value (token, key): deserialised normally, always rendered as `[redacted]`.
/// The value `[redacted]` itself is refused, so `--print-config` output fed back as a config
/// never runs with that literal as a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// What [`Secret`] renders as, and so never accepts as a value.
pub const REDACTED: &str = "[redacted]";

/// True for the example values of `.env.example` and the docs (`replace-with-…`,
/// `change-me…`, any case): a [`Secret`] refuses them, so a copied example never runs as a key.
pub fn is_placeholder(value: &str) -> bool {
    let lowered = value.trim().to_lowercase();
    [
        "replace-with-",
        "replace_with_",
        "change-me",
        "change_me",
        "changeme",
    ]
    .iter()
    .any(|prefix| lowered.starts_with(prefix))
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        if value == REDACTED {
            return Err(serde::de::Error::custom(
                "a secret is \"[redacted]\", the placeholder --print-config shows: put the real \
                 value here (or in its environment variable)",
            ));
        }
        if is_placeholder(&value) {
            return Err(serde::de::Error::custom(
                "a secret is still the placeholder of .env.example (`replace-with-…`/`change-me…`): \
                 generate a real one, e.g. `openssl rand -hex 24`",
            ));
        }
        Ok(Self(value))
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            serializer.serialize_str("")
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}
