//! The lab's cluster state file: Kubernetes objects as applied, plus what the lab decides itself.
//!
//! `strait lab` plays the API server: it writes the cluster's Namespaces, Pods (as realised, with
//! `spec.nodeName`, `status.podIP`, `ownerReferences`, readiness), Services (with their
//! `clusterIP`) and policy objects (verbatim), and beside them what Kubernetes would carry
//! elsewhere: nodes (underlay address, pod CIDR, gateway), identities (as CiliumIdentity
//! objects) and per-pod node-local facts (cgroup ID, host-side interface). The agent converts the
//! objects with [`super::k8s`], the same code the Kubernetes and mesh sources use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::k8s::{self, ConvertError, ObjectRef, Resource};
use crate::identity::{cluster_of, identity_labels};
use crate::model::{self, ClusterInfo, ClusterState, Labels};

/// `apiVersion` of the document.
pub const API_VERSION: &str = "strait.io/v1alpha1";
/// `kind` of the document.
pub const KIND: &str = "LabClusterState";
/// `apiVersion` and `kind` of an identity entry, as Cilium names its identity objects.
pub const IDENTITY_API_VERSION: &str = "cilium.io/v2";
/// See [`IDENTITY_API_VERSION`].
pub const IDENTITY_KIND: &str = "CiliumIdentity";

/// One cluster's state as the lab publishes it to the cluster's agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabClusterState {
    pub api_version: String,
    pub kind: String,
    /// Increases with every change the lab writes.
    pub revision: u64,
    pub cluster: ClusterInfo,
    #[serde(default)]
    pub nodes: Vec<LabNode>,
    #[serde(default)]
    pub identities: Vec<CiliumIdentity>,
    /// Kubernetes objects as the API server would return them.
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    /// Node-local facts per pod, by `namespace/name`.
    #[serde(default)]
    pub pod_runtime: BTreeMap<String, PodRuntimeFacts>,
    /// Cluster mesh settings: absent until `strait clustermesh enable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshSettings>,
}

/// This cluster's place in the cluster mesh: its own endpoint and the clusters it is connected
/// to. Agents sync every peer; the cluster's mesh endpoint trusts every peer's CA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// Where this cluster's mesh endpoint listens.
    pub endpoint: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub peers: Vec<MeshPeer>,
}

/// A connected cluster: who it is, where its mesh endpoint listens, and the CA whose
/// certificates speak for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshPeer {
    pub name: String,
    pub id: u8,
    pub endpoint: std::net::SocketAddr,
    /// The peer cluster's CA certificate (PEM).
    #[serde(rename = "caPEM")]
    pub ca_pem: String,
    /// Whether agents sync the peer; `false` while a connect or disconnect is half done: the
    /// endpoint already (or still) trusts the peer, agents do not dial it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub sync: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    #[serde(rename = "underlayIP")]
    pub underlay_ip: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A numeric security identity and the label set it stands for (Cilium's CiliumIdentity object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumIdentity {
    pub api_version: String,
    pub kind: String,
    pub metadata: IdentityMeta,
    /// Identity labels with their source prefix (`k8s:app`), see [`identity_labels`].
    #[serde(rename = "security-labels")]
    pub security_labels: Labels,
}

/// `metadata` of a [`CiliumIdentity`]: its name is the identity number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityMeta {
    pub name: String,
}

/// What a pod's node knows about it and the pod object does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuntimeFacts {
    /// cgroup v2 ID of the pod's cgroup.
    #[serde(rename = "cgroupID", default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Node-side interface of the pod's veth.
    #[serde(
        rename = "hostInterface",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub host_interface: Option<String>,
}

/// A state document that cannot become a [`ClusterState`]; names the entry and field.
#[derive(Debug, thiserror::Error)]
pub enum LabStateError {
    #[error("apiVersion/kind: expected {API_VERSION} {KIND}, found {api_version} {kind}")]
    WrongKind { api_version: String, kind: String },
    #[error("objects[{index}]")]
    Object {
        index: usize,
        #[source]
        source: Box<ConvertError>,
    },
    #[error("identities[{index}] ({name:?}): {reason}")]
    Identity {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("podRuntime: {key:?}: no such pod among the objects")]
    UnknownPod { key: String },
}

impl CiliumIdentity {
    /// The identity `id` for `labels`.
    pub fn new(id: u32, labels: Labels) -> Self {
        Self {
            api_version: IDENTITY_API_VERSION.into(),
            kind: IDENTITY_KIND.into(),
            metadata: IdentityMeta {
                name: id.to_string(),
            },
            security_labels: labels,
        }
    }
}

