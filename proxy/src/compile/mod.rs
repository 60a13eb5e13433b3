//! Model snapshot → everything one node needs: the kernel image, the pod interfaces for tc,
//! the proxy tables and the DNS table. The one compile path: the agent, `strait policy`, tests
//! and benches all go through [`Compiler::compile`].
//!
//! Pure (no I/O) and deterministic. The compiler keeps what it built for the last snapshot, so
//! the next one costs what changed: the store says which objects changed since that revision;
//! identities, the policy engine, kernel entries, proxy tables and DNS names are updated for
//! those only. When the store no longer remembers that far back (or the cluster itself
//! changed), everything is compiled again.

mod image;
mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::OrdMap;
use strait_ebpf::PodAddress;

pub use image::KernelImage;
pub use tables::service_frontends;

use crate::dns::DnsTable;
use crate::model::{
    ClusterState, Endpoint, Model, NamespacedName, ObjectKey, Service, Snapshot, Store, Update,
};
use crate::policy::engine::SelectorCache;
use crate::policy::kernel::{KernelChanges, KernelCompiler};
use crate::policy::{Engine, Policy, Universe};
use crate::proxy::tables::{EndpointInfo, ProxyTables};

/// A snapshot that cannot be compiled; the previous compiled state stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("endpoints {first} and {second} both have address {ip}")]
    DuplicateAddress {
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("endpoint {endpoint}: node {node:?} is not a node of the cluster")]
    UnknownNode { endpoint: String, node: String },
    #[error("services {first} and {second} both have cluster IP {ip}")]
    DuplicateClusterIp {
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("the store holds no snapshot yet")]
    Empty,
}

/// What one compile did, for status, logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileStats {
    /// Whether everything was compiled (not only what changed).
    pub full: bool,
    /// Objects changed since the previous compile (0 for a full compile).
    pub changed_objects: usize,
    /// Identities whose information changed.
    pub changed_identities: usize,
    pub policies: usize,
    pub selected_identities: usize,
    /// Kernel policy entries of this node.
    pub kernel_rules: usize,
    /// Identity pairs whose kernel entries changed.
    pub changed_pairs: usize,
    /// Whether all kernel entries were recompiled (a change touching many subjects).
    pub kernel_full: bool,
    pub compile_us: u64,
}

/// Everything a node installs for one model revision.
#[derive(Debug, Clone)]
pub struct CompiledState {
    /// The store revision compiled.
    pub revision: u64,
    /// The source's own revision (the lab's state counter), reported by status.
    pub source_revision: u64,
    pub kernel: KernelImage,
    /// Host-side interfaces of this node's pods, where the tc programs go, with the pod behind
    /// each: the only source address tc lets out of it, and its identity.
    pub interfaces: OrdMap<String, PodAddress>,
    pub proxy: Arc<ProxyTables>,
    pub dns: Arc<DnsTable>,
    pub stats: CompileStats,
}

/// Compiles snapshots for one node, keeping caches between them.
#[derive(Debug)]
pub struct Compiler {
    node: String,
    /// `Universe::default_local_cluster` for every universe this compiler builds.
    default_local_cluster: bool,
    selectors: SelectorCache,
    kernel: KernelCompiler,
    last: Option<Last>,
}

/// What the last compile was made from and produced.
#[derive(Debug)]
struct Last {
    revision: u64,
    model: Arc<Model>,
    universe: Arc<Universe>,
    engine: Arc<Engine>,
    state: CompiledState,
}

