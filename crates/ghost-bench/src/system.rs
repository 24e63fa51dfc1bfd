//! The five services as child processes of the benchmark: config files written into the work
//! dir, started downstream first, each timed from spawn to its first `/readyz` 200, RSS read
//! through [`crate::procfs`], stopped with SIGTERM (SIGKILL after a grace) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ghost_testkit::FakeSlack;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::procfs::{Memory, memory_of};

/// The API key the started gateway accepts.
pub const API_KEY: &str = "bench-key-0123456789abcdef";
/// Slack channel of the started alerter.
pub const CHANNEL: &str = "#ghost-bench";
/// Longest wait for one service to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One running service process.
pub struct ServiceProcess {
    /// Name, e.g. `router` or `executor-2`.
    pub name: String,
    /// Its binary (`router`, `executor`, …).
    pub binary: &'static str,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Time from spawn to the first `/readyz` 200.
    pub ready_after: Duration,
    child: Child,
}

impl ServiceProcess {
    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The started system.
pub struct System {
    /// Services in start order (alerter, summarizer, router, executors, gateway).
    pub services: Vec<ServiceProcess>,
    /// The fake Slack the alerter posts to.
    pub slack: FakeSlack,
    /// The gateway's base URL.
    pub gateway_url: String,
    /// Root of every service's state.
    pub data_dir: PathBuf,
    /// Target → workspace folder.
    pub workspaces: Vec<(String, PathBuf)>,
    /// With `--tls`: the run's CA, PEM (the gateway's HTTPS certificate is issued by it).
    pub ca_pem: Option<String>,
}

/// `--tls`: a CA and a `localhost`/127.0.0.1 server certificate made for the run, shared by
/// every listener, and the deployment's service credential.
struct BenchTls {
    ca: PathBuf,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    token: String,
}

impl BenchTls {
    fn make(work: &Path) -> anyhow::Result<Self> {
        let dir = work.join("tls");
        std::fs::create_dir_all(&dir)?;
        let ca = ghost_testkit::pki::Ca::new("ghost-bench CA");
        let (cert, key) = ca.server(1, false).write(&dir);
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, &ca.pem)?;
        Ok(Self {
            ca: ca_path,
            ca_pem: ca.pem,
            cert,
            key,
            token: format!("bench-credential-{}", std::process::id()),
        })
    }

    /// `server.tls` and `server.internal_token` for a service; `http`: its HTTP side too.
    fn apply(&self, server: &mut serde_json::Value, http: bool) {
        server["tls"] = json!({
            "cert": self.cert, "key": self.key, "ca": self.ca, "grpc": true, "http": http,
        });
        server["internal_token"] = json!(self.token);
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// `https://ADDR` with `--tls`, else `http://ADDR`.
fn grpc_url(addr: SocketAddr, tls: Option<&BenchTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => url(addr),
    }
}

/// Folder of the service binaries: `--bin-dir`, else the folder of this executable.
pub fn bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    let exe = std::env::current_exe().context("cannot locate the ghost-bench executable")?;
    let dir = exe
        .parent()
        .context("the ghost-bench executable has no folder")?;
    // `cargo test` runs from target/<profile>/deps; the binaries live one level up.
    if dir.ends_with("deps") {
        return Ok(dir.parent().unwrap_or(dir).to_owned());
    }
    Ok(dir.to_owned())
}

/// Creates `count` small files under `root` in folders of 1,000.
pub fn fill_workspace(root: &Path, count: usize) -> std::io::Result<()> {
    for n in 0..count {
        let dir = root.join(format!("d{:03}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{n}.txt")), format!("file {n}\n"))?;
    }
    Ok(())
}

