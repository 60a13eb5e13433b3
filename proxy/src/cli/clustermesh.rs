//! `strait clustermesh …` (Cilium's verbs, on the lab's clusters), the hidden
//! `strait clustermesh-endpoint` the lab runs per cluster, and `strait status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cli::lab::LabName;
use crate::config::MeshEndpointConfig;
use crate::lab::Lab;
use crate::lab::meshstatus::MeshStatus;

/// `strait clustermesh` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClustermeshCommand {
    /// Start the cluster's mesh endpoint (QUIC, mutual TLS from the cluster's CA). Idempotent.
    Enable {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, visible_alias = "context")]
        cluster: String,
    },
    /// Connect two clusters both ways: exchange CAs and mesh endpoint addresses.
    Connect(Pair),
    /// Disconnect two clusters: each drops the other's state at once.
    Disconnect(Pair),
    /// Per remote cluster: agents connected and ready, nodes, endpoints, identities, services.
    Status {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, visible_alias = "context")]
        cluster: String,
        /// Wait until the mesh is ready (exit non-zero if it is not within --wait-duration).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait_duration: Duration,
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

/// Two clusters of a connect or disconnect.
#[derive(Debug, Args)]
pub struct Pair {
    #[command(flatten)]
    lab: LabName,
    #[arg(long, visible_alias = "context")]
    cluster: String,
    #[arg(long, visible_alias = "destination-context")]
    destination_cluster: String,
}

/// Arguments of the hidden `strait clustermesh-endpoint`.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// Mesh endpoint configuration (JSON).
    #[arg(long)]
    config: PathBuf,
}

/// Arguments of `strait status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    lab: LabName,
    /// Only this cluster (default: every cluster of the lab).
    #[arg(long, visible_alias = "context")]
    cluster: Option<String>,
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

