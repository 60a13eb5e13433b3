//! Table-driven conformance suite for the policy engine: each case is a policy set (YAML as users
//! write it), a flow, and the expected verdict with the rule that decides it. Every case is also
//! checked against the compiled kernel entries, so the kernel and the proxy cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use strait_ebpf::PolicyAction;

use super::engine::Engine;
use super::http::RequestInfo;
use super::kernel;
use super::universe::Universe;
use super::{Policy, parse};
use crate::identity::identity_labels;
use crate::model::{Labels, NamedPort, Protocol};

/// The pods every case sees: `(cluster, namespace, name, ip, labels)`; every pod has the named
/// ports `http` (8080/TCP) and `dns` (5353/UDP). Namespaces `prod` (labels team=core, env=prod)
/// and `dev` (team=core, env=dev), `other` (team=ext). Cluster `c1` is local; `c2` is a remote
/// cluster. Pods of one cluster and namespace with the same labels share an identity, as in
/// Cilium: `backend-2` has the identity of `backend` but an address outside `10.1.0.0/24`.
const PODS: &[(&str, &str, &str, [u8; 4], &[(&str, &str)])] = &[
    (
        "c1",
        "prod",
        "frontend",
        [10, 1, 0, 10],
        &[("app", "frontend"), ("tier", "web")],
    ),
    (
        "c1",
        "prod",
        "backend",
        [10, 1, 0, 20],
        &[("app", "backend"), ("tier", "api")],
    ),
    (
        "c1",
        "prod",
        "db",
        [10, 1, 0, 30],
        &[("app", "db"), ("tier", "data")],
    ),
    ("c1", "prod", "batch", [10, 1, 0, 40], &[("app", "batch")]),
    (
        "c1",
        "dev",
        "frontend",
        [10, 1, 1, 10],
        &[("app", "frontend"), ("tier", "web")],
    ),
    (
        "c1",
        "dev",
        "backend",
        [10, 1, 1, 20],
        &[("app", "backend"), ("tier", "api")],
    ),
    (
        "c1",
        "other",
        "client",
        [10, 1, 2, 10],
        &[("app", "client")],
    ),
    (
        "c2",
        "prod",
        "frontend",
        [10, 2, 0, 10],
        &[("app", "frontend"), ("tier", "web")],
    ),
    (
        "c1",
        "prod",
        "backend-2",
        [10, 1, 3, 20],
        &[("app", "backend"), ("tier", "api")],
    ),
];

fn ns_labels(ns: &str) -> Labels {
    let pairs: &[(&str, &str)] = match ns {
        "prod" => &[("team", "core"), ("env", "prod")],
        "dev" => &[("team", "core"), ("env", "dev")],
        _ => &[("team", "ext")],
    };
    let mut l: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    l
}

struct World {
    universe: Universe,
    /// `cluster/ns/pod` → identity.
    names: Vec<(String, u32, Ipv4Addr)>,
}

fn world(policies: &[Policy]) -> World {
    let mut u = Universe::new("c1");
    let mut names = Vec::new();
    for (i, (cluster, ns, pod, ip, labels)) in PODS.iter().enumerate() {
        let cid: u32 = if *cluster == "c1" { 1 } else { 2 };
        // The first pod with the same cluster, namespace and labels numbers the identity.
        let first = PODS
            .iter()
            .position(|(c, n, _, _, l)| c == cluster && n == ns && l == labels)
            .unwrap_or(i);
        let id = (cid << 16) | (256 + first as u32);
        let pod_labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ports = vec![
            NamedPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            NamedPort {
                name: Some("dns".into()),
                port: 5353,
                protocol: Protocol::Udp,
            },
        ];
        let ip = Ipv4Addr::from(*ip);
        u.add_endpoint(
            id,
            identity_labels(&pod_labels, ns, &ns_labels(ns), cluster),
            cluster,
            ip,
            &ports,
        );
        names.push((format!("{cluster}/{ns}/{pod}"), id, ip));
    }
    u.add_cidrs(policies);
    World { universe: u, names }
}

impl World {
    /// `c1/prod/frontend`, a reserved name (`world`, `host`, `remote-node`) or an address.
    fn id(&self, who: &str) -> u32 {
        use crate::identity::reserved;
        match who {
            "world" => reserved::WORLD,
            "host" => reserved::HOST,
            "remote-node" => reserved::REMOTE_NODE,
            _ => match who.parse::<Ipv4Addr>() {
                Ok(ip) => self.universe.identity_of_ip(ip),
                Err(_) => {
                    self.names
                        .iter()
                        .find(|(n, _, _)| n == who)
                        .unwrap_or_else(|| panic!("no pod {who}"))
                        .1
                }
            },
        }
    }
}

