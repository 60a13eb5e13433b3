//! The kernel's view of the cluster on one node: who has which address (ipcache), which cgroup
//! is which local pod, which identities are policed, the policy entries this node can look up,
//! and service backends.
//!
//! Kept in persistent maps: an update patches what changed, and the installer computes what to
//! write by diffing against the image it installed last, which skips everything the two share.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use imbl::OrdMap;
use ipnet::Ipv4Net;
use strait_ebpf::{PolicyDelta, PolicyImage, ServiceBackend, ServiceFrontend, ViaProxyKey};

use super::Delta;
use super::tables::service_frontends;
use crate::identity::reserved;
use crate::model::{Endpoint, Model, ObjectKey, Service};
use crate::policy::Universe;
use crate::policy::kernel::{KernelChanges, KernelCompiler, PairRules};

/// Everything the eBPF maps of one node should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelImage {
    pub ipcache: OrdMap<Ipv4Net, u32>,
    /// cgroup ID → (identity, address) of this node's pods.
    pub endpoints: OrdMap<u64, (u32, Ipv4Addr)>,
    /// identity → (ingress enforced, egress enforced).
    pub policed: OrdMap<u32, (bool, bool)>,
    /// Entries of the identity pairs with an end on this node.
    pub rules: OrdMap<(u32, u32), PairRules>,
    pub services: OrdMap<ServiceFrontend, Vec<ServiceBackend>>,
    /// Other clusters' identities and TCP ports whose L7 rules those clusters judge: the
    /// connections go through the proxy and the tunnel (`strait_viaproxy`).
    pub via_proxy: BTreeSet<ViaProxyKey>,
    /// Local pods per identity: the node only needs entries of pairs with a local end.
    local: OrdMap<u32, usize>,
    /// The CIDR identities the ipcache was built with.
    cidrs: Vec<(Ipv4Net, u32)>,
    /// Keys in `rules`, kept as pairs come and go.
    rule_count: usize,
}

impl KernelImage {
    /// The image of `model` on `node`, with entries from `kernel`.
    pub fn build(model: &Model, node: &str, universe: &Universe, kernel: &KernelCompiler) -> Self {
        let mut image = KernelImage {
            ipcache: ipcache(model, node, universe),
            cidrs: universe.cidr_entries(),
            ..KernelImage::default()
        };
        for e in model.endpoints.values().filter(|e| e.node == node) {
            image.add_local(e);
        }
        image.policed = kernel.policed_all().collect();
        image.via_proxy = via_proxy(model);
        image.rules = kernel
            .pairs()
            .filter(|((s, d), _)| image.is_local(*s) || image.is_local(*d))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        image.rule_count = image.rules.values().map(|r| r.len()).sum();
        for svc in model.services.values() {
            image.set_service(model, svc);
        }
        image
    }

    /// This image updated for `delta` (`kernel` already updated, `changes` what it changed).
    pub(crate) fn updated(
        &self,
        delta: &Delta<'_>,
        universe: &Universe,
        kernel: &KernelCompiler,
        changes: &KernelChanges,
    ) -> Self {
        let mut image = self.clone();
        let (prev, model) = (delta.prev, delta.model);
        let cidrs = universe.cidr_entries();
        if delta.any(|k| matches!(k, ObjectKey::Remote(_))) {
            image.via_proxy = via_proxy(model);
        }
        if delta.any(|k| matches!(k, ObjectKey::Node(_) | ObjectKey::Remote(_)))
            || cidrs != image.cidrs
        {
            image.ipcache = ipcache(model, delta.node, universe);
            image.cidrs = cidrs;
        }
        // Everything that changed leaves first, then the new state arrives: within one batch
        // a pod may take an address, cgroup or service frontend another one gave up.
        let mut local_moved = Vec::new();
        for k in delta.endpoints() {
            if let Some(e) = prev.endpoints.get(k).filter(|e| e.node == delta.node) {
                local_moved.extend(image.remove_local(e));
            }
        }
        for frontend in delta.old_frontends() {
            image.services.remove(&frontend);
        }
        for k in delta.endpoints() {
            let old = prev.endpoints.get(k);
            let new = model.endpoints.get(k);
            for e in old.into_iter().chain(new) {
                image.set_ipcache_host(model, delta.node, universe, e.ip);
            }
            if let Some(e) = new.filter(|e| e.node == delta.node) {
                local_moved.extend(image.add_local(e));
            }
        }
        for k in &delta.services_to_refresh() {
            if let Some(svc) = model.services.get(k) {
                image.set_service(model, svc);
            }
        }
        for id in &changes.policed {
            match kernel.policed(*id) {
                Some(flags) => {
                    image.policed.insert(*id, flags);
                }
                None => {
                    image.policed.remove(id);
                }
            }
        }
        let mut pairs: Vec<(u32, u32)> = changes.pairs.iter().copied().collect();
        for id in local_moved {
            // Pairs of `id` the kernel has now; those it dropped are in `changes` already.
            pairs.extend(kernel.pairs_of(id));
        }
        for pair in pairs {
            match kernel.pair(pair) {
                Some(r) if image.is_local(pair.0) || image.is_local(pair.1) => {
                    let old = image.rules.insert(pair, r.clone());
                    image.rule_count += r.len();
                    image.rule_count -= old.map_or(0, |o| o.len());
                }
                _ => {
                    if let Some(old) = image.rules.remove(&pair) {
                        image.rule_count -= old.len();
                    }
                }
            }
        }
        image
    }

