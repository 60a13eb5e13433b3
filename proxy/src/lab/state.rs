//! The lab's API server: the resources applied to each cluster, their allocations, and the plan
//! that turns an apply or delete into pods to start and stop. Pure; `lab::Lab` does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::manifest::{Object, Origin, PodTemplate};
use super::objects;
use super::topology::{ClusterSpec, Topology};
use crate::identity::{IdentityAllocator, identity_labels};
use crate::model::{self, ClusterInfo, ClusterState, Labels};
use crate::sources::lab::{
    self as lab_source, CiliumIdentity, LabClusterState, LabNode, LabStateError, PodRuntimeFacts,
};

/// An apply or delete that cannot be carried out; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Object(Box<ObjectError>),
    #[error("cluster {0:?} is not part of this lab")]
    NoCluster(String),
    #[error("cluster {cluster}: node {node} has no free pod addresses")]
    NodeFull { cluster: String, node: String },
    #[error("identity")]
    Identity(#[from] crate::identity::IdentityError),
    /// A Kubernetes object of the state could not be encoded (k8s-openapi types always can).
    #[error("encoding a Kubernetes object")]
    Encode(#[from] serde_json::Error),
    /// The resulting state would not convert for the agents (a lab bug, or a stale state).
    #[error("cluster {cluster}: the resulting cluster state is not valid")]
    State {
        cluster: String,
        #[source]
        source: Box<LabStateError>,
    },
}

/// An object that cannot be applied, and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{file}: document {doc} ({kind} {key}): {reason}")]
pub struct ObjectError {
    pub file: String,
    pub doc: usize,
    pub kind: String,
    pub key: String,
    pub reason: String,
}

/// Everything the lab remembers; saved as JSON in the lab's state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub topology: Topology,
    pub clusters: BTreeMap<String, ClusterResources>,
    /// Agent PID per `cluster/node`.
    #[serde(default)]
    pub agents: BTreeMap<String, i32>,
    /// Clusters with the mesh enabled: their endpoint and connected clusters.
    #[serde(default)]
    pub mesh: BTreeMap<String, MeshRecord>,
}

/// A cluster's mesh endpoint as the lab runs it, and the clusters it is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRecord {
    /// Where the endpoint listens (UDP): the cluster's first node, port 32379.
    pub listen: std::net::SocketAddr,
    pub pid: Option<i32>,
    /// Connected clusters: the agents sync them, the endpoint trusts them.
    #[serde(default)]
    pub peers: BTreeSet<String>,
    /// Clusters the endpoint trusts but agents do not sync yet (connect) or any more
    /// (disconnect), so no agent dials an endpoint that does not trust it yet.
    #[serde(default)]
    pub pending: BTreeSet<String>,
}

/// Resources of one cluster, as `kubectl apply` left them, plus the pods that realise them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterResources {
    /// Bumped on every change; agents report which revision they have loaded.
    pub revision: u64,
    pub namespaces: BTreeMap<String, Labels>,
    pub deployments: BTreeMap<String, DeploymentRecord>,
    /// Pods applied as `kind: Pod`, by `namespace/name`.
    pub standalone: BTreeMap<String, PodTemplate>,
    pub services: BTreeMap<String, model::Service>,
    /// Pods that exist (or are being created), by `namespace/name`.
    pub pods: BTreeMap<String, PodRecord>,
    #[serde(default)]
    pub identities: IdentityAllocator,
    /// Network policy objects in force, as applied (namespace set), by `Kind/namespace/name`.
    #[serde(default)]
    pub policies: BTreeMap<String, serde_json::Value>,
}

/// A Deployment as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub replicas: u32,
    pub selector: Labels,
    pub template: PodTemplate,
}

/// A pod placed on a node with an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub template: PodTemplate,
    /// Deployment that owns the pod.
    pub owner: Option<String>,
    pub template_hash: String,
    /// Process group leaders of the pod's containers.
    #[serde(default)]
    pub pids: Vec<i32>,
}

impl PodRecord {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Ports the pod declares, over all containers.
    pub fn ports(&self) -> Vec<model::NamedPort> {
        self.template
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().cloned())
            .collect()
    }
}

/// Pods to stop and pods to start, with the resources as they will be afterwards.
#[derive(Debug)]
pub struct Plan {
    pub resources: ClusterResources,
    pub delete: Vec<PodRecord>,
    pub create: Vec<PodRecord>,
}

/// A stable short hash (FNV-1a) so pod names do not change between builds of Strait.
fn stable_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

