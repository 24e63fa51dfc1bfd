//! The health monitor, the one replacement for the old watchdog processes: every `interval`
//! it asks each configured service's `grpc.health.v1.Health/Check` and the router's
//! `ListTargets` for executor presence, and raises `service_down/<svc>` and
//! `executor_lost/<target>` after `failures_before_alert` consecutive failures (hysteresis),
//! resolving them on the first success.
//!
//! A router that answers `UNIMPLEMENTED` to `ListTargets` means "presence unknown": nothing is
//! raised or resolved. A target is only watched once an executor was seen for it or work is
//! queued for it, so a target nobody serves yet does not alert forever.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ghost_proto::router::v1::ListTargetsRequest;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_runtime::propagation::{TracedChannel, Upstream, traced_channel};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::HealthConfig;
use crate::leader::Leader;
use crate::lifecycle::{Lifecycle, RaiseAlert, Severity};
use ghost_runtime::clock::SharedClock;

/// What the monitor last learnt about one thing it watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// `up`, `down` (alert raised), `failing` (below the threshold) or `unknown`.
    pub state: &'static str,
    /// Consecutive failures.
    pub failures: u32,
    /// The last error, empty when fine.
    pub detail: String,
    /// When it was last checked (Unix ms).
    pub checked_ms: i64,
}

/// The latest observations, by `service/<name>` or `executor/<target>`. Cheap to clone.
#[derive(Clone, Default)]
pub struct HealthBoard {
    observations: Arc<Mutex<BTreeMap<String, Observation>>>,
}

impl HealthBoard {
    /// A snapshot of every observation.
    pub fn snapshot(&self) -> BTreeMap<String, Observation> {
        self.observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn get(&self, name: &str) -> Option<Observation> {
        self.observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn set(&self, name: String, observation: Observation) {
        self.observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, observation);
    }
}

/// Result of one check.
enum Check {
    Up,
    Down(String),
    Unknown(String),
}

/// The monitor's wiring.
pub struct HealthMonitor {
    config: HealthConfig,
    services: Vec<(String, HealthClient<TracedChannel>)>,
    router: Option<RouterServiceClient<TracedChannel>>,
    lifecycle: Arc<Lifecycle>,
    board: HealthBoard,
    clock: SharedClock,
}

impl HealthMonitor {
    /// A monitor of `config.services` (and executors through `router_url`).
    pub fn new(
        config: &HealthConfig,
        upstream: &Upstream,
        router_url: Option<&str>,
        lifecycle: Arc<Lifecycle>,
        board: HealthBoard,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        // Health checks need no credential: it is not sent to the checked services.
        let checks = upstream.without_credential();
        let mut services = Vec::new();
        for (name, url) in &config.services {
            services.push((
                name.clone(),
                HealthClient::new(traced_channel(url, &checks)?),
            ));
        }
        let router = match (config.watch_executors, router_url) {
            (true, Some(url)) => Some(RouterServiceClient::new(traced_channel(url, upstream)?)),
            _ => None,
        };
        Ok(Self {
            config: config.clone(),
            services,
            router,
            lifecycle,
            board,
            clock,
        })
    }

    /// True when there is nothing to watch.
    pub fn is_idle(&self) -> bool {
        self.services.is_empty() && self.router.is_none()
    }

    /// Checks every `interval` until `shutdown`, while this replica leads (one replica
    /// watches, so one raises).
    pub async fn run(mut self, leader: Leader, shutdown: CancellationToken) {
        loop {
            if leader.is_leader() {
                self.round().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One round of checks.
    pub async fn round(&mut self) {
        let timeout = self.config.check_timeout;
        let mut results = Vec::new();
        for (name, client) in &mut self.services {
            let check = tokio::time::timeout(
                timeout,
                client.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await;
            let result = match check {
                Err(_) => Check::Down(format!("no answer within {timeout:?}")),
                Ok(Err(status)) => {
                    Check::Down(format!("{:?}: {}", status.code(), status.message()))
                }
                Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                    Check::Up
                }
                Ok(Ok(answer)) => Check::Down(format!(
                    "status {}",
                    ServingStatus::try_from(answer.get_ref().status)
                        .map_or("invalid", |status| status.as_str_name())
                )),
            };
            results.push((name.clone(), result));
        }
        for (name, result) in results {
            let mut labels = BTreeMap::new();
            labels.insert("service".to_owned(), name.clone());
            self.apply(
                format!("service/{name}"),
                format!("service_down/{name}"),
                format!("{name} is not serving"),
                labels,
                result,
            )
            .await;
        }
        self.check_executors(timeout).await;
    }

    async fn check_executors(&mut self, timeout: Duration) {
        let Some(router) = &mut self.router else {
            return;
        };
        let answer =
            tokio::time::timeout(timeout, router.list_targets(ListTargetsRequest {})).await;
        let targets = match answer {
            Ok(Ok(answer)) => answer.into_inner().targets,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::debug!("router does not list targets yet; executor presence unknown");
                return;
            }
            // The router being down is service_down/router's business, not every executor's.
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), "cannot list targets");
                return;
            }
            Err(_) => return,
        };
        for target in targets {
            let name = format!("executor/{}", target.target);
            let known = self
                .board
                .get(&name)
                .is_some_and(|seen| seen.state != "unknown");
            let result = if target.executor_online {
                Check::Up
            } else if known || target.queued > 0 {
                Check::Down("no executor connected".to_owned())
            } else {
                Check::Unknown("no executor seen yet".to_owned())
            };
            let mut labels = BTreeMap::new();
            labels.insert("target".to_owned(), target.target.clone());
            self.apply(
                name,
                format!("executor_lost/{}", target.target),
                format!(
                    "no executor serves {} ({} queued)",
                    target.target, target.queued
                ),
                labels,
                result,
            )
            .await;
        }
    }

    async fn apply(
        &self,
        name: String,
        key: String,
        summary: String,
        labels: BTreeMap<String, String>,
        result: Check,
    ) {
        let now = self.clock.now_ms();
        let previous = self.board.get(&name);
        let previous_failures = previous.as_ref().map_or(0, |seen| seen.failures);
        let was_down = previous.as_ref().is_some_and(|seen| seen.state == "down");
        let observation = match result {
            Check::Up => {
                // First sight after a restart too: an alert raised before it may still be active.
                if was_down || previous.is_none() {
                    match self.lifecycle.resolve(&key).await {
                        Ok(true) => tracing::info!(key, "recovered"),
                        Ok(false) => {}
                        Err(err) => tracing::error!(error = %err, key, "cannot resolve alert"),
                    }
                }
                Observation {
                    state: "up",
                    failures: 0,
                    detail: String::new(),
                    checked_ms: now,
                }
            }
            Check::Unknown(detail) => Observation {
                state: "unknown",
                failures: 0,
                detail,
                checked_ms: now,
            },
            Check::Down(detail) => {
                let failures = previous_failures.saturating_add(1);
                let down = failures >= self.config.failures_before_alert.max(1);
                if down && !was_down {
                    tracing::warn!(key, failures, detail, "raising");
                    let raise = RaiseAlert {
                        key: key.clone(),
                        severity: Severity::Critical,
                        summary: format!("{summary}: {detail}"),
                        labels,
                        source: "alerter/health".to_owned(),
                    };
                    if let Err(err) = self.lifecycle.raise(raise, None).await {
                        tracing::error!(error = %err, key, "cannot raise alert");
                    }
                }
                Observation {
                    state: if down { "down" } else { "failing" },
                    failures,
                    detail,
                    checked_ms: now,
                }
            }
        };
        self.board.set(name, observation);
    }
}