/// Runs a `strait clustermesh` subcommand.
pub fn run(cmd: ClustermeshCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClustermeshCommand::Enable { lab, cluster } => {
            let e = Lab::new(lab.name())?.mesh_enable(&cluster)?;
            let how = if e.started {
                "started"
            } else {
                "already running"
            };
            println!(
                "✅ Cluster mesh enabled in cluster {cluster}: mesh endpoint {how}, listening on {} (QUIC, mutual TLS)",
                e.listen
            );
            Ok(ExitCode::SUCCESS)
        }
        ClustermeshCommand::Connect(p) => {
            Lab::new(p.lab.name())?.mesh_connect(&p.cluster, &p.destination_cluster)?;
            println!(
                "✅ Connected cluster {} and cluster {}: CAs and mesh endpoints exchanged both ways",
                p.cluster, p.destination_cluster
            );
            println!(
                "   run `strait clustermesh status --cluster {} --wait` to wait for the sync",
                p.cluster
            );
            Ok(ExitCode::SUCCESS)
        }
        ClustermeshCommand::Disconnect(p) => {
            Lab::new(p.lab.name())?.mesh_disconnect(&p.cluster, &p.destination_cluster)?;
            println!(
                "✅ Disconnected cluster {} and cluster {}",
                p.cluster, p.destination_cluster
            );
            Ok(ExitCode::SUCCESS)
        }
        ClustermeshCommand::Status {
            lab,
            cluster,
            wait,
            wait_duration,
            output,
        } => {
            let lab = Lab::new(lab.name())?;
            let deadline = Instant::now() + wait_duration;
            let status = loop {
                let (s, _) = lab.mesh_status(&cluster)?;
                if s.ready || !wait || Instant::now() >= deadline {
                    break s;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status));
            }
            Ok(if status.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Runs the mesh endpoint until it is stopped.
pub fn endpoint(args: EndpointArgs) -> anyhow::Result<ExitCode> {
    let cfg = MeshEndpointConfig::from_file(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = crate::clustermesh::run(cfg) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cilium clustermesh status`-like text.
pub fn render(s: &MeshStatus) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    match (s.endpoint, s.endpoint_running) {
        (Some(addr), true) => {
            line("✅ Cluster access information is available:".into());
            line(format!("  - {addr} (QUIC, mutual TLS)"));
        }
        (Some(addr), false) => line(format!("❌ Mesh endpoint {addr} is not running")),
        (None, _) => line(format!(
            "❌ Cluster mesh is not enabled in cluster {}",
            s.cluster
        )),
    }
    let mark = if s.agents_answering == s.agents {
        "✅"
    } else {
        "❌"
    };
    line(format!(
        "{mark} {}/{} agents of cluster {} answer",
        s.agents_answering, s.agents, s.cluster
    ));
    if s.remotes.is_empty() {
        line("🔌 No cluster connected".into());
    } else {
        line("🔌 Cluster Connections:".into());
    }
    for r in &s.remotes {
        let n = s.agents;
        line(format!(
            "  - {}: {}/{n} configured, {}/{n} connected, {}/{n} ready{}",
            r.cluster,
            r.configured,
            r.connected,
            r.ready,
            r.endpoint
                .as_deref()
                .map(|e| format!(" (endpoint {e})"))
                .unwrap_or_default()
        ));
        line(format!(
            "    nodes {}, endpoints {}, identities {}, global services {}; last sync {}; failures {}",
            r.nodes,
            r.endpoints,
            r.identities,
            r.services,
            r.last_sync_secs_ago
                .map_or("never".into(), |a| format!("{a:.1}s ago")),
            r.failures
        ));
        if r.restored > 0 {
            line(format!(
                "    {}/{n} agents serve the state kept from before their restart (sync pending)",
                r.restored
            ));
        }
        if r.withdrawn > 0 {
            line(format!(
                "    {}/{n} agents withdrew its state after the TTL",
                r.withdrawn
            ));
        }
        for e in &r.errors {
            line(format!("    ❌ {e}"));
        }
    }
    if !s.remotes.is_empty() {
        let svc: Vec<usize> = s.remotes.iter().map(|r| r.services).collect();
        let (min, max) = (
            svc.iter().min().copied().unwrap_or(0),
            svc.iter().max().copied().unwrap_or(0),
        );
        let avg = svc.iter().sum::<usize>() as f64 / svc.len() as f64;
        line(format!(
            "🔀 Global services: [ min:{min} / avg:{avg:.1} / max:{max} ]"
        ));
    }
    if s.ready {
        line(format!("✅ Cluster mesh of {} is ready", s.cluster));
    } else {
        for p in &s.problems {
            line(format!("❌ {p}"));
        }
    }
    out
}

/// `strait status`: agents, programs, policies and mesh per cluster; non-zero when unhealthy.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let lab = Lab::new(args.lab.name())?;
    let clusters = match args.cluster {
        Some(c) => vec![c],
        None => lab.cluster_names()?,
    };
    let mut healthy = true;
    let mut docs = Vec::new();
    for c in &clusters {
        let (mesh, answers) = lab.mesh_status(c)?;
        let mut problems = Vec::new();
        let (mut programs, mut attached, mut policies, mut ready_agents) = (0, 0, 0, 0);
        for (node, a) in &answers {
            let Some(a) = a else {
                problems.push(format!("agent {c}/{node} does not answer"));
                continue;
            };
            if a["ready"].as_bool() == Some(true) {
                ready_agents += 1;
            } else {
                problems.push(format!("agent {c}/{node} has not installed a revision"));
            }
            for p in a["programs"].as_array().into_iter().flatten() {
                programs += 1;
                if p["attached"].as_bool() == Some(true) {
                    attached += 1;
                } else {
                    problems.push(format!(
                        "agent {c}/{node}: program {} is not attached",
                        p["name"].as_str().unwrap_or("?")
                    ));
                }
            }
            policies = policies.max(a["policy"]["policies"].as_u64().unwrap_or(0));
        }
        // The mesh counts only where it is enabled.
        if mesh.endpoint.is_some() {
            problems.extend(
                mesh.problems
                    .iter()
                    .filter(|p| !p.starts_with("agent "))
                    .cloned(),
            );
        }
        healthy &= problems.is_empty();
        docs.push(serde_json::json!({
            "cluster": c,
            "healthy": problems.is_empty(),
            "agents": {"total": answers.len(), "ready": ready_agents},
            "programs": {"total": programs, "attached": attached},
            "policies": policies,
            "mesh": mesh,
            "problems": problems,
        }));
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    } else {
        for d in &docs {
            let ok = |b: bool| if b { "✅" } else { "❌" };
            println!("Cluster {}", d["cluster"].as_str().unwrap_or("?"));
            let (ar, at) = (&d["agents"]["ready"], &d["agents"]["total"]);
            println!("  {} Agents:   {ar}/{at} ready", ok(ar == at));
            let (pa, pt) = (&d["programs"]["attached"], &d["programs"]["total"]);
            println!("  {} Programs: {pa}/{pt} attached", ok(pa == pt));
            println!("  ℹ️  Policies: {}", d["policies"]);
            let mesh = &d["mesh"];
            if mesh["endpoint"].is_null() {
                println!("  ➖ Cluster mesh: disabled");
            } else {
                let remotes: Vec<String> = mesh["remotes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "{} {}/{} ready",
                            r["cluster"].as_str().unwrap_or("?"),
                            r["ready"],
                            mesh["agents"]
                        )
                    })
                    .collect();
                println!(
                    "  {} Cluster mesh: endpoint {}; {}",
                    ok(mesh["ready"] == true),
                    mesh["endpoint"].as_str().unwrap_or("?"),
                    if remotes.is_empty() {
                        "no cluster connected".into()
                    } else {
                        remotes.join(", ")
                    }
                );
            }
            for p in d["problems"].as_array().into_iter().flatten() {
                println!("  ❌ {}", p.as_str().unwrap_or("?"));
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
