//! Policy conformance: the case files under `tests/conformance/` (format: its README.md), each
//! case checked three ways: (a) the Rust engine's verdict, (b) the Rust emulation of the kernel's
//! longest-prefix lookup over `policy::kernel::compile` output, (c) the kernel's own decision
//! helper `strait_policy_check`, run with BPF_PROG_TEST_RUN on maps `Datapath::apply_policy`
//! filled. (c) needs root; without it the test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use strait::identity::{identity_labels, reserved};
use strait::model::http::RequestInfo;
use strait::model::{Labels, NamedPort};
use strait::policy::kernel::{self, KernelPolicy};
use strait::policy::{Engine, Policy, PolicyVerdict, Universe};
use strait_ebpf::testing::{Match, PolicyDecider};
use strait_ebpf::{PolicyAction, PolicyImage};

/// Floors on what the files hold, so that a lost file or a parse slip cannot pass by running
/// fewer cases. Raise them when adding cases.
const MIN_CASES: usize = 259;
const MIN_INVALID: usize = 34;

// === case files ===

/// `tests/conformance/world.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldFile {
    local_cluster: String,
    clusters: BTreeMap<String, u32>,
    namespaces: BTreeMap<String, Labels>,
    named_ports: Vec<NamedPort>,
    pods: Vec<Pod>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Pod {
    cluster: String,
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    labels: Labels,
}

/// One topic file: named policies, cases that use them, and policies that must be rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    policies: BTreeMap<String, PolicySource>,
    #[serde(default)]
    cases: Vec<Case>,
    #[serde(default)]
    invalid: Vec<Invalid>,
}

/// Policy YAML (one or more documents), inline or in a file of the repository.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PolicySource {
    Inline(String),
    File {
        /// Relative to the repository root.
        file: PathBuf,
        /// Replaces `metadata.namespace` of each document.
        namespace: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// Keys of the file's `policies`; none: no policy at all.
    policy: Option<OneOrMany>,
    /// `SRC -> DST PROTO/PORT`, e.g. `c1/prod/frontend -> c1/prod/backend tcp/8080`.
    flow: String,
    expect: Expect,
    /// Text the deciding rules contain.
    #[serde(default)]
    rule: String,
    /// For `expect: proxy`: a request the L7 rules judge.
    http: Option<Http>,
    /// Selectors without a cluster label select only the local cluster (the agent option
    /// `policy_default_local_cluster`, default true).
    #[serde(default = "default_true")]
    default_local_cluster: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
    Proxy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    method: String,
    path: String,
    expect: Expect,
}

/// A policy `policy::parse` must reject, naming the field and the reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Invalid {
    name: String,
    policy: String,
    /// The exact YAML path of the error.
    field: String,
    /// Text the reason contains.
    reason: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cases_dir() -> PathBuf {
    repo_root().join("tests/conformance")
}

/// Every case file but the world, sorted, with its parsed content and how many list items
/// (`- name:` at column 0) its text holds, to compare with what was parsed.
fn case_files() -> Vec<(String, CaseFile, usize)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/conformance")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("world.yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let file: CaseFile =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let items = text.lines().filter(|l| l.starts_with("- name:")).count();
            (name, file, items)
        })
        .collect()
}

/// The documents of `source` as YAML values.
fn documents(source: &PolicySource) -> Result<Vec<serde_yaml::Value>, String> {
    let (text, namespace) = match source {
        PolicySource::Inline(text) => (text.clone(), None),
        PolicySource::File { file, namespace } => (
            std::fs::read_to_string(repo_root().join(file))
                .map_err(|e| format!("{}: {e}", file.display()))?,
            namespace.as_deref(),
        ),
    };
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        if let (Some(ns), Some(meta)) = (
            namespace,
            value
                .get_mut("metadata")
                .and_then(serde_yaml::Value::as_mapping_mut),
        ) {
            meta.insert("namespace".into(), ns.into());
        }
        out.push(value);
    }
    Ok(out)
}

