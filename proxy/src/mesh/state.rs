//! What a cluster publishes to the mesh, as plain serde data, and deltas between two published
//! states.
//!
//! Every collection is a map keyed the way a delta names a change, so a delta is "these keys
//! now hold these values, these keys are gone", and applying it is a pure function.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use imbl::OrdMap;
use imbl::ordmap::DiffItem;
use serde::{Deserialize, Serialize};

use super::cluster::ClusterId;
pub use crate::model::remote::{
    AFFINITY_ANNOTATION, Affinity, GLOBAL_ANNOTATION, GlobalService, IpEntry, MeshEndpoint,
    MeshNode, MeshServicePort, PortSpan, SHARED_ANNOTATION,
};
use crate::model::{Endpoint, Labels, Service, Snapshot};

/// Everything one cluster publishes at one revision. Persistent maps: a copy (what the client
/// hands out after every delta) shares everything unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshState {
    pub cluster: ClusterId,
    /// Chosen anew each time a publisher starts: revisions of different epochs are unrelated.
    pub epoch: u64,
    pub revision: u64,
    pub nodes: OrdMap<String, MeshNode>,
    /// Numeric identity → its label set.
    pub identities: OrdMap<u32, Labels>,
    /// Pod IP → what owns it.
    pub ipcache: OrdMap<Ipv4Addr, IpEntry>,
    /// Global services by `namespace/name`.
    pub services: OrdMap<String, GlobalService>,
    /// Identity → the TCP ports where this cluster's ingress rules for it have L7 rules: other
    /// clusters send connections there through the tunnel, for this cluster to judge.
    #[serde(default)]
    pub l7_ingress: OrdMap<u32, Vec<PortSpan>>,
}

/// Changes of one collection: keys now holding these values, keys gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes<K: Ord, V> {
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub upserted: BTreeMap<K, V>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<K>,
}

/// What turns the state at revision `from` into the state at revision `to` of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub epoch: u64,
    pub from: u64,
    pub to: u64,
    pub nodes: Changes<String, MeshNode>,
    pub identities: Changes<u32, Labels>,
    pub ipcache: Changes<Ipv4Addr, IpEntry>,
    pub services: Changes<String, GlobalService>,
    #[serde(default)]
    pub l7_ingress: Changes<u32, Vec<PortSpan>>,
}

/// A delta that does not fit the state it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta {epoch}/{from}->{to} does not apply to the state held at {held_epoch}/{held}")]
    Gap {
        epoch: u64,
        from: u64,
        to: u64,
        held_epoch: u64,
        held: u64,
    },
}

// === impl Changes ===

