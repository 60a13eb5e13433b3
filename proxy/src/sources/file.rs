//! A cluster state file (written by the lab) as a model source.
//!
//! The file is a [`LabClusterState`]: Kubernetes objects plus what the lab decides itself; it is
//! converted with the same code as the Kubernetes source ([`super::k8s`]). The writer replaces the
//! file atomically; we poll its metadata, because inotify on a renamed-over file needs a directory
//! watch and a poll every 50 ms costs nothing at this size. A file that does not parse or convert
//! is reported and ignored: the last good state stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::lab::{LabClusterState, LabStateError, MeshSettings};
use crate::model::{ClusterInfo, ClusterState, Store, Update};

/// How often the file's metadata is checked.
const POLL: Duration = Duration::from_millis(50);

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("{file}: cannot read")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {path}: {message}")]
    Parse {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}")]
    Convert {
        file: String,
        #[source]
        source: LabStateError,
    },
    #[error("{file}: cluster: is {found:?}, this agent belongs to {expected:?}")]
    WrongCluster {
        file: String,
        found: String,
        expected: String,
    },
}

/// What the mesh side reads from the state file: the cluster and its mesh settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshView {
    pub cluster: ClusterInfo,
    /// `None` while the mesh is not enabled for the cluster.
    pub settings: Option<MeshSettings>,
}

/// Reads and checks one cluster state file.
pub fn read(path: &Path, cluster: &str) -> Result<ClusterState, FileSourceError> {
    read_with_mesh(path, cluster).map(|(state, _)| state)
}

