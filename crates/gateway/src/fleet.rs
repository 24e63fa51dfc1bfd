//! Views of the system around the patches: connected executors, the alerter's alerts, and the
//! aggregates the dashboard charts (patches per hour by outcome, stage latency). The alerter
//! is a port of its own because it is optional: without `alerter_url` there is none.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::GatewayError;

/// The alerter as the gateway needs it.
#[tonic::async_trait]
pub trait AlertFeed: Send + Sync {
    /// Alerts active now, most severe first, and the Slack backlog per channel.
    async fn alerts(&self) -> Result<AlertList, GatewayError>;
}

/// One connected executor.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutorView {
    /// Its configured id.
    pub executor_id: String,
    /// The stream session, unique per connection.
    pub session: String,
    /// Targets it serves.
    pub targets: Vec<String>,
    /// When it connected, Unix ms.
    pub connected_unix_ms: i64,
    /// When it was last heard from, Unix ms.
    pub last_seen_unix_ms: i64,
    /// Patches it holds leases on.
    pub running_patch_ids: Vec<String>,
}

/// `GET /v1/executors`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutorList {
    /// Connected now.
    pub executors: Vec<ExecutorView>,
}

/// One alert.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertView {
    /// Dedup key, e.g. `executor_lost/MAIN`.
    pub key: String,
    /// `firing`, `acked`, `silenced` or `resolved`.
    #[schema(example = "firing")]
    pub state: String,
    /// `info`, `warning` or `critical`.
    #[schema(example = "warning")]
    pub severity: String,
    /// One line for people.
    pub summary: String,
    /// E.g. target, service.
    pub labels: BTreeMap<String, String>,
    /// Who raised it.
    pub source: String,
    /// When it was raised, Unix ms.
    pub since_unix_ms: i64,
    /// Its last change, Unix ms.
    pub updated_unix_ms: i64,
}

/// `GET /v1/alerts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertList {
    /// Active alerts, most severe first.
    pub alerts: Vec<AlertView>,
    /// Slack messages waiting per channel, by channel (left empty for a key limited to some
    /// targets: channels are shared between teams).
    pub slack_backlog: Vec<ChannelBacklogView>,
}

/// The Slack messages waiting for one channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelBacklogView {
    /// As the alerter's routes name it (`#web`, a channel id, a user id for direct messages).
    #[schema(example = "#web")]
    pub channel: String,
    /// Messages stored and not yet delivered.
    pub pending: u64,
    /// True while the backlog has switched successes' own threads to the digest.
    pub digest_only: bool,
}

/// Finished patches of one hour by outcome.
#[derive(Debug, Clone, Serialize)]
pub struct HourOutcomes {
    /// Start of the hour, Unix ms.
    pub hour_unix_ms: i64,
    /// Patches by terminal status.
    pub outcomes: BTreeMap<String, u32>,
}

/// Latency of one stage over recent reports.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    /// Stage name.
    pub stage: String,
    /// Reports in which it ran.
    pub count: u32,
    /// Median, ms.
    pub p50_ms: u64,
    /// 95th percentile, ms.
    pub p95_ms: u64,
    /// Slowest, ms.
    pub max_ms: u64,
}

/// Aggregates for the dashboard charts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Oldest hour first; empty hours absent.
    pub hours: Vec<HourOutcomes>,
    /// In the order stages run.
    pub stages: Vec<StageLatency>,
    /// Reports read for the stage figures.
    pub reports_sampled: u32,
}
