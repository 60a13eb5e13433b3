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

/// A pod: `(cluster, namespace, name, ip, labels)`.
type Pod = (
    &'static str,
    &'static str,
    &'static str,
    [u8; 4],
    &'static [(&'static str, &'static str)],
);

/// The pods every case sees: `(cluster, namespace, name, ip, labels)`; every pod has the named
/// ports `http` (8080/TCP) and `dns` (5353/UDP). Namespaces `prod` (labels team=core, env=prod)
/// and `dev` (team=core, env=dev), `other` (team=ext). Cluster `c1` is local; `c2` is a remote
/// cluster. Pods of one cluster and namespace with the same labels share an identity, as in
/// Cilium: `backend-2` has the identity of `backend` but an address outside `10.1.0.0/24`.
#[rustfmt::skip]
const PODS: &[Pod] = &[
    ("c1", "prod", "frontend", [10, 1, 0, 10], &[("app", "frontend"), ("tier", "web")]),
    ("c1", "prod", "backend", [10, 1, 0, 20], &[("app", "backend"), ("tier", "api")]),
    ("c1", "prod", "db", [10, 1, 0, 30], &[("app", "db"), ("tier", "data")]),
    ("c1", "prod", "batch", [10, 1, 0, 40], &[("app", "batch")]),
    ("c1", "dev", "frontend", [10, 1, 1, 10], &[("app", "frontend"), ("tier", "web")]),
    ("c1", "dev", "backend", [10, 1, 1, 20], &[("app", "backend"), ("tier", "api")]),
    ("c1", "other", "client", [10, 1, 2, 10], &[("app", "client")]),
    ("c2", "prod", "frontend", [10, 2, 0, 10], &[("app", "frontend"), ("tier", "web")]),
    ("c1", "prod", "backend-2", [10, 1, 3, 20], &[("app", "backend"), ("tier", "api")]),
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

const EXPR_IN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: expr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: app, operator: In, values: [frontend, batch]}]
"#;

const EXPR_NOT_IN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: expr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: tier, operator: NotIn, values: [web]}]
"#;

const EXPR_EXISTS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: expr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: tier, operator: Exists}]
"#;

const EXPR_DOES_NOT_EXIST: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: expr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: tier, operator: DoesNotExist}]
"#;

/// The subject selector itself uses NotIn: `db` (tier=data) and `batch` (no tier) are selected.
const SUBJECT_NOT_IN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: not-web-or-api}
spec:
  endpointSelector:
    matchExpressions: [{key: tier, operator: NotIn, values: [web, api]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const PREFIX_K8S: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prefixed}
spec:
  endpointSelector: {matchLabels: {"k8s:app": backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:app": frontend}}]
"#;

const PREFIX_ANY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prefixed}
spec:
  endpointSelector: {matchLabels: {"any:app": backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {"any:app": frontend}}]
"#;

const PREFIX_RESERVED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prefixed}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {"reserved:app": frontend}}]
"#;

const SAME_NAMESPACE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-namespace}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{}]
"#;

const FROM_DEV: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-dev}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, "k8s:io.kubernetes.pod.namespace": dev}
"#;

const ANY_NAMESPACE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-namespace}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions: [{key: io.kubernetes.pod.namespace, operator: In, values: [prod, dev]}]
"#;

/// Namespace labels without the namespace key: still only the policy's own namespace.
const NS_LABELS_OWN_NAMESPACE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ns-labels}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.namespace.labels.env: dev}
"#;

const NS_LABELS_ANY_NAMESPACE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ns-labels}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.namespace.labels.env: dev}
      matchExpressions: [{key: "k8s:io.kubernetes.pod.namespace", operator: Exists}]
"#;

const CCNP_NS_LABELS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: core-teams}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.namespace.labels.team: core}
"#;

const FROM_C2: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-c2}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}
"#;

const FROM_C1: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-c1}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c1}
"#;

const TO_C2: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-c2}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.cilium.k8s.policy.cluster": c2}
"#;

const CCNP_LOCKDOWN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: lockdown}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [cluster]
"#;

const CCNP_FROM_ALL_PODS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: db-from-pods}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
"#;

const CCNP_FROM_FRONTENDS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: prod-backend}
spec:
  endpointSelector:
    matchLabels: {app: backend, "k8s:io.kubernetes.pod.namespace": prod}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const FROM_WORLD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-world}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [world]
"#;

const FROM_CLUSTER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cluster}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [cluster]
"#;

const FROM_ALL: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-all}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
"#;

const FROM_REMOTE_NODE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-remote-node}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [remote-node]
"#;

const FROM_HOST: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-host}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [host]
"#;

const TO_WORLD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-world}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEntities: [world]
"#;

const TO_CLUSTER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cluster}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEntities: [cluster]
"#;

const FROM_CIDR: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cidr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [203.0.113.0/24]
"#;

const FROM_POD_CIDR: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-pod-cidr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [10.1.0.0/16]
"#;

const FROM_CIDR_SET: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cidr-set}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDRSet:
    - cidr: 203.0.113.0/24
      except: [203.0.113.128/25]
"#;

const TO_CIDR: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cidr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toCIDR: [198.51.100.0/24]
"#;

const TO_CIDR_SET_OUTSIDE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-internet}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toCIDRSet:
    - cidr: 0.0.0.0/0
      except: [10.0.0.0/8]
"#;

/// A narrower prefix named by a policy on another endpoint still counts as inside the /24.
const CIDR_NARROWER_ELSEWHERE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cidr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [203.0.113.0/24]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-small}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromCIDR: [203.0.113.0/28]
"#;

const CIDR_DENY_NARROWER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cidr}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [203.0.113.0/24]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-small}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromCIDR: [203.0.113.0/28]
"#;

const TO_CIDR_HTTPS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cidr-https}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toCIDR: [203.0.113.0/24]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;

const PORT_RANGE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: range}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
"#;

const PORT_ANY_PROTOCOL: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: port-53}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "53"}]}]
"#;

const PORT_UDP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: udp-5353}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
"#;

const NAMED_HTTP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named-http}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: http}]}]
"#;

const NAMED_DNS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named-dns}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: dns}]}]
"#;

const NAMED_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db-http}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
"#;

const PORT_ONLY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: port-only}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

const EMPTY_INGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-ingress}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{}]
"#;

const EMPTY_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-egress}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress: [{}]
"#;

const DENY_OVER_ALLOW: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-and-deny}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const DENY_ACROSS_POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-all}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-web}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {tier: web}}]
"#;

const DENY_PORT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-ssh}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#;

const DENY_PORT_ANY_PEER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-ssh}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#;

const DENY_ONLY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-frontend}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const DENY_WITHOUT_DEFAULT_DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-frontend}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const EGRESS_DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-deny}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEntities: [all]
  egressDeny:
  - toCIDR: [203.0.113.0/24]
"#;

const EGRESS_DENY_WITHOUT_DEFAULT_DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: not-to-db}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {egress: false}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: db}}]
"#;

const EGRESS_TO_DB: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-to-db}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
"#;

const BOTH_SIDES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-to-db}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-frontend}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const BOTH_SIDES_AGREE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-to-db}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-backend}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "5000", endPort: 6000}]}]
"#;

