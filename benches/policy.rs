//! Policy compilation at scale: 10,000 endpoints (1,000 identities in 20 namespaces, 1,000
//! services) × 1,000 rules (250 policies × 4 rules). Measures parsing; a full policy build (the
//! engine and kernel entries) and a full node compile (everything an agent installs); the incremental
//! path end to end — one object changed in the model store, the node's compile, and the kernel
//! map delta the installer would write — for a policy change and for pods coming and going; and
//! the per-flow verdict cost against a plain hash map lookup.
//!
//! Run: `cargo bench -p strait --bench policy` (release). Plain `main`, no harness: human-readable
//! lines, then one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait::compile::{CompiledState, Compiler};
use strait::model::{
    ClusterInfo, ClusterState, Endpoint, Labels, NamedPort, Namespace, Node, Object, ObjectKey,
    Protocol, Service, ServicePort, Store, TargetPort, Update,
};
use strait::policy::{Engine, Policy, Universe, kernel, parse};
use strait_ebpf::PolicyAction;

const CLUSTER: &str = "c1";
const NAMESPACES: u32 = 20;
const SERVICES: u32 = 1_000;
const REPLICAS: u32 = 10;
const POLICIES: u32 = 250;
const REPEAT: usize = 7;
const LOOKUPS: usize = 1_000_000;
const TIERS: [&str; 4] = ["frontend", "backend", "db", "cache"];

/// Identity of service `n` (cluster ID 1 in bits 16–23, as the allocator numbers them).
fn svc_id(n: u32) -> u32 {
    (1 << 16) | (256 + n)
}

fn ns_of(svc: u32) -> u32 {
    svc % NAMESPACES
}

/// Tiers vary within a namespace (50 services each: ~12 per tier).
fn tier_of(svc: u32) -> &'static str {
    TIERS[((svc / NAMESPACES) % 4) as usize]
}

/// Namespace labels: alternating env, five teams.
fn ns_labels(ns: u32) -> Labels {
    let env = if ns.is_multiple_of(2) {
        "prod"
    } else {
        "staging"
    };
    [
        ("env".to_string(), env.to_string()),
        ("team".to_string(), format!("team-{}", ns % 5)),
    ]
    .into()
}

fn pod_labels(svc: u32) -> Labels {
    [
        ("app".to_string(), format!("svc-{svc}")),
        ("tier".to_string(), tier_of(svc).to_string()),
        ("team".to_string(), format!("team-{}", (svc / 3) % 10)),
    ]
    .into()
}

fn ports_of(svc: u32) -> Vec<NamedPort> {
    let port = |name: &str, port: u16| NamedPort {
        name: Some(name.to_string()),
        port,
        protocol: Protocol::Tcp,
    };
    let mut v = vec![port("http", 8080), port("metrics", 9090)];
    match tier_of(svc) {
        "db" => v.push(port("postgres", 5432)),
        "cache" => v.push(port("redis", 6379)),
        _ => {}
    }
    v
}

/// Pod `p` (global index) gets 10.0.0.0 + p + 1.
fn pod_ip(p: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + p + 1)
}

const NODES: u32 = 4;

/// Pod `pod` (global index) of service `svc`, spread round robin over the nodes.
fn endpoint(svc: u32, id: u32, pod: u32) -> Endpoint {
    Endpoint {
        namespace: format!("ns-{}", ns_of(svc)),
        name: format!("svc-{svc}-{pod}"),
        node: format!("node-{}", pod % NODES + 1),
        ip: pod_ip(pod),
        labels: pod_labels(svc),
        identity: id,
        workload: Some(format!("svc-{svc}")),
        ports: ports_of(svc),
        ready: true,
        cgroup_id: Some(100_000 + u64::from(pod)),
        host_ifname: Some(format!("lxc{pod:08x}")),
    }
}

fn service(svc: u32) -> Service {
    Service {
        namespace: format!("ns-{}", ns_of(svc)),
        name: format!("svc-{svc}"),
        cluster_ip: Ipv4Addr::from(0xc613_0000 + svc + 1),
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
        }],
        selector: [("app".to_string(), format!("svc-{svc}"))].into(),
        annotations: Default::default(),
    }
}

