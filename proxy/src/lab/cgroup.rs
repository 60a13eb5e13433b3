//! cgroup v2 directories for nodes and pods: the eBPF socket programs attach to a node's directory,
//! and every pod process (and `lab exec`) runs in a directory below it.

use std::path::{Path, PathBuf};

/// A cgroup operation that failed, naming the directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `path` and its parents.
pub fn create(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        what: "create",
        source,
    })
}

/// Kills every process in `path` and its descendants, then removes the directories bottom-up.
/// A missing directory is fine.
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree atomically, so nothing escapes by forking.
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let children: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        remove_tree(&child)?;
    }
    // Killed processes leave the cgroup asynchronously; rmdir fails with EBUSY until they have.
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(CgroupError::Io {
        path: path.to_path_buf(),
        what: "remove",
        source: last.unwrap_or_else(|| std::io::Error::other("busy")),
    })
}

/// Process IDs currently in `path` (not descendants).
pub fn procs(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
