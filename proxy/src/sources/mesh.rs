//! Remote clusters of the mesh as a model source: one [`MeshClient`] per peer named in the
//! cluster state file's `mesh` section, whose served state becomes
//! `Upsert(Object::Remote(..))`, and whose withdrawal (TTL, disconnect) becomes
//! `Delete(ObjectKey::Remote(..))`.
//!
//! Peers added or changed in the file start a client; peers removed stop theirs and their state
//! leaves the model at once. With a state directory, each peer's served state is kept on disk
//! (`mesh::persist`): a restarted agent serves a peer's last state, if it was healthy less than
//! the TTL ago, until the new sync completes, so its kernel maps never lose the peer's backends
//! to the restart; the TTL runs from the last healthy instant, not from the restart. Without
//! one, a restarted agent serves nothing until a sync completes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::file::MeshView;
use super::lab::MeshPeer;
use crate::mesh::{
    ClusterId, MeshClient, MeshState, MeshTls, MeshTrust, Persistence, RemoteConfig, StateDir,
};
use crate::mesh::{RemoteCluster as RemoteChannel, RemoteStatus};
use crate::model::remote::RemoteCluster;
use crate::model::{ClusterInfo, ClusterState, Object, ObjectKey, Store, Update};
use crate::pki::{ClusterCa, Credentials};

/// This cluster's mesh client certificate and key: a mesh certificate
/// (`spiffe://<cluster>/mesh`) issued by the cluster's CA, as the mesh endpoints require, and
/// renewed in place (every client built from it presents the renewal at its next handshake).
#[derive(Clone, Debug)]
pub struct MeshIdentity {
    pub cluster: String,
    pub creds: Credentials,
}

impl MeshIdentity {
    /// A fresh key and a mesh certificate for `cluster` from `ca`, valid `validity`.
    pub fn issue(ca: &ClusterCa, cluster: &str, validity: Duration) -> Result<Self, IdentityError> {
        let (cert_pem, key_pem) = issue_mesh(ca, cluster, validity)?;
        Ok(Self {
            cluster: cluster.to_string(),
            creds: Credentials::from_pem(
                &format!("mesh of cluster {cluster}"),
                &cert_pem,
                &key_pem,
            )?,
        })
    }

    /// Renews the certificate (a new key too) at two thirds of `validity`, forever.
    pub async fn renew(self, ca: ClusterCa, validity: Duration) {
        let cluster = self.cluster.clone();
        crate::pki::credentials::renew(self.creds, validity, move || {
            issue_mesh(&ca, &cluster, validity)
        })
        .await;
    }
}

/// A new key and mesh certificate (PEM) for `cluster`.
fn issue_mesh(
    ca: &ClusterCa,
    cluster: &str,
    validity: Duration,
) -> Result<(String, String), crate::pki::PkiError> {
    let key = crate::pki::generate_key()?;
    let cert_pem = ca.issue_mesh(cluster, &key, validity)?;
    Ok((cert_pem, key.serialize_pem()))
}

/// Why the agent's mesh identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("issue the mesh certificate")]
    Pki(#[from] crate::pki::PkiError),
    #[error("the mesh certificate")]
    Credentials(#[from] crate::pki::CredentialsError),
}

/// One remote cluster as the agent's `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub id: u8,
    pub endpoint: SocketAddr,
    #[serde(flatten)]
    pub status: RemoteStatus,
}

struct Peer {
    spec: MeshPeer,
    /// `None` when the client could not start (bad CA); `error` says why.
    client: Option<MeshClient>,
    error: Option<String>,
    forward: Option<JoinHandle<()>>,
}

/// The running syncs of one agent, by remote cluster name.
pub struct MeshSource {
    peers: Mutex<BTreeMap<String, Peer>>,
    /// Where each peer's served state is kept across restarts (none: not kept).
    state_dir: Option<StateDir>,
    /// True once the first mesh settings were applied (persisted states restored into the store).
    settled: watch::Sender<bool>,
}

