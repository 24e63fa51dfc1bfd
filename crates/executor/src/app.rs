//! Builds the executor from its config and runs it until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ghost_core::TargetName;
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::apply::{Limits, Workspace};
use crate::config::ExecutorConfig;
use crate::connection::{self, Worker};
use crate::error::ExecutorError;

/// A built executor, listening but not yet connected to the router.
pub struct App {
    config: Arc<ExecutorConfig>,
    listeners: Listeners,
    worker: Worker,
}

fn workspaces(config: &ExecutorConfig) -> Result<HashMap<String, Workspace>, ExecutorError> {
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
        found.insert(
            target.to_string(),
            Workspace {
                target: target.to_string(),
                root,
                state_dir: state_dir.clone(),
            },
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

impl App {
    /// Checks the workspaces and binds the listeners.
    pub async fn build(config: ExecutorConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.state_dir)?;
        let workspaces = workspaces(&config)?;
        let listeners = Listeners::bind(&config.server).await?;
        let limits = Limits {
            max_file_bytes: config.max_file_bytes,
            max_patch_bytes: config.max_patch_bytes,
        };
        let config = Arc::new(config);
        Ok(Self {
            worker: Worker {
                config: Arc::clone(&config),
                workspaces: Arc::new(workspaces),
                limits,
            },
            config,
            listeners,
        })
    }

    /// The bound gRPC address (health and reflection only).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
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
