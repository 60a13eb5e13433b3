//! Model → proxy tables: built whole, or updated from the previous tables for what changed
//! (entries left alone are shared with them).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use strait_ebpf::ServiceFrontend;

use super::Delta;
use crate::config::TUNNEL_PORT;
use crate::flows::ServiceRef;
use crate::model::remote::{
    AFFINITY_ANNOTATION, Affinity, GLOBAL_ANNOTATION, GlobalService, RemoteCluster,
};
use crate::model::{Endpoint, Labels, Model, ObjectKey, Protocol, Service, ServicePort};
use crate::policy::{Engine, Universe};
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
    let universe = t.policy.universe.clone();
    for remote in model.remotes.values() {
        add_remote_endpoints(&mut t, remote, &universe);
    }
    for svc in model.services.values() {
        set_service(&mut t, model, svc);
    }
    t
}

/// Another cluster's pods, for routing and flows: those the universe accepted from it.
fn add_remote_endpoints(t: &mut ProxyTables, remote: &RemoteCluster, universe: &Universe) {
    for (ip, e) in &remote.ipcache {
        if universe.endpoint_identity(*ip) != Some(e.identity) || t.endpoints.contains_key(ip) {
            continue;
        }
        let labels = remote
            .identities
            .get(&e.identity)
            .map(pod_labels)
            .unwrap_or_default();
        t.endpoints.insert(
            *ip,
            Arc::new(EndpointInfo {
                namespace: e.namespace.clone(),
                name: e.pod.clone(),
                node: e.node.clone(),
                ip: *ip,
                labels,
                identity: e.identity,
                workload: None,
                cluster: Some(remote.cluster.name.clone()),
            }),
        );
    }
}

fn remove_remote_endpoints(t: &mut ProxyTables, remote: &RemoteCluster) {
    for ip in remote.ipcache.keys() {
        if t.endpoints
            .get(ip)
            .is_some_and(|i| i.cluster.as_deref() == Some(remote.cluster.name.as_str()))
        {
            t.endpoints.remove(ip);
        }
    }
}

/// A pod's own labels from its identity labels (`k8s:app=x` → `app=x`; namespace and cluster
/// labels left out).
fn pod_labels(identity: &Labels) -> Labels {
    identity
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("k8s:").unwrap_or(k);
            let derived =
                k.starts_with("io.kubernetes.pod.namespace") || k.starts_with("io.cilium.k8s.");
            (!derived).then(|| (k.to_string(), v.clone()))
        })
        .collect()
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
    if delta.any(|k| matches!(k, ObjectKey::Node(_) | ObjectKey::Remote(_))) {
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
    let universe = t.policy.universe.clone();
    for name in delta.remotes() {
        if let Some(old) = old_model.remotes.get(name) {
            remove_remote_endpoints(&mut t, old);
        }
        if let Some(new) = model.remotes.get(name) {
            add_remote_endpoints(&mut t, new, &universe);
        }
    }
    for k in &delta.services_to_refresh() {
        if let Some(svc) = model.services.get(k) {
            set_service(&mut t, model, svc);
        }
    }
    t
}

