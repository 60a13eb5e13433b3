//! Other clusters of the mesh in the compile: their pods in the ipcache and the proxy tables,
//! global services merging shared endpoints by affinity, a remote believed only about itself,
//! withdrawal; the incremental compile equal to a full one after every step.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};

use imbl::OrdMap;
use ipnet::Ipv4Net;
use strait_ebpf::ServiceFrontend;

use super::*;
use crate::identity::reserved;
use crate::model::remote::*;
use crate::model::*;

const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const FORGED: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 9);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const REMOTE_ID: u32 = 0x2_0100;
const LIAR_ID: u32 = 0x2_0101;
const SQUATTED: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 77);
const LIAR: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 7);
const TCP: u8 = strait_ebpf::abi::IPPROTO_TCP;
const UDP: u8 = strait_ebpf::abi::IPPROTO_UDP;

fn local_state(affinity: &str, backend_ready: bool) -> ClusterState {
    let endpoint = |name: &str, ip, identity, app: &str, ready| Endpoint {
        namespace: "shop".into(),
        name: name.into(),
        node: "node-1".into(),
        ip,
        labels: [("app".to_string(), app.to_string())].into(),
        identity,
        workload: None,
        ports: vec![NamedPort {
            name: Some("api".into()),
            port: 7070,
            protocol: Protocol::Tcp,
        }],
        ready,
        cgroup_id: None,
        host_ifname: None,
    };
    ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c1".into(),
            id: 1,
        },
        nodes: vec![Node {
            name: "node-1".into(),
            underlay_ip: Ipv4Addr::new(192, 168, 0, 10),
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
        }],
        namespaces: vec![Namespace {
            name: "shop".into(),
            labels: [(
                "kubernetes.io/metadata.name".to_string(),
                "shop".to_string(),
            )]
            .into(),
        }],
        endpoints: vec![
            endpoint("store", LOCAL_BACKEND, 0x1_0100, "store", backend_ready),
            endpoint(
                "shopper",
                Ipv4Addr::new(10, 1, 0, 6),
                0x1_0101,
                "shopper",
                true,
            ),
        ],
        services: vec![Service {
            namespace: "shop".into(),
            name: "store".into(),
            cluster_ip: *VIP.ip(),
            ports: vec![ServicePort {
                name: Some("api".into()),
                port: 80,
                target_port: TargetPort::Name("api".into()),
                protocol: Protocol::Tcp,
            }],
            selector: [("app".to_string(), "store".to_string())].into(),
            annotations: [
                (GLOBAL_ANNOTATION.to_string(), "true".to_string()),
                (AFFINITY_ANNOTATION.to_string(), affinity.to_string()),
            ]
            .into(),
        }],
        policies: vec![],
    }
}