fn template_hash(t: &PodTemplate) -> String {
    stable_hash(&serde_json::to_string(t).unwrap_or_default())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl ClusterResources {
    /// Resources of a new cluster: the `default` and `kube-system` namespaces exist.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for ClusterResources {
    fn default() -> Self {
        Self {
            revision: 0,
            namespaces: ["default", "kube-system"]
                .into_iter()
                .map(|ns| (ns.to_string(), ns_labels(ns, Labels::new())))
                .collect(),
            deployments: BTreeMap::new(),
            standalone: BTreeMap::new(),
            services: BTreeMap::new(),
            pods: BTreeMap::new(),
            identities: IdentityAllocator::default(),
            policies: BTreeMap::new(),
        }
    }
}

fn ns_labels(name: &str, mut labels: Labels) -> Labels {
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    labels
}

/// Computes what applying (or, with `delete`, removing) `objects` does to `cur`.
pub fn plan(
    spec: &ClusterSpec,
    cur: &ClusterResources,
    objects: &[(Origin, Object)],
    delete: bool,
) -> Result<Plan, PlanError> {
    let mut r = cur.clone();
    let err = |o: &Origin, obj: &Object, reason: String| {
        PlanError::Object(Box::new(ObjectError {
            file: o.file.clone(),
            doc: o.doc,
            kind: obj.kind().into(),
            key: obj.key(),
            reason,
        }))
    };
    // Namespaces first, so one file can create a namespace and its contents, as kubectl allows.
    for (o, obj) in objects {
        if let Object::Namespace { name, labels } = obj {
            if delete {
                if name == "default" || name == "kube-system" {
                    return Err(err(o, obj, "this namespace cannot be deleted".into()));
                }
                r.namespaces.remove(name);
                let prefix = format!("{name}/");
                r.deployments.retain(|k, _| !k.starts_with(&prefix));
                r.standalone.retain(|k, _| !k.starts_with(&prefix));
                r.services.retain(|k, _| !k.starts_with(&prefix));
                r.policies.retain(|_, p| {
                    p.pointer("/metadata/namespace").and_then(|n| n.as_str()) != Some(name.as_str())
                });
            } else {
                r.namespaces
                    .insert(name.clone(), ns_labels(name, labels.clone()));
            }
        }
    }
    for (o, obj) in objects {
        let key = obj.key();
        if let Object::Pod { namespace, .. }
        | Object::Deployment { namespace, .. }
        | Object::Service { namespace, .. } = obj
            && !delete
            && !r.namespaces.contains_key(namespace)
        {
            return Err(err(o, obj, format!("namespace {namespace:?} not found")));
        }
        if let Object::Policy { policy: p, .. } = obj
            && let Some(namespace) = &p.namespace
            && !delete
            && !r.namespaces.contains_key(namespace)
        {
            return Err(err(o, obj, format!("namespace {namespace:?} not found")));
        }
        match obj {
            Object::Namespace { .. } => {}
            Object::Policy { policy, object } => {
                let key = format!("{}/{}", policy.kind.as_str(), policy.key());
                if delete {
                    r.policies.remove(&key);
                } else {
                    r.policies.insert(key, (**object).clone());
                }
            }
            Object::Pod { template, .. } => {
                if delete {
                    r.standalone.remove(&key);
                } else {
                    check_node(spec, template).map_err(|e| err(o, obj, e))?;
                    if r.pods.get(&key).is_some_and(|p| p.owner.is_some()) {
                        return Err(err(o, obj, "a pod of a Deployment has this name".into()));
                    }
                    r.standalone.insert(key, template.clone());
                }
            }
            Object::Deployment {
                replicas,
                selector,
                template,
                ..
            } => {
                if delete {
                    r.deployments.remove(&key);
                } else {
                    check_node(spec, template).map_err(|e| err(o, obj, e))?;
                    r.deployments.insert(
                        key,
                        DeploymentRecord {
                            replicas: *replicas,
                            selector: selector.clone(),
                            template: template.clone(),
                        },
                    );
                }
            }
            Object::Service {
                namespace,
                name,
                cluster_ip,
                ports,
                selector,
                annotations,
            } => {
                if delete {
                    r.services.remove(&key);
                    continue;
                }
                let ip =
                    allocate_service_ip(spec, &r, &key, *cluster_ip).map_err(|e| err(o, obj, e))?;
                r.services.insert(
                    key,
                    model::Service {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        cluster_ip: ip,
                        ports: ports.clone(),
                        selector: selector.clone(),
                        annotations: annotations.clone(),
                    },
                );
            }
        }
    }
    let plan = reconcile_pods(spec, r)?;
    check(spec, &plan.resources)?;
    Ok(plan)
}

/// Converts the state the agents would receive with their own code, so that an apply they
/// would refuse is refused here, before anything changes.
fn check(spec: &ClusterSpec, r: &ClusterResources) -> Result<(), PlanError> {
    let mut probe = r.clone();
    let doc = cluster_document(spec, &mut probe, |_| PodRuntime::default())?;
    ClusterState::try_from(doc).map_err(|source| PlanError::State {
        cluster: spec.name.clone(),
        source: Box::new(source),
    })?;
    Ok(())
}

fn check_node(spec: &ClusterSpec, t: &PodTemplate) -> Result<(), String> {
    match &t.node_name {
        Some(n) if !spec.nodes.iter().any(|x| &x.name == n) => Err(format!(
            "spec.nodeName: node {n:?} does not exist in cluster {} (nodes: {})",
            spec.name,
            spec.nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(()),
    }
}

fn allocate_service_ip(
    spec: &ClusterSpec,
    r: &ClusterResources,
    key: &str,
    wanted: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, String> {
    let used: BTreeMap<Ipv4Addr, &str> = r
        .services
        .iter()
        .map(|(k, s)| (s.cluster_ip, k.as_str()))
        .collect();
    if let Some(ip) = wanted {
        if !spec.service_cidr.contains(&ip) {
            return Err(format!(
                "spec.clusterIP: {ip} is outside the cluster's service CIDR {}",
                spec.service_cidr
            ));
        }
        return match used.get(&ip) {
            Some(owner) if *owner != key => Err(format!(
                "spec.clusterIP: {ip} is already used by service {owner}"
            )),
            _ => Ok(ip),
        };
    }
    if let Some(s) = r.services.get(key) {
        return Ok(s.cluster_ip);
    }
    // The first address is kept free, as Kubernetes keeps it for the `kubernetes` service.
    spec.service_cidr
        .hosts()
        .skip(1)
        .find(|ip| !used.contains_key(ip))
        .ok_or_else(|| format!("service CIDR {} is full", spec.service_cidr))
}

/// Brings the pod set in line with standalone pods and deployments.
fn reconcile_pods(spec: &ClusterSpec, mut r: ClusterResources) -> Result<Plan, PlanError> {
    let mut keep: BTreeMap<String, PodRecord> = BTreeMap::new();
    let mut delete = Vec::new();
    let mut wanted_new: Vec<(String, String, PodTemplate, Option<String>)> = Vec::new();

    let old = std::mem::take(&mut r.pods);
    let mut by_owner: BTreeMap<Option<String>, Vec<PodRecord>> = BTreeMap::new();
    for p in old.into_values() {
        by_owner.entry(p.owner.clone()).or_default().push(p);
    }
    // Standalone pods: keep when unchanged, replace when the template changed.
    for p in by_owner.remove(&None).unwrap_or_default() {
        match r.standalone.get(&p.key()) {
            Some(t) if template_hash(t) == p.template_hash => {
                keep.insert(p.key(), p);
            }
            _ => delete.push(p),
        }
    }
    for (key, t) in &r.standalone {
        if !keep.contains_key(key) {
            let (ns, name) = key.split_once('/').unwrap_or(("default", key));
            wanted_new.push((ns.into(), name.into(), t.clone(), None));
        }
    }
    // Deployments: keep up to `replicas` pods of the current template, replace the rest.
    for (key, d) in &r.deployments {
        let hash = template_hash(&d.template);
        let mut current: Vec<PodRecord> = by_owner.remove(&Some(key.clone())).unwrap_or_default();
        current.sort_by(|a, b| a.name.cmp(&b.name));
        let (same, stale): (Vec<_>, Vec<_>) =
            current.into_iter().partition(|p| p.template_hash == hash);
        delete.extend(stale);
        let mut same = same.into_iter();
        for _ in 0..d.replicas {
            match same.next() {
                Some(p) => {
                    keep.insert(p.key(), p);
                }
                None => {
                    let (ns, dname) = key.split_once('/').unwrap_or(("default", key));
                    let name = loop {
                        let n = format!("{dname}-{}-{}", &hash[..10], random_suffix());
                        if !keep.contains_key(&format!("{ns}/{n}")) {
                            break n;
                        }
                    };
                    wanted_new.push((ns.into(), name, d.template.clone(), Some(key.clone())));
                }
            }
        }
        delete.extend(same);
    }
    // Pods whose deployment is gone.
    for (_, pods) in by_owner {
        delete.extend(pods);
    }

    let mut create = Vec::new();
    for (namespace, name, template, owner) in wanted_new {
        let node = match &template.node_name {
            Some(n) => n.clone(),
            None => least_loaded(spec, &keep),
        };
        let ip = allocate_pod_ip(spec, &node, &keep).ok_or_else(|| PlanError::NodeFull {
            cluster: spec.name.clone(),
            node: node.clone(),
        })?;
        let rec = PodRecord {
            template_hash: template_hash(&template),
            namespace,
            name,
            node,
            ip,
            template,
            owner,
            pids: Vec::new(),
        };
        keep.insert(rec.key(), rec.clone());
        create.push(rec);
    }
    r.pods = keep;
    r.revision += 1;
    Ok(Plan {
        resources: r,
        delete,
        create,
    })
}

fn least_loaded(spec: &ClusterSpec, pods: &BTreeMap<String, PodRecord>) -> String {
    spec.nodes
        .iter()
        .min_by_key(|n| pods.values().filter(|p| p.node == n.name).count())
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

fn allocate_pod_ip(
    spec: &ClusterSpec,
    node: &str,
    pods: &BTreeMap<String, PodRecord>,
) -> Option<Ipv4Addr> {
    let n = spec.nodes.iter().find(|n| n.name == node)?;
    let used: BTreeSet<Ipv4Addr> = pods.values().map(|p| p.ip).collect();
    n.pod_cidr
        .hosts()
        .filter(|ip| *ip != n.gateway)
        .find(|ip| !used.contains(ip))
}

/// What only the running system knows about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuntime {
    /// Whether the pod may receive service traffic.
    pub ready: bool,
    pub cgroup_id: Option<u64>,
    pub host_ifname: Option<String>,
}

/// The cluster's state file for its agents: the objects as the lab realised them, and what the
/// lab decides itself (nodes, identities, node-local pod facts). `runtime` supplies what only the
/// running pods know.
pub fn cluster_document(
    spec: &ClusterSpec,
    r: &mut ClusterResources,
    runtime: impl Fn(&PodRecord) -> PodRuntime,
) -> Result<LabClusterState, PlanError> {
    let mut identities: BTreeMap<u32, Labels> = BTreeMap::new();
    let mut objects = Vec::new();
    for (name, labels) in &r.namespaces {
        objects.push(to_value(&objects::namespace(name, labels))?);
    }
    let mut pod_runtime = BTreeMap::new();
    for p in r.pods.values() {
        let ns_labels = r.namespaces.get(&p.namespace).cloned().unwrap_or_default();
        let id_labels = identity_labels(&p.template.labels, &p.namespace, &ns_labels, &spec.name);
        let identity = r.identities.allocate(spec.id, &id_labels)?;
        identities.insert(identity, id_labels);
        let rt = runtime(p);
        objects.push(to_value(&objects::pod(spec, p, rt.ready))?);
        if rt.cgroup_id.is_some() || rt.host_ifname.is_some() {
            pod_runtime.insert(
                p.key(),
                PodRuntimeFacts {
                    cgroup_id: rt.cgroup_id,
                    host_interface: rt.host_ifname,
                },
            );
        }
    }
    for s in r.services.values() {
        objects.push(to_value(&objects::service(s))?);
    }
    objects.extend(r.policies.values().cloned());
    Ok(LabClusterState {
        api_version: lab_source::API_VERSION.into(),
        kind: lab_source::KIND.into(),
        revision: r.revision,
        cluster: ClusterInfo {
            name: spec.name.clone(),
            id: spec.id,
        },
        nodes: spec
            .nodes
            .iter()
            .map(|n| LabNode {
                name: n.name.clone(),
                underlay_ip: n.underlay_ip,
                pod_cidr: n.pod_cidr,
                gateway: n.gateway,
            })
            .collect(),
        identities: identities
            .into_iter()
            .map(|(id, labels)| CiliumIdentity::new(id, labels))
            .collect(),
        objects,
        pod_runtime,
        mesh: None,
    })
}

fn to_value<T: Serialize>(obj: &T) -> Result<serde_json::Value, PlanError> {
    Ok(serde_json::to_value(obj)?)
}

#[cfg(test)]
mod tests;