/// Expected outcome of a case.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Allowed; the deciding rule list contains this text ("" when no rule is expected).
    Allow(&'static str),
    /// Denied; the deciding rules contain this text.
    Deny(&'static str),
    /// Allowed at L4 with L7 rules; the request (method, path) is allowed or not.
    Http(&'static str, &'static str, bool),
}

struct Case {
    name: &'static str,
    /// Policies, as multi-document YAML; namespaced ones default to `prod`.
    yaml: &'static str,
    src: &'static str,
    dst: &'static str,
    proto: u8,
    port: u16,
    want: Want,
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn parse_all(yaml: &str) -> Vec<Policy> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| parse(v, "prod").unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn run(case: &Case) {
    let policies = parse_all(case.yaml);
    let w = world(&policies);
    let (src, dst) = (w.id(case.src), w.id(case.dst));
    let engine = Engine::build(&policies, Arc::new(w.universe.clone()));
    let v = engine.verdict(src, dst, case.proto, case.port);
    let rules = v.deciding_rules().join(" | ");
    let ctx = format!(
        "case {:?}: {} -> {} {}/{}: {v:?}",
        case.name, case.src, case.dst, case.proto, case.port
    );
    match case.want {
        Want::Allow(rule) => {
            assert!(v.allowed(), "{ctx}: expected allowed");
            assert!(!v.needs_l7(), "{ctx}: expected no L7");
            assert!(rules.contains(rule), "{ctx}: rules {rules:?} lack {rule:?}");
        }
        Want::Deny(rule) => {
            assert!(!v.allowed(), "{ctx}: expected denied");
            assert!(rules.contains(rule), "{ctx}: rules {rules:?} lack {rule:?}");
        }
        Want::Http(method, path, ok) => {
            assert!(v.allowed() && v.needs_l7(), "{ctx}: expected L7");
            let req = RequestInfo {
                method: method.into(),
                path: path.into(),
                host: Some("backend".into()),
                headers: vec![("x-team".into(), "blue".into())],
            };
            assert_eq!(v.judge_http(&req).0, ok, "{ctx}: {method} {path}");
        }
    }
    // The kernel entries say the same at L3/L4 (the node itself is always allowed there).
    let k = kernel::compile(&engine);
    let policed = |id: u32, ingress: bool| {
        k.policed
            .iter()
            .any(|(i, ig, eg)| *i == id && if ingress { *ig } else { *eg })
    };
    let kernel_allows = if src == crate::identity::reserved::HOST
        || dst == crate::identity::reserved::HOST
        || !(policed(src, false) || policed(dst, true))
    {
        true
    } else {
        matches!(
            kernel::lookup(&k.rules, src, dst, case.proto, case.port),
            Some(PolicyAction::Allow | PolicyAction::Proxy)
        )
    };
    assert_eq!(
        kernel_allows,
        v.allowed(),
        "{ctx}: kernel disagrees: {:?}",
        k.rules
    );
    if v.allowed() && (policed(src, false) || policed(dst, true)) {
        let action = kernel::lookup(&k.rules, src, dst, case.proto, case.port);
        let want = if v.needs_l7() {
            PolicyAction::Proxy
        } else {
            PolicyAction::Allow
        };
        if src != crate::identity::reserved::HOST && dst != crate::identity::reserved::HOST {
            assert_eq!(action, Some(want), "{ctx}: kernel action");
        }
    }
}

const TUTORIAL: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend-to-backend
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
"#;

const CASES: &[Case] = &[
    Case {
        name: "no policy allows everything",
        yaml: "",
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "tutorial: frontend allowed",
        yaml: TUTORIAL,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/allow-frontend-to-backend: spec.ingress[0]"),
    },
    Case {
        name: "tutorial: other pod default-denied",
        yaml: TUTORIAL,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "tutorial: frontend of another namespace is not selected",
        yaml: TUTORIAL,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "tutorial: backend to frontend unaffected",
        yaml: TUTORIAL,
        src: "c1/prod/backend",
        dst: "c1/prod/frontend",
        proto: TCP,
        port: 80,
        want: Want::Allow(""),
    },
    Case {
        name: "tutorial: any port and protocol",
        yaml: TUTORIAL,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 53,
        want: Want::Allow("spec.ingress[0]"),
    },
    Case {
        name: "l7: GET /public allowed",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public.*"}]
"#,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/public/x", true),
    },
];

#[test]
fn conformance() {
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(e) = std::panic::catch_unwind(|| run(case)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
