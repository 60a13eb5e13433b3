//! The cluster mesh in the lab: `strait clustermesh enable|connect|disconnect` start a
//! cluster's mesh endpoint and write the peers into both clusters' state files, which the agents
//! (and the endpoints) already follow.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::state::{LabState, MeshRecord};
use super::topology::ClusterSpec;
use super::{Lab, LabError, READY_TIMEOUT, agents, process};
use crate::config::{IssuerFiles, MESH_PORT, MeshEndpointConfig};
use crate::mesh::cluster::{self, ClusterId, ClusterSpec as MeshSpec};
use crate::mesh::endpoint::read_status;
use crate::sources::lab::{MeshPeer, MeshSettings};

/// What `strait clustermesh enable` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    pub listen: SocketAddr,
    /// Whether the endpoint was (re)started now, rather than found running.
    pub started: bool,
}

/// A cluster's name checked by Cilium's rules before anything else, so a typo reads as such.
fn valid(name: &str) -> Result<(), LabError> {
    cluster::validate_name(name).map_err(|e| LabError::Precondition(e.to_string()))
}

/// The lab's cluster as the mesh compares clusters before connecting them.
pub fn mesh_spec(c: &ClusterSpec) -> MeshSpec {
    MeshSpec {
        cluster: ClusterId {
            name: c.name.clone(),
            id: c.id,
        },
        pod_cidrs: vec![c.pod_cidr],
    }
}

/// Where a cluster's endpoint listens: its first node's underlay address, which every node of
/// every cluster reaches over the underlay.
fn listen_addr(c: &ClusterSpec) -> Result<SocketAddr, LabError> {
    let first = c
        .nodes
        .first()
        .ok_or_else(|| LabError::Precondition(format!("cluster {} has no nodes", c.name)))?;
    Ok((first.underlay_ip, MESH_PORT).into())
}

impl Lab {
    fn cluster_spec(&self, st: &LabState, name: &str) -> Result<ClusterSpec, LabError> {
        st.topology.cluster(name).cloned().ok_or_else(|| {
            LabError::NotFound(format!(
                "cluster {name:?} is not in lab {}",
                self.paths().name
            ))
        })
    }

    /// Starts `cluster`'s mesh endpoint unless it runs already; returns where it listens.
    pub fn mesh_enable(&self, cluster: &str) -> Result<Enabled, LabError> {
        valid(cluster)?;
        super::check_root()?;
        let _lock = self.lock()?;
        let mut st = self.require()?;
        let spec = self.cluster_spec(&st, cluster)?;
        ClusterId::new(&spec.name, spec.id).map_err(|e| LabError::Precondition(e.to_string()))?;
        let listen = listen_addr(&spec)?;
        let record = st.mesh.get(cluster).cloned();
        if let Some(r) = &record
            && r.pid.is_some_and(process::alive)
        {
            return Ok(Enabled {
                listen: r.listen,
                started: false,
            });
        }
        let pid = self.start_endpoint(&spec, listen)?;
        let first = record.is_none();
        let (peers, pending) = record.map(|r| (r.peers, r.pending)).unwrap_or_default();
        let trusted = peers.union(&pending).cloned().collect();
        st.mesh.insert(
            cluster.to_string(),
            MeshRecord {
                listen,
                pid: Some(pid),
                peers,
                pending,
            },
        );
        self.save(&st)?;
        self.wait_endpoint(cluster, pid, &trusted)?;
        if first {
            // The agents learn that the mesh is on (and where the endpoint listens).
            self.republish(&mut st, &[cluster])?;
        }
        Ok(Enabled {
            listen,
            started: true,
        })
    }

