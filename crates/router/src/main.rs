//! The router binary: loads its config, starts the [`App`] and serves until SIGINT or SIGTERM.

use router::{App, RouterConfig, SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: RouterConfig = ghost_runtime::config::load(SERVICE)?;
    let telemetry = ghost_runtime::telemetry::init(SERVICE, &config.telemetry)?;
    let app = App::build(config).await?;
    app.run(ghost_runtime::shutdown::signal()).await?;
    telemetry.shutdown();
    Ok(())
}
