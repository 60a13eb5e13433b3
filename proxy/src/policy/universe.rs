//! Every identity policy can name: pods (by their identity labels), reserved identities, and one
//! identity per CIDR prefix that policies mention (the kernel's ipcache maps addresses to them).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use ipnet::Ipv4Net;

use crate::identity::{identity_labels, reserved};
use crate::model::policy::{Peer, Policy};
use crate::model::remote::RemoteCluster;
use crate::model::{Endpoint, Labels, Model, NamedPort, NamespacedName, ObjectKey};

/// First identity number of CIDR identities (Cilium's local scope).
pub const CIDR_IDENTITY_BASE: u32 = 1 << 24;

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKind {
    /// Pods with these labels in cluster `cluster`.
    Endpoint { cluster: String },
    /// One of Cilium's reserved identities.
    Reserved,
    /// Addresses whose longest matching policy prefix is this one.
    Cidr(Ipv4Net),
}

/// One identity and what policy matches it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    pub id: u32,
    /// Identity labels with source prefixes (`k8s:app`, `reserved:world`).
    pub labels: Labels,
    pub kind: IdentityKind,
    /// Addresses of the pods with this identity.
    pub ips: BTreeSet<Ipv4Addr>,
    /// Named container ports of those pods.
    pub ports: Vec<NamedPort>,
}

/// The identities known to one agent. Persistent maps: a clone is cheap and an update
/// ([`Universe::updated`]) costs what it changes.
#[derive(Debug, Clone)]
pub struct Universe {
    pub local_cluster: String,
    /// Whether an endpoint selector that names no cluster (`io.cilium.k8s.policy.cluster`)
    /// selects only the local cluster's endpoints: Cilium's `policy-default-local-cluster`, the
    /// default since 1.18. Off: it selects matching endpoints of every cluster of the mesh.
    pub default_local_cluster: bool,
    ids: OrdMap<u32, Arc<IdentityInfo>>,
    cidrs: OrdMap<Ipv4Net, u32>,
    by_ip: OrdMap<Ipv4Addr, u32>,
    /// The endpoints holding each pod identity, so one leaving recomputes only its identity.
    members: OrdMap<u32, OrdSet<NamespacedName>>,
    /// The identities each remote cluster of the mesh brought.
    remote_ids: OrdMap<String, OrdSet<u32>>,
}

impl Universe {
    /// Only the reserved identities.
    pub fn new(local_cluster: &str) -> Self {
        let mut ids = OrdMap::new();
        for (id, name) in reserved::NAMES {
            ids.insert(
                id,
                Arc::new(IdentityInfo {
                    id,
                    labels: [(format!("reserved:{name}"), String::new())].into(),
                    kind: IdentityKind::Reserved,
                    ips: BTreeSet::new(),
                    ports: vec![],
                }),
            );
        }
        Self {
            local_cluster: local_cluster.to_string(),
            default_local_cluster: true,
            ids,
            cidrs: OrdMap::new(),
            by_ip: OrdMap::new(),
            members: OrdMap::new(),
            remote_ids: OrdMap::new(),
        }
    }

    /// The identities of `model`'s endpoints (labels as the lab allocated them) and the CIDR
    /// identities its policies need.
    pub fn from_model(model: &Model) -> Self {
        let mut u = Self::new(&model.cluster.name);
        for (key, e) in &model.endpoints {
            u.members.entry(e.identity).or_default().insert(key.clone());
            u.by_ip.insert(e.ip, e.identity);
        }
        let ids: Vec<u32> = u.members.keys().copied().collect();
        for id in ids {
            u.refresh(id, model);
        }
        u.insert_cidrs(cidr_set(model.policies.values().map(|p| &**p)));
        for (name, remote) in &model.remotes {
            u.set_remote(name, Some(remote), model);
        }
        u
    }