    /// Number of policy entries (keys) of this node.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// The whole image, for a first (or recovering) install.
    pub fn to_image(&self) -> PolicyImage {
        PolicyImage {
            ipcache: self.ipcache.iter().map(|(n, id)| (*n, *id)).collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(cg, (id, ip))| strait_ebpf::EndpointEntry {
                    cgroup_id: *cg,
                    identity: *id,
                    ip: *ip,
                })
                .collect(),
            policed: self
                .policed
                .iter()
                .map(|(id, (i, e))| (*id, *i, *e))
                .collect(),
            rules: self
                .rules
                .values()
                .flat_map(|r| r.iter().copied())
                .collect(),
            services: self.services.iter().map(|(f, b)| (*f, b.clone())).collect(),
        }
    }

    /// What to write to take the maps from `old` (the image installed last) to this one. The
    /// maps are persistent, so parts both images share are skipped without being visited.
    pub fn delta_from(&self, old: &KernelImage) -> PolicyDelta {
        use imbl::ordmap::DiffItem;
        fn changes<K: Ord + Clone, V: Clone + PartialEq, O>(
            old: &OrdMap<K, V>,
            new: &OrdMap<K, V>,
            map: impl Fn(&V) -> O,
            empty: impl Fn(&K) -> Option<O>,
        ) -> Vec<(K, Option<O>)> {
            old.diff(new)
                .map(|d| match d {
                    DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => {
                        (k.clone(), Some(map(v)))
                    }
                    DiffItem::Remove(k, _) => (k.clone(), empty(k)),
                })
                .collect()
        }
        PolicyDelta {
            ipcache: changes(&old.ipcache, &self.ipcache, |v| *v, |_| None),
            endpoints: changes(&old.endpoints, &self.endpoints, |v| *v, |_| None),
            policed: changes(&old.policed, &self.policed, |v| *v, |_| None),
            pairs: changes(&old.rules, &self.rules, |r| r.to_vec(), |_| Some(vec![]))
                .into_iter()
                .map(|(p, r)| (p, r.unwrap_or_default()))
                .collect(),
            services: changes(&old.services, &self.services, |v| v.clone(), |_| None),
        }
    }

    fn is_local(&self, id: u32) -> bool {
        self.local.contains_key(&id)
    }

    /// Adds a local pod; returns its identity if that identity just became local.
    fn add_local(&mut self, e: &Endpoint) -> Option<u32> {
        if let Some(cg) = e.cgroup_id {
            self.endpoints.insert(cg, (e.identity, e.ip));
        }
        let n = self.local.entry(e.identity).or_insert(0);
        *n += 1;
        (*n == 1).then_some(e.identity)
    }

    /// Removes a local pod; returns its identity if no local pod has it any more.
    fn remove_local(&mut self, e: &Endpoint) -> Option<u32> {
        if let Some(cg) = e.cgroup_id
            && self
                .endpoints
                .get(&cg)
                .is_some_and(|(id, _)| *id == e.identity)
        {
            self.endpoints.remove(&cg);
        }
        let n = self.local.get_mut(&e.identity)?;
        *n -= 1;
        if *n == 0 {
            self.local.remove(&e.identity);
            return Some(e.identity);
        }
        None
    }

    /// Recomputes the ipcache entry of one host address.
    fn set_ipcache_host(&mut self, model: &Model, node: &str, universe: &Universe, ip: Ipv4Addr) {
        let net = Ipv4Net::from(ip);
        match host_identity(model, node, universe, ip) {
            Some(id) => {
                self.ipcache.insert(net, id);
            }
            None => {
                self.ipcache.remove(&net);
            }
        }
    }

    fn set_service(&mut self, model: &Model, svc: &Service) {
        for (frontend, ready) in service_frontends(model, svc) {
            let mut backends: Vec<ServiceBackend> = ready
                .into_iter()
                .map(|b| ServiceBackend {
                    ip: b.ip,
                    identity: b.identity,
                    port: b.port,
                })
                .collect();
            backends.sort();
            backends.dedup();
            self.services.insert(frontend, backends);
        }
    }
}