impl Compiler {
    /// A compiler for node `node` with empty caches.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            default_local_cluster: true,
            selectors: SelectorCache::default(),
            kernel: KernelCompiler::default(),
            last: None,
        }
    }

    /// The same compiler, making endpoint selectors without a cluster label select only the
    /// local cluster (`true`, the default, as Cilium's `policy-default-local-cluster`) or
    /// every cluster of the mesh.
    #[must_use]
    pub fn policy_default_local_cluster(mut self, on: bool) -> Self {
        self.default_local_cluster = on;
        self
    }

    /// Compiles `snap` for this compiler's node. An error leaves the caches as they were, so
    /// the next snapshot is compiled against the last good one.
    pub fn compile(&mut self, snap: &Snapshot) -> Result<CompiledState, CompileError> {
        let started = Instant::now();
        let model = &snap.model;
        let changes = self
            .last
            .as_ref()
            .filter(|l| l.model.cluster == model.cluster)
            .and_then(|l| snap.changes_since(l.revision));
        let owners = self.last.as_ref().map(|l| &l.state.proxy.endpoints);
        validate(model, changes.as_ref(), owners)?;
        let mut state = match (changes, self.last.take()) {
            (Some(keys), Some(last)) => self.incremental(snap, last, &keys),
            (_, _) => self.full(snap),
        };
        state.stats.compile_us = micros(started.elapsed());
        Ok(state)
    }

    /// The engine of the last compiled snapshot (for `policy trace`).
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.last.as_ref().map(|l| &l.engine)
    }

    fn full(&mut self, snap: &Snapshot) -> CompiledState {
        let model = &snap.model;
        let mut universe = Universe::from_model(model);
        universe.default_local_cluster = self.default_local_cluster;
        let universe = Arc::new(universe);
        let policies = policy_list(model);
        let engine = Arc::new(Engine::build_cached(
            &policies,
            universe.clone(),
            &mut self.selectors,
        ));
        let changes = self.kernel.full(&engine);
        let kernel = KernelImage::build(model, &self.node, &universe, &self.kernel);
        let proxy = Arc::new(tables::build(
            model,
            &self.node,
            snap.revision,
            engine.clone(),
        ));
        let dns = Arc::new(DnsTable::from_model(model));
        let interfaces = interfaces(model, &self.node);
        let stats = CompileStats {
            full: true,
            changed_identities: universe.len(),
            ..stats(&policies, &engine, &kernel, &changes)
        };
        self.finish(
            snap, universe, engine, kernel, interfaces, proxy, dns, stats,
        )
    }

    fn incremental(
        &mut self,
        snap: &Snapshot,
        last: Last,
        keys: &BTreeSet<ObjectKey>,
    ) -> CompiledState {
        let model = &snap.model;
        let (universe, changed_ids) = last.universe.updated(&last.model, model, keys);
        let universe = Arc::new(universe);
        let policies_changed = keys.iter().any(|k| matches!(k, ObjectKey::Policy(_)));
        let policies = policy_list(model);
        let engine = if policies_changed || !changed_ids.is_empty() {
            Arc::new(Engine::build_cached(
                &policies,
                universe.clone(),
                &mut self.selectors,
            ))
        } else {
            last.engine.clone()
        };
        // Kernel entries see an identity through its named ports and through the selectors it
        // matches; a pod joining an identity changes neither.
        let kernel_ids: BTreeSet<u32> = changed_ids
            .iter()
            .copied()
            .filter(|id| match (last.universe.get(*id), universe.get(*id)) {
                (Some(a), Some(b)) => {
                    a.ports != b.ports
                        || a.labels != b.labels
                        || a.kind != b.kind
                        || self.selectors.flipped().contains(id)
                }
                _ => true,
            })
            .collect();
        let changes = self.kernel.update(&engine, &last.engine, &kernel_ids);
        let ctx = Delta {
            prev: &last.model,
            model,
            keys,
            node: &self.node,
        };
        let kernel = last
            .state
            .kernel
            .updated(&ctx, &universe, &self.kernel, &changes);
        let proxy = Arc::new(tables::update(
            &last.state.proxy,
            &ctx,
            snap.revision,
            engine.clone(),
        ));
        let dns = Arc::new(last.state.dns.updated(&last.model, model, keys));
        let mut interfaces = last.state.interfaces.clone();
        for k in ctx.endpoints() {
            let local_if = |m: &Model| {
                m.endpoints
                    .get(k)
                    .filter(|e| e.node == self.node)
                    .and_then(|e| pod_interface(e))
            };
            if let Some((old, _)) = local_if(&last.model) {
                interfaces.remove(&old);
            }
            if let Some((new, pod)) = local_if(model) {
                interfaces.insert(new, pod);
            }
        }
        let stats = CompileStats {
            full: false,
            changed_objects: keys.len(),
            changed_identities: changed_ids.len(),
            ..stats(&policies, &engine, &kernel, &changes)
        };
        self.finish(
            snap, universe, engine, kernel, interfaces, proxy, dns, stats,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        snap: &Snapshot,
        universe: Arc<Universe>,
        engine: Arc<Engine>,
        kernel: KernelImage,
        interfaces: OrdMap<String, PodAddress>,
        proxy: Arc<ProxyTables>,
        dns: Arc<DnsTable>,
        stats: CompileStats,
    ) -> CompiledState {
        let state = CompiledState {
            revision: snap.revision,
            source_revision: snap.model.source_revision,
            kernel,
            interfaces,
            proxy,
            dns,
            stats,
        };
        self.last = Some(Last {
            revision: snap.revision,
            model: snap.model.clone(),
            universe,
            engine,
            state: state.clone(),
        });
        state
    }
}

