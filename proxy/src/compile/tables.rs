//! Model → proxy tables: built whole, or updated from the previous tables for what changed
//! (entries left alone are shared with them).

use std::net::SocketAddrV4;
use std::sync::Arc;
use strait_ebpf::ServiceFrontend;

use super::Delta;
use crate::config::TUNNEL_PORT;
use crate::flows::ServiceRef;
use crate::model::{Endpoint, Model, ObjectKey, Protocol, Service};
use crate::policy::Engine;
use crate::proxy::tables::{Backend, EndpointInfo, NodeEntry, ProxyTables, ServiceEntry};

/// The tables the proxy of `local_node` uses.
pub fn build(model: &Model, local_node: &str, revision: u64, policy: Arc<Engine>) -> ProxyTables {
    let mut t = ProxyTables::empty(model.cluster.clone(), local_node.to_string());
    t.revision = revision;
    t.policy = policy;
    t.nodes = nodes(model);
    for e in model.endpoints.values() {
        add_endpoint(&mut t, e);
    }
    for svc in model.services.values() {
        set_service(&mut t, model, svc);
    }
    t
}

/// `prev` brought up to date with `delta`.
pub(crate) fn update(
    prev: &ProxyTables,
    delta: &Delta<'_>,
    revision: u64,
    policy: Arc<Engine>,
) -> ProxyTables {
    let mut t = prev.clone();
    t.revision = revision;
    t.policy = policy;
    let (old_model, model) = (delta.prev, delta.model);
    if delta.any(|k| matches!(k, ObjectKey::Node(_))) {
        t.nodes = nodes(model);
    }
    // Old entries leave first: within one batch a pod may take an address or cgroup another
    // one gave up.
    for k in delta.endpoints() {
        if let Some(e) = old_model.endpoints.get(k) {
            if t.endpoints
                .get(&e.ip)
                .is_some_and(|i| i.name == e.name && i.namespace == e.namespace)
            {
                t.endpoints.remove(&e.ip);
            }
            if let Some(cg) = e.cgroup_id
                && t.by_cgroup
                    .get(&cg)
                    .is_some_and(|i| i.name == e.name && i.namespace == e.namespace)
            {
                t.by_cgroup.remove(&cg);
            }
        }
    }
    for frontend in delta.old_frontends() {
        if frontend.protocol == strait_ebpf::abi::IPPROTO_TCP {
            t.services.remove(&frontend.addr);
        }
    }
    for k in delta.endpoints() {
        if let Some(e) = model.endpoints.get(k) {
            add_endpoint(&mut t, e);
        }
    }
    for k in &delta.services_to_refresh() {
        if let Some(svc) = model.services.get(k) {
            set_service(&mut t, model, svc);
        }
    }
    t
}

fn nodes(model: &Model) -> Vec<NodeEntry> {
    model
        .nodes
        .values()
        .map(|n| NodeEntry {
            name: n.name.clone(),
            pod_cidr: n.pod_cidr,
            tunnel: (n.underlay_ip, TUNNEL_PORT).into(),
            gateway: n.gateway,
        })
        .collect()
}

fn add_endpoint(t: &mut ProxyTables, e: &Endpoint) {
    let info = Arc::new(EndpointInfo {
        namespace: e.namespace.clone(),
        name: e.name.clone(),
        node: e.node.clone(),
        ip: e.ip,
        labels: e.labels.clone(),
        identity: e.identity,
        workload: e.workload.clone(),
    });
    if e.node == t.local_node
        && let Some(cg) = e.cgroup_id
    {
        t.by_cgroup.insert(cg, info.clone());
    }
    t.endpoints.insert(e.ip, info);
}

fn set_service(t: &mut ProxyTables, model: &Model, svc: &Service) {
    // The proxy carries TCP; UDP frontends are balanced in the kernel only.
    for (frontend, ready) in service_frontends(model, svc) {
        if frontend.protocol != strait_ebpf::abi::IPPROTO_TCP {
            continue;
        }
        let frontend = frontend.addr;
        let mut backends: Vec<Backend> = ready
            .into_iter()
            .filter_map(|(ep, target)| {
                Some(Backend {
                    addr: SocketAddrV4::new(ep.ip, target),
                    endpoint: t.endpoints.get(&ep.ip)?.clone(),
                })
            })
            .collect();
        backends.sort_by_key(|b| b.addr);
        let service = ServiceRef {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        };
        t.services
            .insert(frontend, Arc::new(ServiceEntry::new(service, backends)));
    }
}

/// A service frontend and its ready backends with the port each receives on.
pub type Frontend<'m> = (ServiceFrontend, Vec<(&'m Arc<Endpoint>, u16)>);

/// Every frontend (protocol, `clusterIP:port`) of `svc` with its ready endpoints and the target port
/// each one receives on (named target ports resolved); endpoints without that port are left out.
/// A headless service has no frontend: clients reach its pods by their own addresses.
pub fn service_frontends<'m>(model: &'m Model, svc: &Service) -> Vec<Frontend<'m>> {
    if svc.cluster_ip.is_unspecified() {
        return Vec::new();
    }
    let lo = (svc.namespace.clone(), String::new());
    let selected: Vec<&Arc<Endpoint>> = model
        .endpoints
        .range(lo..)
        .take_while(|(k, _)| k.0 == svc.namespace)
        .map(|(_, e)| e)
        .filter(|ep| ep.ready && svc.selects(ep))
        .collect();
    svc.ports
        .iter()
        .map(|port| {
            let ready = selected
                .iter()
                .filter_map(|ep| Some((*ep, port.target_on(ep)?)))
                .collect();
            let addr = SocketAddrV4::new(svc.cluster_ip, port.port);
            let frontend = match port.protocol {
                Protocol::Tcp => ServiceFrontend::tcp(addr),
                Protocol::Udp => ServiceFrontend::udp(addr),
            };
            (frontend, ready)
        })
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
                annotations: Default::default(),
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
        let t = build(&Model::from_state(state()), "node-1", 1, no_policy());
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
        let t = build(&Model::from_state(state()), "node-1", 1, no_policy());
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
        let t = build(&Model::from_state(s), "node-1", 1, no_policy());
        assert_eq!(t.decide(vip()).route, Route::NoBackend);
        assert!(t.is_local_pod(Ipv4Addr::new(198, 18, 16, 2)));
        assert!(!t.is_local_pod(Ipv4Addr::new(198, 18, 17, 2)));
    }
}