const TWO_POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: batch}}]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
"#;

const SPECS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: chain}
specs:
- endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
"#;

const TWO_PEERS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two-peers}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}, {matchLabels: {app: batch}}]
"#;

const L7: &str = r#"
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
"#;

const L7_TWO_RULES: &str = r#"
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
        http:
        - {method: GET, path: "/a"}
        - {method: POST, path: "/b"}
"#;

const L7_METHODS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: http}]
      rules:
        http: [{method: "GET|HEAD"}]
"#;

const L7_HEADER_BLUE: &str = r#"
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
        http: [{headers: ["X-Team: blue"]}]
"#;

const L7_HEADER_RED: &str = r#"
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
        http: [{headers: ["X-Team: red"]}]
"#;

const L7_HEADER_PRESENT: &str = r#"
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
        http: [{path: "/.*", headers: [X-Team]}]
"#;

const L7_HEADER_MATCH: &str = r#"
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
        http: [{headerMatches: [{name: x-team, value: blue}]}]
"#;

const L7_HOST: &str = r#"
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
        http: [{host: "db"}]
"#;

/// The L7 policy plus an L4-only allow of the same peer on the same port.
const L7_LIFTED: &str = r#"
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
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

/// The L7 policy plus L4-only allows that do not cover the same peer and port.
const L7_NOT_LIFTED: &str = r#"
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
  - fromEndpoints: [{matchLabels: {app: batch}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
"#;

const L7_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-egress}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
"#;

const L7_BOTH_DIRECTIONS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-reads}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-public}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{path: "/public.*"}]
"#;

const NP_POD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
"#;

const NP_NAMESPACE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: core}}
"#;

const NP_NAMESPACE_NAME: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [other]}]
"#;

const NP_POD_AND_NAMESPACE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
      namespaceSelector: {matchLabels: {env: dev}}
"#;

const NP_POD_OR_NAMESPACE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    - namespaceSelector: {matchLabels: {env: dev}}
"#;

const NP_ALL_NAMESPACES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - namespaceSelector: {}
"#;

const NP_IP_BLOCK_PODS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.1.0.0/24, except: [10.1.0.10/32]}
"#;

const NP_IP_BLOCK_WORLD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - ipBlock: {cidr: 203.0.113.0/24}
"#;

const NP_EGRESS_IP_BLOCK: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
"#;

const NP_NAMED_PORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    ports: [{port: http}]
"#;

const NP_NAMED_UDP_PORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports: [{port: dns}]
  - ports: [{port: dns, protocol: UDP}]
    from:
    - podSelector: {matchLabels: {app: frontend}}
"#;

const NP_PORT_RANGE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    ports: [{port: 8000, endPort: 8100, protocol: TCP}]
"#;

const NP_DEFAULT_TCP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    ports: [{port: 53}]
"#;

const NP_PORT_FROM_ANYONE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports: [{port: 8080}]
"#;

const NP_ALLOW_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{}]
"#;

const NP_EGRESS_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: db}}
"#;

const NP_DENY_ALL_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

/// Without policyTypes, Ingress is always implied (Egress only when there are egress rules).
const NP_IMPLIED_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: implied}
spec:
  podSelector: {matchLabels: {app: backend}}
  egress:
  - to:
    - podSelector: {matchLabels: {app: db}}
"#;

const NP_MATCH_EXPRESSIONS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector:
    matchExpressions: [{key: tier, operator: Exists}]
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: tier, operator: DoesNotExist}]
"#;

const PORT_ONLY_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-anywhere}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"#;

const ALLOW_WITHOUT_DEFAULT_DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-too}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

/// One policy turns default deny off, another (the tutorial) keeps it on: default deny wins.
const DEFAULT_DENY_FROM_ANOTHER_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-batch}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: batch}}]
---
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

const L7_AND_DENY: &str = r#"
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
        http: [{method: GET}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

const L7_LIFTED_SAME_RULE: &str = r#"
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
        http: [{method: GET}]
    - ports: [{port: "8080", protocol: TCP}]
"#;

const OTHER_NAMESPACE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;

const FROM_WORLD_WITH_CIDR_IDENTITIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-world}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [world]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-cidr}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromCIDR: [203.0.113.0/24]
"#;

const FROM_ALL_ADDRESSES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-anywhere}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [0.0.0.0/0]
"#;

const CCNP_EGRESS_LOCKDOWN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: egress-lockdown}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [cluster]
"#;

const NP_PROTOCOL_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports: [{protocol: UDP}]
"#;

