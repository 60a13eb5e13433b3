//! `strait policy trace`: one flow judged as the agents judge it, within a cluster or across two
//! connected clusters. Across clusters the source cluster's agents judge egress and the
//! destination cluster's agents judge ingress (as the kernel path does: the remote node judges
//! ingress by identity), each against its universe as its agents hold it once connected: the
//! synced clusters' identities are built by the mesh source's own path
//! ([`sources::mesh::synced_update`]) and compiled by the agents' compiler.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{ArgAction, Args};

use super::policy::{Output, load_policies};
use crate::cli::lab::LabName;
use crate::compile::Compiler;
use crate::identity::reserved;
use crate::lab::Lab;
use crate::model::http::RequestInfo;
use crate::model::{ClusterState, Object as ModelObject, Store, Update};
use crate::policy::{DirOutcome, Engine, Policy, PolicyVerdict};
use crate::sources;

/// Arguments of `strait policy trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    lab: LabName,
    /// Source pod, `CLUSTER/NAMESPACE/POD` (or `CLUSTER/NAMESPACE/deploy/NAME`).
    #[arg(long)]
    src: String,
    /// Destination pod (`CLUSTER/NAMESPACE/POD`, `CLUSTER/NAMESPACE/deploy/NAME`) or IPv4
    /// address; a pod of another cluster is traced across the mesh if the clusters are connected.
    #[arg(long)]
    dst: String,
    /// Destination port.
    #[arg(long)]
    dport: u16,
    /// TCP or UDP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// HTTP method of a request to judge against L7 rules.
    #[arg(long, requires = "http_path")]
    http_method: Option<String>,
    /// HTTP path (with query) of that request.
    #[arg(long, requires = "http_method")]
    http_path: Option<String>,
    /// Also consider the policies in these files, as if applied (in every cluster traced).
    #[arg(short = 'f', long = "policy")]
    policy_files: Vec<PathBuf>,
    /// Endpoint selectors without `io.cilium.k8s.policy.cluster` select only the local
    /// cluster, as the agents' option of the same name (default true, as Cilium ≥ 1.18).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    policy_default_local_cluster: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// One cluster of the lab as its state file gives it: state and the clusters its agents sync.
#[derive(Debug, Clone)]
pub(crate) struct LabCluster {
    pub state: ClusterState,
    pub synced: BTreeSet<String>,
}

/// A traced end: its name for humans, identity and the cluster it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct End {
    pub name: String,
    pub identity: u32,
    pub cluster: String,
}

/// The outcome of a trace before any HTTP request is judged.
#[derive(Debug, Clone)]
pub(crate) struct Traced {
    pub src: End,
    pub dst: End,
    pub verdict: PolicyVerdict,
    /// The clusters whose agents judged egress and ingress.
    pub egress_by: String,
    pub ingress_by: String,
}

/// What a trace asks, parsed from the arguments.
#[derive(Debug, Clone)]
pub(crate) struct Query<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    pub proto: u8,
    pub dport: u16,
    pub extra: &'a [Policy],
    pub default_local_cluster: bool,
}

/// Runs `strait policy trace`.
pub fn run(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let extra = load_policies(&args.policy_files)?;
    let clusters = lab_clusters(&args.lab)?;
    let proto = match args.protocol.to_ascii_uppercase().as_str() {
        "TCP" => strait_ebpf::abi::IPPROTO_TCP,
        "UDP" => strait_ebpf::abi::IPPROTO_UDP,
        "SCTP" => strait_ebpf::abi::IPPROTO_SCTP,
        other => bail!("--protocol {other:?}: expected TCP, UDP or SCTP"),
    };
    let t = trace(
        &clusters,
        &Query {
            src: &args.src,
            dst: &args.dst,
            proto,
            dport: args.dport,
            extra: &extra,
            default_local_cluster: args.policy_default_local_cluster,
        },
    )?;
    print(args, &t);
    Ok(ExitCode::SUCCESS)
}

/// Every cluster of the lab, from its state file.
fn lab_clusters(lab: &LabName) -> anyhow::Result<Vec<LabCluster>> {
    let lab_name = lab.name();
    let l = Lab::new(lab_name)?;
    let st = l
        .load()?
        .with_context(|| format!("lab {lab_name:?} is not up"))?;
    let mut out = Vec::new();
    for c in &st.topology.clusters {
        let file = l.paths().cluster_state_file(&c.name);
        let (state, mesh) = sources::file::read_with_mesh(&file, &c.name)?;
        let synced = mesh
            .into_iter()
            .flat_map(|m| m.peers)
            .filter(|p| p.sync)
            .map(|p| p.name)
            .collect();
        out.push(LabCluster { state, synced });
    }
    Ok(out)
}

