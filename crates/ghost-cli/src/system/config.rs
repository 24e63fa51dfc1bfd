//! The five services' configs as one value ([`SystemConfig`]) and how they are made to fit
//! together: defaults for a local system ([`system_config`]), one service credential for every
//! hop, listeners bound up front, and every service pointed at the others ([`SystemConfig::wire`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::serve::Listeners;

use super::Service;

/// Slack settings for the alerter.
#[derive(Debug, Clone)]
pub struct SlackOptions {
    /// Web API base URL, e.g. `https://slack.com/api` or a test fake.
    pub api_base_url: String,
    /// Bot token.
    pub bot_token: String,
    /// Channel to post to.
    pub channel: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// State of router, summarizer and executor live under this directory.
    pub data_dir: PathBuf,
    /// Workspaces served by the local executor (target, root); empty: no executor.
    pub workspaces: Vec<(String, PathBuf)>,
    /// Targets the gateway accepts patches for besides the workspaces' (served elsewhere, or
    /// not yet): any other target is refused with 422.
    pub targets: Vec<String>,
    /// The gateway's public HTTP address.
    pub gateway_listen: SocketAddr,
    /// The API key the gateway accepts.
    pub api_key: String,
    /// Slack, or `None` to log messages instead.
    pub slack: Option<SlackOptions>,
}

fn server_on(grpc: SocketAddr, http: SocketAddr) -> ServerConfig {
    ServerConfig {
        grpc_listen: grpc,
        http_listen: http,
        ..ServerConfig::ephemeral()
    }
}

/// `http://ADDR`, the URL one service (or a client on this machine) dials another on; a
/// listener on every interface (`0.0.0.0`, `[::]`) is dialled on loopback.
pub fn url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        other => other,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The five services' complete configs: what [`super::SystemBuilder`] starts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemConfig {
    /// The public door.
    pub gateway: gateway::GatewayConfig,
    /// The queue.
    pub router: router::RouterConfig,
    /// The executor; `None`: no workspaces, no executor.
    pub executor: Option<executor::ExecutorConfig>,
    /// Summaries.
    pub summarizer: summarizer::SummarizerConfig,
    /// Slack and alerts.
    pub alerter: alerter::AlerterConfig,
}

/// Which service-to-service URLs were set by hand (and so are not derived from the listen
/// addresses by [`SystemConfig::wire`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit {
    /// `gateway.router_url`.
    pub gateway_router: bool,
    /// `gateway.summarizer_url`.
    pub gateway_summarizer: bool,
    /// `gateway.alerter_url`.
    pub gateway_alerter: bool,
    /// `router.summarizer_url`.
    pub router_summarizer: bool,
    /// `router.alerter_url`.
    pub router_alerter: bool,
    /// `executor.router_url`.
    pub executor_router: bool,
    /// `summarizer.alerter_url`.
    pub summarizer_alerter: bool,
    /// `alerter.router_url`.
    pub alerter_router: bool,
    /// `alerter.summarizer_url`.
    pub alerter_summarizer: bool,
    /// `alerter.health.services`.
    pub alerter_health: bool,
}

