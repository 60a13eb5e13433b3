//! `strait ui`: serve the flow UI (service map and live flow table) of a lab on a local port.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::lab::LabName;
use crate::ui::{AGENT_TIMEOUT, BoundUi, UiState};

/// Arguments of `strait ui`.
#[derive(Debug, clap::Args)]
pub struct UiArgs {
    #[command(flatten)]
    lab: LabName,
    /// Address to serve the page on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
}

/// Runs `strait ui` until interrupted.
pub fn run(args: UiArgs) -> anyhow::Result<ExitCode> {
    let name = args.lab.name();
    let agents = crate::cli::lab::lab_agents(name)?;
    let bound = BoundUi::bind(args.listen)?;
    eprintln!(
        "strait ui: flows of lab {name} ({} agents) on http://{}/ (Ctrl-C to stop)",
        agents.len(),
        bound.local_addr()
    );
    let state = UiState {
        lab: name.to_string(),
        agents,
        agent_timeout: AGENT_TIMEOUT,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        tokio::select! {
            res = bound.serve(state) => res.context("serve the UI"),
            res = tokio::signal::ctrl_c() => res.context("wait for Ctrl-C"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
