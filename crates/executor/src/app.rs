//! Builds the executor from its config and runs it until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ghost_core::TargetName;
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::apply::Context;
use crate::beneath::RootId;
use crate::config::ExecutorConfig;
use crate::connection::{self, Worker};
use crate::error::ExecutorError;
use crate::journal;
use crate::ledger::{Ledger, Outbox, OwedResult};
use crate::workspace::{Limits, Workspace};

/// A built executor, listening but not yet connected to the router.
pub struct App {
    config: Arc<ExecutorConfig>,
    listeners: Listeners,
    worker: Worker,
}

/// The configured workspaces, each with the identity of its root now (at start).
fn workspaces(
    config: &ExecutorConfig,
) -> Result<HashMap<String, (Workspace, RootId)>, ExecutorError> {
    let state_dir =
        std::fs::canonicalize(&config.state_dir).map_err(|err| ExecutorError::Workspace {
            target: "-".to_owned(),
            message: format!("state dir {}: {err}", config.state_dir.display()),
        })?;
    let mut found = HashMap::new();
    for workspace in &config.workspaces {
        let bad = |message: String| ExecutorError::Workspace {
            target: workspace.target.clone(),
            message,
        };
        let target = TargetName::parse(&workspace.target).map_err(|err| bad(err.to_string()))?;
        let root = std::fs::canonicalize(&workspace.root)
            .map_err(|err| bad(format!("root {}: {err}", workspace.root.display())))?;
        if !root.is_dir() {
            return Err(bad(format!("root {} is not a directory", root.display())));
        }
        let root_id =
            RootId::of(&root).map_err(|err| bad(format!("root {}: {err}", root.display())))?;
        let policy = config
            .targets
            .get(target.as_str())
            .cloned()
            .unwrap_or_default();
        policy.validate(target.as_str()).map_err(bad)?;
        found.insert(
            target.to_string(),
            (
                Workspace {
                    target: target.to_string(),
                    root,
                    state_dir: state_dir.clone(),
                    policy,
                },
                root_id,
            ),
        );
    }
    if found.is_empty() {
        return Err(ExecutorError::Workspace {
            target: "-".to_owned(),
            message: "no workspaces configured".to_owned(),
        });
    }
    Ok(found)
}

/// Rolls back what a crash left half-applied and owes the router an `interrupted` result.
/// A target whose journal cannot be recovered is logged and flagged, and refuses patches
/// (each of its patches retries the recovery first); the other targets start normally.
fn recover(
    state_dir: &std::path::Path,
    workspaces: &HashMap<String, (Workspace, RootId)>,
    outbox: &Outbox,
    max_file_bytes: u64,
) -> anyhow::Result<()> {
    let ledger = Ledger::new(state_dir);
    for (workspace, root_id) in workspaces.values() {
        let target = workspace.target.as_str();
        let applied = |header: &journal::Header| {
            ledger
                .get(target, &header.patch_id, &header.content_hash)
                .is_some()
        };
        let allowed =
            |rel: &str| crate::workspace::check_path(workspace, rel).map_err(|err| err.to_string());
        let scope = crate::snapshot::Scope::new(workspace, *root_id, max_file_bytes)
            .map_err(anyhow::Error::msg)?;
        let swept = crate::snapshot::sweep_temp(&scope);
        if swept > 0 {
            tracing::info!(%target, swept, "removed temp files a crash left in the snapshot store");
        }
        let found = match journal::recover(
            &workspace.state_dir,
            target,
            &workspace.root,
            *root_id,
            allowed,
            applied,
            Some(&scope),
        ) {
            Ok(found) => found,
            Err(err) => {
                metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned())
                    .set(1.0);
                tracing::error!(%target, error = %err,
                        "cannot recover this target's journal; it refuses patches until it can");
                continue;
            }
        };
        let Some(found) = found else {
            continue;
        };
        if applied(&found.header) {
            tracing::info!(patch_id = %found.header.patch_id, "journal of an applied patch removed");
            continue;
        }
        let restored = found.restored;
        tracing::warn!(
            patch_id = %found.header.patch_id,
            restored = restored.restored,
            removed = restored.removed,
            errors = restored.errors.len(),
            "rolled back a patch interrupted by a crash"
        );
        let reason =
            "the executor stopped while applying; the workspace was rolled back on restart";
        let mut report = ghost_core::ApplyReport::ended(ghost_core::Status::Interrupted, reason);
        report.rollback = Some(crate::apply::rollback_record(&restored, reason));
        outbox.push(&OwedResult {
            patch_id: found.header.patch_id.clone(),
            attempt: found.header.attempt,
            fencing_token: found.header.fencing_token,
            report,
        })?;
    }
    Ok(())
}