/// Compiles a whole cluster state for `node` once, through the same store and compiler the
/// agent uses (for the CLI and tests, which start from a state file).
pub fn compile_state(state: ClusterState, node: &str) -> Result<CompiledState, CompileError> {
    let store = Store::new();
    store.apply(Update::ReplaceCluster(state));
    let snap = store.current().ok_or(CompileError::Empty)?;
    Compiler::new(node).compile(&snap)
}

/// What changed between two models, for the parts that update themselves.
pub(crate) struct Delta<'a> {
    pub prev: &'a Model,
    pub model: &'a Model,
    pub keys: &'a BTreeSet<ObjectKey>,
    pub node: &'a str,
}

impl Delta<'_> {
    /// Keys of the endpoints that changed.
    pub fn endpoints(&self) -> impl Iterator<Item = &NamespacedName> {
        self.keys.iter().filter_map(|k| match k {
            ObjectKey::Endpoint(k) => Some(k),
            _ => None,
        })
    }

    /// Remote clusters of the mesh whose state changed (or that came or went).
    pub fn remotes(&self) -> impl Iterator<Item = &String> {
        self.keys.iter().filter_map(|k| match k {
            ObjectKey::Remote(name) => Some(name),
            _ => None,
        })
    }

    /// Whether any key of this kind changed.
    pub fn any(&self, f: impl Fn(&ObjectKey) -> bool) -> bool {
        self.keys.iter().any(f)
    }

    /// Frontends of the services that changed, as they were: to be removed before the
    /// services are set again (another service may take one of them over in the same batch).
    pub fn old_frontends(&self) -> Vec<strait_ebpf::ServiceFrontend> {
        self.keys
            .iter()
            .filter_map(|k| match k {
                ObjectKey::Service(k) => self.prev.services.get(k),
                _ => None,
            })
            .flat_map(|svc| service_frontends(self.prev, svc))
            .map(|(frontend, _)| frontend)
            .collect()
    }

    /// Services to set again: those that changed, and those whose selection a changed endpoint
    /// enters or leaves.
    pub fn services_to_refresh(&self) -> BTreeSet<NamespacedName> {
        let mut out = BTreeSet::new();
        // Another cluster's endpoints changed: every global service may merge them.
        if self.remotes().next().is_some() {
            out.extend(
                self.model
                    .services
                    .iter()
                    .filter(|(_, svc)| tables::is_global(svc))
                    .map(|(k, _)| k.clone()),
            );
        }
        for key in self.keys {
            match key {
                ObjectKey::Service(k) => {
                    out.insert(k.clone());
                }
                ObjectKey::Endpoint(k) => {
                    let old = self.prev.endpoints.get(k);
                    let new = self.model.endpoints.get(k);
                    let lo = (k.0.clone(), String::new());
                    out.extend(
                        self.model
                            .services
                            .range(lo..)
                            .take_while(|(sk, _)| sk.0 == k.0)
                            .filter(|(_, svc)| {
                                old.is_some_and(|e| svc.selects(e))
                                    || new.is_some_and(|e| svc.selects(e))
                            })
                            .map(|(sk, _)| sk.clone()),
                    );
                }
                _ => {}
            }
        }
        out
    }
}

/// This cluster's policies resolved against its own pods only: what the mesh endpoint derives
/// the ports it judges at L7 for other clusters from.
pub fn local_engine(model: &Model) -> Engine {
    let universe = Arc::new(Universe::from_model(model));
    Engine::build_cached(
        &policy_list(model),
        universe,
        &mut crate::policy::engine::SelectorCache::default(),
    )
}

fn policy_list(model: &Model) -> Vec<Arc<Policy>> {
    model.policies.values().cloned().collect()
}

fn stats(
    policies: &[Arc<Policy>],
    engine: &Engine,
    kernel: &KernelImage,
    changes: &KernelChanges,
) -> CompileStats {
    CompileStats {
        policies: policies.len(),
        selected_identities: engine.subject_count(),
        kernel_rules: kernel.rule_count(),
        changed_pairs: changes.pairs.len(),
        kernel_full: changes.full,
        ..CompileStats::default()
    }
}