/// Judges the flow of `q` in `clusters`: egress by the source's cluster, ingress by the
/// destination's, each as its agents see the mesh.
pub(crate) fn trace(clusters: &[LabCluster], q: &Query<'_>) -> anyhow::Result<Traced> {
    let find = |name: &str| clusters.iter().find(|c| c.state.cluster.name == name);
    let src_cluster = q.src.split('/').next().unwrap_or_default();
    let sc = find(src_cluster)
        .with_context(|| format!("--src {:?}: no cluster {src_cluster:?} in the lab", q.src))?;
    let dc = match q.dst.parse::<Ipv4Addr>() {
        // An address is judged where a pod holds it, the source's cluster first.
        Ok(ip) => std::iter::once(sc)
            .chain(clusters.iter())
            .find(|c| c.state.endpoints.iter().any(|e| e.ip == ip))
            .unwrap_or(sc),
        Err(_) => {
            let name = q.dst.split('/').next().unwrap_or_default();
            find(name)
                .with_context(|| format!("--dst {:?}: no cluster {name:?} in the lab", q.dst))?
        }
    };
    let (s, d) = (&sc.state.cluster.name, &dc.state.cluster.name);
    if s != d && !(sc.synced.contains(d) && dc.synced.contains(s)) {
        bail!(
            "clusters {s} and {d} are not connected, so no policy of one judges {} of the other: \
             connect them first (`strait clustermesh connect --cluster {s} --destination-cluster {d}`)",
            if q.dst.parse::<Ipv4Addr>().is_ok() {
                "an address"
            } else {
                "a pod"
            }
        );
    }
    let src_engine = engine_for(clusters, sc, q)?;
    let src = resolve(clusters, sc, &src_engine, q.src).context("--src")?;
    let dst_engine = match s == d {
        true => src_engine.clone(),
        false => engine_for(clusters, dc, q)?,
    };
    let dst = resolve(clusters, dc, &dst_engine, q.dst).context("--dst")?;
    let egress = src_engine
        .verdict(src.identity, dst.identity, q.proto, q.dport)
        .egress;
    let ingress = dst_engine
        .verdict(src.identity, dst.identity, q.proto, q.dport)
        .ingress;
    Ok(Traced {
        src,
        dst,
        verdict: PolicyVerdict { egress, ingress },
        egress_by: s.clone(),
        ingress_by: d.clone(),
    })
}

/// The engine `c`'s agents run once synced with the clusters they are connected to, with
/// `q.extra` policies replacing applied ones of the same kind and name; compiled by the agents'
/// own compile path.
fn engine_for(
    clusters: &[LabCluster],
    c: &LabCluster,
    q: &Query<'_>,
) -> anyhow::Result<Arc<Engine>> {
    let store = Store::new();
    store.apply(Update::ReplaceCluster(c.state.clone()));
    for peer in clusters
        .iter()
        .filter(|p| c.synced.contains(&p.state.cluster.name))
    {
        store.apply(sources::mesh::synced_update(&peer.state));
    }
    for p in q.extra {
        store.apply(Update::Upsert(ModelObject::Policy(p.clone())));
    }
    let snap = store.current().context("empty cluster state")?;
    let mut compiler = Compiler::new("").policy_default_local_cluster(q.default_local_cluster);
    compiler.compile(&snap)?;
    compiler.engine().cloned().context("nothing compiled")
}

/// `who` as cluster `c` sees it: a pod of `c` by name, or an address (a pod of `c`, a node of
/// `c` or of a synced cluster as `remote-node`, else what `c`'s universe makes of it).
fn resolve(
    clusters: &[LabCluster],
    c: &LabCluster,
    engine: &Engine,
    who: &str,
) -> anyhow::Result<End> {
    let state = &c.state;
    let cluster = state.cluster.name.clone();
    if let Ok(ip) = who.parse::<Ipv4Addr>() {
        if let Some(e) = state.endpoints.iter().find(|e| e.ip == ip) {
            return Ok(End {
                name: format!("{cluster}/{}/{} ({ip})", e.namespace, e.name),
                identity: e.identity,
                cluster,
            });
        }
        let seen = clusters.iter().filter(|p| {
            p.state.cluster.name == cluster || c.synced.contains(&p.state.cluster.name)
        });
        let on_node = seen
            .flat_map(|p| &p.state.nodes)
            .any(|n| n.gateway == ip || n.underlay_ip == ip);
        let identity = match on_node {
            true => reserved::REMOTE_NODE,
            false => engine.universe.identity_of_ip(ip),
        };
        return Ok(End {
            name: ip.to_string(),
            identity,
            cluster,
        });
    }
    let parts: Vec<&str> = who.split('/').collect();
    let (_, ns, pod, deployment) = match parts[..] {
        [c, ns, pod] => (c, ns, pod, false),
        [c, ns, "deploy", name] => (c, ns, name, true),
        _ => bail!(
            "{who:?}: expected CLUSTER/NAMESPACE/POD, CLUSTER/NAMESPACE/deploy/NAME or an IPv4 address"
        ),
    };
    let e = state
        .endpoints
        .iter()
        .filter(|e| e.namespace == ns)
        .find(|e| match deployment {
            true => e.workload.as_deref() == Some(pod),
            false => e.name == pod,
        })
        .with_context(|| format!("{who:?}: no such pod"))?;
    Ok(End {
        name: format!("{cluster}/{}/{}", e.namespace, e.name),
        identity: e.identity,
        cluster,
    })
}