const NP_EGRESS_NAMESPACE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {env: dev}}
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
        yaml: L7,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/public/x", true),
    },
    Case {
        name: "tutorial: default deny names the policy",
        yaml: TUTORIAL,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/allow-frontend-to-backend",
        ),
    },
    Case {
        name: "tutorial: every pod of the selected identity is a subject",
        yaml: TUTORIAL,
        src: "c1/prod/batch",
        dst: "c1/prod/backend-2",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "matchExpressions In: listed value selected",
        yaml: EXPR_IN,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/expr: spec.ingress[0]"),
    },
    Case {
        name: "matchExpressions In: other value not selected",
        yaml: EXPR_IN,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "matchExpressions NotIn: pod without the label selected",
        yaml: EXPR_NOT_IN,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/expr: spec.ingress[0]"),
    },
    Case {
        name: "matchExpressions NotIn: other value selected",
        yaml: EXPR_NOT_IN,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/expr: spec.ingress[0]"),
    },
    Case {
        name: "matchExpressions NotIn: listed value not selected",
        yaml: EXPR_NOT_IN,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "matchExpressions Exists: labelled pod selected",
        yaml: EXPR_EXISTS,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/expr: spec.ingress[0]"),
    },
    Case {
        name: "matchExpressions Exists: unlabelled pod not selected",
        yaml: EXPR_EXISTS,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "matchExpressions DoesNotExist: unlabelled pod selected",
        yaml: EXPR_DOES_NOT_EXIST,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/expr: spec.ingress[0]"),
    },
    Case {
        name: "matchExpressions DoesNotExist: labelled pod not selected",
        yaml: EXPR_DOES_NOT_EXIST,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "endpointSelector NotIn: pod without the label is a subject",
        yaml: SUBJECT_NOT_IN,
        src: "c1/prod/backend",
        dst: "c1/prod/batch",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/not-web-or-api",
        ),
    },
    Case {
        name: "endpointSelector NotIn: allowed peer reaches a subject",
        yaml: SUBJECT_NOT_IN,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/not-web-or-api: spec.ingress[0]"),
    },
    Case {
        name: "endpointSelector NotIn: listed value is no subject",
        yaml: SUBJECT_NOT_IN,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "k8s: prefix selects Kubernetes labels",
        yaml: PREFIX_K8S,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/prefixed: spec.ingress[0]"),
    },
    Case {
        name: "k8s: prefix: subject is default-deny",
        yaml: PREFIX_K8S,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "any: prefix selects labels of any source",
        yaml: PREFIX_ANY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/prefixed: spec.ingress[0]"),
    },
    Case {
        name: "any: prefix: subject is default-deny",
        yaml: PREFIX_ANY,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "reserved: prefix does not match Kubernetes labels",
        yaml: PREFIX_RESERVED,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromEndpoints {} in a namespaced policy: own namespace",
        yaml: SAME_NAMESPACE,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/same-namespace: spec.ingress[0]"),
    },
    Case {
        name: "fromEndpoints {} in a namespaced policy: not other namespaces",
        yaml: SAME_NAMESPACE,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "namespace label in the selector reaches that namespace",
        yaml: FROM_DEV,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-dev: spec.ingress[0]"),
    },
    Case {
        name: "namespace label in the selector replaces the policy's namespace",
        yaml: FROM_DEV,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "namespace expression: prod listed",
        yaml: ANY_NAMESPACE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/any-namespace: spec.ingress[0]"),
    },
    Case {
        name: "namespace expression: dev listed",
        yaml: ANY_NAMESPACE,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/any-namespace: spec.ingress[0]"),
    },
    Case {
        name: "namespace expression: other pods of dev not selected",
        yaml: ANY_NAMESPACE,
        src: "c1/dev/backend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "namespace labels alone stay in the policy's namespace",
        yaml: NS_LABELS_OWN_NAMESPACE,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "namespace labels with any namespace: matching namespace",
        yaml: NS_LABELS_ANY_NAMESPACE,
        src: "c1/dev/backend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/ns-labels: spec.ingress[0]"),
    },
    Case {
        name: "namespace labels with any namespace: other namespace",
        yaml: NS_LABELS_ANY_NAMESPACE,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "namespace labels with any namespace: own namespace does not match",
        yaml: NS_LABELS_ANY_NAMESPACE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "cluster label: remote cluster pod allowed",
        yaml: FROM_C2,
        src: "c2/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-c2: spec.ingress[0]"),
    },
    Case {
        name: "cluster label: local pod with the same labels not selected",
        yaml: FROM_C2,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "cluster label c1: remote pod not selected",
        yaml: FROM_C1,
        src: "c2/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "cluster label c1: local pod selected",
        yaml: FROM_C1,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-c1: spec.ingress[0]"),
    },
    Case {
        name: "egress to a remote cluster",
        yaml: TO_C2,
        src: "c1/prod/frontend",
        dst: "c2/prod/frontend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/to-c2: spec.egress[0]"),
    },
    Case {
        name: "egress to a remote cluster: local pods not selected",
        yaml: TO_C2,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "CCNP {} selects pods of every namespace",
        yaml: CCNP_LOCKDOWN,
        src: "203.0.113.5",
        dst: "c1/other/client",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumClusterwideNetworkPolicy lockdown",
        ),
    },
    Case {
        name: "CCNP {}: cluster entity allowed",
        yaml: CCNP_LOCKDOWN,
        src: "c1/dev/frontend",
        dst: "c1/other/client",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumClusterwideNetworkPolicy lockdown: spec.ingress[0]"),
    },
    Case {
        name: "CCNP {} does not select remote cluster pods",
        yaml: CCNP_LOCKDOWN,
        src: "203.0.113.5",
        dst: "c2/prod/frontend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "CCNP fromEndpoints {}: pods of any namespace",
        yaml: CCNP_FROM_ALL_PODS,
        src: "c1/other/client",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumClusterwideNetworkPolicy db-from-pods: spec.ingress[0]"),
    },
    Case {
        name: "CCNP fromEndpoints {}: not world",
        yaml: CCNP_FROM_ALL_PODS,
        src: "203.0.113.5",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "CCNP fromEndpoints {}: not remote nodes",
        yaml: CCNP_FROM_ALL_PODS,
        src: "remote-node",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "CCNP peers have no namespace default",
        yaml: CCNP_FROM_FRONTENDS,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumClusterwideNetworkPolicy prod-backend: spec.ingress[0]"),
    },
    Case {
        name: "CCNP namespace label in endpointSelector limits subjects",
        yaml: CCNP_FROM_FRONTENDS,
        src: "c1/prod/batch",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "CCNP namespace labels: team=core namespace",
        yaml: CCNP_NS_LABELS,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumClusterwideNetworkPolicy core-teams: spec.ingress[0]"),
    },
    Case {
        name: "CCNP namespace labels: team=ext namespace",
        yaml: CCNP_NS_LABELS,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "CCNP namespace labels: subjects in every namespace",
        yaml: CCNP_NS_LABELS,
        src: "c1/other/client",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("selected by CiliumClusterwideNetworkPolicy core-teams"),
    },
    Case {
        name: "entity world: outside address allowed",
        yaml: FROM_WORLD,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-world: spec.ingress[0]"),
    },
    Case {
        name: "entity world: not pods",
        yaml: FROM_WORLD,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity world: not remote nodes",
        yaml: FROM_WORLD,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity cluster: pods of other namespaces",
        yaml: FROM_CLUSTER,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cluster: spec.ingress[0]"),
    },
    Case {
        name: "entity cluster: remote nodes",
        yaml: FROM_CLUSTER,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cluster: spec.ingress[0]"),
    },
    Case {
        name: "entity cluster: not world",
        yaml: FROM_CLUSTER,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity cluster: not remote cluster pods",
        yaml: FROM_CLUSTER,
        src: "c2/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity all: world",
        yaml: FROM_ALL,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 53,
        want: Want::Allow("prod/from-all: spec.ingress[0]"),
    },
    Case {
        name: "entity all: remote cluster pods",
        yaml: FROM_ALL,
        src: "c2/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-all: spec.ingress[0]"),
    },
    Case {
        name: "entity remote-node: allowed",
        yaml: FROM_REMOTE_NODE,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-remote-node: spec.ingress[0]"),
    },
    Case {
        name: "entity remote-node: not pods",
        yaml: FROM_REMOTE_NODE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity host: not remote nodes",
        yaml: FROM_HOST,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "entity host: pods denied",
        yaml: FROM_HOST,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "egress entity world: outside address",
        yaml: TO_WORLD,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Allow("prod/to-world: spec.egress[0]"),
    },
    Case {
        name: "egress entity world: not pods",
        yaml: TO_WORLD,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "egress entity cluster: pods of other namespaces",
        yaml: TO_CLUSTER,
        src: "c1/prod/backend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/to-cluster: spec.egress[0]"),
    },
    Case {
        name: "egress entity cluster: remote nodes",
        yaml: TO_CLUSTER,
        src: "c1/prod/backend",
        dst: "remote-node",
        proto: TCP,
        port: 10250,
        want: Want::Allow("prod/to-cluster: spec.egress[0]"),
    },
    Case {
        name: "egress entity cluster: not world",
        yaml: TO_CLUSTER,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "egress entity cluster: not remote cluster pods",
        yaml: TO_CLUSTER,
        src: "c1/prod/backend",
        dst: "c2/prod/frontend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "host reaches a default-deny pod (allow-localhost)",
        yaml: TUTORIAL,
        src: "host",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("allow-localhost"),
    },
    Case {
        name: "host reaches a pod whose only ingress rule is empty",
        yaml: EMPTY_INGRESS,
        src: "host",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 22,
        want: Want::Allow("allow-localhost"),
    },
    Case {
        name: "pod with egress policy reaches its node",
        yaml: EGRESS_TO_DB,
        src: "c1/prod/backend",
        dst: "host",
        proto: UDP,
        port: 53,
        want: Want::Allow("node"),
    },
    Case {
        name: "pod with empty egress rule reaches its node",
        yaml: EMPTY_EGRESS,
        src: "c1/prod/backend",
        dst: "host",
        proto: TCP,
        port: 4000,
        want: Want::Allow("node"),
    },
    Case {
        name: "remote node is not the host",
        yaml: TUTORIAL,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromCIDR: address inside",
        yaml: FROM_CIDR,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cidr: spec.ingress[0]"),
    },
    Case {
        name: "fromCIDR: address outside",
        yaml: FROM_CIDR,
        src: "198.51.100.7",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromCIDR: pod addresses do not match",
        yaml: FROM_POD_CIDR,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromCIDR: pod address given as an address does not match",
        yaml: FROM_POD_CIDR,
        src: "10.1.0.40",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromCIDR: non-pod address in the range matches",
        yaml: FROM_POD_CIDR,
        src: "10.1.9.9",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-pod-cidr: spec.ingress[0]"),
    },
    Case {
        name: "fromCIDRSet: address inside",
        yaml: FROM_CIDR_SET,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cidr-set: spec.ingress[0]"),
    },
    Case {
        name: "fromCIDRSet: address in except",
        yaml: FROM_CIDR_SET,
        src: "203.0.113.200",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "toCIDR: address inside",
        yaml: TO_CIDR,
        src: "c1/prod/backend",
        dst: "198.51.100.9",
        proto: TCP,
        port: 443,
        want: Want::Allow("prod/to-cidr: spec.egress[0]"),
    },
    Case {
        name: "toCIDR: address outside",
        yaml: TO_CIDR,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "toCIDRSet 0.0.0.0/0: world",
        yaml: TO_CIDR_SET_OUTSIDE,
        src: "c1/prod/backend",
        dst: "8.8.8.8",
        proto: UDP,
        port: 53,
        want: Want::Allow("prod/to-internet: spec.egress[0]"),
    },
    Case {
        name: "toCIDRSet 0.0.0.0/0: except",
        yaml: TO_CIDR_SET_OUTSIDE,
        src: "c1/prod/backend",
        dst: "10.9.9.9",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "toCIDRSet 0.0.0.0/0: pods do not match",
        yaml: TO_CIDR_SET_OUTSIDE,
        src: "c1/prod/backend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "CIDR identity: narrower prefix of another policy still inside",
        yaml: CIDR_NARROWER_ELSEWHERE,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cidr: spec.ingress[0]"),
    },
    Case {
        name: "CIDR identity: narrower prefix selects only its addresses",
        yaml: CIDR_NARROWER_ELSEWHERE,
        src: "203.0.113.100",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "CIDR deny of a narrower prefix wins",
        yaml: CIDR_DENY_NARROWER,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/deny-small: spec.ingressDeny[0]"),
    },
    Case {
        name: "CIDR deny of a narrower prefix: rest allowed",
        yaml: CIDR_DENY_NARROWER,
        src: "203.0.113.100",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-cidr: spec.ingress[0]"),
    },
    Case {
        name: "toCIDR with ports: port allowed",
        yaml: TO_CIDR_HTTPS,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Allow("prod/to-cidr-https: spec.egress[0]"),
    },
    Case {
        name: "toCIDR with ports: other port denied",
        yaml: TO_CIDR_HTTPS,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 80,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "port range: inside",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/range: spec.ingress[0]"),
    },
    Case {
        name: "port range: first port",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8000,
        want: Want::Allow("prod/range: spec.ingress[0]"),
    },
    Case {
        name: "port range: endPort included",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8100,
        want: Want::Allow("prod/range: spec.ingress[0]"),
    },
    Case {
        name: "port range: above endPort",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8101,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "port range: below port",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 7999,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "port range: TCP only",
        yaml: PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "port without protocol: UDP",
        yaml: PORT_ANY_PROTOCOL,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 53,
        want: Want::Allow("prod/port-53: spec.ingress[0]"),
    },
    Case {
        name: "port without protocol: TCP",
        yaml: PORT_ANY_PROTOCOL,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 53,
        want: Want::Allow("prod/port-53: spec.ingress[0]"),
    },
    Case {
        name: "port without protocol: other port",
        yaml: PORT_ANY_PROTOCOL,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 54,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "UDP port: UDP allowed",
        yaml: PORT_UDP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 5353,
        want: Want::Allow("prod/udp-5353: spec.ingress[0]"),
    },
    Case {
        name: "UDP port: TCP denied",
        yaml: PORT_UDP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 5353,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "named port http: TCP 8080",
        yaml: NAMED_HTTP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/named-http: spec.ingress[0]"),
    },
    Case {
        name: "named port http: not UDP 8080",
        yaml: NAMED_HTTP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "named port http: not other ports",
        yaml: NAMED_HTTP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8081,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "named port dns: UDP 5353",
        yaml: NAMED_DNS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 5353,
        want: Want::Allow("prod/named-dns: spec.ingress[0]"),
    },
    Case {
        name: "named port dns: not TCP 5353",
        yaml: NAMED_DNS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 5353,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "egress named port resolves on the destination",
        yaml: NAMED_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/to-db-http: spec.egress[0]"),
    },
    Case {
        name: "egress named port: other port",
        yaml: NAMED_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 5353,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "toPorts without L3: world on the port",
        yaml: PORT_ONLY,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/port-only: spec.ingress[0]"),
    },
    Case {
        name: "toPorts without L3: pods of other namespaces on the port",
        yaml: PORT_ONLY,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/port-only: spec.ingress[0]"),
    },
    Case {
        name: "toPorts without L3: other port",
        yaml: PORT_ONLY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9090,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "ingress [{}] allows nothing",
        yaml: EMPTY_INGRESS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/deny-ingress",
        ),
    },
    Case {
        name: "ingress [{}] leaves egress open",
        yaml: EMPTY_INGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "egress [{}] allows nothing",
        yaml: EMPTY_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress): selected by CiliumNetworkPolicy prod/deny-egress"),
    },
    Case {
        name: "egress [{}] leaves ingress open",
        yaml: EMPTY_EGRESS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "deny wins over allow in the same policy",
        yaml: DENY_OVER_ALLOW,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/allow-and-deny: spec.ingressDeny[0]"),
    },
    Case {
        name: "deny of one policy wins over allow of another",
        yaml: DENY_ACROSS_POLICIES,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("CiliumClusterwideNetworkPolicy no-web: spec.ingressDeny[0]"),
    },
    Case {
        name: "deny of one policy: others still allowed",
        yaml: DENY_ACROSS_POLICIES,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-all: spec.ingress[0]"),
    },
    Case {
        name: "deny on a port: that port denied",
        yaml: DENY_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 22,
        want: Want::Deny("prod/no-ssh: spec.ingressDeny[0]"),
    },
    Case {
        name: "deny on a port: other ports allowed",
        yaml: DENY_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/no-ssh: spec.ingress[0]"),
    },
    Case {
        name: "deny on a port: UDP on that port allowed",
        yaml: DENY_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 22,
        want: Want::Allow("prod/no-ssh: spec.ingress[0]"),
    },
    Case {
        name: "deny on a port without L3: every peer",
        yaml: DENY_PORT_ANY_PEER,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 22,
        want: Want::Deny("prod/no-ssh: spec.ingressDeny[0]"),
    },
    Case {
        name: "deny on a port without L3: other ports",
        yaml: DENY_PORT_ANY_PEER,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 80,
        want: Want::Allow("prod/no-ssh: spec.ingress[0]"),
    },
    Case {
        name: "deny only: denied peer",
        yaml: DENY_ONLY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/deny-frontend: spec.ingressDeny[0]"),
    },
    Case {
        name: "deny only: still default deny",
        yaml: DENY_ONLY,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/deny-frontend",
        ),
    },
    Case {
        name: "deny without default deny: others allowed",
        yaml: DENY_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "deny without default deny: world allowed",
        yaml: DENY_WITHOUT_DEFAULT_DENY,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 53,
        want: Want::Allow(""),
    },
    Case {
        name: "deny without default deny: denied peer",
        yaml: DENY_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/deny-frontend: spec.ingressDeny[0]"),
    },
    Case {
        name: "egressDeny wins over egress allow",
        yaml: EGRESS_DENY,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Deny("prod/egress-deny: spec.egressDeny[0]"),
    },
    Case {
        name: "egressDeny: other addresses allowed",
        yaml: EGRESS_DENY,
        src: "c1/prod/backend",
        dst: "198.51.100.1",
        proto: TCP,
        port: 443,
        want: Want::Allow("prod/egress-deny: spec.egress[0]"),
    },
    Case {
        name: "egressDeny without default deny: denied peer",
        yaml: EGRESS_DENY_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/not-to-db: spec.egressDeny[0]"),
    },
    Case {
        name: "egressDeny without default deny: others allowed",
        yaml: EGRESS_DENY_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/backend",
        dst: "c1/prod/batch",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "ingress policy does not restrict the subject's egress",
        yaml: TUTORIAL,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Allow(""),
    },
    Case {
        name: "egress policy does not restrict the subject's ingress",
        yaml: EGRESS_TO_DB,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "egress policy: allowed destination",
        yaml: EGRESS_TO_DB,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/backend-to-db: spec.egress[0]"),
    },
    Case {
        name: "egress policy denies even when the destination is unpoliced",
        yaml: EGRESS_TO_DB,
        src: "c1/prod/backend",
        dst: "c1/prod/batch",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (egress): selected by CiliumNetworkPolicy prod/backend-to-db",
        ),
    },
    Case {
        name: "egress policy: world denied",
        yaml: EGRESS_TO_DB,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "egress allowed but ingress of the destination denies",
        yaml: BOTH_SIDES,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/db-from-frontend",
        ),
    },
    Case {
        name: "destination allows, source has no egress policy",
        yaml: BOTH_SIDES,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/db-from-frontend: spec.ingress[0]"),
    },
    Case {
        name: "both sides allow the same port",
        yaml: BOTH_SIDES_AGREE,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 5432,
        want: Want::Allow("prod/db-from-backend: spec.ingress[0]"),
    },
    Case {
        name: "both sides allow, names both rules",
        yaml: BOTH_SIDES_AGREE,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 5432,
        want: Want::Allow("prod/backend-to-db: spec.egress[0]"),
    },
    Case {
        name: "both sides: only the intersection",
        yaml: BOTH_SIDES_AGREE,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 5500,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "both sides: protocol the egress rule does not name",
        yaml: BOTH_SIDES_AGREE,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: UDP,
        port: 5432,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "policies add up: first",
        yaml: TWO_POLICIES,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/a: spec.ingress[0]"),
    },
    Case {
        name: "policies add up: second",
        yaml: TWO_POLICIES,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9000,
        want: Want::Allow("prod/b: spec.ingress[0]"),
    },
    Case {
        name: "policies add up: second's port only",
        yaml: TWO_POLICIES,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "policies add up: default deny names both",
        yaml: TWO_POLICIES,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("selected by CiliumNetworkPolicy prod/a, CiliumNetworkPolicy prod/b"),
    },
    Case {
        name: "specs: second spec",
        yaml: SPECS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/chain: specs[1].ingress[0]"),
    },
    Case {
        name: "specs: first spec",
        yaml: SPECS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/chain: specs[0].ingress[0]"),
    },
    Case {
        name: "specs: each spec its own subjects",
        yaml: SPECS,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "two peers in one rule: first",
        yaml: TWO_PEERS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/two-peers: spec.ingress[0]"),
    },
    Case {
        name: "two peers in one rule: second",
        yaml: TWO_PEERS,
        src: "c1/prod/batch",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/two-peers: spec.ingress[0]"),
    },
    Case {
        name: "l7: path regex is anchored",
        yaml: L7,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/x/public", false),
    },
    Case {
        name: "l7: method must match exactly",
        yaml: L7,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GETX", "/public/x", false),
    },
    Case {
        name: "l7: other method denied",
        yaml: L7,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("POST", "/public/x", false),
    },
    Case {
        name: "l7: other port default-denied",
        yaml: L7,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9090,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "l7: other peer default-denied",
        yaml: L7,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "l7: several rules, second matches",
        yaml: L7_TWO_RULES,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("POST", "/b", true),
    },
    Case {
        name: "l7: several rules, first matches",
        yaml: L7_TWO_RULES,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/a", true),
    },
    Case {
        name: "l7: several rules, fields of different rules do not mix",
        yaml: L7_TWO_RULES,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("POST", "/a", false),
    },
    Case {
        name: "l7: method alternation",
        yaml: L7_METHODS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("HEAD", "/anything", true),
    },
    Case {
        name: "l7: method alternation, other method",
        yaml: L7_METHODS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("DELETE", "/anything", false),
    },
    Case {
        name: "l7: header with value present",
        yaml: L7_HEADER_BLUE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/", true),
    },
    Case {
        name: "l7: header with another value",
        yaml: L7_HEADER_RED,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/", false),
    },
    Case {
        name: "l7: header presence",
        yaml: L7_HEADER_PRESENT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("PUT", "/x", true),
    },
    Case {
        name: "l7: headerMatches",
        yaml: L7_HEADER_MATCH,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/", true),
    },
    Case {
        name: "l7: host must match",
        yaml: L7_HOST,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/", false),
    },
    Case {
        name: "l7: L4-only allow of the same peer and port lifts L7",
        yaml: L7_LIFTED,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/l4: spec.ingress[0]"),
    },
    Case {
        name: "l7: L4-only allow of another peer does not lift L7",
        yaml: L7_NOT_LIFTED,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("POST", "/public/x", false),
    },
    Case {
        name: "l7: L4-only allow of another peer allows that peer",
        yaml: L7_NOT_LIFTED,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/l7: spec.ingress[1]"),
    },
    Case {
        name: "l7: L4-only allow on another port",
        yaml: L7_NOT_LIFTED,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9090,
        want: Want::Allow("prod/l7: spec.ingress[2]"),
    },
    Case {
        name: "l7 egress: matching method",
        yaml: L7_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/x", true),
    },
    Case {
        name: "l7 egress: other method",
        yaml: L7_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Http("DELETE", "/x", false),
    },
    Case {
        name: "l7 both directions: both match",
        yaml: L7_BOTH_DIRECTIONS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/public/a", true),
    },
    Case {
        name: "l7 both directions: ingress rule fails",
        yaml: L7_BOTH_DIRECTIONS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("GET", "/private", false),
    },
    Case {
        name: "l7 both directions: egress rule fails",
        yaml: L7_BOTH_DIRECTIONS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Http("POST", "/public/a", false),
    },
    Case {
        name: "netpol podSelector: own namespace",
        yaml: NP_POD,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol podSelector: not other namespaces",
        yaml: NP_POD,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress): selected by NetworkPolicy prod/np"),
    },
    Case {
        name: "netpol podSelector: other pods denied",
        yaml: NP_POD,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol podSelector: not world",
        yaml: NP_POD,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol namespaceSelector: labelled namespace",
        yaml: NP_NAMESPACE,
        src: "c1/dev/backend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol namespaceSelector: own namespace when labelled",
        yaml: NP_NAMESPACE,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol namespaceSelector: other namespace",
        yaml: NP_NAMESPACE,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol namespaceSelector by name",
        yaml: NP_NAMESPACE_NAME,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol namespaceSelector by name: others",
        yaml: NP_NAMESPACE_NAME,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol pod and namespace selector: both match",
        yaml: NP_POD_AND_NAMESPACE,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol pod and namespace selector: pod does not match",
        yaml: NP_POD_AND_NAMESPACE,
        src: "c1/dev/backend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol pod and namespace selector: namespace does not match",
        yaml: NP_POD_AND_NAMESPACE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol separate peers: pod selector",
        yaml: NP_POD_OR_NAMESPACE,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol separate peers: namespace selector",
        yaml: NP_POD_OR_NAMESPACE,
        src: "c1/dev/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol separate peers: neither",
        yaml: NP_POD_OR_NAMESPACE,
        src: "c1/prod/batch",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol namespaceSelector {}: every namespace",
        yaml: NP_ALL_NAMESPACES,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol namespaceSelector {}: not world",
        yaml: NP_ALL_NAMESPACES,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol ipBlock matches pod addresses",
        yaml: NP_IP_BLOCK_PODS,
        src: "c1/prod/batch",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol ipBlock except excludes a pod",
        yaml: NP_IP_BLOCK_PODS,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol ipBlock: pods outside the block",
        yaml: NP_IP_BLOCK_PODS,
        src: "c1/dev/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol ipBlock: identity with a pod outside the block",
        yaml: NP_IP_BLOCK_PODS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol ipBlock: non-pod address inside",
        yaml: NP_IP_BLOCK_PODS,
        src: "10.1.0.99",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol ipBlock: outside address",
        yaml: NP_IP_BLOCK_WORLD,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol ipBlock: address outside the block",
        yaml: NP_IP_BLOCK_WORLD,
        src: "198.51.100.7",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol egress ipBlock: internet",
        yaml: NP_EGRESS_IP_BLOCK,
        src: "c1/prod/backend",
        dst: "8.8.8.8",
        proto: UDP,
        port: 53,
        want: Want::Allow("NetworkPolicy prod/np: spec.egress[0]"),
    },
    Case {
        name: "netpol egress ipBlock: except covers pods",
        yaml: NP_EGRESS_IP_BLOCK,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "netpol egress ipBlock: except covers other addresses",
        yaml: NP_EGRESS_IP_BLOCK,
        src: "c1/prod/backend",
        dst: "10.9.9.9",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "netpol named port",
        yaml: NP_NAMED_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol named port: other port",
        yaml: NP_NAMED_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9090,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol named UDP port with default protocol TCP",
        yaml: NP_NAMED_UDP_PORT,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 5353,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol named UDP port with protocol UDP",
        yaml: NP_NAMED_UDP_PORT,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 5353,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[1]"),
    },
    Case {
        name: "netpol endPort: inside",
        yaml: NP_PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8090,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol endPort: outside",
        yaml: NP_PORT_RANGE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8200,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol protocol defaults to TCP",
        yaml: NP_DEFAULT_TCP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 53,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol protocol defaults to TCP: UDP denied",
        yaml: NP_DEFAULT_TCP,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 53,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol empty from: everyone on the port",
        yaml: NP_PORT_FROM_ANYONE,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol empty from: pods on the port",
        yaml: NP_PORT_FROM_ANYONE,
        src: "c1/other/client",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol empty from: other port",
        yaml: NP_PORT_FROM_ANYONE,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9090,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol ingress [{}] allows all",
        yaml: NP_ALLOW_ALL,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 9999,
        want: Want::Allow("NetworkPolicy prod/allow-all: spec.ingress[0]"),
    },
    Case {
        name: "netpol Egress only: ingress unrestricted",
        yaml: NP_EGRESS_ONLY,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "netpol Egress only: allowed destination",
        yaml: NP_EGRESS_ONLY,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/egress-only: spec.egress[0]"),
    },
    Case {
        name: "netpol Egress only: other destinations denied",
        yaml: NP_EGRESS_ONLY,
        src: "c1/prod/backend",
        dst: "c1/prod/batch",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress): selected by NetworkPolicy prod/egress-only"),
    },
    Case {
        name: "netpol policyTypes [Ingress] without rules denies all ingress",
        yaml: NP_DENY_ALL_INGRESS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress): selected by NetworkPolicy prod/deny-all"),
    },
    Case {
        name: "netpol deny all ingress: world too",
        yaml: NP_DENY_ALL_INGRESS,
        src: "203.0.113.5",
        dst: "c1/prod/db",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol deny all ingress: egress unrestricted",
        yaml: NP_DENY_ALL_INGRESS,
        src: "c1/prod/backend",
        dst: "203.0.113.5",
        proto: TCP,
        port: 443,
        want: Want::Allow(""),
    },
    Case {
        name: "netpol deny all ingress: other namespaces unaffected",
        yaml: NP_DENY_ALL_INGRESS,
        src: "c1/prod/frontend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "netpol deny all ingress: host still allowed",
        yaml: NP_DENY_ALL_INGRESS,
        src: "host",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("allow-localhost"),
    },
    Case {
        name: "netpol without policyTypes implies Ingress",
        yaml: NP_IMPLIED_INGRESS,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress): selected by NetworkPolicy prod/implied"),
    },
    Case {
        name: "netpol without policyTypes: egress rules apply",
        yaml: NP_IMPLIED_INGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/implied: spec.egress[0]"),
    },
    Case {
        name: "netpol matchExpressions: DoesNotExist peer",
        yaml: NP_MATCH_EXPRESSIONS,
        src: "c1/prod/batch",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol matchExpressions: Exists subject",
        yaml: NP_MATCH_EXPRESSIONS,
        src: "c1/prod/frontend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol matchExpressions: pod without the label is no subject",
        yaml: NP_MATCH_EXPRESSIONS,
        src: "c1/prod/frontend",
        dst: "c1/prod/batch",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "toPorts without L3 on egress: any destination",
        yaml: PORT_ONLY_EGRESS,
        src: "c1/prod/backend",
        dst: "8.8.8.8",
        proto: UDP,
        port: 53,
        want: Want::Allow("prod/dns-anywhere: spec.egress[0]"),
    },
    Case {
        name: "toPorts without L3 on egress: pods too",
        yaml: PORT_ONLY_EGRESS,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: UDP,
        port: 53,
        want: Want::Allow("prod/dns-anywhere: spec.egress[0]"),
    },
    Case {
        name: "toPorts without L3 on egress: other port",
        yaml: PORT_ONLY_EGRESS,
        src: "c1/prod/backend",
        dst: "8.8.8.8",
        proto: TCP,
        port: 443,
        want: Want::Deny("default deny (egress)"),
    },
    Case {
        name: "allow without default deny: others allowed",
        yaml: ALLOW_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "allow without default deny: allowed peer",
        yaml: ALLOW_WITHOUT_DEFAULT_DENY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/frontend-too: spec.ingress[0]"),
    },
    Case {
        name: "default deny of another policy wins",
        yaml: DEFAULT_DENY_FROM_ANOTHER_POLICY,
        src: "c1/prod/db",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny(
            "default deny (ingress): selected by CiliumNetworkPolicy prod/allow-frontend-to-backend",
        ),
    },
    Case {
        name: "default deny of another policy: its allow applies",
        yaml: DEFAULT_DENY_FROM_ANOTHER_POLICY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/allow-frontend-to-backend: spec.ingress[0]"),
    },
    Case {
        name: "default deny of another policy: deny applies",
        yaml: DEFAULT_DENY_FROM_ANOTHER_POLICY,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/deny-batch: spec.ingressDeny[0]"),
    },
    Case {
        name: "l7: deny on the same port wins",
        yaml: L7_AND_DENY,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("prod/l7: spec.ingressDeny[0]"),
    },
    Case {
        name: "l7: L4-only port of the same rule lifts L7",
        yaml: L7_LIFTED_SAME_RULE,
        src: "c1/prod/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/l7: spec.ingress[0]"),
    },
    Case {
        name: "metadata.namespace: policy applies there",
        yaml: OTHER_NAMESPACE,
        src: "c1/dev/frontend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumNetworkPolicy dev/allow: spec.ingress[0]"),
    },
    Case {
        name: "metadata.namespace: peers default to that namespace",
        yaml: OTHER_NAMESPACE,
        src: "c1/prod/frontend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("selected by CiliumNetworkPolicy dev/allow"),
    },
    Case {
        name: "metadata.namespace: not the default namespace",
        yaml: OTHER_NAMESPACE,
        src: "c1/prod/batch",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow(""),
    },
    Case {
        name: "entity world includes CIDR identities",
        yaml: FROM_WORLD_WITH_CIDR_IDENTITIES,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-world: spec.ingress[0]"),
    },
    Case {
        name: "entity world: addresses without a CIDR identity",
        yaml: FROM_WORLD_WITH_CIDR_IDENTITIES,
        src: "198.51.100.7",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-world: spec.ingress[0]"),
    },
    Case {
        name: "fromCIDR 0.0.0.0/0: outside addresses",
        yaml: FROM_ALL_ADDRESSES,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("prod/from-anywhere: spec.ingress[0]"),
    },
    Case {
        name: "fromCIDR 0.0.0.0/0: not pods",
        yaml: FROM_ALL_ADDRESSES,
        src: "c1/dev/frontend",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "fromCIDR 0.0.0.0/0: not remote nodes",
        yaml: FROM_ALL_ADDRESSES,
        src: "remote-node",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "CCNP egress {}: world denied for every pod",
        yaml: CCNP_EGRESS_LOCKDOWN,
        src: "c1/other/client",
        dst: "8.8.8.8",
        proto: UDP,
        port: 53,
        want: Want::Deny(
            "default deny (egress): selected by CiliumClusterwideNetworkPolicy egress-lockdown",
        ),
    },
    Case {
        name: "CCNP egress {}: cluster allowed",
        yaml: CCNP_EGRESS_LOCKDOWN,
        src: "c1/other/client",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("CiliumClusterwideNetworkPolicy egress-lockdown: spec.egress[0]"),
    },
    Case {
        name: "CCNP egress {}: node allowed",
        yaml: CCNP_EGRESS_LOCKDOWN,
        src: "c1/other/client",
        dst: "host",
        proto: UDP,
        port: 53,
        want: Want::Allow("node"),
    },
    Case {
        name: "netpol port without number: every port of the protocol",
        yaml: NP_PROTOCOL_ONLY,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: UDP,
        port: 9999,
        want: Want::Allow("NetworkPolicy prod/np: spec.ingress[0]"),
    },
    Case {
        name: "netpol port without number: other protocol",
        yaml: NP_PROTOCOL_ONLY,
        src: "203.0.113.5",
        dst: "c1/prod/backend",
        proto: TCP,
        port: 9999,
        want: Want::Deny("default deny (ingress)"),
    },
    Case {
        name: "netpol egress namespaceSelector",
        yaml: NP_EGRESS_NAMESPACE,
        src: "c1/prod/backend",
        dst: "c1/dev/backend",
        proto: TCP,
        port: 8080,
        want: Want::Allow("NetworkPolicy prod/np: spec.egress[0]"),
    },
    Case {
        name: "netpol egress namespaceSelector: other namespace",
        yaml: NP_EGRESS_NAMESPACE,
        src: "c1/prod/backend",
        dst: "c1/prod/db",
        proto: TCP,
        port: 8080,
        want: Want::Deny("default deny (egress)"),
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

/// A policy `parse` must reject, naming the field and the reason.
struct Invalid {
    name: &'static str,
    yaml: &'static str,
    /// The exact YAML path of the error.
    field: &'static str,
    /// Text the reason contains.
    reason: &'static str,
}

const INVALID: &[Invalid] = &[
    Invalid {
        name: "endPort below port",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "8080", endPort: 70}]}]
