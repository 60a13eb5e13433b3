//! Command-line interface: one module per subcommand, each calling library APIs only.

pub mod agent;
pub mod clustermesh;
pub mod connectivity;
pub mod lab;
pub mod observe;
pub mod policy;
pub mod trace;
pub mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Strait: a sidecar-free service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (eBPF programs + node proxy).
    Agent(agent::AgentArgs),
    /// Build and drive a lab of clusters on this machine.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Show flows recorded by the agents, like `hubble observe`.
    Observe(lab::ObserveCommand),
    /// Validate, trace and list network policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Serve a web UI over the lab's flows: service map and live flow table.
    Ui(ui::UiArgs),
    /// Connect clusters into a mesh, like `cilium clustermesh`.
    #[command(subcommand)]
    Clustermesh(clustermesh::ClustermeshCommand),
    /// Health of every cluster: agents, programs, policies, cluster mesh.
    Status(clustermesh::StatusArgs),
    /// Check the lab's paths end to end, like `cilium connectivity test`.
    #[command(subcommand)]
    Connectivity(connectivity::ConnectivityCommand),
    /// A cluster's mesh endpoint (started by `strait clustermesh enable`).
    #[command(hide = true)]
    ClustermeshEndpoint(clustermesh::EndpointArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Observe(cmd) => lab::observe(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Ui(args) => ui::run(args),
        Command::Clustermesh(cmd) => clustermesh::run(cmd),
        Command::Status(args) => clustermesh::status(args),
        Command::ClustermeshEndpoint(args) => clustermesh::endpoint(args),
        Command::Connectivity(cmd) => connectivity::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks duplicate flags (e.g. a subcommand's `--name` against the lab's) only at
        // run time, in debug builds; this makes it a test failure instead.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