fn state(policies: &[Policy]) -> ClusterState {
    ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: CLUSTER.into(),
            id: 1,
        },
        nodes: (1..=NODES)
            .map(|n| Node {
                name: format!("node-{n}"),
                underlay_ip: Ipv4Addr::new(198, 18, 0, 10 + n as u8),
                pod_cidr: format!("10.{n}.0.0/16").parse().expect("cidr"),
                gateway: Ipv4Addr::new(198, 18, n as u8, 1),
            })
            .collect(),
        namespaces: (0..NAMESPACES)
            .map(|ns| {
                let name = format!("ns-{ns}");
                let mut labels = ns_labels(ns);
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                Namespace { name, labels }
            })
            .collect(),
        endpoints: (0..SERVICES)
            .flat_map(|svc| {
                (0..REPLICAS).map(move |r| endpoint(svc, svc_id(svc), svc * REPLICAS + r))
            })
            .collect(),
        services: (0..SERVICES).map(service).collect(),
        policies: policies.to_vec(),
    }
}

/// The service a policy protects: `i * 37 mod 1000` spreads 250 policies over all namespaces.
fn target(i: u32) -> u32 {
    (i * 37) % SERVICES
}

/// Another service of the same namespace as `svc`.
fn sibling(svc: u32, k: u32) -> u32 {
    (svc + NAMESPACES * k) % SERVICES
}

/// Policy `i` as a user would write it; `variant` changes one rule (for the incremental case).
/// Kinds, by `i % 10`: 0–5 service policies (L3/L4, matchExpressions, named ports, L7, egress),
/// 6–7 tier guards (deny rules, CIDR egress), 8 platform access (entities, cross-namespace),
/// 9 Kubernetes NetworkPolicy. Every policy has 4 rules.
fn policy_yaml(i: u32, variant: bool) -> String {
    let t = target(i);
    // Tier guards go round the namespaces; the others live with the service they protect.
    let ns = if matches!(i % 10, 6 | 7) {
        (i / 10) % NAMESPACES
    } else {
        ns_of(t)
    };
    let other_ns = (ns + 1 + i % 7) % NAMESPACES;
    match i % 10 {
        0..=5 => {
            let (a, port) = if variant {
                (sibling(t, 5), 8081)
            } else {
                (sibling(t, 1), 8080)
            };
            let b = sibling(t, 2);
            let c = sibling(t, 3);
            let from_tier = if i % 10 < 3 {
                format!(
                    "    - matchExpressions:\n      - {{key: tier, operator: In, values: [frontend, backend]}}\n      - {{key: team, operator: NotIn, values: [team-{}]}}\n",
                    i % 10
                )
            } else {
                format!(
                    "    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: ns-{other_ns}\n        tier: frontend\n"
                )
            };
            format!(
                r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: svc-{t}-{i}
  namespace: ns-{ns}
spec:
  endpointSelector:
    matchLabels:
      app: svc-{t}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: svc-{a}
    toPorts:
    - ports:
      - port: "{port}"
        protocol: TCP
  - fromEndpoints:
{from_tier}    toPorts:
    - ports:
      - port: http
  - fromEndpoints:
    - matchLabels:
        app: svc-{b}
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: "/api/v1/.*"
        - method: POST
          path: /api/v1/orders
          headers: ["X-Tenant: acme"]
  egress:
  - toEndpoints:
    - matchLabels:
        app: svc-{c}
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      - port: "9000"
        endPort: 9100
        protocol: TCP
"#
            )
        }
        6 | 7 => {
            let k = i % 64;
            format!(
                r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tier-guard-{i}
  namespace: ns-{ns}
spec:
  endpointSelector:
    matchLabels:
      tier: db
  ingress:
  - fromEndpoints:
    - matchLabels:
        tier: backend
    toPorts:
    - ports:
      - port: "5432"
        protocol: TCP
  ingressDeny:
  - fromEntities: [world]
  egress:
  - toCIDRSet:
    - cidr: 52.{k}.0.0/16
      except: [52.{k}.1.0/24]
    toPorts:
    - ports:
      - port: "443"
        protocol: TCP
  egressDeny:
  - toCIDR: [169.254.169.254/32]
"#
            )
        }
        8 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: platform-{i}
  namespace: ns-{ns}
spec:
  endpointSelector:
    matchLabels:
      app: svc-{t}
  ingress:
  - fromEntities: [cluster]
    toPorts:
    - ports:
      - port: metrics
  - fromEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: ns-{other_ns}
      matchExpressions:
      - {{key: tier, operator: Exists}}
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
  egress:
  - toEntities: [world]
    toPorts:
    - ports:
      - port: "443"
        protocol: TCP
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: ns-0
        app: svc-0
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      - port: "53"
        protocol: TCP
"#
        ),
        _ => format!(
            r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: np-{i}
  namespace: ns-{ns}
spec:
  podSelector:
    matchLabels:
      app: svc-{t}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          tier: frontend
      namespaceSelector:
        matchLabels:
          env: prod
    ports:
    - port: 8080
      protocol: TCP
  - from:
    - ipBlock:
        cidr: 192.168.0.0/16
        except: [192.168.1.0/24]
  egress:
  - to:
    - namespaceSelector: {{}}
    ports:
    - port: 53
      protocol: UDP
  - to:
    - ipBlock:
        cidr: 10.0.0.0/8
    ports:
    - port: 443
      protocol: TCP
"#
        ),
    }
}