/// One direction's outcome for humans.
pub(crate) fn outcome_text(o: &DirOutcome) -> String {
    match o {
        DirOutcome::NotEnforced => "not enforced (no policy selects it in this direction)".into(),
        DirOutcome::Allowed { rules, http } => {
            let mut s = if rules.is_empty() {
                "ALLOWED (enforced without default deny, no deny rule matches)".to_string()
            } else {
                format!("ALLOWED by {}", rules.join("; "))
            };
            if let Some(h) = http {
                let names: Vec<&str> = h.iter().map(|(r, _)| &**r).collect();
                s.push_str(&format!(
                    "; requests judged by the HTTP rules of {}",
                    names.join("; ")
                ));
            }
            s
        }
        DirOutcome::Denied { rules } => format!("DENIED by {}", rules.join("; ")),
        DirOutcome::DefaultDenied { selected_by } => format!(
            "DENIED: default deny, selected by {} and no rule allows it",
            selected_by.join(", ")
        ),
    }
}

fn print(args: &TraceArgs, t: &Traced) {
    let v = &t.verdict;
    let request = args.http_method.as_ref().map(|m| RequestInfo {
        method: m.clone(),
        path: args.http_path.clone().unwrap_or_default(),
        host: None,
        headers: vec![],
    });
    let (allowed, http) = match (&request, v.needs_l7()) {
        (Some(req), true) => {
            let (ok, rules) = v.judge_http(req);
            (ok, Some((ok, rules)))
        }
        _ => (v.allowed(), None),
    };
    let verdict = if allowed { "ALLOWED" } else { "DENIED" };
    let (src, dst) = (&t.src, &t.dst);
    let across = t.egress_by != t.ingress_by;
    match args.output {
        Output::Json => {
            let j = serde_json::json!({
                "source": {"name": src.name, "identity": src.identity, "cluster": src.cluster},
                "destination": {"name": dst.name, "identity": dst.identity, "cluster": dst.cluster},
                "protocol": args.protocol.to_ascii_uppercase(),
                "dport": args.dport,
                "egress": outcome_text(&v.egress),
                "ingress": outcome_text(&v.ingress),
                "egress_judged_by": t.egress_by,
                "ingress_judged_by": t.ingress_by,
                "across_clusters": across,
                "l7_required": v.needs_l7(),
                "http": http.as_ref().map(|(ok, rules)| serde_json::json!({"allowed": ok, "rules": rules})),
                "rules": v.deciding_rules(),
                "verdict": verdict,
            });
            println!("{j}");
        }
        Output::Table => {
            println!(
                "Tracing {} (identity {}) -> {} (identity {}) {}/{}",
                src.name,
                src.identity,
                dst.name,
                dst.identity,
                args.protocol.to_ascii_uppercase(),
                args.dport
            );
            let by = |c: &str| match across {
                true => format!(" (judged by cluster {c})"),
                false => String::new(),
            };
            println!(
                "  egress of {}{}: {}",
                src.name,
                by(&t.egress_by),
                outcome_text(&v.egress)
            );
            println!(
                "  ingress of {}{}: {}",
                dst.name,
                by(&t.ingress_by),
                outcome_text(&v.ingress)
            );
            match (&request, &http) {
                (Some(req), Some((ok, rules))) => println!(
                    "  HTTP {} {}: {} ({})",
                    req.method,
                    req.path,
                    if *ok { "allowed" } else { "403 Access denied" },
                    rules.join("; ")
                ),
                (None, _) if v.needs_l7() => println!(
                    "  L7: requests are judged by HTTP rules (pass --http-method/--http-path)"
                ),
                _ => {}
            }
            println!("Final verdict: {verdict}");
        }
    }
}

#[cfg(test)]
mod tests;