"#,
        field: "spec.ingress[0].toPorts[0].ports[0].endPort",
        reason: "70 is below port 8080",
    },
    Invalid {
        name: "toFQDNs",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: example.com}]
"#,
        field: "spec.egress[0].toFQDNs",
        reason: "not supported",
    },
    Invalid {
        name: "toServices",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toServices: [{k8sService: {serviceName: db, namespace: prod}}]
"#,
        field: "spec.egress[0].toServices",
        reason: "not supported",
    },
    Invalid {
        name: "icmps",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [world]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
"#,
        field: "spec.ingress[0].icmps",
        reason: "not supported",
    },
    Invalid {
        name: "DNS rules",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
"#,
        field: "spec.egress[0].toPorts[0].rules.dns",
        reason: "not supported",
    },
    Invalid {
        name: "Kafka rules",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
specs:
- endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
- endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: consume, topic: orders}]
"#,
        field: "specs[1].ingress[0].toPorts[0].rules.kafka",
        reason: "not supported",
    },
    Invalid {
        name: "typo in a rule field",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoint: [{}]
"#,
        field: "spec.ingress[0].fromEndpoint",
        reason: "unknown field `fromEndpoint`",
    },
    Invalid {
        name: "typo in a selector",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {matchLabel: {app: backend}}
"#,
        field: "spec.endpointSelector.matchLabel",
        reason: "unknown field `matchLabel`",
    },
    Invalid {
        name: "typo in a spec field",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingres: [{}]
"#,
        field: "spec.ingres",
        reason: "unknown field `ingres`",
    },
    Invalid {
        name: "bad CIDR",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - fromCIDR: [10.0.0.0/8, 10.0.0.300/8]
"#,
        field: "spec.ingress[0].fromCIDR[1]",
        reason: "\"10.0.0.300/8\" is not an IPv4 CIDR",
    },
    Invalid {
        name: "CIDR with host bits",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 192.168.1.1/16}]