    /// Replaces the identities remote cluster `name` brought with those of `remote` (none:
    /// withdrawn); returns the identities added, changed or removed.
    ///
    /// A remote cluster is believed only about itself: identities whose cluster ID bits are not
    /// its own, and addresses a local pod holds or inside a local node's pod CIDR, are left out
    /// (logged); the cluster label of its identities is its own name, whatever it published.
    fn set_remote(
        &mut self,
        name: &str,
        remote: Option<&RemoteCluster>,
        local: &Model,
    ) -> BTreeSet<u32> {
        let local_id = local.cluster.id;
        let mut touched = BTreeSet::new();
        for id in self.remote_ids.remove(name).unwrap_or_default() {
            if let Some(old) = self.ids.remove(&id) {
                for ip in &old.ips {
                    if self.by_ip.get(ip) == Some(&id) {
                        self.by_ip.remove(ip);
                    }
                }
            }
            touched.insert(id);
        }
        let Some(remote) = remote else {
            return touched;
        };
        let mut infos: OrdMap<u32, IdentityInfo> = OrdMap::new();
        for (ip, entry) in &remote.ipcache {
            let id = entry.identity;
            if !remote.owns_identity(id)
                || remote.cluster.id == local_id
                || self.by_ip.contains_key(ip)
                || local.nodes.values().any(|n| n.pod_cidr.contains(ip))
            {
                tracing::warn!(cluster = name, %ip, identity = id,
                    "ignoring a remote endpoint: not the remote cluster's identity or address");
                continue;
            }
            let Some(labels) = remote.identities.get(&id) else {
                continue;
            };
            infos
                .entry(id)
                .or_insert_with(|| IdentityInfo {
                    id,
                    labels: {
                        // Selectors naming a cluster must not take c2's pods for c1's.
                        let mut labels = labels.clone();
                        labels.insert(
                            format!("k8s:{}", crate::identity::CLUSTER_LABEL),
                            remote.cluster.name.clone(),
                        );
                        labels
                    },
                    kind: IdentityKind::Endpoint {
                        cluster: remote.cluster.name.clone(),
                    },
                    ips: BTreeSet::new(),
                    ports: vec![],
                })
                .ips
                .insert(*ip);
        }
        let mut ids = OrdSet::new();
        for (id, info) in infos {
            for ip in &info.ips {
                self.by_ip.insert(*ip, id);
            }
            ids.insert(id);
            touched.insert(id);
            self.ids.insert(id, Arc::new(info));
        }
        self.remote_ids.insert(name.to_string(), ids);
        touched
    }

    /// The universe of `model`, given that this one was built from `prev` and `changes` are
    /// the keys that differ; also the identities whose information changed (added, removed,
    /// relabelled, other addresses or ports).
    pub fn updated(
        &self,
        prev: &Model,
        model: &Model,
        changes: &BTreeSet<ObjectKey>,
    ) -> (Universe, BTreeSet<u32>) {
        if changes.contains(&ObjectKey::Cluster) && prev.cluster != model.cluster {
            let mut u = Self::from_model(model);
            u.default_local_cluster = self.default_local_cluster;
            let mut all: BTreeSet<u32> = self.ids.keys().copied().collect();
            all.extend(u.ids.keys().copied());
            return (u, all);
        }
        let mut u = self.clone();
        let mut touched = BTreeSet::new();
        let mut policies_changed = false;
        // Every changed endpoint leaves first, then the new ones arrive: within one batch a pod
        // may take an address (or identity) another one just gave up.
        for key in changes {
            if let ObjectKey::Endpoint(k) = key
                && let Some(old) = prev.endpoints.get(k)
            {
                if let Some(set) = u.members.get_mut(&old.identity) {
                    set.remove(k);
                }
                if u.by_ip.get(&old.ip) == Some(&old.identity) {
                    u.by_ip.remove(&old.ip);
                }
                touched.insert(old.identity);
            }
        }
        for key in changes {
            match key {
                ObjectKey::Endpoint(k) => {
                    if let Some(new) = model.endpoints.get(k) {
                        u.members.entry(new.identity).or_default().insert(k.clone());
                        u.by_ip.insert(new.ip, new.identity);
                        touched.insert(new.identity);
                    }
                }
                // Namespace labels are part of its pods' identity labels.
                ObjectKey::Namespace(ns) => {
                    let lo = (ns.clone(), String::new());
                    for (k, e) in model.endpoints.range(lo..) {
                        if &k.0 != ns {
                            break;
                        }
                        touched.insert(e.identity);
                    }
                }
                ObjectKey::Policy(_) => policies_changed = true,
                ObjectKey::Remote(_)
                | ObjectKey::Cluster
                | ObjectKey::Node(_)
                | ObjectKey::Service(_) => {}
            }
        }
        let mut remote_changed = BTreeSet::new();
        for key in changes {
            if let ObjectKey::Remote(name) = key {
                remote_changed.extend(u.set_remote(
                    name,
                    model.remotes.get(name).map(|r| &**r),
                    model,
                ));
            }
        }
        let mut changed = remote_changed;
        for id in touched {
            if u.refresh(id, model) {
                changed.insert(id);
            }
        }
        if policies_changed {
            let wanted = cidr_set(model.policies.values().map(|p| &**p));
            if wanted.iter().ne(u.cidrs.keys()) {
                changed.extend(u.cidrs.values().copied());
                for id in u.cidrs.values() {
                    u.ids.remove(id);
                }
                u.cidrs.clear();
                u.insert_cidrs(wanted);
                changed.extend(u.cidrs.values().copied());
            }
        }
        (u, changed)
    }