impl SystemConfig {
    /// Gives every service the deployment's service credential: the one a section set by hand
    /// (`internal_token` or `internal_token_file`), else `fresh`, so every hop agrees. The local
    /// executor says Hello with it (it opens every target) unless it has a token of its own;
    /// its own gRPC side (health only) needs none. Refuses two different hand-set credentials.
    pub fn set_internal_token(&mut self, fresh: &str) -> anyhow::Result<()> {
        let mut given: Option<(Secret, Option<std::path::PathBuf>)> = None;
        for server in [
            &self.gateway.server,
            &self.router.server,
            &self.summarizer.server,
            &self.alerter.server,
        ] {
            if server.internal_token.is_empty() && server.internal_token_file.is_none() {
                continue;
            }
            let this = (
                server.internal_token.clone(),
                server.internal_token_file.clone(),
            );
            match &given {
                Some(seen) if *seen != this => anyhow::bail!(
                    "two sections set different service credentials (internal_token / \
                     internal_token_file): set it once, the same for every service, or nowhere \
                     (ghost up makes one)"
                ),
                _ => given = Some(this),
            }
        }
        let (token, file) = given.unwrap_or_else(|| (Secret::new(fresh), None));
        if let Some(executor) = &mut self.executor
            && executor.token.is_empty()
        {
            executor.token = match &file {
                Some(path) => Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(|err| {
                            anyhow::anyhow!("internal_token_file {}: {err}", path.display())
                        })?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim(),
                ),
                None => token.clone(),
            };
        }
        for server in [
            &mut self.gateway.server,
            &mut self.router.server,
            &mut self.summarizer.server,
            &mut self.alerter.server,
        ] {
            server.internal_token = token.clone();
            server.internal_token_file.clone_from(&file);
        }
        Ok(())
    }

    /// Every service's listen addresses with what they are called (`router grpc`), mutable:
    /// the ones each service binds (a service with no public HTTP routes does not bind
    /// `http_listen` while `ops_listen` is set).
    pub(super) fn listen_addresses(&mut self) -> Vec<(Service, String, &mut SocketAddr)> {
        fn each(
            service: Service,
            server: &mut ServerConfig,
            public_http: bool,
        ) -> Vec<(Service, String, &mut SocketAddr)> {
            let name = service.name();
            let mut out = vec![(service, format!("{name} grpc"), &mut server.grpc_listen)];
            match (&mut server.ops_listen, public_http) {
                (Some(ops), true) => {
                    out.push((service, format!("{name} http"), &mut server.http_listen));
                    out.push((service, format!("{name} ops"), ops));
                }
                (Some(ops), false) => out.push((service, format!("{name} ops"), ops)),
                (None, _) => out.push((service, format!("{name} http"), &mut server.http_listen)),
            }
            out
        }
        let mut out = Vec::new();
        out.extend(each(Service::Gateway, &mut self.gateway.server, true));
        out.extend(each(Service::Router, &mut self.router.server, false));
        if let Some(addr) = &mut self.router.executor_listen {
            out.push((Service::Router, "router executor".to_owned(), addr));
        }
        if let Some(executor) = &mut self.executor {
            out.extend(each(Service::Executor, &mut executor.server, false));
        }
        out.extend(each(
            Service::Summarizer,
            &mut self.summarizer.server,
            false,
        ));
        out.extend(each(Service::Alerter, &mut self.alerter.server, true));
        out
    }

    /// Every service's `[server]` section (the executor's when there is one), to change
    /// them alike.
    pub fn servers_mut(&mut self) -> Vec<&mut ServerConfig> {
        let mut servers = vec![
            &mut self.gateway.server,
            &mut self.router.server,
            &mut self.summarizer.server,
            &mut self.alerter.server,
        ];
        if let Some(executor) = &mut self.executor {
            servers.push(&mut executor.server);
        }
        servers
    }

    /// Keeps `/healthz`, `/readyz` and `/metrics` on this machine: a service whose HTTP side
    /// listens off loopback (`ghost up --listen 0.0.0.0:8080`) and has no `ops_listen` gets
    /// one on a free loopback port.
    pub fn keep_operations_local(&mut self) {
        for server in self.servers_mut() {
            if server.ops_listen.is_none() && !server.http_listen.ip().is_loopback() {
                server.ops_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
        }
    }

    /// Binds every listener now (port 0 gets a free port, written back into the config), so
    /// no port is released and bound again later; each App takes its pre-bound listeners. A
    /// bind error names the service and the address. On error, what was bound is released.
    pub fn prebind(&mut self) -> anyhow::Result<()> {
        self.prebind_only(&Service::ALL)
    }

    /// [`SystemConfig::prebind`] for the listeners of `services` alone.
    pub fn prebind_only(&mut self, services: &[Service]) -> anyhow::Result<()> {
        let mut bound = Vec::new();
        for (service, what, addr) in self.listen_addresses() {
            if !services.contains(&service) {
                continue;
            }
            match Listeners::prebind(&what, *addr) {
                Ok(real) => {
                    *addr = real;
                    bound.push(real);
                }
                Err(err) => {
                    bound.into_iter().for_each(Listeners::release);
                    return Err(anyhow::anyhow!(err));
                }
            }
        }
        Ok(())
    }

    /// Releases the pre-bound listeners of `services` that no App took (after a failed start).
    pub(super) fn release_only(&mut self, services: &[Service]) {
        for (service, _, addr) in self.listen_addresses() {
            if services.contains(&service) {
                Listeners::release(*addr);
            }
        }
    }

    /// Points every service at the others' gRPC listen addresses, except URLs set by hand.
    pub fn wire(&mut self, explicit: Explicit) {
        self.wire_only(explicit, &Service::ALL);
    }

    /// [`SystemConfig::wire`] among `services` alone: a URL of a service not in the list is
    /// left as it is (unset, or pointing at a fake or at a service elsewhere).
    pub fn wire_only(&mut self, explicit: Explicit, services: &[Service]) {
        let dial =
            |service: Service, addr: SocketAddr| services.contains(&service).then(|| url(addr));
        let router = dial(Service::Router, self.router.server.grpc_listen);
        let summarizer = dial(Service::Summarizer, self.summarizer.server.grpc_listen);
        let alerter = dial(Service::Alerter, self.alerter.server.grpc_listen);
        let set = |keep: bool, field: &mut String, value: &Option<String>| {
            if let (false, Some(value)) = (keep, value) {
                value.clone_into(field);
            }
        };
        let set_some = |keep: bool, field: &mut Option<String>, value: &Option<String>| {
            if let (false, Some(value)) = (keep, value) {
                *field = Some(value.clone());
            }
        };
        set(
            explicit.gateway_router,
            &mut self.gateway.router_url,
            &router,
        );
        set(
            explicit.gateway_summarizer,
            &mut self.gateway.summarizer_url,
            &summarizer,
        );
        set_some(
            explicit.gateway_alerter,
            &mut self.gateway.alerter_url,
            &alerter,
        );
        set_some(
            explicit.router_summarizer,
            &mut self.router.summarizer_url,
            &summarizer,
        );
        set_some(
            explicit.router_alerter,
            &mut self.router.alerter_url,
            &alerter,
        );
        if let Some(executor) = &mut self.executor {
            set(explicit.executor_router, &mut executor.router_url, &router);
        }
        set_some(
            explicit.summarizer_alerter,
            &mut self.summarizer.alerter_url,
            &alerter,
        );
        set_some(
            explicit.alerter_router,
            &mut self.alerter.router_url,
            &router,
        );
        set_some(
            explicit.alerter_summarizer,
            &mut self.alerter.summarizer_url,
            &summarizer,
        );
        if !explicit.alerter_health {
            self.alerter.health.services = [("router", router), ("summarizer", summarizer)]
                .into_iter()
                .filter_map(|(name, url)| Some((name.to_owned(), url?)))
                .collect();
        }
    }
}

