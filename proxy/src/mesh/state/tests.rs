#![allow(clippy::unwrap_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ipnet::Ipv4Net;

use super::*;
use crate::model::{
    ClusterInfo, ClusterState, Endpoint, NamedPort, Namespace, Node, Protocol, Service,
    ServicePort, TargetPort, Update,
};

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn endpoint(name: &str, ip: [u8; 4], app: &str, ready: bool) -> Endpoint {
    Endpoint {
        namespace: "demo".into(),
        name: name.into(),
        node: "node-1".into(),
        ip: ip.into(),
        labels: labels(&[("app", app)]),
        identity: if app == "backend" { 0x1_0100 } else { 0x1_0101 },
        workload: None,
        ports: vec![NamedPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        ready,
        cgroup_id: None,
        host_ifname: None,
    }
}

fn service(name: &str, app: &str) -> Service {
    Service {
        namespace: "demo".into(),
        name: name.into(),
        cluster_ip: [10, 96, 0, 10].into(),
        ports: vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Name("http".into()),
                protocol: Protocol::Tcp,
            },
            ServicePort {
                name: Some("grpc".into()),
                port: 90,
                target_port: TargetPort::Name("grpc".into()),
                protocol: Protocol::Tcp,
            },
        ],
        selector: labels(&[("app", app)]),
        // As the test below expects: two global services (one not shared), one local.
        annotations: match name {
            "backend" => labels(&[(GLOBAL_ANNOTATION, "true"), (AFFINITY_ANNOTATION, "local")]),
            "private" => labels(&[(GLOBAL_ANNOTATION, "true"), (SHARED_ANNOTATION, "false")]),
            _ => labels(&[(GLOBAL_ANNOTATION, "false")]),
        },
    }
}

fn snapshot() -> Snapshot {
    let store = crate::model::Store::new();
    store.apply(Update::ReplaceCluster(ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c1".into(),
            id: 1,
        },
        nodes: vec![Node {
            name: "node-1".into(),
            underlay_ip: [192, 168, 1, 1].into(),
            pod_cidr: "10.1.1.0/24".parse().unwrap(),
            gateway: [10, 1, 1, 1].into(),
        }],
        namespaces: vec![Namespace {
            name: "demo".into(),
            labels: labels(&[("team", "a")]),
        }],
        endpoints: vec![
            endpoint("backend-1", [10, 1, 1, 10], "backend", true),
            endpoint("backend-2", [10, 1, 1, 11], "backend", false),
            endpoint("frontend-1", [10, 1, 1, 20], "frontend", true),
        ],
        services: vec![
            service("backend", "backend"),
            service("private", "backend"),
            service("local-only", "frontend"),
        ],
        policies: vec![],
    }));
    store.current().unwrap()
}

#[test]
fn publishes_global_services_with_annotations_and_every_pod() {
    let s = MeshState::from_snapshot(&snapshot());
    assert_eq!(s.cluster, ClusterId::new("c1", 1).unwrap());
    assert_eq!(
        s.nodes["node-1"].pod_cidrs,
        vec!["10.1.1.0/24".parse::<Ipv4Net>().unwrap()]
    );
    assert_eq!(s.ipcache.len(), 3);
    assert_eq!(s.ipcache[&Ipv4Addr::new(10, 1, 1, 20)].pod, "frontend-1");
    let backend_labels = &s.identities[&0x1_0100];
    assert_eq!(
        backend_labels.get("k8s:io.cilium.k8s.policy.cluster"),
        Some(&"c1".to_string())
    );
    assert_eq!(
        backend_labels.get("k8s:io.cilium.k8s.namespace.labels.team"),
        Some(&"a".to_string())
    );
    assert_eq!(
        s.services.keys().collect::<Vec<_>>(),
        ["demo/backend", "demo/private"]
    );
    let b = &s.services["demo/backend"];
    assert_eq!(b.affinity, Affinity::Local);
    assert!(b.shared);
    assert_eq!(b.endpoints.len(), 2, "ready and not-ready endpoints");
    assert_eq!(b.endpoints[0].ports, vec![Some(8080), None]);
    assert!(b.endpoints[0].ready && !b.endpoints[1].ready);
    let p = &s.services["demo/private"];
    assert!(!p.shared && p.endpoints.is_empty());
}

fn random_state(rng: &mut StdRng, epoch: u64, revision: u64) -> MeshState {
    let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
    s.epoch = epoch;
    s.revision = revision;
    for i in 0..rng.random_range(0..4u8) {
        let name = format!("n{}", rng.random_range(0..6u8) + i);
        s.nodes.insert(
            name.clone(),
            MeshNode {
                name,
                underlay_ip: [192, 168, 0, rng.random_range(1..4)].into(),
                pod_cidrs: vec![],
            },
        );
    }
    for _ in 0..rng.random_range(0..8) {
        let id = rng.random_range(0..10u32);
        s.identities.insert(
            id,
            labels(&[("app", &format!("a{}", rng.random_range(0..3)))]),
        );
        s.ipcache.insert(
            [10, 2, 0, rng.random_range(0..12)].into(),
            IpEntry {
                identity: id,
                node: "n1".into(),
                namespace: "demo".into(),
                pod: format!("p{}", rng.random_range(0..3)),
            },
        );
    }
    for _ in 0..rng.random_range(0..4) {
        let name = format!("s{}", rng.random_range(0..5));
        let endpoints = (0..rng.random_range(0..3))
            .map(|_| MeshEndpoint {
                ip: [10, 2, 0, rng.random_range(0..12)].into(),
                ports: vec![Some(80)],
                node: "n1".into(),
                ready: rng.random_bool(0.7),
            })
            .collect();
        s.services.insert(
            service_key("demo", &name),
            GlobalService {
                namespace: "demo".into(),
                name,
                ports: vec![],
                shared: true,
                affinity: Affinity::None,
                endpoints,
            },
        );
    }
    s
}

#[test]
fn applying_the_deltas_of_a_sequence_of_states_gives_the_last_state() {
    let mut rng = StdRng::seed_from_u64(12);
    for _ in 0..200 {
        let states: Vec<_> = (0..6).map(|rev| random_state(&mut rng, 7, rev)).collect();
        let mut held = states[0].clone();
        for pair in states.windows(2) {
            let delta = pair[0].delta_to(&pair[1]);
            held.apply(&delta).unwrap();
            assert_eq!(held, pair[1]);
            // Through the wire encoding too.
            let back: Delta = serde_json::from_slice(&serde_json::to_vec(&delta).unwrap()).unwrap();
            assert_eq!(back, delta);
        }
    }
}

#[test]
fn a_delta_that_does_not_start_at_the_held_revision_is_refused_and_changes_nothing() {
    let mut rng = StdRng::seed_from_u64(3);
    let (a, b, c) = (
        random_state(&mut rng, 1, 1),
        random_state(&mut rng, 1, 2),
        random_state(&mut rng, 1, 3),
    );
    let mut held = a.clone();
    let skip = b.delta_to(&c);
    assert!(matches!(
        held.apply(&skip),
        Err(DeltaError::Gap { held: 1, .. })
    ));
    assert_eq!(held, a);
    let mut other_epoch = a.delta_to(&b);
    other_epoch.epoch = 2;
    assert!(held.apply(&other_epoch).is_err());
    assert!(a.delta_to(&a).is_empty());
}
