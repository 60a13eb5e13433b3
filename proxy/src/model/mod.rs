//! Plain data describing one cluster as the agent sees it: nodes, namespaces, endpoints, services.
//!
//! Every source (lab state files today, Kubernetes and mesh peers later) produces these types; the
//! compile step turns them into proxy tables and eBPF maps. Nothing here does I/O.

pub mod http;
pub mod policy;
pub mod remote;
pub mod selector;
mod store;

pub use store::{LOG_LEN, Model, NamespacedName, Object, ObjectKey, PolicyId, Snapshot, Store};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Label key/value pairs, sorted so identities and output are deterministic.
pub type Labels = BTreeMap<String, String>;

/// A cluster's name and its mesh-wide ID (1–255), as in Cilium's cluster mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub id: u8,
}

/// One node: where its proxy is reached from other nodes and which pod addresses it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Address on the underlay network; other nodes' proxies dial its tunnel port here.
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's address as seen from its pods (default gateway, proxy, DNS).
    pub gateway: Ipv4Addr,
}

/// A Kubernetes namespace and its labels (always including `kubernetes.io/metadata.name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

/// A container port a pod declares; names let services use a named `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A pod: one network endpoint with an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub labels: Labels,
    /// Numeric security identity (cluster ID in bits 16–23), allocated by the cluster's identity allocator.
    pub identity: u32,
    /// Owning workload (Deployment name) if any, for flows and metrics.
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Only ready endpoints receive service traffic.
    pub ready: bool,
    /// The pod's cgroup v2 ID (what `bpf_get_current_cgroup_id()` returns for its processes),
    /// used by its node's socket programs to know which endpoint is connecting.
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// The node-side interface of the pod's veth, where the tc programs attach.
    #[serde(default)]
    pub host_ifname: Option<String>,
}

/// A service port: what clients dial and where it lands on the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A service's `targetPort`: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A ClusterIP service; its endpoints are the ready pods of its namespace matching `selector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: Labels,
    /// `metadata.annotations` (cluster mesh: `service.cilium.io/global`, `shared`, `affinity`).
    #[serde(default)]
    pub annotations: Labels,
}

/// Everything one cluster's agents need to know; the unit a source replaces atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Increases with every change written by the source.
    pub revision: u64,
    pub cluster: ClusterInfo,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Network policies of the cluster, validated by the source.
    #[serde(default)]
    pub policies: Vec<policy::Policy>,
}

/// What a source hands to the store.
#[derive(Debug, Clone)]
pub enum Update {
    /// Replace everything known about the source's cluster.
    ReplaceCluster(ClusterState),
    /// Add or replace one object (a watch event).
    Upsert(Object),
    /// Remove one object.
    Delete(ObjectKey),
}

impl Service {
    /// Whether `labels` are selected by this service's selector (an empty selector selects nothing,
    /// as for Kubernetes services without selectors).
    pub fn selects(&self, ep: &Endpoint) -> bool {
        ep.namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| ep.labels.get(k) == Some(v))
    }
}

impl ServicePort {
    /// The port on `ep` this service port lands on, resolving a named target port.
    pub fn target_on(&self, ep: &Endpoint) -> Option<u16> {
        match &self.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => ep
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == self.protocol)
                .map(|p| p.port),
        }
    }
}
