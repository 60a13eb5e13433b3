//! `strait agent`: one per node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::AgentConfig;

/// Arguments of `strait agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Agent configuration (JSON).
    #[arg(long)]
    config: PathBuf,
}

/// Runs the agent until it is stopped.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = AgentConfig::from_file(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = crate::agent::run(cfg) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
