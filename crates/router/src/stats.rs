//! `RouterStatsService`: read-only aggregates for dashboards — finished patches per hour by
//! outcome, and per-stage latency (p50, p95, max) over the newest reports. Changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use ghost_core::TargetName;
use ghost_proto::router::v1::router_stats_service_server::RouterStatsService;
use ghost_proto::router::v1::{self as wire};
use tonic::{Request, Response};

use crate::error::RouterError;
use crate::store::{RouterStore, StatsRows, now_ms};

/// The window when the caller gives none.
const DEFAULT_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Stages in the order they run; others follow by name.
const STAGE_ORDER: &[&str] = &[
    // "edits": the name reports before issue 20 gave both planning and writing.
    "plan", "journal", "write", "edits", "snapshot", "agent", "commands", "validate", "checks",
    "commit", "rollback",
];

/// The gRPC face of the dashboard aggregates.
#[derive(Clone)]
pub struct RouterStats {
    /// The router's store, read only.
    pub store: Arc<dyn RouterStore>,
}

/// The `rank`-th percentile (0–100, nearest rank) of sorted `values`.
fn percentile(sorted: &[u64], rank: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let count = sorted.len() as u64;
    let index = (rank * count).div_ceil(100).clamp(1, count) - 1;
    sorted[usize::try_from(index).unwrap_or(0)]
}

/// Folds raw rows into the wire answer.
pub fn aggregate(rows: StatsRows) -> wire::GetStatsResponse {
    let mut hours: BTreeMap<i64, BTreeMap<String, u32>> = BTreeMap::new();
    for (hour, status, count) in rows.hours {
        *hours.entry(hour).or_default().entry(status).or_default() += count;
    }
    let reports_sampled = u32::try_from(rows.stages.len()).unwrap_or(u32::MAX);
    let mut by_stage: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for report in rows.stages {
        for (stage, ms) in report {
            by_stage.entry(stage).or_default().push(ms);
        }
    }
    let mut stages: Vec<wire::StageLatency> = by_stage
        .into_iter()
        .map(|(stage, mut values)| {
            values.sort_unstable();
            wire::StageLatency {
                count: u32::try_from(values.len()).unwrap_or(u32::MAX),
                p50_ms: percentile(&values, 50),
                p95_ms: percentile(&values, 95),
                max_ms: values.last().copied().unwrap_or(0),
                stage,
            }
        })
        .collect();
    let order = |stage: &str| {
        STAGE_ORDER
            .iter()
            .position(|known| *known == stage)
            .unwrap_or(STAGE_ORDER.len())
    };
    stages.sort_by(|a, b| {
        order(&a.stage)
            .cmp(&order(&b.stage))
            .then(a.stage.cmp(&b.stage))
    });
    wire::GetStatsResponse {
        hours: hours
            .into_iter()
            .map(|(hour_unix_ms, outcomes)| wire::HourOutcomes {
                hour_unix_ms,
                outcomes: outcomes.into_iter().collect(),
            })
            .collect(),
        stages,
        reports_sampled,
    }
}

#[tonic::async_trait]
impl RouterStatsService for RouterStats {
    #[tracing::instrument(skip_all)]
    async fn get_stats(
        &self,
        request: Request<wire::GetStatsRequest>,
    ) -> Result<Response<wire::GetStatsResponse>, tonic::Status> {
        let request = request.into_inner();
        let target = if request.target.is_empty() {
            None
        } else {
            let name =
                TargetName::parse(&request.target).map_err(|err| RouterError::InvalidArgument {
                    field: "target".to_owned(),
                    message: err.to_string(),
                })?;
            Some(name.to_string())
        };
        let since = if request.since_unix_ms > 0 {
            request.since_unix_ms
        } else {
            now_ms() - DEFAULT_WINDOW_MS
        };
        let rows = self
            .store
            .stats(since, target)
            .await
            .map_err(RouterError::from)?;
        Ok(Response::new(aggregate(rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 95), 95);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn rows_fold_into_hours_and_ordered_stages() {
        let rows = StatsRows {
            hours: vec![
                (3_600_000, "failed".to_owned(), 2),
                (3_600_000, "succeeded".to_owned(), 5),
                (7_200_000, "succeeded".to_owned(), 1),
            ],
            stages: vec![
                vec![("validate".to_owned(), 30), ("edits".to_owned(), 2)],
                vec![("edits".to_owned(), 4), ("custom".to_owned(), 1)],
            ],
        };
        let stats = aggregate(rows);
        assert_eq!(stats.hours.len(), 2);
        assert_eq!(stats.hours[0].outcomes["succeeded"], 5);
        assert_eq!(stats.hours[0].outcomes["failed"], 2);
        let names: Vec<&str> = stats.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["edits", "validate", "custom"]);
        assert_eq!(stats.stages[0].count, 2);
        assert_eq!(stats.stages[0].max_ms, 4);
        assert_eq!(stats.reports_sampled, 2);
    }
}
