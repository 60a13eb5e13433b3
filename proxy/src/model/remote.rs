//! Other clusters of the mesh, as their mesh endpoints publish them (see `mesh::state`): the
//! plain data an agent merges into its model next to its own cluster's objects.

use std::net::Ipv4Addr;

use imbl::OrdMap;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{ClusterInfo, Labels, Protocol};

/// Annotation making a service global: `"true"` merges same-named services across clusters.
pub const GLOBAL_ANNOTATION: &str = "service.cilium.io/global";
/// Annotation `"false"` keeps a global service's local endpoints out of what is published.
pub const SHARED_ANNOTATION: &str = "service.cilium.io/shared";
/// Annotation `local|remote|none`: which cluster's endpoints a global service prefers.
pub const AFFINITY_ANNOTATION: &str = "service.cilium.io/affinity";

impl RemoteCluster {
    /// Whether `identity` is this cluster's to publish: its cluster-ID bits (16–23) are this
    /// cluster's ID. A remote is believed only about its own identities.
    pub fn owns_identity(&self, identity: u32) -> bool {
        (identity >> 16) & 0xff == u32::from(self.cluster.id)
    }
}

/// Another cluster's published state, as last synced (one unit: a sync replaces it whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCluster {
    pub cluster: ClusterInfo,
    pub nodes: OrdMap<String, MeshNode>,
    /// Numeric identity → its label set (cluster label included).
    pub identities: OrdMap<u32, Labels>,
    /// Pod IP → what owns it.
    pub ipcache: OrdMap<Ipv4Addr, IpEntry>,
    /// Global services by `namespace/name`.
    pub services: OrdMap<String, GlobalService>,
    /// Identity → TCP ports whose L7 rules the cluster judges itself (see
    /// [`PortSpan`]).
    pub l7_ingress: OrdMap<u32, Vec<PortSpan>>,
}

/// A protocol's port interval (`first..=last`; `0..=65535` is every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortSpan {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

/// A node as other clusters need it: where to route its pods' addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshNode {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// One pod address: its identity and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpEntry {
    pub identity: u32,
    pub node: String,
    pub namespace: String,
    pub pod: String,
}

/// Which cluster's endpoints a global service prefers (`service.cilium.io/affinity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    #[default]
    None,
    Local,
    Remote,
}

/// A port of a global service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A global service and, unless it is not shared, its local endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalService {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<MeshServicePort>,
    pub shared: bool,
    pub affinity: Affinity,
    pub endpoints: Vec<MeshEndpoint>,
}

/// One backend of a global service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshEndpoint {
    pub ip: Ipv4Addr,
    /// Target port per service port, in the order of [`GlobalService::ports`]; `None` where a
    /// named target port does not exist on this pod.
    pub ports: Vec<Option<u16>>,
    pub node: String,
    pub ready: bool,
}
