//! Model snapshot → proxy tables. Pure and deterministic.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

use crate::config::TUNNEL_PORT;
use crate::flows::ServiceRef;
use crate::model::{ClusterState, Endpoint, Protocol, Service};
use crate::policy::Engine;
use crate::proxy::tables::{Backend, EndpointInfo, NodeEntry, ProxyTables, ServiceEntry};

/// Compiles the tables the proxy of `local_node` uses.
pub fn proxy_tables(
    state: &ClusterState,
    local_node: &str,
    revision: u64,
    policy: Arc<Engine>,
) -> ProxyTables {
    let endpoints: HashMap<_, _> = state
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip,
                Arc::new(EndpointInfo {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    node: e.node.clone(),
                    ip: e.ip,
                    labels: e.labels.clone(),
                    identity: e.identity,
                    workload: e.workload.clone(),
                }),
            )
        })
        .collect();
    let by_cgroup = state
        .endpoints
        .iter()
        .filter(|e| e.node == local_node)
        .filter_map(|e| Some((e.cgroup_id?, endpoints.get(&e.ip)?.clone())))
        .collect();
    let mut services = HashMap::new();
    for (svc, frontend, ready) in tcp_frontends(state) {
        let mut backends: Vec<Backend> = ready
            .into_iter()
            .filter_map(|(ep, target)| {
                Some(Backend {
                    addr: SocketAddrV4::new(ep.ip, target),
                    endpoint: endpoints.get(&ep.ip)?.clone(),
                })
            })
            .collect();
        backends.sort_by_key(|b| b.addr);
        let service = ServiceRef {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        };
        services.insert(frontend, ServiceEntry::new(service, backends));
    }
    ProxyTables {
        revision,
        cluster: state.cluster.clone(),
        local_node: local_node.to_string(),
        endpoints,
        by_cgroup,
        services,
        nodes: state
            .nodes
            .iter()
            .map(|n| NodeEntry {
                name: n.name.clone(),
                pod_cidr: n.pod_cidr,
                tunnel: (n.underlay_ip, TUNNEL_PORT).into(),
                gateway: n.gateway,
            })
            .collect(),
        policy,
    }
}

/// What the kernel needs of the cluster on `local_node`: who has which address (ipcache), which
/// cgroup is which local pod, service backends, and the compiled policy (`policed`, `rules`).
pub fn kernel_image(
    state: &ClusterState,
    local_node: &str,
    policed: Vec<(u32, bool, bool)>,
    rules: Vec<(strait_ebpf::PolicyKey, strait_ebpf::PolicyAction)>,
    cidr_identities: Vec<(ipnet::Ipv4Net, u32)>,
) -> strait_ebpf::PolicyImage {
    use crate::identity::reserved;
    let host = |ip| ipnet::Ipv4Net::from(ip);
    // Later entries win: a policy CIDR that is exactly a node's or a pod's address still
    // resolves to that node or pod, as Cilium's ipcache does.
    let mut ipcache: std::collections::BTreeMap<ipnet::Ipv4Net, u32> =
        cidr_identities.into_iter().collect();
    for n in &state.nodes {
        if n.name == local_node {
            ipcache.insert(host(n.gateway), reserved::HOST);
        } else {
            ipcache.insert(host(n.gateway), reserved::REMOTE_NODE);
            ipcache.insert(host(n.underlay_ip), reserved::REMOTE_NODE);
        }
    }
    ipcache.extend(state.endpoints.iter().map(|e| (host(e.ip), e.identity)));
    let ipcache: Vec<(ipnet::Ipv4Net, u32)> = ipcache.into_iter().collect();
    let endpoints = state
        .endpoints
        .iter()
        .filter(|e| e.node == local_node)
        .filter_map(|e| {
            Some(strait_ebpf::EndpointEntry {
                cgroup_id: e.cgroup_id?,
                identity: e.identity,
                ip: e.ip,
            })
        })
        .collect();
    let mut services = Vec::new();
    for (_, frontend, ready) in tcp_frontends(state) {
        let mut backends: Vec<strait_ebpf::ServiceBackend> = ready
            .into_iter()
            .map(|(ep, port)| strait_ebpf::ServiceBackend {
                identity: ep.identity,
                port,
            })
            .collect();
        backends.sort_by_key(|b| (b.identity, b.port));
        backends.dedup_by_key(|b| (b.identity, b.port));
        services.push((frontend, backends));
    }
    // The node's programs only judge flows from its pods (connect4, tc from the pod) or to them
    // (tc to the pod): entries between two other nodes' identities would never be looked up.
    let local: std::collections::HashSet<u32> = state
        .endpoints
        .iter()
        .filter(|e| e.node == local_node)
        .map(|e| e.identity)
        .collect();
    let rules = rules
        .into_iter()
        .filter(|(k, _)| local.contains(&k.src_identity) || local.contains(&k.dst_identity))
        .collect();
    strait_ebpf::PolicyImage {
        ipcache,
        endpoints,
        policed,
        rules,
        services,
    }
}

/// Every TCP service frontend (`clusterIP:port`) with its ready endpoints and the target port
/// each one receives on (named target ports resolved); endpoints without that port are left out.
fn tcp_frontends(
    state: &ClusterState,
) -> impl Iterator<Item = (&Service, SocketAddrV4, Vec<(&Endpoint, u16)>)> {
    state.services.iter().flat_map(move |svc| {
        svc.ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(move |port| {
                let ready = state
                    .endpoints
                    .iter()
                    .filter(|ep| ep.ready && svc.selects(ep))
                    .filter_map(|ep| Some((ep, port.target_on(ep)?)))
                    .collect();
                (svc, SocketAddrV4::new(svc.cluster_ip, port.port), ready)
            })
    })
}

