//! A cluster state file (written by the lab) as a model source.
//!
//! The writer replaces the file atomically; we poll its metadata, because inotify on a renamed-over
//! file needs a directory watch and a poll every 50 ms costs nothing at this size. A file that does
//! not parse is reported and ignored: the last good state stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::model::{ClusterState, Store, Update};

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
    #[error("{file}: cluster: is {found:?}, this agent belongs to {expected:?}")]
    WrongCluster {
        file: String,
        found: String,
        expected: String,
    },
}

/// Reads and checks one cluster state file.
pub fn read(path: &Path, cluster: &str) -> Result<ClusterState, FileSourceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileSourceError::Read {
        file: file.clone(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let state: ClusterState =
        serde_path_to_error::deserialize(&mut de).map_err(|e| FileSourceError::Parse {
            file: file.clone(),
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    if state.cluster.name != cluster {
        return Err(FileSourceError::WrongCluster {
            file,
            found: state.cluster.name,
            expected: cluster.to_string(),
        });
    }
    Ok(state)
}

/// Watches `path` and applies every new good state to `store`, forever.
pub async fn watch(path: PathBuf, cluster: String, store: std::sync::Arc<Store>) {
    let mut seen: Option<(SystemTime, u64)> = None;
    let mut last_error: Option<String> = None;
    loop {
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp != seen {
            seen = stamp;
            match read(&path, &cluster) {
                Ok(state) => {
                    let rev = state.revision;
                    store.apply(Update::ReplaceCluster(state));
                    info!(revision = rev, "cluster state loaded");
                    last_error = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        warn!(error = %msg, "ignoring cluster state; the last good one stays in force");
                        last_error = Some(msg);
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_file_names_field_and_wrong_cluster_is_refused() {
        let dir = std::env::temp_dir().join(format!("strait-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        std::fs::write(
            &p,
            r#"{"revision": 1, "cluster": {"name": "c1", "id": "x"}}"#,
        )
        .unwrap();
        let e = read(&p, "c1").unwrap_err().to_string();
        assert!(e.contains("cluster.id"), "{e}");
        std::fs::write(&p, r#"{"revision": 1, "cluster": {"name": "c2", "id": 2}}"#).unwrap();
        let e = read(&p, "c1").unwrap_err().to_string();
        assert!(e.contains("this agent belongs to \"c1\""), "{e}");
        std::fs::write(&p, r#"{"revision": 1, "cluster": {"name": "c1", "id": 1}}"#).unwrap();
        assert_eq!(read(&p, "c1").unwrap().cluster.id, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
