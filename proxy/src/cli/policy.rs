//! `strait policy validate | trace | get`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::lab::LabName;
use crate::compile::Compiler;
use crate::identity::reserved;
use crate::lab::Lab;
use crate::lab::manifest::{self, Object};
use crate::model::http::RequestInfo;
use crate::model::{ClusterState, Object as ModelObject, Store, Update};
use crate::policy::engine::SubjectPolicy;
use crate::policy::{DirOutcome, Engine, Policy, PolicyVerdict};

/// `strait policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files without applying them; errors name the file, field and reason.
    Validate {
        /// Files or directories of YAML.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the verdict for a flow and the rules that decide it, like `cilium policy trace`.
    Trace(TraceArgs),
    /// List what is in force per endpoint.
    Get {
        #[command(flatten)]
        lab: LabName,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Arguments of `strait policy trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    lab: LabName,
    /// Source pod, `CLUSTER/NAMESPACE/POD` (or `CLUSTER/NAMESPACE/deploy/NAME`).
    #[arg(long)]
    src: String,
    /// Destination pod (`CLUSTER/NAMESPACE/POD`, `CLUSTER/NAMESPACE/deploy/NAME`) or IPv4 address.
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
    /// Also consider the policies in these files, as if applied.
    #[arg(short = 'f', long = "policy")]
    policy_files: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Runs a `strait policy` subcommand.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate { files } => validate(&files),
        PolicyCommand::Trace(args) => trace(&args),
        PolicyCommand::Get {
            lab,
            cluster,
            output,
        } => get(&lab, cluster.as_deref(), output),
    }
}

fn load_policies(files: &[PathBuf]) -> anyhow::Result<Vec<Policy>> {
    let mut out = Vec::new();
    for f in files {
        for (_, obj) in manifest::load_path(f)? {
            if let Object::Policy { policy, .. } = obj {
                out.push(*policy);
            }
        }
    }
    Ok(out)
}

fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut count = 0;
    for f in files {
        for (origin, obj) in manifest::load_path(f)? {
            match obj {
                Object::Policy { policy: p, .. } => {
                    let rules: usize = p.specs.iter().map(|s| s.rules.len()).sum();
                    println!(
                        "{}: document {}: {} {} is valid ({rules} rules)",
                        origin.file,
                        origin.doc,
                        p.kind.as_str(),
                        p.key()
                    );
                    count += 1;
                }
                other => println!(
                    "{}: document {}: {} {} is not a policy (skipped)",
                    origin.file,
                    origin.doc,
                    other.kind(),
                    other.key()
                ),
            }
        }
    }
    println!("{count} policies valid");
    Ok(ExitCode::SUCCESS)
}

fn cluster_states(lab: &LabName) -> anyhow::Result<Vec<ClusterState>> {
    let lab_name = lab.name();
    let l = Lab::new(lab_name)?;
    let st = l
        .load()?
        .with_context(|| format!("lab {lab_name:?} is not up"))?;
    let mut out = Vec::new();
    for c in &st.topology.clusters {
        let file = l.paths().cluster_state_file(&c.name);
        out.push(crate::sources::file::read(&file, &c.name)?);
    }
    Ok(out)
}

/// The engine the cluster's agents run, with `extra` policies replacing applied ones of the same
/// kind and name; compiled by the agents' own compile path.
fn engine_for(state: &ClusterState, extra: &[Policy]) -> anyhow::Result<Arc<Engine>> {
    let store = Store::new();
    store.apply(Update::ReplaceCluster(state.clone()));
    for p in extra {
        store.apply(Update::Upsert(ModelObject::Policy(p.clone())));
    }
    let snap = store.current().context("empty cluster state")?;
    let mut compiler = Compiler::new("");
    compiler.compile(&snap)?;
    compiler.engine().cloned().context("nothing compiled")
}

/// A traced end: its name for humans, identity and address.
struct End {
    name: String,
    identity: u32,
}

fn resolve(state: &ClusterState, engine: &Engine, who: &str) -> anyhow::Result<End> {
    if let Ok(ip) = who.parse::<Ipv4Addr>() {
        if let Some(e) = state.endpoints.iter().find(|e| e.ip == ip) {
            return Ok(End {
                name: format!("{}/{}/{} ({ip})", state.cluster.name, e.namespace, e.name),
                identity: e.identity,
            });
        }
        let identity = state
            .nodes
            .iter()
            .find(|n| n.gateway == ip || n.underlay_ip == ip)
            .map(|_| reserved::REMOTE_NODE)
            .unwrap_or_else(|| engine.universe.identity_of_ip(ip));
        return Ok(End {
            name: ip.to_string(),
            identity,
        });
    }
    let parts: Vec<&str> = who.split('/').collect();
    let (cluster, ns, pod, deployment) = match parts[..] {
        [c, ns, pod] => (c, ns, pod, false),
        [c, ns, "deploy", name] => (c, ns, name, true),
        _ => bail!(
            "{who:?}: expected CLUSTER/NAMESPACE/POD, CLUSTER/NAMESPACE/deploy/NAME or an IPv4 address"
        ),
    };
    if cluster != state.cluster.name {
        bail!(
            "{who:?}: cluster {cluster:?} is not {:?} (trace within one cluster)",
            state.cluster.name
        );
    }
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
        name: format!("{}/{}/{}", state.cluster.name, e.namespace, e.name),
        identity: e.identity,
    })
}

fn outcome_text(o: &DirOutcome) -> String {
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

fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let extra = load_policies(&args.policy_files)?;
    let cluster = args.src.split('/').next().unwrap_or_default();
    let states = cluster_states(&args.lab)?;
    let state = states
        .iter()
        .find(|s| s.cluster.name == cluster)
        .with_context(|| format!("--src {:?}: no cluster {cluster:?} in the lab", args.src))?;
    let engine = engine_for(state, &extra)?;
    let src = resolve(state, &engine, &args.src).context("--src")?;
    let dst = resolve(state, &engine, &args.dst).context("--dst")?;
    let proto = match args.protocol.to_ascii_uppercase().as_str() {
        "TCP" => strait_ebpf::abi::IPPROTO_TCP,
        "UDP" => strait_ebpf::abi::IPPROTO_UDP,
        "SCTP" => strait_ebpf::abi::IPPROTO_SCTP,
        other => bail!("--protocol {other:?}: expected TCP, UDP or SCTP"),
    };
    let v: PolicyVerdict = engine.verdict(src.identity, dst.identity, proto, args.dport);
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
    match args.output {
        Output::Json => {
            let j = serde_json::json!({
                "source": {"name": src.name, "identity": src.identity},
                "destination": {"name": dst.name, "identity": dst.identity},
                "protocol": args.protocol.to_ascii_uppercase(),
                "dport": args.dport,
                "egress": outcome_text(&v.egress),
                "ingress": outcome_text(&v.ingress),
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
            println!("  egress of {}: {}", src.name, outcome_text(&v.egress));
            println!("  ingress of {}: {}", dst.name, outcome_text(&v.ingress));
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
    Ok(ExitCode::SUCCESS)
}

fn direction_json(d: &crate::policy::engine::DirPolicy) -> serde_json::Value {
    serde_json::json!({
        "enforced": d.enforced,
        "default_deny": d.default_deny,
        "selected_by": d.selected_by,
        "rules": d.rule_names(),
    })
}

fn get(lab: &LabName, cluster: Option<&str>, output: Output) -> anyhow::Result<ExitCode> {
    let states = cluster_states(lab)?;
    let mut rows = Vec::new();
    for state in states
        .iter()
        .filter(|s| cluster.is_none_or(|c| c == s.cluster.name))
    {
        let engine = engine_for(state, &[])?;
        let mut eps: Vec<_> = state.endpoints.iter().collect();
        eps.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for e in eps {
            let none = SubjectPolicy::default();
            let sp = engine.subject(e.identity).unwrap_or(&none);
            rows.push((
                format!("{}/{}/{}", state.cluster.name, e.namespace, e.name),
                e.identity,
                sp.clone(),
            ));
        }
    }
    if output == Output::Json {
        for (name, id, sp) in &rows {
            let j = serde_json::json!({
                "endpoint": name,
                "identity": id,
                "ingress": direction_json(&sp.ingress),
                "egress": direction_json(&sp.egress),
            });
            println!("{j}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mode = |d: &crate::policy::engine::DirPolicy| match (d.enforced, d.default_deny) {
        (false, _) => "-",
        (true, true) => "default-deny",
        (true, false) => "deny-rules",
    };
    println!(
        "{:<36} {:>9} {:<13} {:<13} POLICIES",
        "ENDPOINT", "IDENTITY", "INGRESS", "EGRESS"
    );
    for (name, id, sp) in &rows {
        let mut policies: Vec<&String> = sp
            .ingress
            .selected_by
            .iter()
            .chain(&sp.egress.selected_by)
            .collect();
        policies.sort();
        policies.dedup();
        let policies: Vec<&str> = policies.iter().map(|s| s.as_str()).collect();
        println!(
            "{:<36} {:>9} {:<13} {:<13} {}",
            name,
            id,
            mode(&sp.ingress),
            mode(&sp.egress),
            if policies.is_empty() {
                "-".to_string()
            } else {
                policies.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
