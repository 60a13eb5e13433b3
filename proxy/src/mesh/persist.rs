//! The last served state of each remote cluster, kept on disk so a restarted agent serves it
//! until its new sync completes (the kernel maps never lose a remote's backends to a restart).
//!
//! One file per remote, `<dir>/<cluster>.json`, replaced atomically (temp file + rename). The
//! file's modification time is the last instant the channel was known healthy: refreshing it
//! is a `utimensat`, not a rewrite of the state, so the heartbeat stays cheap however large the
//! remote is. A restarted agent serves a file younger than the TTL at once, with the TTL clock
//! running from that instant; an older or unreadable file is ignored. No fsync: the file must
//! outlive the agent process, not the machine (a reboot loses the kernel maps too).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::cluster::{self, ClusterId};
use super::state::MeshState;

/// Version of the file's layout; another version is ignored, not misread.
const FORMAT: u32 = 1;

/// A persisted state that cannot be used or a file that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("mesh state {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh state {path}: not a state of format {FORMAT}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("mesh state {path}: encode")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "mesh state {path}: last known healthy {age:?} ago, longer than the TTL of {ttl:?}: stale"
    )]
    Stale {
        path: PathBuf,
        age: Duration,
        ttl: Duration,
    },
    #[error("mesh state {path}: holds cluster {found}, not {expected}")]
    Cluster {
        path: PathBuf,
        found: ClusterId,
        expected: ClusterId,
    },
    #[error("mesh state directory {dir}: remote cluster")]
    Name {
        dir: PathBuf,
        #[source]
        source: cluster::ClusterIdError,
    },
}

/// A state read back from disk, young enough to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The state the previous run served.
    pub state: MeshState,
    /// The last instant the channel was known healthy.
    pub healthy_at: SystemTime,
    /// How long before the read that was.
    pub age: Duration,
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: u32,
    state: &'a MeshState,
}

#[derive(Deserialize)]
struct FileIn {
    format: u32,
    state: MeshState,
}

/// The directory holding one agent's persisted remote states.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

// === impl StateDir ===

impl StateDir {
    /// Persisted states live in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of remote cluster `remote`; its name is checked, so it cannot leave the directory.
    pub fn path(&self, remote: &str) -> Result<PathBuf, PersistError> {
        cluster::validate_name(remote).map_err(|source| PersistError::Name {
            dir: self.dir.clone(),
            source,
        })?;
        Ok(self.dir.join(format!("{remote}.json")))
    }

    /// Replaces the file of `state`'s cluster, marking it healthy at `healthy_at`.
    pub fn save(&self, state: &MeshState, healthy_at: SystemTime) -> Result<(), PersistError> {
        // Several writers of one remote may briefly overlap (a client being replaced): each
        // writes its own temp file, so a rename never publishes another's half-written one.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = self.path(&state.cluster.name)?;
        let io = |what| {
            let path = path.clone();
            move |source| PersistError::Io { path, what, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create directory"))?;
        let bytes = serde_json::to_vec(&FileOut {
            format: FORMAT,
            state,
        })
        .map_err(|source| PersistError::Encode {
            path: path.clone(),
            source,
        })?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{seq}", std::process::id()));
        let written = std::fs::write(&tmp, &bytes)
            .and_then(|()| set_mtime(&tmp, healthy_at))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write")(e));
        }
        Ok(())
    }

    /// Marks the file of `remote` healthy at `healthy_at` without rewriting it.
    pub fn touch(&self, remote: &str, healthy_at: SystemTime) -> Result<(), PersistError> {
        let path = self.path(remote)?;
        set_mtime(&path, healthy_at).map_err(|source| PersistError::Io {
            path,
            what: "refresh the healthy time",
            source,
        })
    }

    /// Reads the state of `remote` at `now` if one was persisted (`Ok(None)` when there is none);
    /// a file older than `ttl`, unreadable or of another cluster is an error.
    pub fn load(
        &self,
        remote: &ClusterId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Option<Restored>, PersistError> {
        let path = self.path(&remote.name)?;
        let io = |what| {
            let path = path.clone();
            move |source| PersistError::Io { path, what, source }
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read")(e)),
        };
        let healthy_at = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(io("read the healthy time"))?;
        // A time in the future (clock stepped back) counts as now, not as a negative age.
        let age = now.duration_since(healthy_at).unwrap_or(Duration::ZERO);
        if age >= ttl {
            return Err(PersistError::Stale { path, age, ttl });
        }
        let file: FileIn =
            serde_json::from_slice(&bytes).map_err(|source| PersistError::Parse {
                path: path.clone(),
                source,
            })?;
        if file.format != FORMAT {
            let source = serde::de::Error::custom(format!("format {}", file.format));
            return Err(PersistError::Parse { path, source });
        }
        if file.state.cluster != *remote {
            return Err(PersistError::Cluster {
                path,
                found: file.state.cluster,
                expected: remote.clone(),
            });
        }
        Ok(Some(Restored {
            state: file.state,
            healthy_at,
            age,
        }))
    }

    /// Deletes the file of `remote`, if any.
    pub fn remove(&self, remote: &str) -> Result<(), PersistError> {
        let path = self.path(remote)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PersistError::Io {
                path,
                what: "remove",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Deletes the files of remotes for which `keep` is false (peers removed while the agent
    /// was down); returns the clusters removed.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, PersistError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(PersistError::Io {
                    path: self.dir.clone(),
                    what: "list",
                    source,
                });
            }
        };
        let mut removed = Vec::new();
        let own_tmp = format!(".tmp-{}-", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            // Temp files of a process killed mid-write; this process's own may be in flight.
            if name.contains(".tmp-") && !name.contains(&own_tmp) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(remote) = name.strip_suffix(".json") else {
                continue;
            };
            if !keep(remote) && cluster::validate_name(remote).is_ok() {
                self.remove(remote)?;
                removed.push(remote.to_string());
            }
        }
        Ok(removed)
    }
}

