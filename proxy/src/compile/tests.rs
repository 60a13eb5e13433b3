//! The incremental compile must give exactly what a full compile of the same snapshot gives:
//! random changes (pods come, go, change labels, ports and readiness; policies, namespaces and
//! services come and go) are compiled both ways after each step and compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use strait_ebpf::{PolicyAction, PolicyDelta, PolicyImage, PolicyKey};

use super::*;
use crate::model::*;

const POLICIES: &[&str] = &[
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: ns0}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: http}]}]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-out, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [api, db]}]}]
    toPorts: [{ports: [{port: http}, {port: "5432", protocol: TCP}]}]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toCIDR: [203.0.113.0/24]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-db-from-batch}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: batch}}]
  enableDefaultDeny: {ingress: false}
"#,
    r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: ns2}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
    - ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}
    ports: [{port: 5432, protocol: TCP}]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: ns0}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [world, cluster]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public.*"}]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: batch-lockdown}
spec:
  endpointSelector: {matchLabels: {app: batch}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: ns3}}]
  - toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.7/32]}]
"#,
];

const APPS: [&str; 5] = ["web", "api", "db", "batch", "cache"];
const NODES: [&str; 2] = ["node-1", "node-2"];

/// SplitMix64: deterministic, no dependency.
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

/// Pods and identities as the lab would allocate them: one identity per (namespace, labels).
#[derive(Default)]
struct World {
    identities: BTreeMap<(String, Labels), u32>,
    next_pod: u32,
    /// Addresses and cgroups of deleted pods, handed out again as a real allocator does.
    freed: Vec<(Ipv4Addr, u64)>,
}

impl World {
    fn identity(&mut self, ns: &str, labels: &Labels) -> u32 {
        let n = self.identities.len() as u32;
        *self
            .identities
            .entry((ns.to_string(), labels.clone()))
            .or_insert((1 << 16) | (256 + n))
    }

    fn pod(&mut self, rng: &mut Rng) -> Endpoint {
        self.next_pod += 1;
        let n = self.next_pod;
        let ns = format!("ns{}", rng.below(4));
        let app = APPS[rng.below(APPS.len())];
        let labels: Labels = [("app".to_string(), app.to_string())].into();
        let node = NODES[rng.below(2)];
        let (ip, cgroup) = match self.freed.pop() {
            Some(reused) if rng.below(2) == 0 => reused,
            other => {
                self.freed.extend(other);
                (
                    Ipv4Addr::new(10, 9, (n / 200) as u8, (n % 200) as u8 + 2),
                    1000 + u64::from(n),
                )
            }
        };
        Endpoint {
            identity: self.identity(&ns, &labels),
            namespace: ns,
            name: format!("{app}-{n}"),
            node: node.into(),
            ip,
            labels,
            workload: Some(app.into()),
            ports: ports(rng),
            ready: rng.below(5) != 0,
            cgroup_id: Some(cgroup),
            host_ifname: Some(format!("lxc{n}")),
        }
    }
}

fn ports(rng: &mut Rng) -> Vec<NamedPort> {
    let port = [8080, 8081, 9090][rng.below(3)];
    vec![
        NamedPort {
            name: Some("http".into()),
            port,
            protocol: Protocol::Tcp,
        },
        NamedPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
    ]
}

fn namespace(i: usize, team: &str) -> Namespace {
    let name = format!("ns{i}");
    Namespace {
        labels: [
            ("kubernetes.io/metadata.name".to_string(), name.clone()),
            ("team".to_string(), team.to_string()),
        ]
        .into(),
        name,
    }
}

fn service(i: usize, app: &str, headless: bool) -> Service {
    Service {
        namespace: format!("ns{}", i % 4),
        name: format!("svc-{i}"),
        cluster_ip: if headless {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::new(10, 96, 0, i as u8 + 1)
        },
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
        }],
        selector: [("app".to_string(), app.to_string())].into(),
        annotations: Default::default(),
    }
}

fn policy(i: usize) -> crate::policy::Policy {
    let value: serde_yaml::Value = serde_yaml::from_str(POLICIES[i]).unwrap();
    crate::policy::parse(value, "default").unwrap()
}

fn base_state(world: &mut World, rng: &mut Rng) -> ClusterState {
    ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c1".into(),
            id: 1,
        },
        nodes: NODES
            .iter()
            .enumerate()
            .map(|(i, n)| Node {
                name: n.to_string(),
                underlay_ip: Ipv4Addr::new(198, 18, 0, 10 + i as u8),
                pod_cidr: format!("10.9.{i}.0/24").parse().unwrap(),
                gateway: Ipv4Addr::new(10, 8, i as u8, 1),
            })
            .collect(),
        namespaces: (0..4)
            .map(|i| namespace(i, if i % 2 == 0 { "a" } else { "b" }))
            .collect(),
        endpoints: (0..30).map(|_| world.pod(rng)).collect(),
        services: vec![service(0, "api", false), service(1, "db", true)],
        policies: vec![policy(0), policy(2)],
    }
}

