//! The proxy's compiled view of the cluster and the per-connection routing decision.
//!
//! Built by `compile` from a model snapshot and swapped in whole; the data path only reads it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::Ipv4Net;
use strait_ebpf::abi::IPPROTO_TCP as TCP;

use crate::flows::ServiceRef;
use crate::identity::reserved;
use crate::model::{ClusterInfo, Labels};
use crate::policy::{Engine, PolicyVerdict, Universe};

/// A pod as the proxy needs it for routing and flow records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    pub identity: u32,
    pub workload: Option<String>,
    /// The pod's cluster when it is another cluster of the mesh; `None`: this cluster.
    pub cluster: Option<String>,
}

/// One backend of a service port.
#[derive(Debug, Clone)]
pub struct Backend {
    pub addr: SocketAddrV4,
    pub endpoint: Arc<EndpointInfo>,
}

/// A service port's frontend and its ready backends.
#[derive(Debug)]
pub struct ServiceEntry {
    pub service: ServiceRef,
    pub backends: Vec<Backend>,
    /// Round-robin cursor; starts over with each table revision, which is fine for fairness.
    next: AtomicUsize,
}

impl ServiceEntry {
    /// A service entry with its backends in a stable order.
    pub fn new(service: ServiceRef, backends: Vec<Backend>) -> Self {
        Self {
            service,
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The next backend, round robin.
    pub fn pick(&self) -> Option<&Backend> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i)
    }
}

/// Another (or this) node: where its pods live and where its tunnel listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    /// The node's cluster when it is another cluster of the mesh; `None`: this cluster.
    pub cluster: Option<String>,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub tunnel: SocketAddr,
    /// The node's address on its pods' side (not published for other clusters' nodes).
    pub gateway: Option<Ipv4Addr>,
}

impl NodeEntry {
    /// Whether this is `name` of `cluster` (`None`: this cluster).
    fn is(&self, cluster: Option<&str>, name: &str) -> bool {
        self.name == name && self.cluster.as_deref() == cluster
    }
}

/// Everything the proxy consults per connection.
#[derive(Debug, Clone)]
pub struct ProxyTables {
    /// Model revision these tables were compiled from.
    pub revision: u64,
    pub cluster: ClusterInfo,
    pub local_node: String,
    pub endpoints: imbl::HashMap<Ipv4Addr, Arc<EndpointInfo>>,
    /// This node's endpoints by cgroup ID, for kernel events raised at connect().
    pub by_cgroup: imbl::HashMap<u64, Arc<EndpointInfo>>,
    /// TCP service frontends by `clusterIP:port`; entries unchanged by an update are shared
    /// with the previous tables (and keep their round-robin position).
    pub services: imbl::HashMap<SocketAddrV4, Arc<ServiceEntry>>,
    pub nodes: Vec<NodeEntry>,
    /// Network policy resolved for this revision.
    pub policy: Arc<Engine>,
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A pod on this node: dial it directly.
    Local {
        target: SocketAddrV4,
        endpoint: Option<Arc<EndpointInfo>>,
    },
    /// A pod on another node (of this or another cluster of the mesh): through that node's
    /// proxy.
    Remote {
        target: SocketAddrV4,
        endpoint: Option<Arc<EndpointInfo>>,
        node: String,
        /// The node's cluster when it is another cluster of the mesh.
        cluster: Option<String>,
        tunnel: SocketAddr,
    },
    /// Not a pod of the cluster: dial directly from the node.
    External { target: SocketAddrV4 },
    /// A service with no ready backend.
    NoBackend,
}

/// A connection's destination identity and the policy verdict for it.
#[derive(Debug, Clone)]
pub struct Judged {
    pub dst_identity: u32,
    pub verdict: PolicyVerdict,
}

/// The decision for one connection: which service (if any) and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub service: Option<ServiceRef>,
    pub route: Route,
}

impl ProxyTables {
    /// Tables with nothing in them, for an agent that has not read its state yet.
    pub fn empty(cluster: ClusterInfo, local_node: String) -> Self {
        let cluster_name = cluster.name.clone();
        Self {
            revision: 0,
            cluster,
            local_node,
            endpoints: imbl::HashMap::new(),
            by_cgroup: imbl::HashMap::new(),
            services: imbl::HashMap::new(),
            nodes: Vec::new(),
            policy: Arc::new(Engine::build(&[], Arc::new(Universe::new(&cluster_name)))),
        }
    }