impl App {
    /// Checks the workspaces and binds the listeners.
    pub async fn build(config: ExecutorConfig) -> anyhow::Result<Self> {
        // Orphaned descendants of a command come to us instead of init, so the tree kill
        // finds them (see `commands`); without it only the tracked ones can be.
        if let Err(err) = crate::commands::become_subreaper() {
            tracing::warn!(error = %err, "cannot become a child subreaper; a command's orphans may escape its kill");
        }
        std::fs::create_dir_all(&config.state_dir)?;
        let workspaces = workspaces(&config)?;
        // The executor's gRPC side serves health only, and its commands are untrusted: it
        // neither needs nor should hold the deployment's service credential.
        let listeners = Listeners::bind_health_only(&config.server)
            .await
            .map_err(|err| anyhow::anyhow!("cannot bind the executor listeners: {err}"))?;
        let limits = Limits {
            max_file_bytes: config.max_file_bytes,
            max_patch_bytes: config.max_patch_bytes,
        };
        let outbox = Outbox::new(&config.state_dir);
        // Commands a crashed executor left running would write on while the recovery
        // restores: stopped first.
        let roots: Vec<std::path::PathBuf> = workspaces
            .values()
            .map(|(workspace, _)| workspace.root.clone())
            .collect();
        let killed = crate::commands::kill_leftovers(&roots);
        if killed > 0 {
            tracing::warn!(killed, "stopped commands an earlier executor left running");
        }
        let swept = crate::commands::sweep_tmp();
        if swept > 0 {
            tracing::info!(
                swept,
                "removed temp dirs an earlier executor's commands left"
            );
        }
        recover(
            &config.state_dir,
            &workspaces,
            &outbox,
            config.max_file_bytes,
        )?;
        let contexts = workspaces
            .into_iter()
            .map(|(target, (workspace, root_id))| {
                let ctx = Context {
                    workspace,
                    root_id,
                    limits,
                    default_timeout: config.default_timeout,
                    write_delay: config.test_write_delay,
                };
                (target, ctx)
            })
            .collect();
        let config = Arc::new(config);
        Ok(Self {
            worker: Worker {
                config: Arc::clone(&config),
                contexts: Arc::new(contexts),
                outbox,
            },
            config,
            listeners,
        })
    }

    /// The bound gRPC address (health and reflection only).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address: the operations listener (`/healthz`, `/readyz`, `/metrics`), at
    /// `server.ops_listen` when set, else at `server.http_listen`; this service has no public
    /// HTTP routes.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// The bound operations address (`/healthz`, `/readyz`, `/metrics`): the same as
    /// [`App::http_addr`], named as in the gateway and the alerter.
    pub fn ops_addr(&self) -> SocketAddr {
        self.listeners.ops_addr()
    }

    /// Works for the router until `shutdown` resolves, then drains.
    pub async fn run<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(connection::run(self.worker, token.clone()));
        let service = Service {
            name: SERVICE,
            grpc_names: Vec::new(),
            grpc: tonic::service::Routes::default(),
            http: axum::Router::new(),
            open_methods: Vec::new(),
            storage: None,
        };
        ghost_runtime::serve::serve_until(
            service,
            self.listeners,
            &self.config.server,
            shutdown,
            token,
            tasks,
        )
        .await
    }
}
