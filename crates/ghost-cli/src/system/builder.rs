//! [`SystemBuilder`]: which services to start and how each is configured, then one `start`
//! that binds their listeners, wires their URLs and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::config::{Explicit, LocalOptions, SystemConfig, executor_config, system_config};
use super::{Service, System};

/// Starts any subset of the five services in this process, wired to each other.
///
/// Each service's typed config can be changed before the start ([`SystemBuilder::gateway`],
/// [`SystemBuilder::router`], …). [`SystemBuilder::start`] binds every listener of the chosen
/// services (port 0 gets a free port), points each at the others' gRPC addresses (URLs of
/// services not started, and those named in [`Explicit`], are left as they are), starts them
/// downstream first and waits until each answers `/readyz`.
pub struct SystemBuilder {
    data_dir: PathBuf,
    config: SystemConfig,
    /// The services to start, in start order.
    services: Vec<Service>,
    explicit: Explicit,
    bound: bool,
}

impl SystemBuilder {
    /// The services `options` describes on loopback port 0: all five, the executor only when
    /// `options` has workspaces.
    pub fn new(options: &LocalOptions) -> Self {
        Self::from_config(options.data_dir.clone(), system_config(options))
    }

    /// The services of `config` (`ghost up`'s, from its file and flags), state under
    /// `data_dir`: all five, the executor only when `config` has one.
    pub fn from_config(data_dir: PathBuf, config: SystemConfig) -> Self {
        let services = Service::ALL
            .into_iter()
            .filter(|service| *service != Service::Executor || config.executor.is_some())
            .collect();
        Self {
            data_dir,
            config,
            services,
            explicit: Explicit::default(),
            bound: false,
        }
    }

    /// Starts only `services` (an executor with no workspaces when none is configured).
    #[must_use]
    pub fn only(mut self, services: impl IntoIterator<Item = Service>) -> Self {
        let wanted: Vec<Service> = services.into_iter().collect();
        self.services = Service::ALL
            .into_iter()
            .filter(|service| wanted.contains(service))
            .collect();
        if wanted.contains(&Service::Executor) {
            self.ensure_executor();
        }
        self
    }

    /// Leaves the URLs marked in `explicit` as configured instead of wiring them.
    #[must_use]
    pub fn keep_urls(mut self, explicit: Explicit) -> Self {
        self.explicit = explicit;
        self
    }

    /// Changes the configs of all services at once.
    #[must_use]
    pub fn configure(mut self, adjust: impl FnOnce(&mut SystemConfig)) -> Self {
        adjust(&mut self.config);
        self
    }

    /// Changes the gateway's config.
    #[must_use]
    pub fn gateway(mut self, adjust: impl FnOnce(&mut gateway::GatewayConfig)) -> Self {
        adjust(&mut self.config.gateway);
        self
    }

    /// Changes the router's config.
    #[must_use]
    pub fn router(mut self, adjust: impl FnOnce(&mut router::RouterConfig)) -> Self {
        adjust(&mut self.config.router);
        self
    }

    /// Changes the summarizer's config.
    #[must_use]
    pub fn summarizer(mut self, adjust: impl FnOnce(&mut summarizer::SummarizerConfig)) -> Self {
        adjust(&mut self.config.summarizer);
        self
    }

    /// Changes the alerter's config.
    #[must_use]
    pub fn alerter(mut self, adjust: impl FnOnce(&mut alerter::AlerterConfig)) -> Self {
        adjust(&mut self.config.alerter);
        self
    }

    /// Changes the executor's config, and starts one (with no workspaces unless `adjust` or
    /// the options gave some).
    #[must_use]
    pub fn executor(mut self, adjust: impl FnOnce(&mut executor::ExecutorConfig)) -> Self {
        self.ensure_executor();
        if !self.services.contains(&Service::Executor) {
            let mut services = self.services.clone();
            services.push(Service::Executor);
            self = self.only(services);
        }
        if let Some(executor) = &mut self.config.executor {
            adjust(executor);
        }
        self
    }

    fn ensure_executor(&mut self) {
        if self.config.executor.is_none() {
            let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
            self.config.executor = Some(executor_config(&self.data_dir, Vec::new(), ephemeral));
        }
    }

    /// Binds the chosen services' listeners now and wires their URLs (once; [`start`] does
    /// it when not yet done), and shows the configs as they will start: the addresses bound.
    ///
    /// [`start`]: SystemBuilder::start
    pub fn bind(&mut self) -> anyhow::Result<&SystemConfig> {
        if !self.bound {
            self.config.prebind_only(&self.services)?;
            self.config.wire_only(self.explicit, &self.services);
            self.bound = true;
        }
        Ok(&self.config)
    }

    /// Binds and wires (unless [`SystemBuilder::bind`] did), starts the chosen services,
    /// downstream first, and waits until all are ready. On error, every listener bound for
    /// a service that did not start is released.
    pub async fn start(mut self) -> anyhow::Result<System> {
        self.bind()?;
        System::start(self.data_dir, self.config, &self.services).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LocalOptions {
        LocalOptions {
            data_dir: PathBuf::from("/tmp/ghost-builder-test"),
            workspaces: Vec::new(),
            targets: vec!["MAIN".to_owned()],
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: "k".to_owned(),
            slack: None,
        }
    }

    #[test]
    fn only_the_chosen_services_are_bound_and_urls_point_only_at_them() {
        let mut builder = SystemBuilder::new(&options())
            .only([Service::Gateway, Service::Router])
            .gateway(|gateway| gateway.summarizer_url = "http://127.0.0.1:9".to_owned());
        let config = builder.bind().expect("binds").clone();
        assert_ne!(config.router.server.grpc_listen.port(), 0, "bound");
        assert_ne!(config.gateway.server.http_listen.port(), 0, "bound");
        assert_eq!(
            config.summarizer.server.grpc_listen.port(),
            0,
            "not started"
        );
        assert_eq!(
            config.gateway.router_url,
            format!("http://{}", config.router.server.grpc_listen)
        );
        assert_eq!(config.gateway.summarizer_url, "http://127.0.0.1:9", "kept");
        assert_eq!(config.router.alerter_url, None, "no alerter to point at");
        assert!(config.executor.is_none());
        let mut config = config;
        config.release_only(&Service::ALL);
    }

    #[test]
    fn an_executor_hook_adds_an_executor_wired_to_the_router() {
        let mut builder = SystemBuilder::new(&options())
            .only([Service::Router])
            .executor(|executor| executor.executor_id = "hooked".to_owned());
        assert_eq!(builder.services, [Service::Router, Service::Executor]);
        let mut config = builder.bind().expect("binds").clone();
        let executor = config.executor.as_ref().expect("executor");
        assert_eq!(executor.executor_id, "hooked");
        assert_eq!(
            executor.router_url,
            format!("http://{}", config.router.server.grpc_listen)
        );
        config.release_only(&Service::ALL);
    }
}