"#,
        field: "spec.egress[0].toCIDRSet[0].cidr",
        reason: "host bits set",
    },
    Invalid {
        name: "except outside the CIDR",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 192.168.0.0/16, except: [10.0.0.0/8]}]
"#,
        field: "spec.egress[0].toCIDRSet[0].except[0]",
        reason: "10.0.0.0/8 is not inside 192.168.0.0/16",
    },
    Invalid {
        name: "bad path regex",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}, {path: "/api/(v1"}]
"#,
        field: "spec.ingress[0].toPorts[0].rules.http[1].path",
        reason: "is not a valid regular expression",
    },
    Invalid {
        name: "bad operator",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector:
    matchExpressions: [{key: app, operator: Equals, values: [web]}]
"#,
        field: "spec.endpointSelector.matchExpressions[0].operator",
        reason: "\"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
    },
    Invalid {
        name: "In without values",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: app, operator: In}]
"#,
        field: "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
        reason: "needs at least one value",
    },
    Invalid {
        name: "L7 rules in a deny rule",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: DELETE}]
"#,
        field: "spec.ingressDeny[0].toPorts[0].rules",
        reason: "not allowed in deny rules",
    },
    Invalid {
        name: "HTTP rules with UDP",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "80", protocol: UDP}]
      rules:
        http: [{method: GET}]