/// Applies `SERVICE.KEY=VALUE` overrides meant for `binary` to `config`.
fn apply_overrides(
    binary: &str,
    config: &mut serde_json::Value,
    overrides: &[String],
) -> anyhow::Result<()> {
    for raw in overrides {
        let (path, value) = raw
            .split_once('=')
            .with_context(|| format!("--set {raw:?} is not SERVICE.KEY=VALUE"))?;
        let mut keys = path.split('.');
        if keys.next() != Some(binary) {
            continue;
        }
        let value: serde_json::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|table| serde_json::to_value(&table["v"]).ok())
            .unwrap_or_else(|| serde_json::Value::String(value.to_owned()));
        let keys: Vec<&str> = keys.collect();
        let Some((last, parents)) = keys.split_last() else {
            anyhow::bail!("--set {raw:?} names no key");
        };
        let mut node = &mut *config;
        for key in parents {
            node = &mut node[*key];
            if !node.is_object() {
                *node = json!({});
            }
        }
        node[*last] = value;
    }
    Ok(())
}

struct Spec<'a> {
    name: String,
    binary: &'static str,
    config: serde_json::Value,
    grpc: SocketAddr,
    http: SocketAddr,
    bin_dir: &'a Path,
    work: &'a Path,
    overrides: &'a [String],
    /// The CA of an HTTPS `/readyz` (`--tls`, the gateway).
    https_ca: Option<&'a str>,
}

async fn spawn(spec: Spec<'_>) -> anyhow::Result<ServiceProcess> {
    let config_path = spec.work.join(format!("{}.toml", spec.name));
    let mut config = spec.config;
    apply_overrides(spec.binary, &mut config, spec.overrides)?;
    let text = toml::to_string(&config).context("cannot render a service config")?;
    std::fs::write(&config_path, text)?;
    let log = std::fs::File::create(spec.work.join(format!("{}.log", spec.name)))?;
    let program = spec.bin_dir.join(spec.binary);
    let started = Instant::now();
    let mut child = Command::new(&program)
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let (client, probe) = match spec.https_ca {
        Some(ca) => (
            crate::load::client(1, Some(ca))?,
            format!("https://{}/readyz", spec.http),
        ),
        None => (
            reqwest::Client::new(),
            format!("http://{}/readyz", spec.http),
        ),
    };
    loop {
        let ready = client
            .get(&probe)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status} while starting; see {}",
                spec.name,
                spec.work.join(format!("{}.log", spec.name)).display()
            );
        }
        if started.elapsed() > READY_TIMEOUT {
            anyhow::bail!("{} not ready after {READY_TIMEOUT:?}", spec.name);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(ServiceProcess {
        name: spec.name,
        binary: spec.binary,
        grpc: spec.grpc,
        http: spec.http,
        ready_after: started.elapsed(),
        child,
    })
}

fn server(grpc: SocketAddr, http: SocketAddr) -> serde_json::Value {
    json!({
        "grpc_listen": grpc.to_string(),
        "http_listen": http.to_string(),
        "drain_grace": "0s",
        "drain_timeout": "5s",
    })
}

/// The ports of the four fixed services, the data directory and the TLS material: what every
/// service's config is written from.
struct Plan<'a> {
    tls: Option<&'a BenchTls>,
    /// `[store] url` of the router, summarizer and alerter; `None`: SQLite in their data dirs.
    store_url: Option<&'a str>,
    data_dir: PathBuf,
    alerter: (SocketAddr, SocketAddr),
    summarizer: (SocketAddr, SocketAddr),
    router: (SocketAddr, SocketAddr),
    gateway: (SocketAddr, SocketAddr),
}

impl<'a> Plan<'a> {
    /// Free ports for the four fixed services.
    fn new(
        tls: Option<&'a BenchTls>,
        store_url: Option<&'a str>,
        data_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let pair = || Ok::<_, anyhow::Error>((free_port()?, free_port()?));
        Ok(Self {
            tls,
            store_url,
            data_dir,
            alerter: pair()?,
            summarizer: pair()?,
            router: pair()?,
            gateway: pair()?,
        })
    }

    /// The `server` section on these ports (with the TLS material, HTTPS too when `https`).
    fn server(&self, (grpc, http): (SocketAddr, SocketAddr), https: bool) -> serde_json::Value {
        let mut server = server(grpc, http);
        if let Some(tls) = self.tls {
            tls.apply(&mut server, https);
        }
        server
    }

    /// `config` with `[store] url` set when the run is on PostgreSQL.
    fn stored(&self, mut config: serde_json::Value) -> serde_json::Value {
        if let Some(url) = self.store_url {
            config["store"] = json!({"url": url});
        }
        config
    }