/// Who has which address: CIDR identities, then nodes, then pods (later entries win, as in
/// Cilium's ipcache, so a policy CIDR that is exactly a node's or a pod's address still
/// resolves to that node or pod).
fn ipcache(model: &Model, node: &str, universe: &Universe) -> OrdMap<Ipv4Net, u32> {
    let mut out: OrdMap<Ipv4Net, u32> = universe.cidr_entries().into_iter().collect();
    for (ip, id) in node_addresses(model, node) {
        out.insert(Ipv4Net::from(ip), id);
    }
    for e in model.endpoints.values() {
        out.insert(Ipv4Net::from(e.ip), e.identity);
    }
    // Other clusters' pods, as far as the universe believed their clusters.
    for remote in model.remotes.values() {
        for (ip, e) in &remote.ipcache {
            if universe.endpoint_identity(*ip) == Some(e.identity) {
                out.insert(Ipv4Net::from(*ip), e.identity);
            }
        }
    }
    out
}

/// Node addresses with their reserved identities. The agent's own node shows as `host`
/// through its gateway; other nodes (gateway and underlay address), also those of other
/// clusters of the mesh, as `remote-node`.
fn node_addresses(model: &Model, node: &str) -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    for remote in model.remotes.values() {
        for n in remote.nodes.values() {
            out.push((n.underlay_ip, reserved::REMOTE_NODE));
        }
    }
    for n in model.nodes.values() {
        if n.name == node {
            out.push((n.gateway, reserved::HOST));
        } else {
            out.push((n.gateway, reserved::REMOTE_NODE));
            out.push((n.underlay_ip, reserved::REMOTE_NODE));
        }
    }
    out
}

/// The identity of one host address by the same precedence as [`ipcache`].
fn host_identity(model: &Model, node: &str, universe: &Universe, ip: Ipv4Addr) -> Option<u32> {
    if let Some(id) = universe.endpoint_identity(ip) {
        return Some(id);
    }
    if let Some((_, id)) = node_addresses(model, node)
        .into_iter()
        .find(|(a, _)| *a == ip)
    {
        return Some(id);
    }
    universe
        .cidr_entries()
        .into_iter()
        .find(|(n, _)| *n == Ipv4Net::from(ip))
        .map(|(_, id)| id)
}

/// A span wider than this many ports is sent whole (port 0: every port of the identity).
const VIA_PROXY_SPAN_MAX: u32 = 64;
/// Keys one remote cluster may take; past this its identities are sent whole (port 0), so a
/// large (or hostile) remote cannot fill the map for the others.
const VIA_PROXY_PER_REMOTE: usize = 1024;

/// The via-proxy keys of every remote cluster: the TCP ports of its own identities where it
/// judges L7 rules. What a cluster says of identities not its own is ignored. Never more than
/// the map holds: what does not fit is left out (those connections take the kernel path and the
/// remote node, which judges, drops them: fail closed).
fn via_proxy(model: &Model) -> BTreeSet<ViaProxyKey> {
    let mut out = BTreeSet::new();
    for r in model.remotes.values() {
        let mut keys = BTreeSet::new();
        for (identity, spans) in &r.l7_ingress {
            if !r.owns_identity(*identity) || r.cluster.id == model.cluster.id {
                continue;
            }
            for span in spans
                .iter()
                .filter(|s| s.protocol == strait_ebpf::abi::IPPROTO_TCP && s.first <= s.last)
            {
                if u32::from(span.last - span.first) >= VIA_PROXY_SPAN_MAX || span.first == 0 {
                    keys.insert(ViaProxyKey::tcp(*identity, 0));
                } else {
                    keys.extend((span.first..=span.last).map(|p| ViaProxyKey::tcp(*identity, p)));
                }
            }
        }
        if keys.len() > VIA_PROXY_PER_REMOTE {
            keys = keys
                .iter()
                .map(|k| ViaProxyKey::tcp(k.identity, 0))
                .collect();
        }
        out.extend(keys);
    }
    let max = strait_ebpf::abi::VIA_PROXY_MAX as usize;
    if out.len() > max {
        tracing::warn!(
            keys = out.len(),
            max,
            "more L7 ports of remote clusters than strait_viaproxy holds; the rest take the kernel path"
        );
        out = out.into_iter().take(max).collect();
    }
    out
}