/// One to three random changes, applied before the next compile (as a watch channel that
/// kept only the newest snapshot would deliver them).
fn mutate(store: &Store, world: &mut World, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        for update in change(store, world, rng) {
            store.apply(update);
        }
    }
}

/// One random change: usually one update, sometimes two that belong together.
fn change(store: &Store, world: &mut World, rng: &mut Rng) -> Vec<Update> {
    let model = store.current().unwrap().model;
    let endpoints: Vec<Arc<Endpoint>> = model.endpoints.values().cloned().collect();
    let pick = |rng: &mut Rng| endpoints[rng.below(endpoints.len())].clone();
    let update = match rng.below(13) {
        0 | 1 => Update::Upsert(Object::Endpoint(world.pod(rng))),
        2 => {
            let e = pick(rng);
            world.freed.push((e.ip, e.cgroup_id.unwrap_or(0)));
            Update::Delete(ObjectKey::Endpoint((e.namespace.clone(), e.name.clone())))
        }
        10 => {
            // A Deployment replacing a pod: the new one takes the old one's address.
            let e = pick(rng);
            let mut new = world.pod(rng);
            new.ip = e.ip;
            new.cgroup_id = e.cgroup_id;
            new.namespace = e.namespace.clone();
            new.labels = e.labels.clone();
            new.identity = e.identity;
            return vec![
                Update::Upsert(Object::Endpoint(new)),
                Update::Delete(ObjectKey::Endpoint((e.namespace.clone(), e.name.clone()))),
            ];
        }
        11 => {
            // A service renamed: the new one takes the old one's cluster IP.
            let Some(svc) = model.services.values().next().cloned() else {
                return vec![];
            };
            let mut renamed = (*svc).clone();
            renamed.name = format!("{}-r", svc.name);
            return vec![
                Update::Upsert(Object::Service(renamed)),
                Update::Delete(ObjectKey::Service((
                    svc.namespace.clone(),
                    svc.name.clone(),
                ))),
            ];
        }
        12 => {
            // A pod moves to the other node, or a node changes its address.
            if rng.below(2) == 0 {
                let mut e = (*pick(rng)).clone();
                e.node = if e.node == NODES[0] {
                    NODES[1]
                } else {
                    NODES[0]
                }
                .into();
                e.host_ifname = Some(format!("lxc-moved-{}", e.name));
                Update::Upsert(Object::Endpoint(e))
            } else {
                let mut n = (**model.nodes.values().nth(rng.below(2)).unwrap()).clone();
                n.underlay_ip = Ipv4Addr::new(198, 18, 1, rng.below(200) as u8 + 1);
                Update::Upsert(Object::Node(n))
            }
        }
        3 => {
            let mut e = (*pick(rng)).clone();
            let app = APPS[rng.below(APPS.len())];
            e.labels.insert("app".into(), app.into());
            e.identity = world.identity(&e.namespace, &e.labels);
            Update::Upsert(Object::Endpoint(e))
        }
        4 => {
            let mut e = (*pick(rng)).clone();
            if rng.below(2) == 0 {
                e.ready = !e.ready;
            } else {
                e.ports = ports(rng);
            }
            Update::Upsert(Object::Endpoint(e))
        }
        5 | 6 => {
            let p = policy(rng.below(POLICIES.len()));
            if model.policies.contains_key(&(p.kind, p.key())) && rng.below(2) == 0 {
                Update::Delete(ObjectKey::Policy((p.kind, p.key())))
            } else {
                Update::Upsert(Object::Policy(p))
            }
        }
        7 => {
            let team = if rng.below(2) == 0 { "a" } else { "b" };
            Update::Upsert(Object::Namespace(namespace(rng.below(4), team)))
        }
        8 => {
            let i = rng.below(5);
            if rng.below(3) == 0 {
                Update::Delete(ObjectKey::Service((
                    format!("ns{}", i % 4),
                    format!("svc-{i}"),
                )))
            } else {
                let app = APPS[rng.below(APPS.len())];
                let svc = service(i, app, rng.below(4) == 0);
                // Two services never share a cluster IP (the compiler refuses it; tested below).
                let taken = model.services.values().any(|o| {
                    o.cluster_ip == svc.cluster_ip
                        && !svc.cluster_ip.is_unspecified()
                        && (&o.namespace, &o.name) != (&svc.namespace, &svc.name)
                });
                if taken {
                    return vec![];
                }
                Update::Upsert(Object::Service(svc))
            }
        }
        _ => {
            // The lab's file source: the whole state again, with one pod moved to a new address.
            let mut e = (*pick(rng)).clone();
            e.ip = Ipv4Addr::new(10, 9, 250, rng.below(250) as u8 + 1);
            if model.endpoints.values().any(|o| o.ip == e.ip) {
                return vec![];
            }
            let mut state = ClusterState {
                revision: model.source_revision + 1,
                cluster: model.cluster.clone(),
                nodes: model.nodes.values().map(|n| (**n).clone()).collect(),
                namespaces: model.namespaces.values().map(|n| (**n).clone()).collect(),
                endpoints: model.endpoints.values().map(|e| (**e).clone()).collect(),
                services: model.services.values().map(|s| (**s).clone()).collect(),
                policies: model.policy_list(),
            };
            state
                .endpoints
                .retain(|o| (&o.namespace, &o.name) != (&e.namespace, &e.name));
            state.endpoints.push(e);
            Update::ReplaceCluster(state)
        }
    };
    vec![update]
}