/// This cluster's nodes, then the other clusters' (their tunnels take cross-cluster streams).
fn nodes(model: &Model) -> Vec<NodeEntry> {
    let local = model.nodes.values().map(|n| NodeEntry {
        name: n.name.clone(),
        cluster: None,
        pod_cidrs: vec![n.pod_cidr],
        tunnel: (n.underlay_ip, TUNNEL_PORT).into(),
        gateway: Some(n.gateway),
    });
    let remote = model.remotes.values().flat_map(|r| {
        r.nodes.values().map(|n| NodeEntry {
            name: n.name.clone(),
            cluster: Some(r.cluster.name.clone()),
            pod_cidrs: n.pod_cidrs.clone(),
            tunnel: (n.underlay_ip, TUNNEL_PORT).into(),
            gateway: None,
        })
    });
    local.chain(remote).collect()
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
        cluster: None,
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
            .filter_map(|b| {
                Some(Backend {
                    addr: SocketAddrV4::new(b.ip, b.port),
                    endpoint: t.endpoints.get(&b.ip)?.clone(),
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

/// One ready backend of a service frontend: a pod of this cluster or, for a global service,
/// of another cluster of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRef {
    pub ip: Ipv4Addr,
    pub identity: u32,
    /// The target port on that pod.
    pub port: u16,
}

/// A service frontend and its ready backends.
pub type Frontend = (ServiceFrontend, Vec<BackendRef>);

/// Every frontend (protocol, `clusterIP:port`) of `svc` with its ready backends and the target
/// port each one receives on (named target ports resolved); endpoints without that port are left
/// out. A headless service has no frontend: clients reach its pods by their own addresses.
///
/// A global service (`service.cilium.io/global: "true"`) also gets the ready endpoints other
/// clusters of the mesh share for the same `namespace/name`, chosen by its
/// `service.cilium.io/affinity`: `local` uses this cluster's while it has a ready one, `remote`
/// the others' while they have one, `none` (the default) all.
pub fn service_frontends(model: &Model, svc: &Service) -> Vec<Frontend> {
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
    let global = is_global(svc);
    let key = format!("{}/{}", svc.namespace, svc.name);
    let remote_services: Vec<(&RemoteCluster, &GlobalService)> = if global {
        model
            .remotes
            .values()
            .filter_map(|r| Some((&**r, r.services.get(&key)?)))
            .filter(|(_, g)| g.shared)
            .collect()
    } else {
        Vec::new()
    };
    let affinity = match svc.annotations.get(AFFINITY_ANNOTATION).map(String::as_str) {
        Some("local") => Affinity::Local,
        Some("remote") => Affinity::Remote,
        _ => Affinity::None,
    };
    svc.ports
        .iter()
        .map(|port| {
            let local: Vec<BackendRef> = selected
                .iter()
                .filter_map(|ep| {
                    Some(BackendRef {
                        ip: ep.ip,
                        identity: ep.identity,
                        port: port.target_on(ep)?,
                    })
                })
                .collect();
            let remote: Vec<BackendRef> = remote_services
                .iter()
                .flat_map(|(r, g)| remote_backends(model, r, g, port))
                .collect();
            let ready = match affinity {
                Affinity::Local if !local.is_empty() => local,
                Affinity::Remote if !remote.is_empty() => remote,
                _ => local.into_iter().chain(remote).collect(),
            };
            let addr = SocketAddrV4::new(svc.cluster_ip, port.port);
            let frontend = match port.protocol {
                Protocol::Tcp => ServiceFrontend::tcp(addr),
                Protocol::Udp => ServiceFrontend::udp(addr),
            };
            (frontend, ready)
        })
        .collect()
}

/// Whether `svc` merges its endpoints with same-named services of other clusters.
pub fn is_global(svc: &Service) -> bool {
    svc.annotations.get(GLOBAL_ANNOTATION).map(String::as_str) == Some("true")
}

/// The ready endpoints cluster `remote` shares for the service port matching `port` (by name,
/// else by number and protocol). Only its own pods count: an address it does not list with an
/// identity of its own, or one inside this cluster's pod CIDRs, is never a backend here.
fn remote_backends<'a>(
    model: &'a Model,
    remote: &'a RemoteCluster,
    g: &'a GlobalService,
    port: &'a ServicePort,
) -> impl Iterator<Item = BackendRef> + 'a {
    let index = g.ports.iter().position(|p| match (&p.name, &port.name) {
        (Some(a), Some(b)) => a == b,
        _ => p.port == port.port && p.protocol == port.protocol,
    });
    g.endpoints.iter().filter_map(move |e| {
        let target = (*e.ports.get(index?)?)?;
        let identity = remote.ipcache.get(&e.ip)?.identity;
        let local = model.nodes.values().any(|n| n.pod_cidr.contains(&e.ip));
        (e.ready && remote.owns_identity(identity) && !local).then_some(BackendRef {
            ip: e.ip,
            identity,
            port: target,
        })
    })
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
