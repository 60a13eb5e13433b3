//! The single writer of the model: applies updates and publishes numbered snapshots.
//!
//! Objects are shared between revisions (persistent maps of `Arc`s), so a snapshot costs nothing
//! to keep and an update costs what it changes. Each snapshot carries the keys changed in the
//! last [`LOG_LEN`] revisions, so a consumer that skipped revisions (a watch channel keeps only
//! the newest) can still compile just what changed since the revision it last saw.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use tokio::sync::watch;

use super::policy::{Policy, PolicyKind};
use super::remote::RemoteCluster;
use super::{ClusterInfo, ClusterState, Endpoint, Namespace, Node, Service, Update};

/// How many revisions of change history a snapshot carries.
pub const LOG_LEN: usize = 64;

/// `namespace/name` of a namespaced object.
pub type NamespacedName = (String, String);

/// A policy's identity: its kind and `namespace/name` (or `name` when cluster-wide).
pub type PolicyId = (PolicyKind, String);

/// Which object changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    /// The cluster's name or ID.
    Cluster,
    Node(String),
    Namespace(String),
    Endpoint(NamespacedName),
    Service(NamespacedName),
    Policy(PolicyId),
    /// Another cluster of the mesh, by name: its whole synced state.
    Remote(String),
}

/// One object, as sources hand them over one at a time.
#[derive(Debug, Clone)]
pub enum Object {
    Node(Node),
    Namespace(Namespace),
    Endpoint(Endpoint),
    Service(Service),
    Policy(Policy),
    /// Another cluster's synced state (from the mesh), replacing what was held for it.
    Remote(RemoteCluster),
}

/// The model at one revision: everything known about the cluster.
#[derive(Debug, Clone)]
pub struct Model {
    pub cluster: ClusterInfo,
    /// The revision the source gave its state (the lab's counter), for status.
    pub source_revision: u64,
    pub nodes: OrdMap<String, Arc<Node>>,
    pub namespaces: OrdMap<String, Arc<Namespace>>,
    pub endpoints: OrdMap<NamespacedName, Arc<Endpoint>>,
    pub services: OrdMap<NamespacedName, Arc<Service>>,
    pub policies: OrdMap<PolicyId, Arc<Policy>>,
    /// Other clusters of the mesh, by name (a source of their own: replacing the local
    /// cluster's state leaves them alone).
    pub remotes: OrdMap<String, Arc<RemoteCluster>>,
}

/// An immutable view of the model at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Store revision: increases by one per applied update that changed something.
    pub revision: u64,
    pub model: Arc<Model>,
    /// `(revision, keys changed by it)` for the last [`LOG_LEN`] revisions, oldest first.
    log: Vector<(u64, Arc<BTreeSet<ObjectKey>>)>,
}

/// Holds the current model and lets consumers watch for new snapshots.
#[derive(Debug)]
pub struct Store {
    tx: watch::Sender<Option<Snapshot>>,
}

// === impl Model ===

impl Model {
    /// A model with nothing in it yet.
    pub fn empty(cluster: ClusterInfo) -> Self {
        Self {
            cluster,
            source_revision: 0,
            nodes: OrdMap::new(),
            namespaces: OrdMap::new(),
            endpoints: OrdMap::new(),
            services: OrdMap::new(),
            policies: OrdMap::new(),
            remotes: OrdMap::new(),
        }
    }

    /// A model holding exactly `state`.
    pub fn from_state(state: ClusterState) -> Self {
        let mut m = Self::empty(state.cluster.clone());
        m.replace(state);
        m
    }

    /// Policies in force, in key order (kind, then `namespace/name`).
    pub fn policy_list(&self) -> Vec<Policy> {
        self.policies.values().map(|p| (**p).clone()).collect()
    }