/// Host-side interfaces of this node's pods, where the tc programs go.
pub fn pod_interfaces(
    state: &ClusterState,
    local_node: &str,
) -> std::collections::BTreeSet<String> {
    state
        .endpoints
        .iter()
        .filter(|e| e.node == local_node)
        .filter_map(|e| e.host_ifname.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::*;
    use crate::proxy::tables::Route;

    fn state() -> ClusterState {
        let ep = |name: &str, node: &str, ip: [u8; 4], app: &str, ready: bool| Endpoint {
            namespace: "demo".into(),
            name: name.into(),
            node: node.into(),
            ip: Ipv4Addr::from(ip),
            labels: [("app".to_string(), app.to_string())].into(),
            identity: 65792,
            workload: Some(app.into()),
            ports: vec![NamedPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            ready,
            cgroup_id: None,
            host_ifname: None,
        };
        ClusterState {
            revision: 3,
            cluster: ClusterInfo {
                name: "c1".into(),
                id: 1,
            },
            nodes: vec![
                Node {
                    name: "node-1".into(),
                    underlay_ip: Ipv4Addr::new(198, 18, 0, 10),
                    pod_cidr: "198.18.16.0/24".parse().unwrap(),
                    gateway: Ipv4Addr::new(198, 18, 16, 1),
                },
                Node {
                    name: "node-2".into(),
                    underlay_ip: Ipv4Addr::new(198, 18, 0, 11),
                    pod_cidr: "198.18.17.0/24".parse().unwrap(),
                    gateway: Ipv4Addr::new(198, 18, 17, 1),
                },
            ],
            namespaces: vec![],
            endpoints: vec![
                ep("be-1", "node-1", [198, 18, 16, 2], "backend", true),
                ep("be-2", "node-2", [198, 18, 17, 2], "backend", true),
                ep("be-3", "node-2", [198, 18, 17, 3], "backend", false),
                ep("fe-1", "node-1", [198, 18, 16, 3], "frontend", true),
            ],
            services: vec![Service {
                namespace: "demo".into(),
                name: "backend".into(),
                cluster_ip: Ipv4Addr::new(198, 19, 1, 2),
                ports: vec![ServicePort {
                    name: None,
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                    protocol: Protocol::Tcp,
                }],
                selector: [("app".to_string(), "backend".to_string())].into(),
            }],
            policies: vec![],
        }
    }

    fn no_policy() -> Arc<Engine> {
        Arc::new(Engine::build(
            &[],
            Arc::new(crate::policy::Universe::new("c1")),
        ))
    }

    fn vip() -> SocketAddrV4 {
        "198.19.1.2:80".parse().unwrap()
    }

    #[test]
    fn service_round_robins_over_ready_backends_with_named_target_port() {
        let t = proxy_tables(&state(), "node-1", 1, no_policy());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let d = t.decide(vip());
            assert_eq!(d.service.as_ref().unwrap().name, "backend");
            seen.push(match d.route {
                Route::Local { target, .. } | Route::Remote { target, .. } => target,
                r => panic!("unexpected {r:?}"),
            });
        }
        let a: SocketAddrV4 = "198.18.16.2:8080".parse().unwrap();
        let b: SocketAddrV4 = "198.18.17.2:8080".parse().unwrap();
        assert_eq!(seen, [a, b, a, b], "not-ready be-3 never chosen");
    }

    #[test]
    fn remote_backend_goes_through_its_node_tunnel() {
        let t = proxy_tables(&state(), "node-1", 1, no_policy());
        let d = t.decide("198.18.17.2:8080".parse().unwrap());
        assert_eq!(d.service, None);
        match d.route {
            Route::Remote {
                node,
                tunnel,
                endpoint,
                ..
            } => {
                assert_eq!(node, "node-2");
                assert_eq!(tunnel, "198.18.0.11:15008".parse().unwrap());
                assert_eq!(endpoint.unwrap().name, "be-2");
            }
            r => panic!("unexpected {r:?}"),
        }
        assert!(matches!(
            t.decide("198.18.16.3:80".parse().unwrap()).route,
            Route::Local { .. }
        ));
        assert!(matches!(
            t.decide("203.0.113.9:443".parse().unwrap()).route,
            Route::External { .. }
        ));
    }

    #[test]
    fn service_without_ready_backends_has_no_route() {
        let mut s = state();
        for e in &mut s.endpoints {
            e.ready = false;
        }
        let t = proxy_tables(&s, "node-1", 1, no_policy());
        assert_eq!(t.decide(vip()).route, Route::NoBackend);
        assert!(t.is_local_pod(Ipv4Addr::new(198, 18, 16, 2)));
        assert!(!t.is_local_pod(Ipv4Addr::new(198, 18, 17, 2)));
    }

    #[test]
    fn kernel_image_keeps_only_entries_this_node_can_look_up() {
        use strait_ebpf::{PolicyAction, PolicyKey};
        let mut s = state();
        s.endpoints[3].identity = 65793; // fe-1 on node-1
        s.endpoints[1].identity = 65794; // be-2 on node-2
        s.endpoints[2].identity = 65795; // be-3 on node-2
        let rules = vec![
            (PolicyKey::any(65793, 65794), PolicyAction::Allow), // from a local pod
            (PolicyKey::any(65794, 65792), PolicyAction::Allow), // to a local pod (be-1)
            (PolicyKey::any(65794, 65795), PolicyAction::Allow), // between node-2's pods
        ];
        let image = kernel_image(&s, "node-1", vec![], rules, vec![]);
        let kept: Vec<(u32, u32)> = image
            .rules
            .iter()
            .map(|(k, _)| (k.src_identity, k.dst_identity))
            .collect();
        assert_eq!(kept, [(65793, 65794), (65794, 65792)]);
    }
}