/// Reads and checks one cluster state file, with its mesh settings.
pub fn read_with_mesh(
    path: &Path,
    cluster: &str,
) -> Result<(ClusterState, Option<MeshSettings>), FileSourceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileSourceError::Read {
        file: file.clone(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let doc: LabClusterState =
        serde_path_to_error::deserialize(&mut de).map_err(|e| FileSourceError::Parse {
            file: file.clone(),
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    if doc.cluster.name != cluster {
        return Err(FileSourceError::WrongCluster {
            file,
            found: doc.cluster.name,
            expected: cluster.to_string(),
        });
    }
    let mesh = doc.mesh.clone();
    let state =
        ClusterState::try_from(doc).map_err(|source| FileSourceError::Convert { file, source })?;
    Ok((state, mesh))
}

/// Watches `path` and applies every new good state to `store`, forever; the mesh settings of
/// each good state go to `mesh` (after the state is in the store, so mesh sources never run
/// ahead of the local cluster).
pub async fn watch(
    path: PathBuf,
    cluster: String,
    store: std::sync::Arc<Store>,
    mesh: Option<tokio::sync::watch::Sender<Option<MeshView>>>,
) {
    let mut w = Watcher::new(path, cluster);
    w.mesh = mesh;
    loop {
        w.poll(&store);
        tokio::time::sleep(POLL).await;
    }
}

/// One state file's watch: what was last seen and the last error reported.
struct Watcher {
    path: PathBuf,
    cluster: String,
    seen: Option<(SystemTime, u64)>,
    last_error: Option<String>,
    mesh: Option<tokio::sync::watch::Sender<Option<MeshView>>>,
}

impl Watcher {
    fn new(path: PathBuf, cluster: String) -> Self {
        Self {
            path,
            cluster,
            seen: None,
            last_error: None,
            mesh: None,
        }
    }

    /// Applies the file if it changed and is good; a bad one is logged once and changes nothing.
    fn poll(&mut self, store: &Store) {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_none() || stamp == self.seen {
            return;
        }
        self.seen = stamp;
        match read_with_mesh(&self.path, &self.cluster) {
            Ok((state, settings)) => {
                let rev = state.revision;
                let view = MeshView {
                    cluster: state.cluster.clone(),
                    settings,
                };
                store.apply(Update::ReplaceCluster(state));
                if let Some(tx) = &self.mesh {
                    tx.send_if_modified(|cur| {
                        let changed = cur.as_ref() != Some(&view);
                        *cur = Some(view);
                        changed
                    });
                }
                info!(revision = rev, "cluster state loaded");
                self.last_error = None;
            }
            Err(e) => {
                let msg = crate::errors::chain(&e);
                if self.last_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "ignoring cluster state; the last good one stays in force");
                    self.last_error = Some(msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn doc(cluster: &str, id: serde_json::Value, objects: serde_json::Value) -> String {
        serde_json::json!({
            "apiVersion": "strait.io/v1alpha1",
            "kind": "LabClusterState",
            "revision": 3,
            "cluster": {"name": cluster, "id": id},
            "nodes": [{"name": "node-1", "underlayIP": "198.18.0.10", "podCIDR": "10.1.0.0/24", "gateway": "10.1.0.1"}],
            "identities": [{
                "apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
                "metadata": {"name": "65792"},
                "security-labels": {
                    "k8s:app": "web",
                    "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "default",
                    "k8s:io.cilium.k8s.policy.cluster": "c1",
                    "k8s:io.kubernetes.pod.namespace": "default"
                }
            }],
            "objects": objects,
            "podRuntime": {"default/web": {"cgroupID": 77, "hostInterface": "lxc0"}}
        })
        .to_string()
    }

    fn objects(pod_ip: &str) -> serde_json::Value {
        serde_json::json!([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
             "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
             "status": {"phase": "Running", "podIP": pod_ip, "conditions": [{"type": "Ready", "status": "True"}]}}
        ])
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("strait-src-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn good_file_converts_into_the_cluster_state() {
        let dir = TempDir::new("good");
        let p = dir.0.join("c.json");
        std::fs::write(&p, doc("c1", 1.into(), objects("10.1.0.5"))).unwrap();
        let st = read(&p, "c1").unwrap();
        assert_eq!(st.revision, 3);
        assert_eq!(
            st.namespaces[0].labels["kubernetes.io/metadata.name"],
            "default"
        );
        let ep = &st.endpoints[0];
        assert_eq!(
            (ep.identity, ep.ready, ep.cgroup_id),
            (65_792, true, Some(77))
        );
        assert_eq!(ep.host_ifname.as_deref(), Some("lxc0"));
        assert_eq!(st.nodes[0].gateway, std::net::Ipv4Addr::new(10, 1, 0, 1));
    }

    #[test]
    fn bad_file_names_field_and_wrong_cluster_is_refused() {
        let dir = TempDir::new("bad");
        let p = dir.0.join("c.json");
        std::fs::write(&p, doc("c1", "x".into(), objects("10.1.0.5"))).unwrap();
        let e = read(&p, "c1").unwrap_err().to_string();
        assert!(e.contains("cluster.id"), "{e}");
        std::fs::write(&p, doc("c2", 2.into(), objects("10.1.0.5"))).unwrap();
        let e = read(&p, "c1").unwrap_err().to_string();
        assert!(e.contains("this agent belongs to \"c1\""), "{e}");
        std::fs::write(&p, doc("c1", 1.into(), objects("10.1.0.500"))).unwrap();
        let e = crate::errors::chain(&read(&p, "c1").unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}: objects[1]: Pod default/web: status.podIP: \"10.1.0.500\" is not an IPv4 address",
                p.display()
            )
        );
        // An identity of another cluster is refused, naming the entry.
        let other = doc("c1", 1.into(), objects("10.1.0.5")).replace("65792", "131328");
        std::fs::write(&p, other).unwrap();
        let e = crate::errors::chain(&read(&p, "c1").unwrap_err());
        assert!(
            e.contains("identities[0] (\"131328\"): metadata.name: belongs to cluster ID 2"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_fails_conversion_leaves_the_last_good_state() {
        let dir = TempDir::new("keep");
        let p = dir.0.join("c.json");
        let store = Store::new();
        let mut w = Watcher::new(p.clone(), "c1".into());
        w.poll(&store);
        assert!(store.current().is_none(), "no file yet");
        std::fs::write(&p, doc("c1", 1.into(), objects("10.1.0.5"))).unwrap();
        w.poll(&store);
        let good = store.current().expect("good state applied");
        assert_eq!(good.revision, 1);
        // Longer content, so the (mtime, length) stamp changes even within one clock tick.
        std::fs::write(&p, doc("c1", 1.into(), objects("10.1.0.5000"))).unwrap();
        w.poll(&store);
        let after = store.current().expect("still a state");
        assert_eq!(after.revision, 1, "the bad file was not applied");
        assert!(Arc::ptr_eq(&after.model, &good.model));
        let err = w.last_error.clone().expect("the error is kept for the log");
        assert!(
            err.contains("objects[1]: Pod default/web: status.podIP"),
            "{err}"
        );
        std::fs::write(&p, doc("c1", 1.into(), objects("10.1.0.6"))).unwrap();
        w.poll(&store);
        let fixed = store.current().expect("state");
        assert_eq!(fixed.revision, 2);
        assert_eq!(
            fixed.model.endpoints.values().next().unwrap().ip,
            std::net::Ipv4Addr::new(10, 1, 0, 6)
        );
        assert!(w.last_error.is_none());
    }
}