/// The case's policies, parsed; namespaced ones default to `prod`.
fn policies_of(file: &CaseFile, case: &Case) -> Result<Vec<Policy>, String> {
    let names = match &case.policy {
        None => vec![],
        Some(OneOrMany::One(n)) => vec![n.clone()],
        Some(OneOrMany::Many(ns)) => ns.clone(),
    };
    let mut out = Vec::new();
    for name in names {
        let source = file
            .policies
            .get(&name)
            .ok_or_else(|| format!("no policy {name:?} in this file"))?;
        for value in documents(source)? {
            out.push(strait::policy::parse(value, "prod").map_err(|e| format!("{name}: {e}"))?);
        }
    }
    Ok(out)
}

/// A parsed `flow:`.
#[derive(Debug)]
struct Flow<'a> {
    src: &'a str,
    dst: &'a str,
    proto: u8,
    port: u16,
}

fn parse_flow(flow: &str) -> Result<Flow<'_>, String> {
    let bad = || format!("flow {flow:?} is not `SRC -> DST PROTO/PORT`");
    let (src, rest) = flow.split_once(" -> ").ok_or_else(bad)?;
    let (dst, l4) = rest.trim().split_once(' ').ok_or_else(bad)?;
    let (proto, port) = l4.split_once('/').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        _ => return Err(bad()),
    };
    Ok(Flow {
        src: src.trim(),
        dst: dst.trim(),
        proto,
        port: port.parse().map_err(|_| bad())?,
    })
}

// === world and compilation ===

/// The world's pods with their identities.
struct World {
    file: WorldFile,
    /// Per pod (same order): its identity.
    ids: Vec<u32>,
}

impl World {
    fn load() -> World {
        let path = cases_dir().join("world.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file: WorldFile = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("world: {e}"));
        let ids = file
            .pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                // The first pod with the same cluster, namespace and labels numbers the identity.
                let first = file
                    .pods
                    .iter()
                    .position(|p| {
                        (&p.cluster, &p.namespace, &p.labels)
                            == (&pod.cluster, &pod.namespace, &pod.labels)
                    })
                    .unwrap_or(i);
                let cid = file.clusters[&pod.cluster];
                (cid << 16) | (256 + first as u32)
            })
            .collect();
        World { file, ids }
    }

    fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.file.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l
    }

    /// `c1/prod/frontend`, a reserved name (`world`, `host`, `remote-node`) or an address.
    fn id(&self, who: &str, universe: &Universe) -> Result<u32, String> {
        Ok(match who {
            "world" => reserved::WORLD,
            "host" => reserved::HOST,
            "remote-node" => reserved::REMOTE_NODE,
            _ => match who.parse::<Ipv4Addr>() {
                Ok(ip) => universe.identity_of_ip(ip),
                Err(_) => self
                    .file
                    .pods
                    .iter()
                    .zip(&self.ids)
                    .find(|(p, _)| format!("{}/{}/{}", p.cluster, p.namespace, p.name) == who)
                    .ok_or_else(|| format!("no pod {who} in world.yaml"))?
                    .1
                    .to_owned(),
            },
        })
    }
}

/// What the policy pipeline produces for one case's policies.
struct Compiled {
    universe: Arc<Universe>,
    engine: Engine,
    kernel: KernelPolicy,
}

/// Every use of the policy pipeline (universe → engine → kernel entries) is here, so a change
/// to the pipeline changes this function only.
fn compile_world(world: &World, policies: &[Policy], default_local_cluster: bool) -> Compiled {
    let mut u = Universe::new(&world.file.local_cluster);
    u.default_local_cluster = default_local_cluster;
    for (pod, id) in world.file.pods.iter().zip(&world.ids) {
        u.add_endpoint(
            *id,
            identity_labels(
                &pod.labels,
                &pod.namespace,
                &world.namespace_labels(&pod.namespace),
                &pod.cluster,
            ),
            &pod.cluster,
            pod.ip,
            &world.file.named_ports,
        );
    }
    u.add_cidrs(policies);
    let universe = Arc::new(u);
    let engine = Engine::build(policies, universe.clone());
    let kernel = kernel::compile(&engine);
    Compiled {
        universe,
        engine,
        kernel,
    }
}