"#,
        field: "spec.ingress[0].toPorts[0].ports[1].protocol",
        reason: "HTTP rules need protocol TCP",
    },
    Invalid {
        name: "named port with endPort",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: http, endPort: 8090}]}]
"#,
        field: "spec.ingress[0].toPorts[0].ports[0].endPort",
        reason: "cannot be used with the named port \"http\"",
    },
    Invalid {
        name: "port out of range",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "70000"}]}]
"#,
        field: "spec.ingress[0].toPorts[0].ports[0].port",
        reason: "70000 is not a port",
    },
    Invalid {
        name: "unknown protocol",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toPorts: [{ports: [{port: "80", protocol: HTTP}]}]
"#,
        field: "spec.egress[0].toPorts[0].ports[0].protocol",
        reason: "\"HTTP\" is not one of TCP, UDP, SCTP, ANY",
    },
    Invalid {
        name: "unknown entity",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world, internet]
"#,
        field: "spec.egress[0].toEntities[1]",
        reason: "\"internet\" is not an entity",
    },
    Invalid {
        name: "peer field of the other direction",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress:
  - toEndpoints: [{}]
"#,
        field: "spec.ingress[0].toEndpoints",
        reason: "not allowed in an ingress rule",
    },
    Invalid {
        name: "missing endpointSelector",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  ingress: [{}]
"#,
        field: "spec.endpointSelector",
        reason: "missing",
    },
    Invalid {
        name: "CCNP with a namespace",
        yaml: r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: bad, namespace: prod}