/// c2 with one shared `store` endpoint, and one address it claims under c1's identity range.
fn remote(shared: bool) -> RemoteCluster {
    let entry = |pod: &str, identity| IpEntry {
        identity,
        node: "node-1".into(),
        namespace: "shop".into(),
        pod: pod.into(),
    };
    RemoteCluster {
        cluster: ClusterInfo {
            name: "c2".into(),
            id: 2,
        },
        nodes: OrdMap::from(vec![
            (
                "node-1".to_string(),
                MeshNode {
                    name: "node-1".into(),
                    underlay_ip: Ipv4Addr::new(192, 168, 0, 20),
                    pod_cidrs: vec!["10.2.0.0/24".parse().unwrap()],
                },
            ),
            // A node claiming every address: it must not draw c1's other traffic.
            (
                "greedy".to_string(),
                MeshNode {
                    name: "greedy".into(),
                    underlay_ip: Ipv4Addr::new(192, 168, 0, 21),
                    pod_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
                },
            ),
        ]),
        identities: OrdMap::from(vec![
            (
                REMOTE_ID,
                [
                    ("k8s:app".to_string(), "store".to_string()),
                    (
                        "k8s:io.cilium.k8s.policy.cluster".to_string(),
                        "c2".to_string(),
                    ),
                ]
                .into(),
            ),
            (0x1_0101, Labels::new()),
            // c2's own identity, labelled as if it were c1's.
            (
                LIAR_ID,
                [
                    ("k8s:app".to_string(), "store".to_string()),
                    (
                        "k8s:io.cilium.k8s.policy.cluster".to_string(),
                        "c1".to_string(),
                    ),
                ]
                .into(),
            ),
        ]),
        ipcache: OrdMap::from(vec![
            (REMOTE_BACKEND, entry("store-c2", REMOTE_ID)),
            (FORGED, entry("impostor", 0x1_0101)),
            // c1's shopper address, claimed under an identity of c2's own.
            (Ipv4Addr::new(10, 1, 0, 6), entry("thief", REMOTE_ID)),
            // A free address of c1's pod CIDR.
            (SQUATTED, entry("squatter", REMOTE_ID)),
            (LIAR, entry("liar", LIAR_ID)),
        ]),
        services: OrdMap::from(vec![(
            "shop/store".to_string(),
            GlobalService {
                namespace: "shop".into(),
                name: "store".into(),
                ports: vec![MeshServicePort {
                    name: Some("api".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
                shared,
                affinity: Affinity::None,
                endpoints: vec![
                    MeshEndpoint {
                        ip: REMOTE_BACKEND,
                        ports: vec![Some(7070)],
                        node: "node-1".into(),
                        ready: true,
                    },
                    // Not c2's to offer: listed under c1's identity, and (below) a c1 address.
                    MeshEndpoint {
                        ip: FORGED,
                        ports: vec![Some(7070)],
                        node: "node-1".into(),
                        ready: true,
                    },
                    MeshEndpoint {
                        ip: Ipv4Addr::new(10, 1, 0, 6),
                        ports: vec![Some(7070)],
                        node: "node-1".into(),
                        ready: true,
                    },
                ],
            },
        )]),
        l7_ingress: OrdMap::from(vec![
            (
                REMOTE_ID,
                vec![
                    PortSpan {
                        protocol: TCP,
                        first: 7070,
                        last: 7071,
                    },
                    // UDP has no L7 rules to judge: never routed through the proxy.
                    PortSpan {
                        protocol: UDP,
                        first: 53,
                        last: 53,
                    },
                ],
            ),
            // c1's identity: c2 has no say over how c1 reaches its own pods.
            (
                0x1_0101,
                vec![PortSpan {
                    protocol: TCP,
                    first: 0,
                    last: u16::MAX,
                }],
            ),
        ]),
    }
}

/// Compiles the store's snapshot incrementally with `compiler` and from scratch; they must agree.
fn compile(store: &Store, compiler: &mut Compiler) -> CompiledState {
    let snap = store.current().unwrap();
    let incremental = compiler.compile(&snap).unwrap();
    let full = Compiler::new("node-1").compile(&snap).unwrap();
    assert_eq!(incremental.kernel.to_image(), full.kernel.to_image());
    assert_eq!(incremental.kernel.via_proxy, full.kernel.via_proxy);
    assert_eq!(
        incremental.proxy.endpoints.len(),
        full.proxy.endpoints.len()
    );
    incremental
}

fn backends(state: &CompiledState) -> Vec<Ipv4Addr> {
    state
        .kernel
        .services
        .get(&ServiceFrontend::tcp(VIP))
        .map(|b| b.iter().map(|b| b.ip).collect())
        .unwrap_or_default()
}

fn ipcache(state: &CompiledState, ip: Ipv4Addr) -> Option<u32> {
    state.kernel.ipcache.get(&Ipv4Net::from(ip)).copied()
}

#[test]
fn remote_pods_and_global_service_endpoints_follow_the_mesh() {
    let store = Store::new();
    store.apply(Update::ReplaceCluster(local_state("none", true)));
    let mut compiler = Compiler::new("node-1");
    let alone = compile(&store, &mut compiler);
    assert_eq!(backends(&alone), [LOCAL_BACKEND]);

    store.apply(Update::Upsert(Object::Remote(remote(true))));
    let meshed = compile(&store, &mut compiler);
    assert_eq!(backends(&meshed), [LOCAL_BACKEND, REMOTE_BACKEND]);
    assert_eq!(ipcache(&meshed, REMOTE_BACKEND), Some(REMOTE_ID));
    assert_eq!(
        ipcache(&meshed, Ipv4Addr::new(192, 168, 0, 20)),
        Some(reserved::REMOTE_NODE)
    );
    // c2 cannot speak for c1's identities or addresses, in the ipcache or as backends.
    assert_eq!(ipcache(&meshed, FORGED), None);
    assert_eq!(ipcache(&meshed, Ipv4Addr::new(10, 1, 0, 6)), Some(0x1_0101));
    let ep = meshed.proxy.endpoint(REMOTE_BACKEND).unwrap();
    assert_eq!(
        (ep.cluster.as_deref(), ep.name.as_str()),
        (Some("c2"), "store-c2")
    );
    assert_eq!(ep.labels.get("app").map(String::as_str), Some("store"));
    let svc = meshed.proxy.services.get(&VIP).unwrap();
    assert_eq!(svc.backends.len(), 2);

    // `shared: "false"` in c2: its endpoints stay there, its pods are still known.
    store.apply(Update::Upsert(Object::Remote(remote(false))));
    let private = compile(&store, &mut compiler);
    assert_eq!(backends(&private), [LOCAL_BACKEND]);
    assert_eq!(ipcache(&private, REMOTE_BACKEND), Some(REMOTE_ID));

    // Withdrawn (disconnect, or the TTL): nothing of c2 is left.
    store.apply(Update::Upsert(Object::Remote(remote(true))));
    compile(&store, &mut compiler);
    store.apply(Update::Delete(ObjectKey::Remote("c2".into())));
    let gone = compile(&store, &mut compiler);
    assert_eq!(backends(&gone), [LOCAL_BACKEND]);
    assert_eq!(ipcache(&gone, REMOTE_BACKEND), None);
    assert!(gone.proxy.endpoint(REMOTE_BACKEND).is_none());
}

#[test]
fn affinity_prefers_one_side_and_fails_over_to_the_other() {
    let store = Store::new();
    let mut compiler = Compiler::new("node-1");
    store.apply(Update::ReplaceCluster(local_state("local", true)));
    store.apply(Update::Upsert(Object::Remote(remote(true))));
    assert_eq!(
        backends(&compile(&store, &mut compiler)),
        [LOCAL_BACKEND],
        "local while it has a ready endpoint"
    );
    store.apply(Update::ReplaceCluster(local_state("local", false)));
    assert_eq!(
        backends(&compile(&store, &mut compiler)),
        [REMOTE_BACKEND],
        "remote once none is ready locally"
    );
    store.apply(Update::ReplaceCluster(local_state("local", true)));
    assert_eq!(
        backends(&compile(&store, &mut compiler)),
        [LOCAL_BACKEND],
        "local again when it is back"
    );
    store.apply(Update::ReplaceCluster(local_state("remote", true)));
    assert_eq!(backends(&compile(&store, &mut compiler)), [REMOTE_BACKEND]);
    store.apply(Update::Delete(ObjectKey::Remote("c2".into())));
    assert_eq!(
        backends(&compile(&store, &mut compiler)),
        [LOCAL_BACKEND],
        "remote affinity fails over to local"
    );
}

#[test]
fn l7_ports_another_cluster_judges_go_through_the_proxy_and_its_nodes_tunnel() {
    let store = Store::new();
    let mut compiler = Compiler::new("node-1");
    store.apply(Update::ReplaceCluster(local_state("none", true)));
    assert!(compile(&store, &mut compiler).kernel.via_proxy.is_empty());
    store.apply(Update::Upsert(Object::Remote(remote(true))));
    let meshed = compile(&store, &mut compiler);
    assert_eq!(
        meshed.kernel.via_proxy,
        [
            strait_ebpf::ViaProxyKey::tcp(REMOTE_ID, 7070),
            strait_ebpf::ViaProxyKey::tcp(REMOTE_ID, 7071)
        ]
        .into()
    );
    // The proxy routes the remote pod through its own node's tunnel: c2's node-1, not c1's
    // node of the same name.
    let d = meshed.proxy.decide(SocketAddrV4::new(REMOTE_BACKEND, 7070));
    match d.route {
        crate::proxy::tables::Route::Remote {
            node,
            cluster,
            tunnel,
            ..
        } => {
            assert_eq!((node.as_str(), cluster.as_deref()), ("node-1", Some("c2")));
            assert_eq!(tunnel, "192.168.0.20:15008".parse().unwrap());
        }
        r => panic!("expected c2's tunnel, got {r:?}"),
    }
    // A local pod stays local, whatever c2's nodes are called.
    assert!(meshed.proxy.is_local_pod(LOCAL_BACKEND));
    assert!(!meshed.proxy.is_local_pod(REMOTE_BACKEND));
    store.apply(Update::Delete(ObjectKey::Remote("c2".into())));
    let gone = compile(&store, &mut compiler);
    assert!(gone.kernel.via_proxy.is_empty());
    assert!(gone.proxy.nodes.iter().all(|n| n.cluster.is_none()));
}

#[test]
fn a_remote_cannot_claim_this_clusters_addresses_routes_or_cluster_label() {
    let store = Store::new();
    let mut compiler = Compiler::new("node-1");
    store.apply(Update::ReplaceCluster(local_state("none", true)));
    store.apply(Update::Upsert(Object::Remote(remote(true))));
    let meshed = compile(&store, &mut compiler);
    // A free address inside c1's pod CIDR stays c1's: not in the ipcache, not routed to c2.
    assert_eq!(ipcache(&meshed, SQUATTED), None);
    assert!(meshed.proxy.endpoint(SQUATTED).is_none());
    // A node publishing 0.0.0.0/0 routes nothing but its own synced pods.
    for ip in [Ipv4Addr::new(93, 184, 216, 34), SQUATTED] {
        let route = meshed.proxy.decide(SocketAddrV4::new(ip, 443)).route;
        assert!(
            !matches!(route, crate::proxy::tables::Route::Remote { .. }),
            "{ip} routed to c2: {route:?}"
        );
    }
    // Its identities carry its own cluster label, whatever it published.
    let universe = &meshed.proxy.policy.universe;
    let liar = universe.get(LIAR_ID).expect("c2's identity is known");
    assert_eq!(
        liar.labels
            .get("k8s:io.cilium.k8s.policy.cluster")
            .map(String::as_str),
        Some("c2")
    );
    assert_eq!(ipcache(&meshed, LIAR), Some(LIAR_ID));
}