// === the three checks ===

/// One check's outcome: what was expected, what came out, whether they agree.
struct Check {
    want: String,
    got: String,
    ok: bool,
}

/// (a) The engine's verdict, deciding rules and, for L7, the request's verdict.
fn check_engine(case: &Case, v: &PolicyVerdict) -> Check {
    let rules = v.deciding_rules().join(" | ");
    let got_kind = match (v.allowed(), v.needs_l7()) {
        (false, _) => Expect::Deny,
        (true, false) => Expect::Allow,
        (true, true) => Expect::Proxy,
    };
    let mut want = format!("{:?}", case.expect).to_lowercase();
    if !case.rule.is_empty() {
        write!(want, ", rule ~ {:?}", case.rule).unwrap();
    }
    let mut got = format!("{} [{rules}]", format!("{got_kind:?}").to_lowercase());
    let mut ok = got_kind == case.expect && rules.contains(&case.rule);
    if let Some(http) = &case.http {
        write!(want, "; {} {} {:?}", http.method, http.path, http.expect).unwrap();
        let req = RequestInfo {
            method: http.method.clone(),
            path: http.path.clone(),
            host: Some("backend".into()),
            headers: vec![("x-team".into(), "blue".into())],
        };
        let (allowed, rules) = v.judge_http(&req);
        let judged = if allowed { Expect::Allow } else { Expect::Deny };
        write!(got, "; {} {} {judged:?} {rules:?}", http.method, http.path).unwrap();
        ok &= judged == http.expect;
    }
    Check { want, got, ok }
}

/// What the kernel may answer for a case's expected verdict.
fn kernel_wants(expect: Expect) -> &'static [Match] {
    match expect {
        Expect::Allow => &[Match::Allow, Match::Unpoliced, Match::Host],
        Expect::Proxy => &[Match::Proxy, Match::Host],
        Expect::Deny => &[Match::Deny, Match::None],
    }
}

fn kernel_check(expect: Expect, got: Result<Match, String>) -> Check {
    let wants = kernel_wants(expect);
    let want = wants
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join("|");
    match got {
        Ok(m) => Check {
            want,
            got: format!("{m:?}"),
            ok: wants.contains(&m),
        },
        Err(e) => Check {
            want,
            got: e,
            ok: false,
        },
    }
}

/// (b) The kernel's answer emulated in Rust over the compiled entries: the host is never
/// judged, a flow neither side polices passes, else the longest-prefix entry decides.
fn emulate_kernel(k: &KernelPolicy, flow: &Flow<'_>, src: u32, dst: u32) -> Match {
    if src == reserved::HOST || dst == reserved::HOST {
        return Match::Host;
    }
    let policed = |id: u32, ingress: bool| {
        k.policed
            .iter()
            .any(|(i, ig, eg)| *i == id && if ingress { *ig } else { *eg })
    };
    if !(policed(src, false) || policed(dst, true)) {
        return Match::Unpoliced;
    }
    match kernel::lookup(&k.rules, src, dst, flow.proto, flow.port) {
        Some(PolicyAction::Allow) => Match::Allow,
        Some(PolicyAction::Proxy) => Match::Proxy,
        Some(PolicyAction::Deny) => Match::Deny,
        None => Match::None,
    }
}

/// (c) The C helper's answer on maps holding the compiled entries.
fn decide_in_kernel(
    decider: &PolicyDecider,
    k: &KernelPolicy,
    flow: &Flow<'_>,
    src: u32,
    dst: u32,
) -> Result<Match, String> {
    decider
        .apply(&PolicyImage {
            policed: k.policed.clone(),
            rules: k.rules.clone(),
            ..PolicyImage::default()
        })
        .map_err(|e| error_chain(&e))?;
    decider
        .decide(src, dst, flow.proto, flow.port)
        .map_err(|e| error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        write!(s, ": {inner}").unwrap();
        source = inner.source();
    }
    s
}