    /// Replaces everything with `state`, keeping the objects that did not change (so their
    /// `Arc`s stay shared); returns the keys that changed.
    fn replace(&mut self, state: ClusterState) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        if self.cluster != state.cluster {
            self.cluster = state.cluster;
            changed.insert(ObjectKey::Cluster);
        }
        self.source_revision = state.revision;
        sync(
            &mut self.nodes,
            state.nodes.into_iter().map(|n| (n.name.clone(), n)),
            ObjectKey::Node,
            &mut changed,
        );
        sync(
            &mut self.namespaces,
            state.namespaces.into_iter().map(|n| (n.name.clone(), n)),
            ObjectKey::Namespace,
            &mut changed,
        );
        sync(
            &mut self.endpoints,
            state
                .endpoints
                .into_iter()
                .map(|e| ((e.namespace.clone(), e.name.clone()), e)),
            ObjectKey::Endpoint,
            &mut changed,
        );
        sync(
            &mut self.services,
            state
                .services
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), s)),
            ObjectKey::Service,
            &mut changed,
        );
        sync(
            &mut self.policies,
            state.policies.into_iter().map(|p| ((p.kind, p.key()), p)),
            ObjectKey::Policy,
            &mut changed,
        );
        changed
    }

    /// Sets one object; returns its key if it changed anything.
    fn upsert(&mut self, object: Object) -> Option<ObjectKey> {
        fn put<K: Ord + Clone, V: PartialEq>(
            map: &mut OrdMap<K, Arc<V>>,
            key: K,
            value: V,
        ) -> bool {
            if map.get(&key).is_some_and(|old| **old == value) {
                return false;
            }
            map.insert(key, Arc::new(value));
            true
        }
        let key = match &object {
            Object::Node(n) => ObjectKey::Node(n.name.clone()),
            Object::Namespace(n) => ObjectKey::Namespace(n.name.clone()),
            Object::Endpoint(e) => ObjectKey::Endpoint((e.namespace.clone(), e.name.clone())),
            Object::Service(s) => ObjectKey::Service((s.namespace.clone(), s.name.clone())),
            Object::Policy(p) => ObjectKey::Policy((p.kind, p.key())),
            Object::Remote(r) => ObjectKey::Remote(r.cluster.name.clone()),
        };
        let changed = match (object, key.clone()) {
            (Object::Node(n), ObjectKey::Node(k)) => put(&mut self.nodes, k, n),
            (Object::Namespace(n), ObjectKey::Namespace(k)) => put(&mut self.namespaces, k, n),
            (Object::Endpoint(e), ObjectKey::Endpoint(k)) => put(&mut self.endpoints, k, e),
            (Object::Service(s), ObjectKey::Service(k)) => put(&mut self.services, k, s),
            (Object::Policy(p), ObjectKey::Policy(k)) => put(&mut self.policies, k, p),
            (Object::Remote(r), ObjectKey::Remote(k)) => put(&mut self.remotes, k, r),
            _ => false,
        };
        changed.then_some(key)
    }

    /// Removes one object; returns its key if it existed.
    fn delete(&mut self, key: ObjectKey) -> Option<ObjectKey> {
        let existed = match &key {
            ObjectKey::Cluster => false,
            ObjectKey::Node(k) => self.nodes.remove(k).is_some(),
            ObjectKey::Namespace(k) => self.namespaces.remove(k).is_some(),
            ObjectKey::Endpoint(k) => self.endpoints.remove(k).is_some(),
            ObjectKey::Service(k) => self.services.remove(k).is_some(),
            ObjectKey::Policy(k) => self.policies.remove(k).is_some(),
            ObjectKey::Remote(k) => self.remotes.remove(k).is_some(),
        };
        existed.then_some(key)
    }
}

/// Makes `map` hold exactly `items`, keeping equal values' `Arc`s, noting changed keys.
fn sync<K: Ord + Clone, V: PartialEq>(
    map: &mut OrdMap<K, Arc<V>>,
    items: impl Iterator<Item = (K, V)>,
    key: impl Fn(K) -> ObjectKey,
    changed: &mut BTreeSet<ObjectKey>,
) {
    let mut next = OrdMap::new();
    for (k, v) in items {
        match map.get(&k) {
            Some(old) if **old == v => {
                next.insert(k, old.clone());
            }
            _ => {
                changed.insert(key(k.clone()));
                next.insert(k, Arc::new(v));
            }
        }
    }
    for k in map.keys() {
        if !next.contains_key(k) {
            changed.insert(key(k.clone()));
        }
    }
    *map = next;
}

// === impl Snapshot ===

impl Snapshot {
    /// The keys changed after revision `since` up to this one; `None` when this snapshot no
    /// longer remembers that far back (compile everything then).
    pub fn changes_since(&self, since: u64) -> Option<BTreeSet<ObjectKey>> {
        if since >= self.revision {
            return Some(BTreeSet::new());
        }
        let oldest = self.log.front().map_or(self.revision + 1, |(r, _)| *r);
        if since + 1 < oldest {
            return None;
        }
        let mut out = BTreeSet::new();
        for (r, keys) in self.log.iter() {
            if *r > since {
                out.extend(keys.iter().cloned());
            }
        }
        Some(out)
    }
}

// === impl Store ===