impl From<&LabNode> for model::Node {
    fn from(n: &LabNode) -> Self {
        model::Node {
            name: n.name.clone(),
            underlay_ip: n.underlay_ip,
            pod_cidr: n.pod_cidr,
            gateway: n.gateway,
        }
    }
}

impl TryFrom<LabClusterState> for ClusterState {
    type Error = LabStateError;

    fn try_from(doc: LabClusterState) -> Result<Self, LabStateError> {
        if doc.api_version != API_VERSION || doc.kind != KIND {
            return Err(LabStateError::WrongKind {
                api_version: doc.api_version,
                kind: doc.kind,
            });
        }
        let identities = identity_table(&doc)?;
        let node_names: BTreeSet<&str> = doc.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut namespaces = Vec::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        let mut policies = Vec::new();
        for (index, value) in doc.objects.into_iter().enumerate() {
            let obj = |e| LabStateError::Object {
                index,
                source: Box::new(e),
            };
            match k8s::decode(value).map_err(obj)? {
                Resource::Namespace(ns) => namespaces.push(ns),
                Resource::Pod(p) => pods.push((index, *p)),
                Resource::Service(s) => services.push((index, s)),
                Resource::Policy(p) => policies.push(*p),
            }
        }
        let ns_labels: BTreeMap<&str, &Labels> = namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        let mut runtime = doc.pod_runtime;
        let mut endpoints = Vec::new();
        for (index, p) in pods {
            let at = |field: &str, reason: String| LabStateError::Object {
                index,
                source: Box::new(
                    ObjectRef {
                        kind: "Pod".into(),
                        namespace: Some(p.namespace.clone()),
                        name: p.name.clone(),
                    }
                    .err(field, reason),
                ),
            };
            let Some(nsl) = ns_labels.get(p.namespace.as_str()) else {
                return Err(at(
                    "metadata.namespace",
                    format!("namespace {:?} not found among the objects", p.namespace),
                ));
            };
            if !node_names.contains(p.node.as_str()) {
                return Err(at(
                    "spec.nodeName",
                    format!("node {:?} is not among the nodes", p.node),
                ));
            }
            let id_labels = identity_labels(&p.labels, &p.namespace, nsl, &doc.cluster.name);
            let Some(&identity) = identities.get(&id_labels) else {
                return Err(at(
                    "metadata.labels",
                    "no entry of identities has this pod's identity labels".into(),
                ));
            };
            let rt = runtime.remove(&p.key()).unwrap_or_default();
            endpoints.push(p.into_endpoint(identity, rt.cgroup_id, rt.host_interface));
        }
        if let Some(key) = runtime.into_keys().next() {
            return Err(LabStateError::UnknownPod { key });
        }
        for (index, s) in &services {
            if !ns_labels.contains_key(s.namespace.as_str()) {
                return Err(LabStateError::Object {
                    index: *index,
                    source: Box::new(
                        ObjectRef {
                            kind: "Service".into(),
                            namespace: Some(s.namespace.clone()),
                            name: s.name.clone(),
                        }
                        .err(
                            "metadata.namespace",
                            format!("namespace {:?} not found among the objects", s.namespace),
                        ),
                    ),
                });
            }
        }
        Ok(ClusterState {
            revision: doc.revision,
            nodes: doc.nodes.iter().map(model::Node::from).collect(),
            cluster: doc.cluster,
            namespaces,
            endpoints,
            services: services.into_iter().map(|(_, s)| s).collect(),
            policies,
        })
    }
}

/// Identity labels → number, checking each entry.
fn identity_table(doc: &LabClusterState) -> Result<BTreeMap<Labels, u32>, LabStateError> {
    let mut by_labels = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (index, id) in doc.identities.iter().enumerate() {
        let bad = |reason: String| LabStateError::Identity {
            index,
            name: id.metadata.name.clone(),
            reason,
        };
        if id.api_version != IDENTITY_API_VERSION || id.kind != IDENTITY_KIND {
            return Err(bad(format!(
                "expected {IDENTITY_API_VERSION} {IDENTITY_KIND}, found {} {}",
                id.api_version, id.kind
            )));
        }
        let n: u32 = id
            .metadata
            .name
            .parse()
            .map_err(|_| bad("metadata.name: not an identity number".into()))?;
        if cluster_of(n) != doc.cluster.id {
            return Err(bad(format!(
                "metadata.name: belongs to cluster ID {}, not {}",
                cluster_of(n),
                doc.cluster.id
            )));
        }
        if !seen.insert(n) {
            return Err(bad("metadata.name: listed twice".into()));
        }
        if by_labels.insert(id.security_labels.clone(), n).is_some() {
            return Err(bad(
                "security-labels: another identity has the same labels".into()
            ));
        }
    }
    Ok(by_labels)
}