    /// Recomputes pod identity `id` from its member endpoints in `model`; whether it changed.
    fn refresh(&mut self, id: u32, model: &Model) -> bool {
        let members: Vec<&Arc<Endpoint>> = self
            .members
            .get(&id)
            .into_iter()
            .flat_map(|set| set.iter())
            .filter_map(|k| model.endpoints.get(k))
            .collect();
        let Some(first) = members.first() else {
            self.members.remove(&id);
            return self.ids.remove(&id).is_some();
        };
        let empty = Labels::new();
        let ns_labels = model
            .namespaces
            .get(&first.namespace)
            .map_or(&empty, |n| &n.labels);
        let mut info = IdentityInfo {
            id,
            labels: identity_labels(
                &first.labels,
                &first.namespace,
                ns_labels,
                &model.cluster.name,
            ),
            kind: IdentityKind::Endpoint {
                cluster: model.cluster.name.clone(),
            },
            ips: BTreeSet::new(),
            ports: vec![],
        };
        for e in members {
            info.ips.insert(e.ip);
            for p in &e.ports {
                if !info.ports.contains(p) {
                    info.ports.push(p.clone());
                }
            }
        }
        if self.ids.get(&id).is_some_and(|old| **old == info) {
            return false;
        }
        self.ids.insert(id, Arc::new(info));
        true
    }

    /// Adds (or extends) a pod identity.
    pub fn add_endpoint(
        &mut self,
        id: u32,
        labels: Labels,
        cluster: &str,
        ip: Ipv4Addr,
        ports: &[NamedPort],
    ) {
        let info = self.ids.entry(id).or_insert_with(|| {
            Arc::new(IdentityInfo {
                id,
                labels,
                kind: IdentityKind::Endpoint {
                    cluster: cluster.to_string(),
                },
                ips: BTreeSet::new(),
                ports: vec![],
            })
        });
        let info = Arc::make_mut(info);
        info.ips.insert(ip);
        for p in ports {
            if !info.ports.contains(p) {
                info.ports.push(p.clone());
            }
        }
        self.by_ip.insert(ip, id);
    }

    /// Allocates one identity per prefix named by a CIDR peer (and its exceptions), in prefix
    /// order so the numbering is deterministic.
    pub fn add_cidrs(&mut self, policies: &[Policy]) {
        self.insert_cidrs(cidr_set(policies.iter()));
    }

    fn insert_cidrs(&mut self, nets: BTreeSet<Ipv4Net>) {
        for (i, net) in nets.into_iter().enumerate() {
            let id = CIDR_IDENTITY_BASE + i as u32;
            self.cidrs.insert(net, id);
            self.ids.insert(
                id,
                Arc::new(IdentityInfo {
                    id,
                    labels: [(format!("cidr:{net}"), String::new())].into(),
                    kind: IdentityKind::Cidr(net),
                    ips: BTreeSet::new(),
                    ports: vec![],
                }),
            );
        }
    }