/// The gateway's known targets: every workspace's and every extra target, once each.
fn gateway_targets(options: &LocalOptions) -> Vec<gateway::config::TargetConfig> {
    let names: std::collections::BTreeSet<&String> = options
        .workspaces
        .iter()
        .map(|(target, _)| target)
        .chain(&options.targets)
        .collect();
    names
        .into_iter()
        .map(|name| gateway::config::TargetConfig {
            name: name.clone(),
            aliases: Vec::new(),
            legacy_roots: Vec::new(),
        })
        .collect()
}

/// The services' configs for `options` on loopback port 0 (not yet bound): what
/// [`super::SystemBuilder::new`] starts.
pub fn system_config(options: &LocalOptions) -> SystemConfig {
    let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
    let data_dir = &options.data_dir;
    let mut alerter = alerter::AlerterConfig {
        server: server_on(ephemeral, ephemeral),
        data_dir: Some(data_dir.join("alerter")),
        ..Default::default()
    };
    if let Some(slack) = &options.slack {
        alerter.slack.api_base_url = Some(slack.api_base_url.clone());
        alerter.slack.bot_token = Secret::new(slack.bot_token.clone());
        alerter.slack.channel = slack.channel.clone();
    }
    let executor = (!options.workspaces.is_empty())
        .then(|| executor_config(data_dir, options.workspaces.clone(), ephemeral));
    SystemConfig {
        gateway: gateway::GatewayConfig {
            server: server_on(ephemeral, options.gateway_listen),
            api_key: Secret::new(options.api_key.clone()),
            targets: gateway_targets(options),
            // Runtime API keys (`ghost connect --key-scope`) are kept here.
            data_dir: Some(data_dir.join("gateway")),
            ..Default::default()
        },
        router: router_config(data_dir, server_on(ephemeral, ephemeral)),
        executor,
        summarizer: summarizer::SummarizerConfig {
            server: server_on(ephemeral, ephemeral),
            data_dir: data_dir.join("summarizer"),
            ..Default::default()
        },
        alerter,
    }
}