fn parse_one(yaml: &str) -> Policy {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
    parse(value, "default").unwrap_or_else(|e| panic!("policy does not parse: {e}\n{yaml}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// FNV-1a over the compiled entries, in order: equal output before and after an optimisation.
fn checksum(rules: &[(strait_ebpf::PolicyKey, PolicyAction)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, a) in rules {
        for n in [
            k.src_identity,
            k.dst_identity,
            u32::from(k.protocol),
            u32::from(k.dport),
            u32::from(k.dport_prefix_len),
            *a as u32,
        ] {
            for b in n.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// One build as the agent does it: engine, then kernel entries.
/// One measured incremental step: the model update, the node's compile, the kernel delta.
fn step(
    store: &Store,
    compiler: &mut Compiler,
    prev: &mut CompiledState,
    update: Update,
) -> (Duration, usize) {
    let t = Instant::now();
    store.apply(update);
    let snap = store.current().expect("snapshot");
    let next = compiler.compile(&snap).expect("compiles");
    let delta = next.kernel.delta_from(&prev.kernel);
    let took = t.elapsed();
    let writes = delta.ipcache.len()
        + delta.endpoints.len()
        + delta.policed.len()
        + delta.pairs.len()
        + delta.services.len();
    *prev = black_box(next);
    (took, writes)
}

fn main() {
    let wall = Instant::now();

    let yamls: Vec<String> = (0..POLICIES).map(|i| policy_yaml(i, false)).collect();
    let t = Instant::now();
    let policies: Vec<Policy> = yamls.iter().map(|y| parse_one(y)).collect();
    let parse_time = t.elapsed();
    let rules: usize = policies
        .iter()
        .flat_map(|p| &p.specs)
        .map(|s| s.rules.len())
        .sum();
    let yaml_bytes: usize = yamls.iter().map(String::len).sum();
    let netpols = policies
        .iter()
        .filter(|p| p.kind == strait::policy::PolicyKind::NetworkPolicy)
        .count();
    println!(
        "parse: {} policies ({} NetworkPolicy), {} rules, {} KiB YAML in {:.1} ms ({:.1} us/policy)",
        policies.len(),
        netpols,
        rules,
        yaml_bytes / 1024,
        ms(parse_time),
        parse_time.as_secs_f64() * 1e6 / policies.len() as f64
    );

    // The model, as the store holds it.
    let store = Store::new();
    let t = Instant::now();
    store.apply(Update::ReplaceCluster(state(&policies)));
    let store_load = t.elapsed();
    let snap = store.current().expect("snapshot");
    let universe = Arc::new(Universe::from_model(&snap.model));
    println!(
        "model: {} pods, {} services, {} identities ({} endpoint) in {} namespaces on {NODES} nodes; store load {:.1} ms",
        snap.model.endpoints.len(),
        snap.model.services.len(),
        universe.len(),
        SERVICES,
        NAMESPACES,
        ms(store_load)
    );

    // Full policy build: engine + kernel entries of the whole cluster.
    let mut full_runs = Vec::new();
    let mut engine = None;
    let mut kp = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let e = Engine::build(&policies, universe.clone());
        let t1 = Instant::now();
        let k = kernel::compile(&e);
        let t2 = Instant::now();
        full_runs.push((t1 - t0, t2 - t1));
        engine = Some(e);
        kp = Some(k);
    }
    let engine = engine.expect("built");
    let kp = kp.expect("compiled");
    let full_engine = median(full_runs.iter().map(|r| r.0).collect());
    let full_kernel = median(full_runs.iter().map(|r| r.1).collect());
    let full = median(full_runs.iter().map(|r| r.0 + r.1).collect());
    let count = |a: PolicyAction| kp.rules.iter().filter(|(_, x)| *x == a).count();
    let (allow, deny, proxy) = (
        count(PolicyAction::Allow),
        count(PolicyAction::Deny),
        count(PolicyAction::Proxy),
    );
    let checksum = checksum(&kp.rules);
    let mut pairs: Vec<(u32, u32)> = kp
        .rules
        .iter()
        .map(|(k, _)| (k.src_identity, k.dst_identity))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    println!(
        "full policy build: {:.1} ms = engine {:.1} ms + kernel entries {:.1} ms (median of {})",
        ms(full),
        ms(full_engine),
        ms(full_kernel),
        full_runs.len()
    );
    println!(
        "full policy build: {} subjects, {} policed identities, {} kernel entries ({} allow, {} proxy, {} deny) over {} identity pairs, checksum {checksum:016x}",
        engine.subject_ids().len(),
        kp.policed.len(),
        kp.rules.len(),
        allow,
        proxy,
        deny,
        pairs.len()
    );

    // Full node compile: what a starting agent does.
    let mut node_runs = Vec::new();
    let mut compiled = None;
    for _ in 0..3 {
        let mut c = Compiler::new("node-1");
        let t = Instant::now();
        let out = c.compile(&snap).expect("compiles");
        node_runs.push(t.elapsed());
        compiled = Some((c, out));
    }
    let node_full = median(node_runs);
    let (mut compiler, mut prev) = compiled.expect("compiled");
    println!(
        "full node compile: {:.1} ms ({} kernel entries, {} ipcache entries, {} service frontends for node-1)",
        ms(node_full),
        prev.kernel.rule_count(),
        prev.kernel.ipcache.len(),
        prev.kernel.services.len()
    );

    // Incremental, end to end: update → compile → kernel delta.
    let measure = |what: &str,
                   updates: &mut dyn FnMut(usize) -> Update,
                   compiler: &mut Compiler,
                   prev: &mut CompiledState| {
        let mut times = Vec::new();
        let mut writes = 0;
        for r in 0..REPEAT * 2 {
            let (d, w) = step(&store, compiler, prev, updates(r));
            times.push(d);
            writes = writes.max(w);
            assert!(!prev.stats.kernel_full, "{what}: recompiled everything");
        }
        let p50 = median(times.clone());
        let max = times.iter().max().copied().unwrap_or_default();
        println!(
            "incremental ({what}): {:.2} ms median, {:.2} ms max over {} updates; up to {writes} map writes",
            ms(p50),
            ms(max),
            times.len()
        );
        (p50, max)
    };
    let versions = [policies[0].clone(), parse_one(&policy_yaml(0, true))];
    let inc_policy = measure(
        "one policy changed",
        &mut |r| Update::Upsert(Object::Policy(versions[(r + 1) % 2].clone())),
        &mut compiler,
        &mut prev,
    );
    let extra = endpoint(7, svc_id(7), SERVICES * REPLICAS);
    let key = ObjectKey::Endpoint((extra.namespace.clone(), extra.name.clone()));
    let inc_pod = measure(
        "one pod added or removed, existing identity",
        &mut |r| {
            if r % 2 == 0 {
                Update::Upsert(Object::Endpoint(extra.clone()))
            } else {
                Update::Delete(key.clone())
            }
        },
        &mut compiler,
        &mut prev,
    );
    let fresh = endpoint(SERVICES, svc_id(SERVICES), SERVICES * REPLICAS + 1);
    let fresh_key = ObjectKey::Endpoint((fresh.namespace.clone(), fresh.name.clone()));
    let inc_ident = measure(
        "one pod added or removed, new identity",
        &mut |r| {
            if r % 2 == 0 {
                Update::Upsert(Object::Endpoint(fresh.clone()))
            } else {
                Update::Delete(fresh_key.clone())
            }
        },
        &mut compiler,
        &mut prev,
    );
    let ratio = |d: Duration| d.as_secs_f64() / node_full.as_secs_f64();
    println!(
        "incremental vs full node compile: policy {:.3}x, pod {:.3}x, new identity {:.3}x",
        ratio(inc_policy.0),
        ratio(inc_pod.0),
        ratio(inc_ident.0)
    );

    let ids: Vec<u32> = universe.iter().map(|i| i.id).collect();
    let mut rng = Rng(0x5eed);
    let common_ports = [8080u16, 9090, 5432, 443, 53, 6379, 9050, 22];
    let flows: Vec<(u32, u32, u8, u16)> = (0..LOOKUPS)
        .map(|n| {
            if n.is_multiple_of(2) {
                let (k, _) = &kp.rules[rng.below(kp.rules.len())];
                let proto = if k.protocol == 0 { 6 } else { k.protocol };
                let span = 1u32 << (16 - k.dport_prefix_len.min(16));
                let port = if k.dport_prefix_len == 0 {
                    common_ports[rng.below(common_ports.len())]
                } else {
                    (u32::from(k.dport) + rng.below(span as usize) as u32) as u16
                };
                (k.src_identity, k.dst_identity, proto, port)
            } else {
                let proto = if rng.below(4) == 0 { 17 } else { 6 };
                (
                    ids[rng.below(ids.len())],
                    ids[rng.below(ids.len())],
                    proto,
                    common_ports[rng.below(common_ports.len())],
                )
            }
        })
        .collect();
    let t = Instant::now();
    let mut allowed = 0usize;
    for &(s, d, p, port) in &flows {
        allowed += usize::from(black_box(&engine).verdict(s, d, p, port).allowed());
    }
    let verdict_time = t.elapsed();
    let map: HashMap<(u32, u32, u8, u16), bool> = kp
        .rules
        .iter()
        .map(|(k, a)| {
            (
                (k.src_identity, k.dst_identity, k.protocol, k.dport),
                *a != PolicyAction::Deny,
            )
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for f in &flows {
        hits += usize::from(black_box(&map).get(f).copied().unwrap_or(false));
    }
    let map_time = t.elapsed();
    let verdict_ns = verdict_time.as_secs_f64() * 1e9 / LOOKUPS as f64;
    let map_ns = map_time.as_secs_f64() * 1e9 / LOOKUPS as f64;
    println!(
        "verdict: {verdict_ns:.0} ns/op over {LOOKUPS} flows ({allowed} allowed) vs HashMap<(u32,u32,u8,u16),bool> {map_ns:.1} ns/op ({} keys, {hits} hits) = {:.1}x",
        map.len(),
        verdict_ns / map_ns
    );

    let total_wall = wall.elapsed();
    println!("bench wall time: {:.1} s", total_wall.as_secs_f64());
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let summary: BTreeMap<&str, serde_json::Value> = [
        ("endpoints", serde_json::json!(SERVICES * REPLICAS)),
        ("identities", serde_json::json!(universe.len())),
        ("policies", serde_json::json!(policies.len())),
        ("rules", serde_json::json!(rules)),
        ("parse_ms", serde_json::json!(r3(ms(parse_time)))),
        ("full_ms", serde_json::json!(r3(ms(full)))),
        ("full_engine_ms", serde_json::json!(r3(ms(full_engine)))),
        ("full_compile_ms", serde_json::json!(r3(ms(full_kernel)))),
        ("full_node_ms", serde_json::json!(r3(ms(node_full)))),
        ("kernel_entries", serde_json::json!(kp.rules.len())),
        ("kernel_pairs", serde_json::json!(pairs.len())),
        (
            "kernel_checksum",
            serde_json::json!(format!("{checksum:016x}")),
        ),
        ("policed", serde_json::json!(kp.policed.len())),
        ("inc_policy_ms", serde_json::json!(r3(ms(inc_policy.0)))),
        ("inc_policy_max_ms", serde_json::json!(r3(ms(inc_policy.1)))),
        ("inc_pod_ms", serde_json::json!(r3(ms(inc_pod.0)))),
        ("inc_pod_max_ms", serde_json::json!(r3(ms(inc_pod.1)))),
        ("inc_identity_ms", serde_json::json!(r3(ms(inc_ident.0)))),
        (
            "inc_identity_max_ms",
            serde_json::json!(r3(ms(inc_ident.1))),
        ),
        ("verdict_ns", serde_json::json!(r3(verdict_ns))),
        ("hashmap_ns", serde_json::json!(r3(map_ns))),
        (
            "verdict_vs_hashmap",
            serde_json::json!(r3(verdict_ns / map_ns)),
        ),
        ("wall_s", serde_json::json!(r3(total_wall.as_secs_f64()))),
    ]
    .into_iter()
    .collect();
    println!("{}", serde_json::to_string(&summary).expect("json"));
}