impl<K: Ord, V> Default for Changes<K, V> {
    fn default() -> Self {
        Self {
            upserted: BTreeMap::new(),
            removed: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Changes<K, V> {
    /// The changes from `old` to `new`.
    pub fn between(old: &OrdMap<K, V>, new: &OrdMap<K, V>) -> Self {
        // `diff` skips subtrees the two maps share, so a state derived from the other by a
        // delta is compared in time proportional to the change.
        let mut out = Self::default();
        for item in old.diff(new) {
            match item {
                DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => {
                    out.upserted.insert(k.clone(), v.clone());
                }
                DiffItem::Remove(k, _) => out.removed.push(k.clone()),
            }
        }
        out
    }

    /// Applies the changes to `map`.
    pub fn apply_to(&self, map: &mut OrdMap<K, V>) {
        for k in &self.removed {
            map.remove(k);
        }
        for (k, v) in &self.upserted {
            map.insert(k.clone(), v.clone());
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// Number of keys changed or removed.
    pub fn len(&self) -> usize {
        self.upserted.len() + self.removed.len()
    }
}

// === impl Delta ===

impl Delta {
    /// A delta changing nothing at `revision` of `epoch`: tells a current client it is synced.
    pub fn empty(epoch: u64, revision: u64) -> Self {
        Self {
            epoch,
            from: revision,
            to: revision,
            nodes: Changes::default(),
            identities: Changes::default(),
            ipcache: Changes::default(),
            services: Changes::default(),
            l7_ingress: Changes::default(),
        }
    }

    /// Whether the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.identities.is_empty()
            && self.ipcache.is_empty()
            && self.services.is_empty()
            && self.l7_ingress.is_empty()
    }

    /// Number of keys changed or removed, over all collections.
    pub fn len(&self) -> usize {
        self.nodes.len()
            + self.identities.len()
            + self.ipcache.len()
            + self.services.len()
            + self.l7_ingress.len()
    }
}

// === impl MeshState ===

impl MeshState {
    /// An empty state of `cluster` at revision 0.
    pub fn empty(cluster: ClusterId) -> Self {
        Self {
            cluster,
            epoch: 0,
            revision: 0,
            nodes: OrdMap::new(),
            identities: OrdMap::new(),
            ipcache: OrdMap::new(),
            services: OrdMap::new(),
            l7_ingress: OrdMap::new(),
        }
    }

    /// What the local cluster of `snap` publishes: services annotated
    /// `service.cilium.io/global: "true"` are published, with no endpoints when annotated
    /// `service.cilium.io/shared: "false"`. Epoch and revision are left at 0 for the publisher
    /// to stamp.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let model = &snap.model;
        let mut out = Self::empty(ClusterId::from(&model.cluster));
        for node in model.nodes.values() {
            out.nodes.insert(
                node.name.clone(),
                MeshNode {
                    name: node.name.clone(),
                    underlay_ip: node.underlay_ip,
                    pod_cidrs: vec![node.pod_cidr],
                },
            );
        }
        let empty = Labels::new();
        for ep in model.endpoints.values() {
            let ns_labels = model
                .namespaces
                .get(&ep.namespace)
                .map_or(&empty, |n| &n.labels);
            out.identities.entry(ep.identity).or_insert_with(|| {
                crate::identity::identity_labels(
                    &ep.labels,
                    &ep.namespace,
                    ns_labels,
                    &model.cluster.name,
                )
            });
            out.ipcache.insert(
                ep.ip,
                IpEntry {
                    identity: ep.identity,
                    node: ep.node.clone(),
                    namespace: ep.namespace.clone(),
                    pod: ep.name.clone(),
                },
            );
        }
        // Candidates per (namespace, label, value): a service's endpoints are found from its
        // first selector label instead of scanning every pod for every service.
        let mut by_label: HashMap<(&str, &str, &str), Vec<&Endpoint>> = HashMap::new();
        for ep in model.endpoints.values() {
            for (k, v) in &ep.labels {
                by_label
                    .entry((ep.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(ep);
            }
        }
        for svc in model.services.values() {
            let ann = &svc.annotations;
            if ann.get(GLOBAL_ANNOTATION).map(String::as_str) != Some("true") {
                continue;
            }
            let shared = ann.get(SHARED_ANNOTATION).map(String::as_str) != Some("false");
            let affinity = match ann.get(AFFINITY_ANNOTATION).map(String::as_str) {
                Some("local") => Affinity::Local,
                Some("remote") => Affinity::Remote,
                _ => Affinity::None,
            };
            let endpoints = if shared {
                selected(&by_label, svc)
                    .into_iter()
                    .map(|ep| MeshEndpoint {
                        ip: ep.ip,
                        ports: svc.ports.iter().map(|p| p.target_on(ep)).collect(),
                        node: ep.node.clone(),
                        ready: ep.ready,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            out.services.insert(
                service_key(&svc.namespace, &svc.name),
                GlobalService {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    ports: svc
                        .ports
                        .iter()
                        .map(|p| MeshServicePort {
                            name: p.name.clone(),
                            port: p.port,
                            protocol: p.protocol,
                        })
                        .collect(),
                    shared,
                    affinity,
                    endpoints,
                },
            );
        }
        out
    }

    /// The delta from `self` to `new` (same epoch assumed; `new` carries the target revision).
    pub fn delta_to(&self, new: &MeshState) -> Delta {
        Delta {
            epoch: new.epoch,
            from: self.revision,
            to: new.revision,
            nodes: Changes::between(&self.nodes, &new.nodes),
            identities: Changes::between(&self.identities, &new.identities),
            ipcache: Changes::between(&self.ipcache, &new.ipcache),
            services: Changes::between(&self.services, &new.services),
            l7_ingress: Changes::between(&self.l7_ingress, &new.l7_ingress),
        }
    }

    /// Applies `delta`, which must start at the revision held; nothing changes on error.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), DeltaError> {
        if delta.epoch != self.epoch || delta.from != self.revision {
            return Err(DeltaError::Gap {
                epoch: delta.epoch,
                from: delta.from,
                to: delta.to,
                held_epoch: self.epoch,
                held: self.revision,
            });
        }
        delta.nodes.apply_to(&mut self.nodes);
        delta.identities.apply_to(&mut self.identities);
        delta.ipcache.apply_to(&mut self.ipcache);
        delta.services.apply_to(&mut self.services);
        delta.l7_ingress.apply_to(&mut self.l7_ingress);
        self.revision = delta.to;
        Ok(())
    }

    /// Whether the published content (not epoch or revision) equals `other`'s.
    pub fn same_content(&self, other: &MeshState) -> bool {
        self.cluster == other.cluster
            && self.nodes == other.nodes
            && self.identities == other.identities
            && self.ipcache == other.ipcache
            && self.services == other.services
            && self.l7_ingress == other.l7_ingress
    }

    /// Number of endpoints over all global services.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }
}

/// The endpoints `svc` selects, in key order.
fn selected<'a>(
    by_label: &HashMap<(&str, &str, &str), Vec<&'a Endpoint>>,
    svc: &Service,
) -> Vec<&'a Endpoint> {
    let Some((k, v)) = svc.selector.iter().next() else {
        return Vec::new();
    };
    by_label
        .get(&(svc.namespace.as_str(), k.as_str(), v.as_str()))
        .map(|eps| eps.iter().copied().filter(|ep| svc.selects(ep)).collect())
        .unwrap_or_default()
}

/// The key of a global service in [`MeshState::services`]: `namespace/name`.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests;
