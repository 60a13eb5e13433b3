//! `strait lab …` and `strait observe`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::admin::client::AgentEndpoint;
use crate::cli::observe::ObserveArgs;
use crate::lab::Lab;
use crate::lab::topology::{DEFAULT_TOPOLOGY, Topology};

/// Selects the lab a command works on.
#[derive(Debug, Args)]
pub struct LabName {
    /// Name of the lab (several labs can run side by side).
    #[arg(long, env = "STRAIT_LAB", default_value = "strait")]
    name: String,
}

impl LabName {
    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `strait lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create the lab's clusters, nodes and agents (idempotent: restarts agents and pods that died).
    Up {
        #[command(flatten)]
        lab: LabName,
        /// Topology file; the default has clusters c1 (id 1) and c2 (id 2) of two nodes each.
        #[arg(short = 'f', long)]
        topology: Option<PathBuf>,
    },
    /// Remove everything of the lab: processes, namespaces, cgroups, pinned BPF objects.
    Down {
        #[command(flatten)]
        lab: LabName,
    },
    /// Show nodes, agents, pods and services.
    Status {
        #[command(flatten)]
        lab: LabName,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Apply Kubernetes manifests (Namespace, Pod, Deployment, Service) to a cluster.
    Apply {
        #[command(flatten)]
        lab: LabName,
        /// Manifest file or directory (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Cluster to apply to.
        #[arg(long, default_value = "c1")]
        cluster: String,
    },
    /// Delete the objects named in manifests from a cluster.
    Delete {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "c1")]
        cluster: String,
    },
    /// Run a command in a pod: CLUSTER/NAMESPACE/POD or CLUSTER/NAMESPACE/deploy/NAME.
    Exec {
        #[command(flatten)]
        lab: LabName,
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Issue a client certificate of a cluster's CA for the admin API's TLS listener (:9877),
    /// writing ca.crt, client.crt and client.key (0600) to a directory.
    ClientCert {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, default_value = "c1")]
        cluster: String,
        /// Client name, in the URI SAN spiffe://<cluster>/client/<client>.
        #[arg(long, default_value = "operator")]
        client: String,
        /// Directory to write to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// The built-in echo workload (started by the lab inside pods).
    #[command(hide = true)]
    Workload(WorkloadArgs),
}

/// Arguments of the hidden `lab workload` command.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    #[arg(long)]
    cluster: String,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    pod: String,
    #[arg(long)]
    node: String,
    #[arg(long)]
    ip: std::net::Ipv4Addr,
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Created once every port is bound.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// `strait observe` with the lab to read from.
#[derive(Debug, Args)]
pub struct ObserveCommand {
    #[command(flatten)]
    lab: LabName,
    #[command(flatten)]
    args: ObserveArgs,
}

/// Runs a `strait lab` subcommand.
pub fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up { lab, topology } => {
            let topo = match &topology {
                Some(p) => Topology::from_file(p)?,
                None => Topology::parse("default topology", DEFAULT_TOPOLOGY)?,
            };
            for (a, b, why) in topo.islands() {
                eprintln!(
                    "warning: clusters {a} and {b} are islands ({why}): they cannot be connected"
                );
            }
            let started = Instant::now();
            let lab = Lab::new(&lab.name)?;
            let st = lab.up(topo)?;
            println!(
                "lab {} is up ({:.1}s)",
                st.name,
                started.elapsed().as_secs_f64()
            );
            for c in &st.topology.clusters {
                println!(
                    "  cluster {} (id {}): pods {}, services {}",
                    c.name, c.id, c.pod_cidr, c.service_cidr
                );
                for n in &c.nodes {
                    println!(
                        "    node {:<8} underlay {:<15} pods {:<18} agent pid {}",
                        n.name,
                        n.underlay_ip,
                        n.pod_cidr,
                        st.agents
                            .get(&format!("{}/{}", c.name, n.name))
                            .map_or("-".into(), |p| p.to_string())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { lab } => {
            Lab::new(&lab.name)?.down()?;
            println!("lab {} is down", lab.name);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab, output } => {
            let status = Lab::new(&lab.name)?.status()?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Apply {
            lab,
            files,
            cluster,
        } => {
            for key in Lab::new(&lab.name)?.apply(&cluster, &files, false)? {
                println!("{key} configured in {cluster}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Delete {
            lab,
            files,
            cluster,
        } => {
            for key in Lab::new(&lab.name)?.apply(&cluster, &files, true)? {
                println!("{key} deleted from {cluster}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            lab,
            target,
            command,
        } => {
            let status = Lab::new(&lab.name)?.exec(&target, &command)?;
            Ok(ExitCode::from(
                status
                    .code()
                    .and_then(|c| u8::try_from(c).ok())
                    .unwrap_or(1),
            ))
        }
        LabCommand::ClientCert {
            lab,
            cluster,
            client,
            out,
        } => {
            client_cert(&Lab::new(&lab.name)?, &cluster, &client, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Workload(w) => workload(w),
    }
}

/// Writes a CA certificate, a client certificate valid as long as a node's, and its key.
fn client_cert(lab: &Lab, cluster: &str, name: &str, out: &std::path::Path) -> anyhow::Result<()> {
    use crate::pki::{ClusterCa, generate_key, write_file};
    let paths = lab.paths();
    let ca = ClusterCa::load(
        &paths.cluster_ca_cert(cluster),
        &paths.cluster_ca_key(cluster),
    )
    .with_context(|| format!("CA of cluster {cluster} (is the lab up?)"))?;
    let key = generate_key()?;
    let validity = std::time::Duration::from_secs(crate::config::DEFAULT_CERT_VALIDITY_SECS);
    let cert = ca.issue_client(cluster, name, &key, validity)?;
    write_file(&out.join("ca.crt"), ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&out.join("client.crt"), cert.as_bytes(), 0o644)?;
    write_file(
        &out.join("client.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    println!(
        "wrote ca.crt, client.crt ({}, valid 24h) and client.key to {}",
        crate::pki::client_uri(cluster, name),
        out.display()
    );
    Ok(())
}

fn print_status(s: &crate::lab::LabStatus) {
    println!("lab {}", s.name);
    println!(
        "{:<6} {:<8} {:<8} {:<6} {:<9}",
        "CLUSTER", "NODE", "AGENT", "READY", "REVISION"
    );
    for a in &s.agents {
        let ready = a
            .status
            .as_ref()
            .and_then(|v| v.get("ready"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let rev = a
            .status
            .as_ref()
            .and_then(|v| v.get("source_revision"))
            .map_or("-".into(), |v| v.to_string());
        println!(
            "{:<7} {:<8} {:<8} {:<6} {:<9}",
            a.cluster,
            a.node,
            if a.running { "running" } else { "stopped" },
            ready,
            rev
        );
    }
    println!();
    println!(
        "{:<7} {:<12} {:<32} {:<8} {:<15} {:<6}",
        "CLUSTER", "NAMESPACE", "POD", "NODE", "IP", "READY"
    );
    for p in &s.pods {
        println!(
            "{:<7} {:<12} {:<32} {:<8} {:<15} {:<6}",
            p.cluster, p.namespace, p.name, p.node, p.ip, p.ready
        );
    }
    println!();
    println!(
        "{:<12} {:<16} {:<15} PORTS",
        "NAMESPACE", "SERVICE", "CLUSTER-IP"
    );
    for svc in &s.services {
        let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
        println!(
            "{:<12} {:<16} {:<15} {}",
            svc.namespace,
            svc.name,
            svc.cluster_ip,
            ports.join(",")
        );
    }
}

fn workload(w: WorkloadArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let cfg = crate::lab::workload::EchoConfig {
            cluster: w.cluster,
            namespace: w.namespace,
            pod: w.pod,
            node: w.node,
            ip: w.ip,
            ports: if w.ports.is_empty() {
                vec![80]
            } else {
                w.ports
            },
        };
        let bound = crate::lab::workload::bind_echo(cfg).await?;
        if let Some(f) = &w.ready_file {
            std::fs::write(f, b"").with_context(|| format!("write {}", f.display()))?;
        }
        bound.serve().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The admin endpoints of every agent of lab `name`, which must be up.
pub fn lab_agents(name: &str) -> anyhow::Result<Vec<AgentEndpoint>> {
    let lab = Lab::new(name)?;
    let st = lab
        .load()?
        .with_context(|| format!("lab {name:?} is not up"))?;
    Ok(st
        .topology
        .all_nodes()
        .map(|(c, n)| AgentEndpoint {
            cluster: c.name.clone(),
            node: n.name.clone(),
            socket: lab.paths().admin_socket(&c.name, &n.name),
        })
        .collect())
}

/// Runs `strait observe` against every agent of the lab.
pub fn observe(cmd: ObserveCommand) -> anyhow::Result<ExitCode> {
    let agents = lab_agents(&cmd.lab.name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(crate::cli::observe::run(&cmd.args, agents))?;
    Ok(ExitCode::SUCCESS)
}