/// The proxy tables' content, comparable.
fn tables_content(t: &ProxyTables) -> String {
    let endpoints: BTreeMap<_, _> = t
        .endpoints
        .iter()
        .map(|(ip, e)| (*ip, (**e).clone()))
        .collect();
    let cg: BTreeMap<_, _> = t
        .by_cgroup
        .iter()
        .map(|(c, e)| (*c, e.name.clone()))
        .collect();
    let services: BTreeMap<SocketAddrV4, (String, Vec<(SocketAddrV4, String)>)> = t
        .services
        .iter()
        .map(|(f, s)| {
            let b = s
                .backends
                .iter()
                .map(|b| (b.addr, format!("{:?}", b.endpoint)))
                .collect();
            (*f, (s.service.name.clone(), b))
        })
        .collect();
    format!("{endpoints:?}\n{cg:?}\n{services:?}\n{:?}", t.nodes)
}

type Maps = (
    BTreeMap<Ipv4Net, u32>,
    BTreeMap<u64, (u32, Ipv4Addr)>,
    BTreeMap<u32, (bool, bool)>,
    BTreeMap<PolicyKey, PolicyAction>,
    BTreeMap<strait_ebpf::ServiceFrontend, Vec<strait_ebpf::ServiceBackend>>,
);

fn maps(image: &PolicyImage) -> Maps {
    (
        image.ipcache.iter().copied().collect(),
        image
            .endpoints
            .iter()
            .map(|e| (e.cgroup_id, (e.identity, e.ip)))
            .collect(),
        image
            .policed
            .iter()
            .map(|(id, i, e)| (*id, (*i, *e)))
            .collect(),
        image.rules.iter().copied().collect(),
        image.services.iter().cloned().collect(),
    )
}