    fn alerter(&self, slack: &FakeSlack) -> serde_json::Value {
        self.stored(json!({
            "server": self.server(self.alerter, false),
            "data_dir": self.data_dir.join("alerter"),
            "router_url": grpc_url(self.router.0, self.tls),
            "summarizer_url": grpc_url(self.summarizer.0, self.tls),
            // Slack allows about one message per second per channel; the fake has no limit,
            // so the benchmark measures the alerter itself.
            "slack": {"api_base_url": slack.base_url(), "bot_token": "xoxb-ghost-bench",
                      "channel": CHANNEL, "pacing": "0s"},
            "health": {"watch_executors": false},
            // Every patch its own message, successes too (by default they are folded into a
            // digest), and no backlog switch (past 20 pending messages it folds successes
            // into the digest as well, so at 500/s most patches had no post of their own):
            // the benchmark measures, and checks, one Slack post per patch.
            "routing": {"routes": [{"thread": "own"}], "backlog_threshold": 0},
        }))
    }

    fn summarizer(&self) -> serde_json::Value {
        self.stored(json!({
            "server": self.server(self.summarizer, false),
            "data_dir": self.data_dir.join("summarizer"),
            "alerter_url": grpc_url(self.alerter.0, self.tls),
        }))
    }

    /// The router's config, and the port executors dial: with TLS, the router's executor
    /// port, as from another machine.
    fn router(&self) -> anyhow::Result<(serde_json::Value, SocketAddr)> {
        let mut config = self.stored(json!({
            "server": self.server(self.router, false),
            "data_dir": self.data_dir.join("router"),
            "summarizer_url": grpc_url(self.summarizer.0, self.tls),
            "alerter_url": grpc_url(self.alerter.0, self.tls),
        }));
        let executor_port = match self.tls {
            Some(_) => {
                let port = free_port()?;
                config["executor_listen"] = json!(port.to_string());
                port
            }
            None => self.router.0,
        };
        Ok((config, executor_port))
    }

    /// Executor `name` of `target` (workspace `root`) on `ports`, dialing `executor_port`.
    fn executor(
        &self,
        (name, target, root): (&str, &str, &Path),
        ports: (SocketAddr, SocketAddr),
        executor_port: SocketAddr,
        allow_false: bool,
    ) -> serde_json::Value {
        let mut config = json!({
            "server": self.server(ports, false),
            "router_url": grpc_url(executor_port, self.tls),
            "executor_id": name,
            "state_dir": self.data_dir.join(name),
            "workspaces": [{"target": target, "root": root}],
            "reconnect_backoff": "200ms",
        });
        if let Some(tls) = self.tls {
            config["router_ca"] = json!(tls.ca);
            config["token"] = json!(tls.token);
        }
        if allow_false {
            config["targets"] = json!({target: {"commands": {"allowlist": ["false"]}}});
        }
        config
    }

    fn gateway(&self, targets: &[String]) -> serde_json::Value {
        let mut gateway_server = self.server(self.gateway, true);
        // All the load comes from one address: its per-address caps go up with the global ones.
        gateway_server["max_connections_per_address"] = json!(4096);
        json!({
            "server": gateway_server,
            "router_url": grpc_url(self.router.0, self.tls),
            "summarizer_url": grpc_url(self.summarizer.0, self.tls),
            "api_key": API_KEY,
            "rate_limit": {"per_minute": 100_000_000u64, "burst": 1_000_000u64},
            "max_in_flight": 4096,
            "client_limits": {"max_in_flight": 4096},
            "targets": targets.iter().map(|name| json!({"name": name})).collect::<Vec<_>>(),
        })
    }
}

/// How [`System::start`] configures the services.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions<'a> {
    /// Files created in each workspace before the run.
    pub workspace_files: usize,
    /// The executors allow the command `false` (`--fail`).
    pub allow_false: bool,
    /// `--set SERVICE.KEY=VALUE` overrides.
    pub overrides: &'a [String],
    /// Every hop over TLS (`--tls`).
    pub tls: bool,
    /// `[store] url` of the router, summarizer and alerter (`--store`); `None`: SQLite.
    pub store_url: Option<&'a str>,
}

