//! The executor binary: loads its config, starts the [`App`] and serves until SIGINT or SIGTERM.

use executor::{App, ExecutorConfig, SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: ExecutorConfig = ghost_runtime::config::load(SERVICE)?;
    let telemetry = ghost_runtime::telemetry::init(SERVICE, &config.telemetry)?;
    let app = App::build(config).await?;
    app.run(ghost_runtime::shutdown::signal()).await?;
    telemetry.shutdown();
    Ok(())
}