/// What the maps hold after `delta` is written over `m`.
fn apply(mut m: Maps, delta: &PolicyDelta) -> Maps {
    fn set<K: Ord + Copy, V>(map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
    for (k, v) in &delta.ipcache {
        set(&mut m.0, *k, *v);
    }
    for (k, v) in &delta.endpoints {
        set(&mut m.1, *k, *v);
    }
    for (k, v) in &delta.policed {
        set(&mut m.2, *k, *v);
    }
    for ((s, d), rules) in &delta.pairs {
        m.3.retain(|k, _| (k.src_identity, k.dst_identity) != (*s, *d));
        m.3.extend(rules.iter().copied());
    }
    for (k, v) in &delta.services {
        set(&mut m.4, *k, v.clone());
    }
    m
}

#[test]
fn incremental_compile_equals_full_compile() {
    for seed in [1u64, 7, 42] {
        let mut rng = Rng(seed);
        let mut world = World::default();
        let store = Store::new();
        store.apply(Update::ReplaceCluster(base_state(&mut world, &mut rng)));
        let mut compilers: Vec<Compiler> = NODES.iter().map(|n| Compiler::new(n)).collect();
        let mut installed: Vec<Option<CompiledState>> = vec![None, None];
        let mut incremental = 0;
        for step in 0..150 {
            mutate(&store, &mut world, &mut rng);
            let snap = store.current().unwrap();
            for (i, c) in compilers.iter_mut().enumerate() {
                let got = c.compile(&snap).unwrap();
                let want = Compiler::new(NODES[i]).compile(&snap).unwrap();
                let ctx = format!("seed {seed} step {step} node {}", NODES[i]);
                assert_eq!(
                    maps(&got.kernel.to_image()),
                    maps(&want.kernel.to_image()),
                    "{ctx}"
                );
                assert_eq!(
                    tables_content(&got.proxy),
                    tables_content(&want.proxy),
                    "{ctx}"
                );
                assert_eq!(got.dns, want.dns, "{ctx}");
                assert_eq!(got.interfaces, want.interfaces, "{ctx}");
                assert_eq!(got.kernel.rule_count(), want.kernel.rule_count(), "{ctx}");
                if let Some(prev) = &installed[i] {
                    let delta = got.kernel.delta_from(&prev.kernel);
                    let written = apply(maps(&prev.kernel.to_image()), &delta);
                    assert_eq!(written, maps(&want.kernel.to_image()), "{ctx}: delta");
                }
                incremental += usize::from(!got.stats.kernel_full);
                installed[i] = Some(got);
            }
        }
        assert!(
            incremental > 200,
            "seed {seed}: only {incremental} incremental kernel compiles"
        );
    }
}

#[test]
fn kernel_image_keeps_only_entries_this_node_can_look_up() {
    let mut rng = Rng(3);
    let mut world = World::default();
    let mut state = base_state(&mut world, &mut rng);
    state.policies = (0..POLICIES.len()).map(policy).collect();
    let node1: BTreeSet<u32> = state
        .endpoints
        .iter()
        .filter(|e| e.node == "node-1")
        .map(|e| e.identity)
        .collect();
    let store = Store::new();
    store.apply(Update::ReplaceCluster(state));
    let mut c = Compiler::new("node-1");
    let mine = c.compile(&store.current().unwrap()).unwrap();
    let all = crate::policy::kernel::compile(c.engine().unwrap());
    let expected: BTreeSet<(u32, u32)> = all
        .rules
        .iter()
        .map(|(k, _)| (k.src_identity, k.dst_identity))
        .filter(|(a, b)| node1.contains(a) || node1.contains(b))
        .collect();
    let got: BTreeSet<(u32, u32)> = mine.kernel.rules.keys().copied().collect();
    assert!(!got.is_empty());
    assert!(
        all.rules.len() > mine.kernel.rule_count(),
        "other nodes' pairs are left out"
    );
    assert_eq!(got, expected);
}

#[test]
fn bad_models_are_refused_and_the_last_good_one_stays() {
    let mut rng = Rng(5);
    let mut world = World::default();
    let store = Store::new();
    store.apply(Update::ReplaceCluster(base_state(&mut world, &mut rng)));
    let mut c = Compiler::new("node-1");
    let good = c.compile(&store.current().unwrap()).unwrap();
    let taken = store
        .current()
        .unwrap()
        .model
        .endpoints
        .values()
        .next()
        .unwrap()
        .clone();
    let mut twin = world.pod(&mut rng);
    twin.ip = taken.ip;
    store.apply(Update::Upsert(Object::Endpoint(twin.clone())));
    let err = c.compile(&store.current().unwrap()).unwrap_err();
    assert_eq!(
        err,
        CompileError::DuplicateAddress {
            ip: taken.ip,
            first: format!("{}/{}", taken.namespace, taken.name),
            second: format!("{}/{}", twin.namespace, twin.name),
        }
    );
    let mut lost = world.pod(&mut rng);
    lost.node = "node-9".into();
    store.apply(Update::Delete(ObjectKey::Endpoint((
        twin.namespace,
        twin.name,
    ))));
    store.apply(Update::Upsert(Object::Endpoint(lost.clone())));
    let err = c
        .compile(&store.current().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("node \"node-9\""), "{err}");
    // Fixed: compiles again, incrementally from the last good revision.
    store.apply(Update::Delete(ObjectKey::Endpoint((
        lost.namespace,
        lost.name,
    ))));
    let again = c.compile(&store.current().unwrap()).unwrap();
    assert!(!again.stats.full);
    assert_eq!(
        maps(&again.kernel.to_image()),
        maps(&good.kernel.to_image())
    );
    // A second service on a cluster IP that is taken, then a node deleted under its pods.
    let mut twin_svc = service(0, "web", false);
    twin_svc.name = "svc-twin".into();
    store.apply(Update::Upsert(Object::Service(twin_svc.clone())));
    let err = c.compile(&store.current().unwrap()).unwrap_err();
    assert_eq!(
        err,
        CompileError::DuplicateClusterIp {
            ip: twin_svc.cluster_ip,
            first: "ns0/svc-0".into(),
            second: "ns0/svc-twin".into(),
        }
    );
    store.apply(Update::Delete(ObjectKey::Service((
        twin_svc.namespace,
        twin_svc.name,
    ))));
    store.apply(Update::Delete(ObjectKey::Node("node-2".into())));
    let err = c
        .compile(&store.current().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("node \"node-2\" is not a node"), "{err}");
}
