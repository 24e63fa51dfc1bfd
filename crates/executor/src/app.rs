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
    storage: ghost_runtime::storage::StorageHealth,
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
                    state_dir: if config.standby {
                        crate::standby::state_dir_of(&root)
                    } else {
                        state_dir.clone()
                    },
                    root,
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
    workspace: &Workspace,
    root_id: &RootId,
    outbox: &Outbox,
    max_file_bytes: u64,
) -> anyhow::Result<()> {
    let ledger = Ledger::new(&workspace.state_dir);
    {
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
                crate::apply::journals_unclosed(target, true);
                tracing::error!(%target, error = %err,
                        "cannot recover this target's journal; it refuses patches until it can");
                return Ok(());
            }
        };
        crate::apply::journals_unclosed(target, false);
        let Some(found) = found else {
            return Ok(());
        };
        if applied(&found.header) {
            tracing::info!(patch_id = %found.header.patch_id, "journal of an applied patch removed");
            return Ok(());
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

/// Makes this executor the active one of a workspace whose lock it just took: stops what an
/// earlier executor's commands left running there, rolls back a journal an older executor
/// left in `old_state` (the state dir before the state moved into the workspace) and moves
/// that target's ledger and revert records into `<root>/.ghost`, then rolls back what a dead
/// executor left half-applied in `<root>/.ghost` (each owed an `interrupted` result).
pub(crate) fn activate(
    workspace: &Workspace,
    root_id: &RootId,
    old_state: &std::path::Path,
    outbox: &Outbox,
    max_file_bytes: u64,
) -> anyhow::Result<()> {
    let target = workspace.target.as_str();
    // Commands a dead executor left running would write on while the recovery restores.
    let killed = crate::commands::kill_leftovers(std::slice::from_ref(&workspace.root));
    if killed > 0 {
        tracing::warn!(%target, killed, "stopped commands an earlier executor left running");
    }
    if old_state != workspace.state_dir && crate::standby::has_old_state(old_state, target) {
        let old = Workspace {
            state_dir: old_state.to_path_buf(),
            ..workspace.clone()
        };
        recover(&old, root_id, outbox, max_file_bytes)?;
        if journal::is_open(old_state, target) {
            anyhow::bail!(
                "target {target}: the journal in the old state dir {} cannot be rolled back; \
                 restore the workspace by hand and remove it",
                old_state.display()
            );
        }
        let moved =
            crate::standby::migrate(old_state, &workspace.state_dir, target).map_err(|err| {
                anyhow::anyhow!(
                    "target {target}: cannot move its state from {} into {}: {err}",
                    old_state.display(),
                    workspace.state_dir.display()
                )
            })?;
        if moved {
            tracing::info!(%target, from = %old_state.display(), to = %workspace.state_dir.display(),
                "moved the target's ledger and revert records next to the workspace");
        }
    }
    recover(workspace, root_id, outbox, max_file_bytes)
}

/// The pause after each file written while applying: zero, except in a debug build (the
/// one tests spawn) whose environment sets [`crate::TEST_WRITE_DELAY_VAR`], so the crash tests can
/// kill the real binary between two writes. It is not a config key (a config file or a
/// `GHOST_EXECUTOR__` variable naming it is refused like any unknown key), and a release
/// build has no such knob.
#[cfg(debug_assertions)]
fn test_write_delay() -> std::time::Duration {
    std::env::var(crate::TEST_WRITE_DELAY_VAR)
        .ok()
        .and_then(|millis| millis.parse().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis)
}

/// A release build never pauses between writes (see the debug build's version).
#[cfg(not(debug_assertions))]
fn test_write_delay() -> std::time::Duration {
    std::time::Duration::ZERO
}

/// Takes each workspace this executor is to serve: with `standby`, the one whose lock it
/// gets (the others wait on standby); the workspace is then made whole (`activate`). The
/// locks held and the targets served.
fn take_workspaces(
    config: &ExecutorConfig,
    workspaces: &HashMap<String, (Workspace, RootId)>,
    old_state: &std::path::Path,
    outbox: &Outbox,
) -> anyhow::Result<(crate::standby::Held, std::collections::BTreeSet<String>)> {
    let held: crate::standby::Held = Arc::default();
    let mut active = std::collections::BTreeSet::new();
    for (target, (workspace, root_id)) in workspaces {
        let lock = if config.standby {
            crate::standby::try_lock(&workspace.root)
                .map_err(|err| {
                    anyhow::anyhow!(
                        "target {target}: cannot open the lock {}/lock: {err}",
                        workspace.state_dir.display()
                    )
                })?
                .map(Some)
        } else {
            // Sole executor of its workspaces: no lock, always active.
            Some(None)
        };
        let Some(lock) = lock else {
            crate::standby::set_active(target, false);
            tracing::info!(%target, lock = %workspace.state_dir.join("lock").display(),
                "standby: another executor is active for this target; waiting for its lock");
            continue;
        };
        activate(workspace, root_id, old_state, outbox, config.max_file_bytes)?;
        if let Some(lock) = lock {
            held.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(lock);
        }
        crate::standby::set_active(target, true);
        active.insert(target.clone());
    }
    Ok((held, active))
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
        let old_state = std::fs::canonicalize(&config.state_dir)?;
        // One active executor per workspace: the lock held, the workspace is made whole and
        // served; the others wait on standby (see `standby`).
        let (held, active) = take_workspaces(&config, &workspaces, &old_state, &outbox)?;
        let swept = crate::commands::sweep_tmp();
        if swept > 0 {
            tracing::info!(
                swept,
                "removed temp dirs an earlier executor's commands left"
            );
        }
        let contexts = workspaces
            .into_iter()
            .map(|(target, (workspace, root_id))| {
                let ctx = Context {
                    workspace,
                    root_id,
                    limits,
                    default_timeout: config.default_timeout,
                    write_delay: test_write_delay(),
                };
                (target, ctx)
            })
            .collect();
        let config = Arc::new(config);
        let storage = crate::storage::health();
        Ok(Self {
            worker: Worker {
                config: Arc::clone(&config),
                contexts: Arc::new(contexts),
                outbox,
                storage: storage.clone(),
                active: Arc::new(tokio::sync::watch::Sender::new(active)),
                held,
                old_state,
            },
            config,
            listeners,
            storage,
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
            // A failing state dir makes the executor not ready (`/readyz` 503 with the reason).
            storage: Some(self.storage),
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
