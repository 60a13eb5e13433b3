//! `strait policy validate | trace | get`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use crate::cli::lab::LabName;
use crate::compile::Compiler;
use crate::lab::Lab;
use crate::lab::manifest::{self, Object};
use crate::model::{ClusterState, Object as ModelObject, Store, Update};
use crate::policy::engine::SubjectPolicy;
use crate::policy::{Engine, Policy};

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
    Trace(super::trace::TraceArgs),
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

/// Runs a `strait policy` subcommand.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate { files } => validate(&files),
        PolicyCommand::Trace(args) => super::trace::run(&args),
        PolicyCommand::Get {
            lab,
            cluster,
            output,
        } => get(&lab, cluster.as_deref(), output),
    }
}

/// The policies in `files` (other objects are skipped).
pub(crate) fn load_policies(files: &[PathBuf]) -> anyhow::Result<Vec<Policy>> {
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