    /// Connects two clusters both ways: each cluster's agents sync the other, each endpoint
    /// trusts the other's CA.
    pub fn mesh_connect(&self, a: &str, b: &str) -> Result<(), LabError> {
        valid(a)?;
        valid(b)?;
        if a == b {
            return Err(LabError::Precondition(format!(
                "cannot connect cluster {a} to itself: name another cluster with --destination-cluster"
            )));
        }
        super::check_root()?;
        let _lock = self.lock()?;
        let mut st = self.require()?;
        let (sa, sb) = (self.cluster_spec(&st, a)?, self.cluster_spec(&st, b)?);
        cluster::check_connect(&mesh_spec(&sa), &mesh_spec(&sb))
            .map_err(|e| LabError::Precondition(e.to_string()))?;
        for c in [a, b] {
            let Some(r) = st.mesh.get(c) else {
                return Err(LabError::Precondition(format!(
                    "cluster {c} has no mesh endpoint: run `strait clustermesh enable --cluster {c}` first"
                )));
            };
            if !r.pid.is_some_and(process::alive) {
                return Err(LabError::Precondition(format!(
                    "the mesh endpoint of cluster {c} is down: run `strait clustermesh enable --cluster {c}` to restart it"
                )));
            }
        }
        // First both endpoints trust each other, then the agents dial: no first dial is
        // refused for a trust still on its way.
        for (x, y) in [(a, b), (b, a)] {
            if let Some(r) = st.mesh.get_mut(x)
                && !r.peers.contains(y)
            {
                r.pending.insert(y.to_string());
            }
        }
        self.republish(&mut st, &[a, b])?;
        self.wait_trust(&st, &[a, b])?;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(r) = st.mesh.get_mut(x) {
                r.pending.remove(y);
                r.peers.insert(y.to_string());
            }
        }
        self.republish(&mut st, &[a, b])
    }

    /// Undoes [`Lab::mesh_connect`]: both clusters' agents drop the other's state at once.
    pub fn mesh_disconnect(&self, a: &str, b: &str) -> Result<(), LabError> {
        valid(a)?;
        valid(b)?;
        super::check_root()?;
        let _lock = self.lock()?;
        let mut st = self.require()?;
        self.cluster_spec(&st, a)?;
        self.cluster_spec(&st, b)?;
        let linked = |x: &str, y: &str| {
            st.mesh
                .get(x)
                .is_some_and(|r| r.peers.contains(y) || r.pending.contains(y))
        };
        let connected = linked(a, b) || linked(b, a);
        if !connected {
            return Err(LabError::Precondition(format!(
                "clusters {a} and {b} are not connected"
            )));
        }
        // First the agents stop syncing (their state goes at once), then the trust goes.
        for (x, y) in [(a, b), (b, a)] {
            if let Some(r) = st.mesh.get_mut(x)
                && r.peers.remove(y)
            {
                r.pending.insert(y.to_string());
            }
        }
        self.republish(&mut st, &[a, b])?;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(r) = st.mesh.get_mut(x) {
                r.pending.remove(y);
            }
        }
        self.republish(&mut st, &[a, b])?;
        self.wait_trust(&st, &[a, b])
    }

    /// The mesh section of `cluster`'s state file, from the lab's records.
    pub(super) fn mesh_settings(
        &self,
        st: &LabState,
        cluster: &str,
    ) -> Result<Option<MeshSettings>, LabError> {
        let Some(rec) = st.mesh.get(cluster) else {
            return Ok(None);
        };
        let mut peers = Vec::new();
        let all = rec.peers.iter().map(|p| (p, true));
        for (name, sync) in all.chain(rec.pending.iter().map(|p| (p, false))) {
            let (Some(spec), Some(peer)) = (st.topology.cluster(name), st.mesh.get(name)) else {
                continue;
            };
            let ca = self.paths().cluster_ca_cert(name);
            let ca_pem = std::fs::read_to_string(&ca).map_err(|e| LabError::State {
                path: ca,
                what: "read the CA of a mesh peer",
                reason: e.to_string(),
            })?;
            peers.push(MeshPeer {
                name: name.clone(),
                id: spec.id,
                endpoint: peer.listen,
                ca_pem,
                sync,
            });
        }
        Ok(Some(MeshSettings {
            endpoint: Some(rec.listen),
            peers,
        }))
    }

    /// Restarts the mesh endpoints that died (`lab up`), as for agents.
    pub(super) fn ensure_mesh_endpoints(&self, st: &mut LabState) -> Result<(), LabError> {
        let dead: Vec<String> = st
            .mesh
            .iter()
            .filter(|(_, r)| !r.pid.is_some_and(process::alive))
            .map(|(c, _)| c.clone())
            .collect();
        for c in dead {
            let spec = self.cluster_spec(st, &c)?;
            let listen = listen_addr(&spec)?;
            let pid = self.start_endpoint(&spec, listen)?;
            let trusted = match st.mesh.get_mut(&c) {
                Some(r) => {
                    r.pid = Some(pid);
                    r.listen = listen;
                    r.peers.union(&r.pending).cloned().collect()
                }
                None => continue,
            };
            self.save(st)?;
            self.wait_endpoint(&c, pid, &trusted)?;
        }
        Ok(())
    }

    /// Kills every mesh endpoint of the lab.
    pub(super) fn stop_mesh_endpoints(st: &LabState) {
        for r in st.mesh.values() {
            if let Some(pid) = r.pid {
                process::kill_group(pid);
            }
        }
    }

    fn start_endpoint(&self, spec: &ClusterSpec, listen: SocketAddr) -> Result<i32, LabError> {
        let p = self.paths();
        let dir = p.mesh_dir(&spec.name);
        let io = |what: &'static str| {
            let path = dir.clone();
            move |e: std::io::Error| LabError::State {
                path,
                what,
                reason: e.to_string(),
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("create mesh directory"))?;
        let cfg = MeshEndpointConfig {
            cluster: spec.name.clone(),
            state_file: p.cluster_state_file(&spec.name),
            listen,
            issuer: IssuerFiles {
                ca_cert: p.cluster_ca_cert(&spec.name),
                ca_key: p.cluster_ca_key(&spec.name),
            },
            status_file: dir.join("status.json"),
            cert_validity_secs: crate::config::DEFAULT_CERT_VALIDITY_SECS,
        };
        // A status file of a previous run must not pass for this one's.
        let _ = std::fs::remove_file(&cfg.status_file);
        let json = serde_json::to_vec_pretty(&cfg)
            .map_err(|e| io("encode mesh endpoint config")(e.into()))?;
        let cfg_path = dir.join("endpoint.json");
        std::fs::write(&cfg_path, json).map_err(io("write mesh endpoint config"))?;
        let exe = std::env::current_exe().map_err(io("find own executable"))?;
        let node = spec.nodes.first().map(|n| n.name.as_str()).unwrap_or("");
        let argv = vec![
            exe.display().to_string(),
            "clustermesh-endpoint".into(),
            "--config".into(),
            cfg_path.display().to_string(),
        ];
        Ok(process::spawn_detached(
            &p.node_netns(&spec.name, node),
            None,
            process::Enter::NetworkOnly,
            &argv,
            &dir.join("endpoint.log"),
        )?)
    }

    /// Waits until the endpoint serves and trusts exactly `peers`.
    fn wait_endpoint(
        &self,
        cluster: &str,
        pid: i32,
        peers: &BTreeSet<String>,
    ) -> Result<(), LabError> {
        let dir = self.paths().mesh_dir(cluster);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = read_status(&dir.join("status.json"))
                && s.trusted.iter().cloned().collect::<BTreeSet<_>>() == *peers
            {
                return Ok(());
            }
            if !process::alive(pid) || Instant::now() > deadline {
                return Err(LabError::Precondition(format!(
                    "the mesh endpoint of cluster {cluster} did not come up; its log:\n{}",
                    agents::tail(&dir.join("endpoint.log"), 10)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bumps and rewrites the state files of `clusters` (mesh sections included) and waits
    /// for their agents to load them.
    fn republish(&self, st: &mut LabState, clusters: &[&str]) -> Result<(), LabError> {
        // All files first, then the waits: the two sides of a connect learn of each other
        // as close together as possible, so few first dials meet an endpoint not yet trusting.
        let mut revs = Vec::new();
        for c in clusters {
            if let Some(res) = st.clusters.get_mut(*c) {
                res.revision += 1;
            }
            revs.push((*c, self.publish(st, c)?));
        }
        self.save(st)?;
        for (c, rev) in revs {
            self.wait_cluster_agents(st, c, rev)?;
        }
        Ok(())
    }

    /// Waits until the endpoints of `clusters` trust exactly their recorded peers (pending
    /// ones included).
    fn wait_trust(&self, st: &LabState, clusters: &[&str]) -> Result<(), LabError> {
        for c in clusters {
            if let Some(r) = st.mesh.get(*c)
                && let Some(pid) = r.pid
            {
                self.wait_endpoint(c, pid, &r.peers.union(&r.pending).cloned().collect())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(name: &str, id: u8, cidr: &str) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            id,
            pod_cidr: cidr.parse().unwrap(),
            service_cidr: "198.19.9.0/24".parse().unwrap(),
            nodes: vec![],
            mesh_ttl_secs: None,
        }
    }

    /// The connect check on lab clusters: a duplicate ID, a duplicate name and overlapping pod
    /// CIDRs name both clusters (the real-lab refusals are in `tests/clustermesh.rs`).
    #[test]
    fn lab_clusters_are_checked_like_mesh_clusters() {
        let c1 = mesh_spec(&spec("c1", 1, "198.18.16.0/20"));
        let dup_id = mesh_spec(&spec("c2", 1, "198.18.32.0/20"));
        assert_eq!(
            cluster::check_connect(&c1, &dup_id)
                .unwrap_err()
                .to_string(),
            "cannot connect cluster c1 (ID 1) to cluster c2 (ID 1): both have cluster ID 1"
        );
        let dup_name = mesh_spec(&spec("c1", 2, "198.18.32.0/20"));
        assert!(
            cluster::check_connect(&c1, &dup_name)
                .unwrap_err()
                .to_string()
                .contains("both are named \"c1\"")
        );
        let overlap = mesh_spec(&spec("c2", 2, "198.18.24.0/21"));
        assert!(
            cluster::check_connect(&c1, &overlap)
                .unwrap_err()
                .to_string()
                .contains("pod CIDR 198.18.16.0/20 of c1 (ID 1) overlaps pod CIDR 198.18.24.0/21 of c2 (ID 2)")
        );
        assert!(
            valid("C_1")
                .unwrap_err()
                .to_string()
                .contains("cluster name \"C_1\"")
        );
    }
}