spec:
  endpointSelector: {}
"#,
        field: "metadata.namespace",
        reason: "cluster-scoped and takes no namespace",
    },
    Invalid {
        name: "wrong apiVersion",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: CiliumNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
"#,
        field: "apiVersion",
        reason: "needs apiVersion cilium.io/v2",
    },
    Invalid {
        name: "NetworkPolicy unknown policyType",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egres]
"#,
        field: "spec.policyTypes[1]",
        reason: "\"Egres\" is not Ingress or Egress",
    },
    Invalid {
        name: "NetworkPolicy except outside ipBlock",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.1.0.0/16, except: [10.2.0.0/24]}
"#,
        field: "spec.ingress[0].from[0].ipBlock.except[0]",
        reason: "10.2.0.0/24 is not inside 10.1.0.0/16",
    },
    Invalid {
        name: "NetworkPolicy named port with endPort",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  egress:
  - ports: [{port: http, endPort: 9000}]
"#,
        field: "spec.egress[0].ports[0].endPort",
        reason: "cannot be used with the named port \"http\"",
    },
    Invalid {
        name: "NetworkPolicy ipBlock with podSelector",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.1.0.0/16}
      podSelector: {}
"#,
        field: "spec.ingress[0].from[0]",
        reason: "ipBlock cannot be combined with podSelector or namespaceSelector",
    },
    Invalid {
        name: "NetworkPolicy bad protocol",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, protocol: tcp}]