impl Default for MeshSource {
    fn default() -> Self {
        Self {
            peers: Mutex::default(),
            state_dir: None,
            settled: watch::Sender::new(false),
        }
    }
}

impl std::fmt::Debug for MeshSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSource")
            .field("peers", &self.peers.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

// === impl MeshSource ===

impl MeshSource {
    /// A source with no peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps each peer's served state in `dir` and restores it at start.
    pub fn with_state_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.state_dir = dir.map(StateDir::new);
        self
    }

    /// Resolves once the first mesh settings are applied: from then on the store holds every
    /// persisted state young enough to serve, so a first compile after it loses no remote.
    pub async fn settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Status of every configured remote cluster, by name.
    pub fn statuses(&self) -> Vec<PeerStatus> {
        self.peers
            .lock()
            .values()
            .map(|p| {
                let status = match &p.client {
                    Some(c) => c.status(),
                    None => {
                        let mut s = RemoteChannel::new(&p.spec.name, Duration::ZERO).status();
                        s.last_error = p.error.clone();
                        s
                    }
                };
                PeerStatus {
                    id: p.spec.id,
                    endpoint: p.spec.endpoint,
                    status,
                }
            })
            .collect()
    }

    /// Follows the state file's mesh settings forever, starting and stopping clients.
    pub async fn run(
        self: Arc<Self>,
        mut views: watch::Receiver<Option<MeshView>>,
        store: Arc<Store>,
        identity: MeshIdentity,
        settings: RemoteConfig,
    ) {
        loop {
            let view = views.borrow_and_update().clone();
            if let Some(view) = view {
                self.reconcile(&view, &store, &identity, &settings).await;
                self.settled.send_replace(true);
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    /// Makes the running clients match `view`'s peers.
    async fn reconcile(
        &self,
        view: &MeshView,
        store: &Arc<Store>,
        identity: &MeshIdentity,
        settings: &RemoteConfig,
    ) {
        let wanted: BTreeMap<String, MeshPeer> = view
            .settings
            .iter()
            .flat_map(|s| s.peers.iter())
            .filter(|p| p.sync)
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let gone: Vec<Peer> = {
            let mut peers = self.peers.lock();
            let stale: Vec<String> = peers
                .iter()
                .filter(|(name, p)| wanted.get(*name) != Some(&p.spec))
                .map(|(name, _)| name.clone())
                .collect();
            stale.iter().filter_map(|n| peers.remove(n)).collect()
        };
        for mut p in gone {
            // The forwarder must be finished before the withdrawal, or its last upsert could
            // land after it.
            if let Some(f) = p.forward.take() {
                f.abort();
                let _ = f.await;
            }
            drop(p.client.take());
            // Changed (endpoint, ID, CA) or gone: the sync restarts from nothing, so does the
            // file (only a restart of the agent serves a persisted state).
            if let Some(dir) = &self.state_dir
                && let Err(e) = dir.remove(&p.spec.name)
            {
                warn!(remote = %p.spec.name, error = %crate::errors::chain(&e),
                    "cannot delete the persisted state of a mesh peer");
            }
            store.apply(Update::Delete(ObjectKey::Remote(p.spec.name.clone())));
            info!(remote = %p.spec.name, "mesh peer removed; its state is withdrawn");
        }
        // Files of peers removed (here, or while the agent was down) go: a later connect must
        // not bring their old state back.
        if let Some(dir) = &self.state_dir {
            match dir.retain(|name| wanted.contains_key(name)) {
                Ok(removed) if !removed.is_empty() => {
                    info!(?removed, "persisted state of removed mesh peers deleted");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %crate::errors::chain(&e),
                    "cannot delete the persisted state of removed mesh peers"),
            }
        }
        let mut peers = self.peers.lock();
        for (name, spec) in wanted {
            if peers.contains_key(&name) {
                continue;
            }
            let persistence = self
                .state_dir
                .as_ref()
                .map(|dir| restore(dir, &spec, settings));
            let peer = start(&view.cluster, &spec, store, identity, settings, persistence);
            peers.insert(name, peer);
        }
    }
}

/// The state a previous run persisted for `spec`, if it is young enough to serve; a file that
/// is not is deleted, with a warning naming it and why.
fn restore(dir: &StateDir, spec: &MeshPeer, settings: &RemoteConfig) -> Persistence {
    let cluster = ClusterId {
        name: spec.name.clone(),
        id: spec.id,
    };
    let restored = match dir.load(&cluster, settings.ttl, std::time::SystemTime::now()) {
        Ok(r) => r,
        Err(e) => {
            warn!(remote = %spec.name, error = %crate::errors::chain(&e),
                "ignoring the persisted state of a mesh peer");
            if let Err(e) = dir.remove(&spec.name) {
                warn!(remote = %spec.name, error = %crate::errors::chain(&e),
                    "cannot delete the persisted state of a mesh peer");
            }
            None
        }
    };
    if let Some(r) = &restored {
        info!(remote = %spec.name, age = ?r.age, revision = r.state.revision,
            "serving the persisted state of a mesh peer until its sync completes");
    }
    Persistence {
        dir: dir.clone(),
        restored,
    }
}

/// Starts syncing one peer; a peer that cannot start is kept with its error for status.
fn start(
    local: &ClusterInfo,
    spec: &MeshPeer,
    store: &Arc<Store>,
    identity: &MeshIdentity,
    settings: &RemoteConfig,
    persistence: Option<Persistence>,
) -> Peer {
    let failed = |error: String| {
        warn!(remote = %spec.name, %error, "cannot sync mesh peer");
        Peer {
            spec: spec.clone(),
            client: None,
            error: Some(error),
            forward: None,
        }
    };
    let local_id = ClusterId {
        name: local.name.clone(),
        id: local.id,
    };
    let trust = [MeshTrust {
        cluster: spec.name.clone(),
        ca_pem: spec.ca_pem.clone(),
    }];
    let tls = match MeshTls::with_credentials(&identity.cluster, identity.creds.clone(), &trust) {
        Ok(t) => Arc::new(t),
        Err(e) => return failed(crate::errors::chain(&e)),
    };
    let client = match MeshClient::spawn_persisted(
        tls,
        local_id,
        &spec.name,
        spec.endpoint,
        settings.clone(),
        persistence,
    ) {
        Ok(c) => c,
        Err(e) => return failed(crate::errors::chain(&e)),
    };
    info!(remote = %spec.name, endpoint = %spec.endpoint, "syncing mesh peer");
    // A restored state enters the store now, before the source reports itself settled.
    let mut rx = client.state();
    if let Some(state) = rx.borrow_and_update().clone() {
        store.apply(Update::Upsert(Object::Remote(remote_cluster(&state))));
    }
    let expected = ClusterId {
        name: spec.name.clone(),
        id: spec.id,
    };
    let forward = tokio::spawn(forward(rx, expected, store.clone()));
    Peer {
        spec: spec.clone(),
        client: Some(client),
        error: None,
        forward: Some(forward),
    }
}

/// Hands every new served state of one remote to the store; `None` (withdrawn) deletes it.
/// A state whose cluster name or ID is not the one connected (`expected`, as `connect`
/// recorded it) is refused: the model would otherwise believe it about another cluster's
/// identities (they carry the cluster ID).
async fn forward(
    mut rx: watch::Receiver<Option<Arc<MeshState>>>,
    expected: ClusterId,
    store: Arc<Store>,
) {
    while rx.changed().await.is_ok() {
        let served = rx.borrow_and_update().clone();
        match served {
            Some(state) if state.cluster == expected => {
                store.apply(Update::Upsert(Object::Remote(remote_cluster(&state))))
            }
            Some(state) => {
                warn!(remote = %expected.name, id = expected.id, claimed = %state.cluster.name,
                    claimed_id = state.cluster.id,
                    "remote cluster publishes another cluster name or ID; its state is refused");
                store.apply(Update::Delete(ObjectKey::Remote(expected.name.clone())))
            }
            None => store.apply(Update::Delete(ObjectKey::Remote(expected.name.clone()))),
        };
    }
}

/// What an agent's mesh source applies once synced with `peer`, computed without a channel:
/// the peer's state as its mesh endpoint publishes it ([`MeshState::from_snapshot`] of the
/// peer's model), turned into the model's remote cluster as [`forward`] does. For tools that
/// judge a connected mesh offline (`strait policy trace` across clusters).
pub fn synced_update(peer: &ClusterState) -> Update {
    let store = Store::new();
    store.apply(Update::ReplaceCluster(peer.clone()));
    let state = match store.current() {
        Some(snap) => MeshState::from_snapshot(&snap),
        None => MeshState::empty(ClusterId {
            name: peer.cluster.name.clone(),
            id: peer.cluster.id,
        }),
    };
    Update::Upsert(Object::Remote(remote_cluster(&state)))
}

/// A synced mesh state as the model holds it (the maps are shared, not copied).
pub fn remote_cluster(state: &MeshState) -> RemoteCluster {
    RemoteCluster {
        cluster: ClusterInfo {
            name: state.cluster.name.clone(),
            id: state.cluster.id,
        },
        nodes: state.nodes.clone(),
        identities: state.identities.clone(),
        ipcache: state.ipcache.clone(),
        services: state.services.clone(),
        l7_ingress: state.l7_ingress.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::state::IpEntry;
    use crate::sources::lab::MeshSettings;

    fn view(peers: Vec<MeshPeer>) -> MeshView {
        MeshView {
            cluster: ClusterInfo {
                name: "c1".into(),
                id: 1,
            },
            settings: Some(MeshSettings {
                endpoint: None,
                peers,
            }),
        }
    }

    fn peer(ca_pem: &str) -> MeshPeer {
        MeshPeer {
            name: "c2".into(),
            id: 2,
            // Nothing listens there: the client keeps retrying.
            endpoint: "127.0.0.1:9".parse().unwrap(),
            ca_pem: ca_pem.into(),
            sync: true,
        }
    }

    #[tokio::test]
    async fn peers_start_and_stop_with_the_file_and_a_removed_peer_is_withdrawn() {
        let c1 = ClusterCa::create("c1").unwrap();
        let c2 = ClusterCa::create("c2").unwrap();
        let id = MeshIdentity::issue(&c1, "c1", Duration::from_secs(600)).unwrap();
        let store = Arc::new(Store::new());
        let src = MeshSource::new();
        let settings = RemoteConfig::default();
        src.reconcile(&view(vec![peer(&c2.cert_pem)]), &store, &id, &settings)
            .await;
        let st = src.statuses();
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].status.cluster.as_str(), st[0].id), ("c2", 2));
        assert!(!st[0].status.ready);
        // A state synced earlier is in the model; removing the peer withdraws it at once.
        let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
        s.ipcache.insert(
            [10, 2, 0, 1].into(),
            IpEntry {
                identity: 0x2_0100,
                node: "n".into(),
                namespace: "demo".into(),
                pod: "p".into(),
            },
        );
        store.apply(Update::Upsert(Object::Remote(remote_cluster(&s))));
        assert_eq!(
            store.current().unwrap().model.remotes["c2"].ipcache.len(),
            1
        );
        // Trusted by the endpoint but not synced (half a disconnect): the agent lets it go.
        let mut unsynced = peer(&c2.cert_pem);
        unsynced.sync = false;
        src.reconcile(&view(vec![unsynced]), &store, &id, &settings)
            .await;
        assert!(src.statuses().is_empty());
        assert!(store.current().unwrap().model.remotes.is_empty());
        // A CA that does not parse: the peer is listed with the reason, not dropped silently.
        src.reconcile(&view(vec![peer("not a pem")]), &store, &id, &settings)
            .await;
        let st = src.statuses();
        assert!(
            st[0]
                .status
                .last_error
                .as_deref()
                .unwrap()
                .contains("CA of cluster c2"),
            "{:?}",
            st[0].status.last_error
        );
    }

    #[tokio::test]
    async fn a_persisted_state_is_served_at_start_and_a_stale_one_is_dropped() {
        let c1 = ClusterCa::create("c1").unwrap();
        let c2 = ClusterCa::create("c2").unwrap();
        let id = MeshIdentity::issue(&c1, "c1", Duration::from_secs(600)).unwrap();
        let dir = std::env::temp_dir().join(format!("strait-mesh-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
        s.ipcache.insert(
            [10, 2, 0, 1].into(),
            IpEntry {
                identity: 0x2_0100,
                node: "n".into(),
                namespace: "demo".into(),
                pod: "p".into(),
            },
        );
        let files = StateDir::new(&dir);
        let settings = RemoteConfig::default();
        // Healthy 5 s before the restart: served at once, before any sync.
        files
            .save(&s, std::time::SystemTime::now() - Duration::from_secs(5))
            .unwrap();
        let store = Arc::new(Store::new());
        let src = MeshSource::new().with_state_dir(Some(dir.clone()));
        src.reconcile(&view(vec![peer(&c2.cert_pem)]), &store, &id, &settings)
            .await;
        let model = store.current().unwrap().model;
        assert_eq!(model.remotes["c2"].ipcache.len(), 1);
        let st = &src.statuses()[0].status;
        assert!(st.serving && st.restored && !st.ready, "{st:?}");
        // A peer that changes (here its CA) restarts from nothing: no file brings it back.
        let other = ClusterCa::create("c2").unwrap();
        src.reconcile(&view(vec![peer(&other.cert_pem)]), &store, &id, &settings)
            .await;
        assert!(store.current().unwrap().model.remotes.is_empty());
        assert!(!src.statuses()[0].status.serving);
        files
            .save(&s, std::time::SystemTime::now() - Duration::from_secs(5))
            .unwrap();
        // Removing the peer withdraws the state and deletes its file.
        src.reconcile(&view(vec![]), &store, &id, &settings).await;
        assert!(store.current().unwrap().model.remotes.is_empty());
        assert!(!dir.join("c2.json").exists());

        // Healthy longer than the TTL ago: ignored, deleted, nothing served.
        files
            .save(&s, std::time::SystemTime::now() - settings.ttl)
            .unwrap();
        let store = Arc::new(Store::new());
        let src = MeshSource::new().with_state_dir(Some(dir.clone()));
        src.reconcile(&view(vec![peer(&c2.cert_pem)]), &store, &id, &settings)
            .await;
        assert!(store.current().is_none());
        assert!(!src.statuses()[0].status.serving);
        assert!(!dir.join("c2.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_state_under_another_cluster_id_is_refused() {
        let store = Arc::new(Store::new());
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(forward(rx, ClusterId::new("c2", 2).unwrap(), store.clone()));
        let held = |store: &Store| {
            store
                .current()
                .is_some_and(|s| s.model.remotes.contains_key("c2"))
        };
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        // c2 claiming ID 3 (another connected cluster's, whose identities it would then own).
        tx.send_replace(Some(Arc::new(MeshState::empty(
            ClusterId::new("c2", 3).unwrap(),
        ))));
        settle().await;
        assert!(!held(&store));
        tx.send_replace(Some(Arc::new(MeshState::empty(
            ClusterId::new("c2", 2).unwrap(),
        ))));
        settle().await;
        assert!(held(&store));
        // Switching to a wrong ID later withdraws what it had.
        tx.send_replace(Some(Arc::new(MeshState::empty(
            ClusterId::new("c2", 1).unwrap(),
        ))));
        settle().await;
        assert!(!held(&store));
        task.abort();
    }
}