impl Store {
    /// An empty store; consumers see `None` until the first update.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx }
    }

    /// Applies an update and publishes the resulting snapshot; returns the store revision
    /// (unchanged when the update changed nothing).
    pub fn apply(&self, update: Update) -> u64 {
        let mut revision = 0;
        self.tx.send_if_modified(|cur| {
            let (mut model, mut log, rev) = match cur.take() {
                Some(s) => (Arc::unwrap_or_clone(s.model), s.log, s.revision),
                None => {
                    let cluster = match &update {
                        Update::ReplaceCluster(state) => state.cluster.clone(),
                        Update::Upsert(_) | Update::Delete(_) => ClusterInfo {
                            name: String::new(),
                            id: 0,
                        },
                    };
                    (Model::empty(cluster), Vector::new(), 0)
                }
            };
            let first = rev == 0;
            let keys: BTreeSet<ObjectKey> = match update {
                Update::ReplaceCluster(state) => {
                    let source_revision_moved = model.source_revision != state.revision;
                    let mut keys = model.replace(state);
                    if first || source_revision_moved {
                        // A new source revision is published even when nothing changed, so
                        // status shows the agent caught up.
                        keys.insert(ObjectKey::Cluster);
                    }
                    keys
                }
                Update::Upsert(object) => model.upsert(object).into_iter().collect(),
                Update::Delete(key) => model.delete(key).into_iter().collect(),
            };
            if keys.is_empty() && !first {
                revision = rev;
                *cur = Some(Snapshot {
                    revision: rev,
                    model: Arc::new(model),
                    log,
                });
                return false;
            }
            revision = rev + 1;
            log.push_back((revision, Arc::new(keys)));
            while log.len() > LOG_LEN {
                log.pop_front();
            }
            *cur = Some(Snapshot {
                revision,
                model: Arc::new(model),
                log,
            });
            true
        });
        revision
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Option<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Snapshot> {
        self.tx.borrow().clone()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::Labels;

    fn ns(name: &str) -> Namespace {
        Namespace {
            name: name.into(),
            labels: Labels::new(),
        }
    }

    fn state(rev: u64, namespaces: &[&str]) -> ClusterState {
        ClusterState {
            revision: rev,
            cluster: ClusterInfo {
                name: "c1".into(),
                id: 1,
            },
            nodes: vec![],
            namespaces: namespaces.iter().map(|n| ns(n)).collect(),
            endpoints: vec![],
            services: vec![],
            policies: vec![],
        }
    }

    #[test]
    fn replace_keeps_unchanged_objects_and_logs_changed_keys() {
        let store = Store::new();
        assert_eq!(
            store.apply(Update::ReplaceCluster(state(1, &["a", "b"]))),
            1
        );
        let first = store.current().unwrap();
        assert_eq!(
            store.apply(Update::ReplaceCluster(state(2, &["a", "c"]))),
            2
        );
        let second = store.current().unwrap();
        assert!(Arc::ptr_eq(
            &first.model.namespaces["a"],
            &second.model.namespaces["a"]
        ));
        let keys = second.changes_since(1).unwrap();
        assert_eq!(
            keys,
            [
                ObjectKey::Cluster,
                ObjectKey::Namespace("b".into()),
                ObjectKey::Namespace("c".into())
            ]
            .into()
        );
        assert_eq!(second.changes_since(2).unwrap(), BTreeSet::new());
    }

    #[test]
    fn upsert_and_delete_publish_only_real_changes() {
        let store = Store::new();
        store.apply(Update::ReplaceCluster(state(1, &["a"])));
        assert_eq!(store.apply(Update::Upsert(Object::Namespace(ns("a")))), 1);
        assert_eq!(store.apply(Update::Upsert(Object::Namespace(ns("z")))), 2);
        assert_eq!(
            store.apply(Update::Delete(ObjectKey::Namespace("nope".into()))),
            2
        );
        assert_eq!(
            store.apply(Update::Delete(ObjectKey::Namespace("a".into()))),
            3
        );
        let snap = store.current().unwrap();
        assert_eq!(
            snap.model.namespaces.keys().cloned().collect::<Vec<_>>(),
            ["z"]
        );
        assert_eq!(
            snap.changes_since(1).unwrap(),
            [
                ObjectKey::Namespace("a".into()),
                ObjectKey::Namespace("z".into())
            ]
            .into()
        );
    }

    #[test]
    fn a_consumer_too_far_behind_compiles_everything() {
        let store = Store::new();
        for i in 0..(LOG_LEN as u64 + 5) {
            store.apply(Update::Upsert(Object::Namespace(ns(&format!("n{i}")))));
        }
        let snap = store.current().unwrap();
        assert!(snap.changes_since(0).is_none());
        assert!(snap.changes_since(1).is_none());
        assert_eq!(snap.changes_since(snap.revision - 1).unwrap().len(), 1);
    }
}
