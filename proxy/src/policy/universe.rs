//! Every identity policy can name: pods (by their identity labels), reserved identities, and one
//! identity per CIDR prefix that policies mention (the kernel's ipcache maps addresses to them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{Peer, Policy};
use crate::identity::{identity_labels, reserved};
use crate::model::{ClusterState, Labels, NamedPort};

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

/// The identities known to one agent.
#[derive(Debug, Clone)]
pub struct Universe {
    pub local_cluster: String,
    ids: BTreeMap<u32, IdentityInfo>,
    cidrs: BTreeMap<Ipv4Net, u32>,
    by_ip: BTreeMap<Ipv4Addr, u32>,
}

impl Universe {
    /// Only the reserved identities.
    pub fn new(local_cluster: &str) -> Self {
        let mut ids = BTreeMap::new();
        for (id, name) in reserved::NAMES {
            ids.insert(
                id,
                IdentityInfo {
                    id,
                    labels: [(format!("reserved:{name}"), String::new())].into(),
                    kind: IdentityKind::Reserved,
                    ips: BTreeSet::new(),
                    ports: vec![],
                },
            );
        }
        Self {
            local_cluster: local_cluster.to_string(),
            ids,
            cidrs: BTreeMap::new(),
            by_ip: BTreeMap::new(),
        }
    }

    /// The identities of `state`'s endpoints (labels as the lab allocated them) and the CIDR
    /// identities `policies` need.
    pub fn from_state(state: &ClusterState, policies: &[Policy]) -> Self {
        let mut u = Self::new(&state.cluster.name);
        let ns_labels: BTreeMap<&str, &Labels> = state
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        let empty = Labels::new();
        for e in &state.endpoints {
            let labels = identity_labels(
                &e.labels,
                &e.namespace,
                ns_labels
                    .get(e.namespace.as_str())
                    .copied()
                    .unwrap_or(&empty),
                &state.cluster.name,
            );
            u.add_endpoint(e.identity, labels, &state.cluster.name, e.ip, &e.ports);
        }
        u.add_cidrs(policies);
        u
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
        let info = self.ids.entry(id).or_insert_with(|| IdentityInfo {
            id,
            labels,
            kind: IdentityKind::Endpoint {
                cluster: cluster.to_string(),
            },
            ips: BTreeSet::new(),
            ports: vec![],
        });
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
        // 0.0.0.0/0 is the world identity itself.
        nets.remove(&Ipv4Net::default());
        for (i, net) in nets.into_iter().enumerate() {
            let id = CIDR_IDENTITY_BASE + i as u32;
            self.cidrs.insert(net, id);
            self.ids.insert(
                id,
                IdentityInfo {
                    id,
                    labels: [(format!("cidr:{net}"), String::new())].into(),
                    kind: IdentityKind::Cidr(net),
                    ips: BTreeSet::new(),
                    ports: vec![],
                },
            );
        }
    }

    /// The identity `id`, if known.
    pub fn get(&self, id: u32) -> Option<&IdentityInfo> {
        self.ids.get(&id)
    }

    /// Every identity, in number order.
    pub fn iter(&self) -> impl Iterator<Item = &IdentityInfo> {
        self.ids.values()
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