    /// The security identity of `ip`: a pod's, the node's (host / remote-node), else the CIDR
    /// identity policies gave it, else world.
    pub fn identity_of(&self, ip: Ipv4Addr) -> u32 {
        if let Some(ep) = self.endpoints.get(&ip) {
            return ep.identity;
        }
        for n in &self.nodes {
            if n.gateway == Some(ip) {
                return if n.is(None, &self.local_node) {
                    reserved::HOST
                } else {
                    reserved::REMOTE_NODE
                };
            }
            if n.tunnel.ip() == std::net::IpAddr::V4(ip) {
                return reserved::REMOTE_NODE;
            }
        }
        self.policy.universe.identity_of_ip(ip)
    }

    /// What policy says about a TCP connection from `src_identity` to `target`.
    pub fn judge_tcp(&self, src_identity: u32, target: SocketAddrV4) -> Judged {
        let dst_identity = self.identity_of(*target.ip());
        Judged {
            dst_identity,
            verdict: self
                .policy
                .verdict(src_identity, dst_identity, TCP, target.port()),
        }
    }

    /// [`Self::decide`] and [`Self::judge_tcp`] in one: the route, and the verdict for its
    /// target (`None` when there is no backend). For a service it prefers a backend policy lets
    /// `src_identity` reach, so one denied backend does not fail a share of the connections.
    pub fn decide_for(&self, dst: SocketAddrV4, src_identity: u32) -> (Decision, Option<Judged>) {
        let tries = self
            .services
            .get(&dst)
            .map_or(1, |e| e.backends.len().max(1));
        let mut first = None;
        for _ in 0..tries {
            let d = self.decide(dst);
            let target = match &d.route {
                Route::Local { target, .. }
                | Route::Remote { target, .. }
                | Route::External { target } => *target,
                Route::NoBackend => return (d, None),
            };
            let judged = self.judge_tcp(src_identity, target);
            if judged.verdict.allowed() {
                return (d, Some(judged));
            }
            first.get_or_insert((d, Some(judged)));
        }
        first.unwrap_or_else(|| (self.decide(dst), None))
    }

    /// The endpoint with this address, if it is a pod of the cluster.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&Arc<EndpointInfo>> {
        self.endpoints.get(&ip)
    }

    /// The local endpoint whose processes live in cgroup `id`.
    pub fn endpoint_by_cgroup(&self, id: u64) -> Option<&Arc<EndpointInfo>> {
        self.by_cgroup.get(&id)
    }

    /// The node owning `ip`: by endpoint (its cluster and node), else by the pod CIDR of a node
    /// of this cluster. Another cluster's node is reached only for a pod it synced (whose
    /// identity the universe accepted): the CIDRs it publishes never route an address to it, so
    /// it cannot draw this cluster's other traffic (world, nodes, unknown pods) into its tunnel.
    pub fn node_of(&self, ip: Ipv4Addr) -> Option<&NodeEntry> {
        match self.endpoints.get(&ip) {
            Some(ep) => self
                .nodes
                .iter()
                .find(|n| n.is(ep.cluster.as_deref(), &ep.node)),
            None => self
                .nodes
                .iter()
                .find(|n| n.cluster.is_none() && n.pod_cidrs.iter().any(|c| c.contains(&ip))),
        }
    }

    /// Decides where a connection to `dst` (the address the client dialed) goes.
    pub fn decide(&self, dst: SocketAddrV4) -> Decision {
        let (service, target) = match self.services.get(&dst) {
            Some(entry) => match entry.pick() {
                Some(b) => (Some(entry.service.clone()), b.addr),
                None => {
                    return Decision {
                        service: Some(entry.service.clone()),
                        route: Route::NoBackend,
                    };
                }
            },
            None => (None, dst),
        };
        let endpoint = self.endpoints.get(target.ip()).cloned();
        let route = match self.node_of(*target.ip()) {
            Some(n) if n.is(None, &self.local_node) => Route::Local { target, endpoint },
            Some(n) => Route::Remote {
                target,
                endpoint,
                node: n.name.clone(),
                cluster: n.cluster.clone(),
                tunnel: n.tunnel,
            },
            None => Route::External { target },
        };
        Decision { service, route }
    }

    /// Whether `ip` belongs to a pod of this node (tunnel requests may only target those).
    pub fn is_local_pod(&self, ip: Ipv4Addr) -> bool {
        self.node_of(ip)
            .is_some_and(|n| n.is(None, &self.local_node))
    }
}
