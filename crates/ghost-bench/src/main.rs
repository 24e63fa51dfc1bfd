//! `ghost-bench`: see the crate docs.

use std::io::Write;

use clap::Parser;
use ghost_bench::BenchArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    if let Some(ghost_bench::args::BenchCommand::AgentOverhead(overhead)) = &args.command {
        let report = ghost_bench::agent_overhead::run(overhead)?;
        std::io::stdout()
            .lock()
            .write_all(report.table().as_bytes())?;
        if let Some(path) = &overhead.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        return Ok(());
    }
    let report = ghost_bench::run(&args).await?;
    std::io::stdout()
        .lock()
        .write_all(report.table().as_bytes())?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