/// The router of a local system: its SQLite file under the data dir, a short heartbeat.
pub fn router_config(data_dir: &std::path::Path, server: ServerConfig) -> router::RouterConfig {
    router::RouterConfig {
        server,
        data_dir: data_dir.join("router"),
        heartbeat_interval: Duration::from_secs(2),
        lease_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// The executor of a local system serving `workspaces`, its state under the data dir.
pub fn executor_config(
    data_dir: &std::path::Path,
    workspaces: Vec<(String, PathBuf)>,
    listen: SocketAddr,
) -> executor::ExecutorConfig {
    executor::ExecutorConfig {
        server: server_on(listen, listen),
        executor_id: "local-executor".to_owned(),
        state_dir: data_dir.join("executor"),
        workspaces: workspaces
            .into_iter()
            .map(|(target, root)| executor::WorkspaceConfig { target, root })
            .collect(),
        reconnect_backoff: Duration::from_millis(200),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> SystemConfig {
        system_config(&LocalOptions {
            data_dir: PathBuf::from("/tmp/ghost-local-test"),
            workspaces: vec![("MAIN".to_owned(), PathBuf::from("/tmp/ghost-local-ws"))],
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: "k".to_owned(),
            targets: Vec::new(),
            slack: None,
        })
    }

    #[test]
    fn a_credential_set_in_one_section_is_everyones_and_two_different_ones_are_refused() {
        let mut fresh = system();
        fresh.set_internal_token("fresh").unwrap();
        for server in [
            &fresh.gateway.server,
            &fresh.router.server,
            &fresh.summarizer.server,
            &fresh.alerter.server,
        ] {
            assert_eq!(server.internal_token.expose(), "fresh");
        }
        let executor = fresh.executor.as_ref().unwrap();
        assert_eq!(
            executor.token.expose(),
            "fresh",
            "the local executor's Hello"
        );
        assert!(
            executor.server.internal_token.is_empty(),
            "health only: none"
        );

        let mut one = system();
        one.router.server.internal_token = Secret::new("by-hand");
        one.set_internal_token("fresh").unwrap();
        assert_eq!(one.gateway.server.internal_token.expose(), "by-hand");
        assert_eq!(one.alerter.server.internal_token.expose(), "by-hand");
        assert_eq!(one.executor.as_ref().unwrap().token.expose(), "by-hand");

        let mut two = system();
        two.router.server.internal_token = Secret::new("a");
        two.gateway.server.internal_token = Secret::new("b");
        let err = two.set_internal_token("fresh").unwrap_err().to_string();
        assert!(err.contains("different service credentials"), "{err}");
    }
    #[test]
    fn an_http_side_off_loopback_gets_a_loopback_operations_port_and_binds_what_it_serves() {
        let mut system = system();
        system.gateway.server.http_listen = SocketAddr::from(([0, 0, 0, 0], 8080));
        let chosen = SocketAddr::from(([10, 0, 0, 1], 9464));
        system.alerter.server.http_listen = SocketAddr::from(([0, 0, 0, 0], 8084));
        system.alerter.server.ops_listen = Some(chosen);
        system.keep_operations_local();
        assert_eq!(
            system.gateway.server.ops_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert_eq!(system.alerter.server.ops_listen, Some(chosen), "kept");
        assert_eq!(system.router.server.ops_listen, None, "on loopback already");

        // The router has no public HTTP routes: with ops_listen, http_listen is not bound.
        system.router.server.ops_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let names: Vec<String> = system
            .listen_addresses()
            .into_iter()
            .map(|(_, name, _)| name)
            .collect();
        for bound in [
            "gateway http",
            "gateway ops",
            "router ops",
            "alerter ops",
            "executor http",
        ] {
            assert!(names.iter().any(|name| name == bound), "{bound}: {names:?}");
        }
        assert!(!names.iter().any(|name| name == "router http"), "{names:?}");
    }
}