/// Runs one case; `Err` holds the report of a failing one.
fn run_case(
    world: &World,
    decider: &PolicyDecider,
    file: &CaseFile,
    case: &Case,
) -> Result<(), String> {
    let flow = parse_flow(&case.flow)?;
    let policies = policies_of(file, case)?;
    let c = compile_world(world, &policies, case.default_local_cluster);
    let src = world.id(flow.src, &c.universe)?;
    let dst = world.id(flow.dst, &c.universe)?;
    let v = c.engine.verdict(src, dst, flow.proto, flow.port);
    let checks = [
        ("engine", check_engine(case, &v)),
        (
            "emulation",
            kernel_check(case.expect, Ok(emulate_kernel(&c.kernel, &flow, src, dst))),
        ),
        (
            "C helper",
            kernel_check(
                case.expect,
                decide_in_kernel(decider, &c.kernel, &flow, src, dst),
            ),
        ),
    ];
    if checks.iter().all(|(_, c)| c.ok) {
        return Ok(());
    }
    let mut report = String::new();
    for (what, c) in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        writeln!(
            report,
            "    {mark} {what:<9}: expected {}; got {}",
            c.want, c.got
        )
        .unwrap();
    }
    Err(report)
}

#[test]
fn conformance() {
    let started = Instant::now();
    let decider = PolicyDecider::new("conformance").unwrap_or_else(|e| {
        panic!(
            "check (c) runs the kernel's decision helper: {}",
            error_chain(&e)
        )
    });
    let world = World::load();
    let (mut run, mut failures) = (0, Vec::new());
    let mut per_file = Vec::new();
    for (name, file, items) in case_files() {
        assert_eq!(
            file.cases.len() + file.invalid.len(),
            items,
            "{name}: {items} `- name:` items, but {} cases parsed",
            file.cases.len() + file.invalid.len()
        );
        for case in &file.cases {
            run += 1;
            if let Err(report) = run_case(&world, &decider, &file, case) {
                failures.push(format!(
                    "{name}: case {:?} ({})\n{report}",
                    case.name, case.flow
                ));
            }
        }
        if !file.cases.is_empty() {
            per_file.push(format!("{name}: {}", file.cases.len()));
        }
    }
    eprintln!(
        "{run} conformance cases in {:?} ({})",
        started.elapsed(),
        per_file.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} of {run} cases failed:\n{}",
        failures.len(),
        failures.join("")
    );
    assert!(
        run >= MIN_CASES,
        "ran {run} cases, expected at least {MIN_CASES}"
    );
}

#[test]
fn invalid_policies_name_the_field_and_reason() {
    let (mut run, mut failures) = (0, Vec::new());
    for (name, file, _) in case_files() {
        for case in &file.invalid {
            run += 1;
            let got = documents(&PolicySource::Inline(case.policy.clone())).and_then(|docs| {
                match <[_; 1]>::try_from(docs) {
                    Ok([doc]) => Ok(strait::policy::parse(doc, "prod")),
                    Err(docs) => Err(format!("{} documents, expected 1", docs.len())),
                }
            });
            let got = match got {
                Ok(Ok(p)) => format!("accepted: {p:?}"),
                Ok(Err(e)) if e.field == case.field && e.reason.contains(&case.reason) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e,
            };
            failures.push(format!(
                "{name}: case {:?}\n    FAIL parse: expected {}: …{}…; got {got}\n",
                case.name, case.field, case.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {run} cases failed:\n{}",
        failures.len(),
        failures.join("")
    );
    assert!(
        run >= MIN_INVALID,
        "ran {run} invalid-policy cases, expected at least {MIN_INVALID}"
    );
}