fn set_mtime(path: &Path, at: SystemTime) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_times(std::fs::FileTimes::new().set_modified(at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::state::IpEntry;

    fn state() -> MeshState {
        let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
        s.epoch = 7;
        s.revision = 3;
        s.ipcache.insert(
            [10, 2, 0, 1].into(),
            IpEntry {
                identity: 0x2_0100,
                node: "n".into(),
                namespace: "demo".into(),
                pod: "p".into(),
            },
        );
        s
    }

    fn dir(test: &str) -> (StateDir, PathBuf) {
        let p = std::env::temp_dir().join(format!("strait-persist-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        (StateDir::new(&p), p)
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_state_younger_than_the_ttl_comes_back_with_its_healthy_time() {
        let (d, p) = dir("young");
        let c2 = ClusterId::new("c2", 2).unwrap();
        assert!(d.load(&c2, TTL, SystemTime::now()).unwrap().is_none());
        let healthy = SystemTime::now() - Duration::from_secs(10);
        d.save(&state(), healthy).unwrap();
        let now = healthy + Duration::from_secs(12);
        let r = d.load(&c2, TTL, now).unwrap().unwrap();
        assert_eq!(
            (r.state, r.healthy_at, r.age),
            (state(), healthy, Duration::from_secs(12))
        );
        // The heartbeat moves the healthy time, not the content.
        let later = healthy + Duration::from_secs(25);
        d.touch("c2", later).unwrap();
        let r = d
            .load(&c2, TTL, later + Duration::from_secs(29))
            .unwrap()
            .unwrap();
        assert_eq!(r.healthy_at, later);
        // Only the state file is left (no temp files).
        let names: Vec<_> = std::fs::read_dir(&p)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["c2.json"]);
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn stale_corrupt_and_foreign_files_are_refused_naming_the_file() {
        let (d, p) = dir("refused");
        let c2 = ClusterId::new("c2", 2).unwrap();
        let healthy = SystemTime::now();
        d.save(&state(), healthy).unwrap();
        let err = d.load(&c2, TTL, healthy + TTL).unwrap_err().to_string();
        assert!(err.contains("c2.json") && err.contains("stale"), "{err}");
        // The same name with another ID is another cluster.
        let other = ClusterId::new("c2", 9).unwrap();
        let err = d.load(&other, TTL, healthy).unwrap_err().to_string();
        assert!(err.contains("holds cluster"), "{err}");
        std::fs::write(p.join("c2.json"), b"{\"format\":1,\"state\":").unwrap();
        let err = d.load(&c2, TTL, SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains("c2.json") && err.contains("format 1"), "{err}");
        assert!(d.path("../etc").is_err(), "names are cluster names");
        // Files of peers no longer wanted go; the others stay.
        d.save(&state(), healthy).unwrap();
        let mut c3 = state();
        c3.cluster = ClusterId::new("c3", 3).unwrap();
        d.save(&c3, healthy).unwrap();
        std::fs::write(p.join("c3.tmp-1-0"), b"half a state").unwrap();
        assert_eq!(d.retain(|c| c == "c3").unwrap(), ["c2"]);
        assert!(
            !p.join("c3.tmp-1-0").exists(),
            "a dead writer's temp file goes"
        );
        assert!(d.load(&c2, TTL, healthy).unwrap().is_none());
        d.remove("c3").unwrap();
        d.remove("c3").unwrap();
        assert!(std::fs::read_dir(&p).unwrap().next().is_none());
        std::fs::remove_dir_all(&p).unwrap();
    }
}