impl System {
    /// Starts alerter, summarizer, router, one executor per target and the gateway under
    /// `work`, each after the previous one is ready.
    pub async fn start(
        bin_dir: &Path,
        work: &Path,
        targets: &[String],
        options: StartOptions<'_>,
    ) -> anyhow::Result<Self> {
        let StartOptions {
            workspace_files,
            allow_false,
            overrides,
            tls,
            store_url,
        } = options;
        let slack = FakeSlack::start().await;
        let tls = tls.then(|| BenchTls::make(work)).transpose()?;
        let tls = tls.as_ref();
        let data_dir = work.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let plan = Plan::new(tls, store_url, data_dir)?;
        let mut services = Vec::new();
        let spec = |name: &str, binary, config, (grpc, http): (SocketAddr, SocketAddr)| Spec {
            name: name.to_owned(),
            binary,
            config,
            grpc,
            http,
            bin_dir,
            work,
            overrides,
            https_ca: None,
        };
        let alerter = spec("alerter", "alerter", plan.alerter(&slack), plan.alerter);
        services.push(spawn(alerter).await?);
        let summarizer = spec(
            "summarizer",
            "summarizer",
            plan.summarizer(),
            plan.summarizer,
        );
        services.push(spawn(summarizer).await?);
        let (router_config, executor_port) = plan.router()?;
        services.push(spawn(spec("router", "router", router_config, plan.router)).await?);
        let mut workspaces = Vec::new();
        for (n, target) in targets.iter().enumerate() {
            let root = work.join("workspaces").join(target);
            std::fs::create_dir_all(&root)?;
            fill_workspace(&root, workspace_files)?;
            let ports = (free_port()?, free_port()?);
            let name = format!("executor-{}", n + 1);
            let config = plan.executor((&name, target, &root), ports, executor_port, allow_false);
            services.push(spawn(spec(&name, "executor", config, ports)).await?);
            workspaces.push((target.clone(), root));
        }
        let ca_pem = tls.map(|tls| tls.ca_pem.clone());
        let gateway = Spec {
            https_ca: ca_pem.as_deref(),
            ..spec("gateway", "gateway", plan.gateway(targets), plan.gateway)
        };
        services.push(spawn(gateway).await?);
        Ok(Self {
            services,
            slack,
            gateway_url: match tls {
                Some(_) => format!("https://{}", plan.gateway.1),
                None => url(plan.gateway.1),
            },
            data_dir: plan.data_dir,
            workspaces,
            ca_pem,
        })
    }

    /// Memory of every service now.
    pub fn memory(&self) -> Vec<(String, Memory)> {
        self.services
            .iter()
            .map(|service| {
                let memory = service
                    .pid()
                    .and_then(|pid| memory_of(pid).ok())
                    .unwrap_or_default();
                (service.name.clone(), memory)
            })
            .collect()
    }

    /// Where the summarizer writes the JSON summary of `id` in `target`.
    pub fn summary_json(&self, target: &str, id: &str) -> PathBuf {
        self.data_dir
            .join("summarizer/summaries")
            .join(target)
            .join(format!("summary-{id}.json"))
    }

    /// SIGTERM to every service (gateway first), then waits for each, SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        for service in self.services.iter().rev() {
            if let Some(pid) = service.pid().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for service in self.services.iter_mut().rev() {
            if tokio::time::timeout(grace, service.child.wait())
                .await
                .is_err()
            {
                let _ = service.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_typed_values_for_their_service_only() {
        let mut config = json!({"slack": {"channel": "#x"}});
        let overrides = [
            "alerter.slack.pacing=1s".to_owned(),
            "alerter.health.watch_executors=true".to_owned(),
            "alerter.max=3".to_owned(),
            "router.max_attempts=9".to_owned(),
        ];
        apply_overrides("alerter", &mut config, &overrides).unwrap();
        assert_eq!(
            config,
            json!({"slack": {"channel": "#x", "pacing": "1s"},
                   "health": {"watch_executors": true}, "max": 3})
        );
        assert!(apply_overrides("alerter", &mut config, &["alerter".to_owned()]).is_err());
    }
}