fn interfaces(model: &Model, node: &str) -> OrdMap<String, PodAddress> {
    model
        .endpoints
        .values()
        .filter(|e| e.node == node)
        .filter_map(|e| pod_interface(e))
        .collect()
}

/// A local endpoint's host-side interface, with the pod tc expects behind it.
fn pod_interface(e: &Endpoint) -> Option<(String, PodAddress)> {
    let pod = PodAddress {
        ip: e.ip,
        identity: e.identity,
    };
    e.host_ifname.clone().map(|ifname| (ifname, pod))
}

/// Refuses models the data path cannot represent: two endpoints sharing an address, an
/// endpoint on a node the cluster does not have. With `changes`, only changed endpoints are
/// checked (the rest were checked when they changed), against `owners`: who had each address
/// in the last compiled tables.
fn validate(
    model: &Model,
    changes: Option<&BTreeSet<ObjectKey>>,
    owners: Option<&imbl::HashMap<Ipv4Addr, Arc<EndpointInfo>>>,
) -> Result<(), CompileError> {
    let name = |k: &NamespacedName| format!("{}/{}", k.0, k.1);
    let check_node = |k: &NamespacedName, node: &str| {
        if model.nodes.is_empty() || model.nodes.contains_key(node) {
            Ok(())
        } else {
            Err(CompileError::UnknownNode {
                endpoint: name(k),
                node: node.to_string(),
            })
        }
    };
    let mut seen: BTreeMap<Ipv4Addr, &NamespacedName> = BTreeMap::new();
    let duplicate =
        |ip, first: &NamespacedName, second: &NamespacedName| CompileError::DuplicateAddress {
            ip,
            first: name(first),
            second: name(second),
        };
    // A node that went away may still have pods: check them all then (rare).
    let nodes_changed =
        changes.is_some_and(|keys| keys.iter().any(|k| matches!(k, ObjectKey::Node(_))));
    match (changes, owners) {
        (Some(keys), Some(owners)) if !nodes_changed => {
            for key in keys {
                let ObjectKey::Endpoint(k) = key else {
                    continue;
                };
                let Some(e) = model.endpoints.get(k) else {
                    continue;
                };
                check_node(k, &e.node)?;
                if let Some(first) = seen.insert(e.ip, k) {
                    return Err(duplicate(e.ip, first, k));
                }
                // The address's owner as last compiled, if it still has it and is another pod.
                if let Some(owner) = owners.get(&e.ip) {
                    let other = (owner.namespace.clone(), owner.name.clone());
                    if &other != k && model.endpoints.get(&other).is_some_and(|o| o.ip == e.ip) {
                        return Err(duplicate(e.ip, &other, k));
                    }
                }
            }
        }
        _ => {
            for (k, e) in &model.endpoints {
                check_node(k, &e.node)?;
                if let Some(first) = seen.insert(e.ip, k) {
                    return Err(duplicate(e.ip, first, k));
                }
            }
        }
    }
    validate_services(model, changes)
}

/// Two services may not share a cluster IP (headless ones have none). With `changes`, only
/// changed services are checked against the rest.
fn validate_services(
    model: &Model,
    changes: Option<&BTreeSet<ObjectKey>>,
) -> Result<(), CompileError> {
    let name = |k: &NamespacedName| format!("{}/{}", k.0, k.1);
    let clash = |k: &NamespacedName, svc: &Service| {
        model
            .services
            .iter()
            .find(|(ok, o)| *ok != k && o.cluster_ip == svc.cluster_ip)
            .map(|(ok, _)| CompileError::DuplicateClusterIp {
                ip: svc.cluster_ip,
                first: name(ok),
                second: name(k),
            })
    };
    let check = |k: &NamespacedName| match model.services.get(k) {
        Some(svc) if !svc.cluster_ip.is_unspecified() => clash(k, svc).map_or(Ok(()), Err),
        _ => Ok(()),
    };
    match changes {
        Some(keys) => keys.iter().try_for_each(|key| match key {
            ObjectKey::Service(k) => check(k),
            _ => Ok(()),
        }),
        None => {
            let mut seen: BTreeMap<Ipv4Addr, &NamespacedName> = BTreeMap::new();
            for (k, svc) in model.services.iter() {
                if svc.cluster_ip.is_unspecified() {
                    continue;
                }
                if let Some(first) = seen.insert(svc.cluster_ip, k) {
                    return Err(CompileError::DuplicateClusterIp {
                        ip: svc.cluster_ip,
                        first: name(first),
                        second: name(k),
                    });
                }
            }
            Ok(())
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod remote_tests;
