//! The one place the services are wired together: what `ghost up` runs and what every test
//! that needs more than one service starts.
//!
//! [`SystemBuilder`] starts any subset of the five services in this process, each the real
//! `App` on its own listeners (loopback port 0 unless given), points each at the others' gRPC
//! addresses and hands back a [`System`] of [`Running`] handles:
//!
//! ```ignore
//! let system = SystemBuilder::new(&options)
//!     .only([Service::Router, Service::Gateway])
//!     .gateway(|gateway| gateway.rate_limit.burst = 10_000)
//!     .start()
//!     .await?;
//! ```
//!
//! [`config`] holds the configs as one value ([`SystemConfig`]) and how they are made to fit
//! (one credential, listeners bound up front, URLs wired); [`running`] the started system.

mod builder;
pub mod config;
pub mod running;

pub use builder::SystemBuilder;
pub use config::{
    Explicit, LocalOptions, SlackOptions, SystemConfig, executor_config, router_config,
    system_config, url,
};
pub use running::{Running, System};

/// One of the five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Slack and alerts.
    Alerter,
    /// Summaries.
    Summarizer,
    /// The queue.
    Router,
    /// Applies patches to workspaces.
    Executor,
    /// The public door.
    Gateway,
}

impl Service {
    /// Every service, in start order: downstream first, the entry last.
    pub const ALL: [Self; 5] = [
        Self::Alerter,
        Self::Summarizer,
        Self::Router,
        Self::Executor,
        Self::Gateway,
    ];

    /// Its name (`router`), as logs and `ghost up` show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Alerter => "alerter",
            Self::Summarizer => "summarizer",
            Self::Router => "router",
            Self::Executor => "executor",
            Self::Gateway => "gateway",
        }
    }
}