    /// The identity `id`, if known.
    pub fn get(&self, id: u32) -> Option<&IdentityInfo> {
        self.ids.get(&id).map(|i| &**i)
    }

    /// The shared record of identity `id`: unchanged identities keep the same `Arc` across
    /// updates, which lets caches skip them.
    pub fn get_shared(&self, id: u32) -> Option<&Arc<IdentityInfo>> {
        self.ids.get(&id)
    }

    /// Every identity, in number order.
    pub fn iter(&self) -> impl Iterator<Item = &IdentityInfo> {
        self.ids.values().map(|i| &**i)
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether only reserved identities exist (never: reserved ones are always there).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// CIDR identities as the kernel's ipcache needs them.
    pub fn cidr_entries(&self) -> Vec<(Ipv4Net, u32)> {
        self.cidrs.iter().map(|(n, id)| (*n, *id)).collect()
    }

    /// The identity of the pod with address `ip`, if one has it.
    pub fn endpoint_identity(&self, ip: Ipv4Addr) -> Option<u32> {
        self.by_ip.get(&ip).copied()
    }

    /// The identity an address resolves to: a pod's, else the longest CIDR identity, else world.
    /// (Node addresses are the caller's to resolve: the universe does not know them.)
    pub fn identity_of_ip(&self, ip: Ipv4Addr) -> u32 {
        if let Some(id) = self.by_ip.get(&ip) {
            return *id;
        }
        self.cidrs
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(reserved::WORLD, |(_, id)| *id)
    }

    /// `(port, IP protocol)` of each container port named `name` on identity `dst`, for rules of
    /// protocol `proto` (0 = any, then the container port's own protocol counts).
    fn named_ports<'a>(
        &'a self,
        dst: u32,
        name: &'a str,
        proto: u8,
    ) -> impl Iterator<Item = (u16, u8)> + 'a {
        self.ids
            .get(&dst)
            .into_iter()
            .flat_map(|info| info.ports.iter())
            .filter(move |p| p.name.as_deref() == Some(name))
            .map(|p| {
                let n = match p.protocol {
                    crate::model::Protocol::Tcp => strait_ebpf::abi::IPPROTO_TCP,
                    crate::model::Protocol::Udp => strait_ebpf::abi::IPPROTO_UDP,
                };
                (p.port, n)
            })
            .filter(move |(_, n)| proto == 0 || proto == *n)
    }

    /// The distinct named ports of [`Self::named_ports`], sorted (for compiling kernel entries).
    pub fn named_port(&self, dst: u32, name: &str, proto: u8) -> Vec<(u16, u8)> {
        let mut v: Vec<(u16, u8)> = self.named_ports(dst, name, proto).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether `port`/`packet_proto` is the port named `name` on `dst` for a rule of protocol
    /// `rule_proto`; allocation-free, for per-flow verdicts.
    pub fn is_named_port(
        &self,
        dst: u32,
        name: &str,
        rule_proto: u8,
        port: u16,
        packet_proto: u8,
    ) -> bool {
        self.named_ports(dst, name, rule_proto)
            .any(|(p, pp)| p == port && pp == packet_proto)
    }
}

/// Every prefix a CIDR peer (or its exceptions) names, but the world's 0.0.0.0/0.
fn cidr_set<'a>(policies: impl Iterator<Item = &'a Policy>) -> BTreeSet<Ipv4Net> {
    let mut nets = BTreeSet::new();
    for p in policies {
        for s in &p.specs {
            for r in &s.rules {
                for peer in r.peers.iter().flatten() {
                    if let Peer::Cidr { net, except, .. } = peer {
                        nets.insert(*net);
                        nets.extend(except.iter().copied());
                    }
                }
            }
        }
    }
    nets.remove(&Ipv4Net::default());
    nets
}