"#,
        field: "spec.ingress[0].ports[0].protocol",
        reason: "\"tcp\" is not one of TCP, UDP, SCTP",
    },
    Invalid {
        name: "NetworkPolicy typo in a rule (would allow every peer)",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - frm:
    - podSelector: {matchLabels: {app: frontend}}
"#,
        field: "spec.ingress[0].frm",
        reason: "unknown field `frm`",
    },
    Invalid {
        name: "NetworkPolicy typo in a port (would allow every port)",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{prot: 443}]
"#,
        field: "spec.egress[0].ports[0].prot",
        reason: "unknown field `prot`",
    },
    Invalid {
        name: "NetworkPolicy typo in ipBlock (would drop the exception)",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 0.0.0.0/0, excpt: [10.0.0.0/8]}
"#,
        field: "spec.ingress[0].from[0].ipBlock.excpt",
        reason: "unknown field `excpt`",
    },
    Invalid {
        name: "NetworkPolicy typo in a selector",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {matchLabel: {app: db}}
"#,
        field: "spec.podSelector.matchLabel",
        reason: "unknown field `matchLabel`",
    },
];

#[test]
fn invalid_policies_name_the_field_and_reason() {
    use serde::Deserialize;
    let mut failures = Vec::new();
    for case in INVALID {
        let value = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(case.yaml))
            .unwrap_or_else(|e| panic!("case {:?}: not YAML: {e}", case.name));
        match parse(value, "prod") {
            Ok(p) => failures.push(format!("case {:?}: accepted: {p:?}", case.name)),
            Err(e) if e.field != case.field || !e.reason.contains(case.reason) => {
                failures.push(format!(
                    "case {:?}: got {e}; want {}: …{}…",
                    case.name, case.field, case.reason
                ))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        INVALID.len(),
        failures.join("\n")
    );
}
