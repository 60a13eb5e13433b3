//! Where a lab keeps things: namespace names, cgroup and bpffs directories, state files, sockets.
//!
//! Every name carries the lab's name, so several labs (parallel tests) never collide and
//! `lab down` can find everything of a lab by prefix even when its state file is gone.

use std::path::{Path, PathBuf};

/// Root of all labs' state; on tmpfs, so it goes away with a reboot, like the namespaces.
const STATE_ROOT: &str = "/run/strait/labs";

/// The names and paths of one lab.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub name: String,
    cgroup_root: PathBuf,
    bpffs: PathBuf,
}

/// Whether `name` is usable as a lab name (it appears in namespace and interface names).
pub fn valid_lab_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 16
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl LabPaths {
    /// Paths for lab `name` given the cgroup2 mount and the bpffs mount.
    pub fn new(name: &str, cgroup2: &Path, bpffs: &Path) -> Self {
        Self {
            name: name.to_string(),
            cgroup_root: cgroup2.join("strait").join(name),
            bpffs: bpffs.join("strait").join(name),
        }
    }

    /// The lab's state directory.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.name)
    }

    /// The lab's persisted state (topology, resources, allocations).
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("lab.json")
    }

    /// Lock serialising CLI invocations that change the lab.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("lock")
    }

    /// What a cluster's agents read: its Kubernetes objects and lab facts (`sources::lab`).
    pub fn cluster_state_file(&self, cluster: &str) -> PathBuf {
        self.state_dir()
            .join("clusters")
            .join(format!("{cluster}.json"))
    }

    /// Per-node directory: agent config, log, pid file, admin socket.
    pub fn node_dir(&self, cluster: &str, node: &str) -> PathBuf {
        self.state_dir()
            .join("nodes")
            .join(format!("{cluster}-{node}"))
    }

    /// A cluster's mesh endpoint: config, log, status file.
    pub fn mesh_dir(&self, cluster: &str) -> PathBuf {
        self.state_dir().join("mesh").join(cluster)
    }

    /// A cluster's CA certificate (PEM).
    pub fn cluster_ca_cert(&self, cluster: &str) -> PathBuf {
        self.state_dir().join("pki").join(cluster).join("ca.crt")
    }

    /// A cluster's CA key (PEM, mode 0600).
    pub fn cluster_ca_key(&self, cluster: &str) -> PathBuf {
        self.state_dir().join("pki").join(cluster).join("ca.key")
    }

    /// A node agent's private key (PEM, mode 0600; kept across agent restarts).
    pub fn node_key(&self, cluster: &str, node: &str) -> PathBuf {
        self.node_dir(cluster, node).join("node.key")
    }

    /// A node agent's current certificate (PEM).
    pub fn node_cert(&self, cluster: &str, node: &str) -> PathBuf {
        self.node_dir(cluster, node).join("node.crt")
    }

    /// The agent's admin Unix socket; reachable from any network namespace.
    pub fn admin_socket(&self, cluster: &str, node: &str) -> PathBuf {
        self.node_dir(cluster, node).join("admin.sock")
    }

    /// Per-pod directory: logs and readiness marker.
    pub fn pod_dir(&self, cluster: &str, namespace: &str, pod: &str) -> PathBuf {
        self.state_dir()
            .join("pods")
            .join(cluster)
            .join(namespace)
            .join(pod)
    }

    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("st-{}-", self.name)
    }

    /// The underlay bridge's namespace.
    pub fn underlay_netns(&self) -> String {
        format!("st-{}-ul", self.name)
    }

    /// A node's namespace.
    pub fn node_netns(&self, cluster: &str, node: &str) -> String {
        format!("st-{}-{cluster}-{node}", self.name)
    }

    /// A pod's namespace.
    pub fn pod_netns(&self, cluster: &str, namespace: &str, pod: &str) -> String {
        format!("st-{}-{cluster}-{namespace}-{pod}", self.name)
    }

    /// Root cgroup of the lab.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// A node's cgroup: the eBPF socket programs attach here; pods live below it.
    pub fn node_cgroup(&self, cluster: &str, node: &str) -> PathBuf {
        self.cgroup_root.join(format!("{cluster}-{node}"))
    }

    /// A pod's cgroup.
    pub fn pod_cgroup(&self, cluster: &str, node: &str, namespace: &str, pod: &str) -> PathBuf {
        self.node_cgroup(cluster, node)
            .join(format!("{namespace}.{pod}"))
    }

    /// Root of the lab's pinned BPF objects.
    pub fn bpf_root(&self) -> &Path {
        &self.bpffs
    }

    /// A node's pinned BPF maps and links.
    pub fn node_bpf_dir(&self, cluster: &str, node: &str) -> PathBuf {
        self.bpffs.join(format!("{cluster}-{node}"))
    }

    /// Per-namespace files `ip netns exec` bind-mounts over /etc (resolv.conf).
    pub fn etc_netns(netns: &str) -> PathBuf {
        Path::new("/etc/netns").join(netns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_lab_name() {
        let p = LabPaths::new("t1", Path::new("/cg"), Path::new("/bpf"));
        assert!(p.node_netns("c1", "node-1").starts_with(&p.netns_prefix()));
        assert!(
            p.pod_netns("c1", "demo", "x")
                .starts_with(&p.netns_prefix())
        );
        assert!(p.underlay_netns().starts_with(&p.netns_prefix()));
        assert_eq!(
            p.pod_cgroup("c1", "node-1", "demo", "x"),
            Path::new("/cg/strait/t1/c1-node-1/demo.x")
        );
        assert_eq!(
            p.node_bpf_dir("c1", "node-1"),
            Path::new("/bpf/strait/t1/c1-node-1")
        );
        assert!(valid_lab_name("strait"));
        assert!(!valid_lab_name("Bad_Name"));
    }
}
