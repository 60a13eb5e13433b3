//! `strait lab`: clusters, nodes and pods on one Linux machine, from network namespaces, veths
//! and cgroups, running the real agents and eBPF programs. Also the integration-test harness.

pub mod agents;
pub mod cgroup;
pub mod manifest;
pub mod mesh;
pub mod meshstatus;
pub mod netns;
pub mod objects;
pub mod paths;
pub mod pods;
pub mod process;
pub mod state;
pub mod topology;
pub mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use paths::LabPaths;
use state::{ClusterResources, LabState, PodRecord};
use topology::Topology;

/// How long `lab up` and `lab apply` wait for agents and pods.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Anything that stops a lab command; nothing is left half-changed where it can be avoided.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Precondition(String),
    #[error("lab {0:?} is not up (run `strait lab up` first)")]
    NotUp(String),
    #[error("lab state {path}: {what}: {reason}")]
    State {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Plan(#[from] state::PlanError),
    #[error(transparent)]
    Net(#[from] netns::NetError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Pod(#[from] pods::PodError),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error(transparent)]
    Spawn(#[from] process::SpawnError),
    #[error("eBPF")]
    Ebpf(#[from] strait_ebpf::Error),
    #[error(transparent)]
    System(#[from] strait_ebpf::sys::Error),
    #[error("{0}")]
    NotFound(String),
}

/// A lab by name: its paths, and its state when it is up.
pub struct Lab {
    paths: LabPaths,
}

/// One node's agent as `lab status` reports it.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub cluster: String,
    pub node: String,
    pub pid: Option<i32>,
    pub running: bool,
    pub admin_socket: PathBuf,
    /// The agent's own /status answer, when it answered.
    pub status: Option<serde_json::Value>,
}

/// One pod as `lab status` reports it.
#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: std::net::Ipv4Addr,
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
}

/// What `lab status` shows.
#[derive(Debug, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub topology: Topology,
    pub agents: Vec<AgentStatus>,
    pub pods: Vec<PodStatus>,
    pub services: Vec<crate::model::Service>,
}

impl Lab {
    /// The lab called `name` (it need not be up).
    pub fn new(name: &str) -> Result<Self, LabError> {
        if !paths::valid_lab_name(name) {
            return Err(LabError::Precondition(format!(
                "lab name {name:?} must be 1-16 lowercase letters, digits or '-'"
            )));
        }
        let cg = strait_ebpf::sys::cgroup2_root()?;
        let bpffs = strait_ebpf::sys::ensure_bpffs()?;
        Ok(Self {
            paths: LabPaths::new(name, &cg, &bpffs),
        })
    }

    /// The lab's names and paths.
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    fn lock(&self) -> Result<Flock<File>, LabError> {
        let dir = self.paths.state_dir();
        std::fs::create_dir_all(&dir).map_err(|e| self.state_err("create", e.to_string()))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.paths.lock_file())
            .map_err(|e| self.state_err("open lock", e.to_string()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| self.state_err("lock", e.to_string()))
    }

    fn state_err(&self, what: &'static str, reason: String) -> LabError {
        LabError::State {
            path: self.paths.state_file(),
            what,
            reason,
        }
    }

    /// The saved state, if the lab is up.
    pub fn load(&self) -> Result<Option<LabState>, LabError> {
        let path = self.paths.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.state_err("parse", e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.state_err("read", e.to_string())),
        }
    }

    fn save(&self, st: &LabState) -> Result<(), LabError> {
        let bytes =
            serde_json::to_vec_pretty(st).map_err(|e| self.state_err("encode", e.to_string()))?;
        write_atomic(&self.paths.state_file(), &bytes)
            .map_err(|e| self.state_err("write", e.to_string()))
    }

    /// Builds the lab (or checks an existing one and restarts agents that died).
    pub fn up(&self, topology: Topology) -> Result<LabState, LabError> {
        check_root()?;
        let _lock = self.lock()?;
        if let Some(mut st) = self.load()? {
            if st.topology != topology {
                return Err(LabError::Precondition(format!(
                    "lab {:?} is up with a different topology; run `strait lab down --name {}` first",
                    self.paths.name, self.paths.name
                )));
            }
            let complete = st
                .topology
                .all_nodes()
                .all(|(c, n)| netns::exists(&self.paths.node_netns(&c.name, &n.name)))
                && netns::exists(&self.paths.underlay_netns());
            if complete {
                self.ensure_agents(&mut st)?;
                self.ensure_mesh_endpoints(&mut st)?;
                self.restart_dead_pods(&mut st)?;
                self.save(&st)?;
                return Ok(st);
            }
        }
        // Nothing usable: clear what an interrupted run may have left, then build from scratch.
        self.teardown()?;
        std::fs::create_dir_all(self.paths.state_dir())
            .map_err(|e| self.state_err("create", e.to_string()))?;
        let mut st = LabState {
            name: self.paths.name.clone(),
            clusters: topology
                .clusters
                .iter()
                .map(|c| (c.name.clone(), ClusterResources::new()))
                .collect(),
            topology,
            agents: BTreeMap::new(),
            mesh: BTreeMap::new(),
        };
        self.build_network(&st.topology)?;
        for c in st.topology.clusters.clone() {
            self.publish(&mut st, &c.name)?;
        }
        self.ensure_agents(&mut st)?;
        self.save(&st)?;
        Ok(st)
    }

    fn build_network(&self, t: &Topology) -> Result<(), LabError> {
        let p = &self.paths;
        let ul = p.underlay_netns();
        netns::create(&ul)?;
        // The bridge takes the underlay's first address (nodes start at the tenth), so tools run
        // in this namespace (a Prometheus server, curl) reach every node's agent.
        let bridge_addr = t.underlay.hosts().next().unwrap_or(t.underlay.addr());
        netns::ip_batch(
            Some(&ul),
            &[
                "link add br0 type bridge".into(),
                format!(
                    "addr replace {bridge_addr}/{} dev br0",
                    t.underlay.prefix_len()
                ),
                "link set br0 up".into(),
            ],
        )?;
        for (i, (c, n)) in t.all_nodes().enumerate() {
            let node_ns = p.node_netns(&c.name, &n.name);
            netns::create(&node_ns)?;
            let port = format!("n{i}");
            netns::ip_batch(
                Some(&ul),
                &[
                    format!("link add {port} type veth peer name eth0 netns {node_ns}"),
                    format!("link set {port} master br0 up"),
                ],
            )?;
            let mut cmds = vec![
                format!(
                    "addr add {}/{} dev eth0",
                    n.underlay_ip,
                    t.underlay.prefix_len()
                ),
                "link set eth0 up".into(),
                // The gateway lives on loopback (dummy devices may be missing from the kernel):
                // it is a local address, so ARP from any pod veth finds it, and it does not go
                // away when pods come and go.
                format!("addr add {}/32 dev lo", n.gateway),
            ];
            for (oc, on) in t.all_nodes() {
                if (oc.name != c.name || on.name != n.name) && t.routes_between(c, oc) {
                    cmds.push(format!("route add {} via {}", on.pod_cidr, on.underlay_ip));
                }
            }
            netns::ip_batch(Some(&node_ns), &cmds)?;
            netns::sysctl(&node_ns, "net.ipv4.ip_forward", "1")?;
            netns::sysctl(&node_ns, "net.ipv4.conf.all.rp_filter", "0")?;
            netns::sysctl(&node_ns, "net.ipv4.conf.default.rp_filter", "0")?;
            cgroup::create(&p.node_cgroup(&c.name, &n.name))?;
        }
        Ok(())
    }

    /// Recreates pods whose processes died (same name, node and address), as a kubelet would.
    fn restart_dead_pods(&self, st: &mut LabState) -> Result<(), LabError> {
        let clusters: Vec<String> = st.clusters.keys().cloned().collect();
        for cluster in clusters {
            let Some(spec) = st.topology.cluster(&cluster).cloned() else {
                continue;
            };
            let dead: Vec<PodRecord> = st.clusters[&cluster]
                .pods
                .values()
                .filter(|p| p.pids.is_empty() || !p.pids.iter().all(|pid| process::alive(*pid)))
                .cloned()
                .collect();
            if dead.is_empty() {
                continue;
            }
            for p in &dead {
                pods::stop(&self.paths, &cluster, p)?;
                let Some(node) = spec.nodes.iter().find(|n| n.name == p.node) else {
                    continue;
                };
                let pids = pods::start(&self.paths, &spec, node, p)?;
                if let Some(rec) = st
                    .clusters
                    .get_mut(&cluster)
                    .and_then(|r| r.pods.get_mut(&p.key()))
                {
                    rec.pids = pids;
                }
            }
            self.save(st)?;
            self.wait_pods_ready(st, &cluster, &dead)?;
            if let Some(res) = st.clusters.get_mut(&cluster) {
                res.revision += 1;
            }
            let rev = self.publish(st, &cluster)?;
            self.wait_cluster_agents(st, &cluster, rev)?;
        }
        Ok(())
    }

    fn ensure_agents(&self, st: &mut LabState) -> Result<(), LabError> {
        let mut started = Vec::new();
        for (c, n) in st.topology.all_nodes() {
            let key = format!("{}/{}", c.name, n.name);
            let running = st.agents.get(&key).is_some_and(|pid| process::alive(*pid));
            if !running {
                let pid = agents::start(&self.paths, c, n)?;
                started.push((key, c.name.clone(), n.name.clone(), pid));
            }
        }
        for (key, c, n, pid) in started {
            let rev = st.clusters.get(&c).map_or(0, |r| r.revision);
            st.agents.insert(key, pid);
            agents::wait_ready(&self.paths, &c, &n, Some(pid), rev, READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Writes a cluster's state file for its agents.
    fn publish(&self, st: &mut LabState, cluster: &str) -> Result<u64, LabError> {
        let spec =
            st.topology.cluster(cluster).cloned().ok_or_else(|| {
                LabError::NotFound(format!("cluster {cluster:?} is not in the lab"))
            })?;
        let res = st.clusters.entry(cluster.to_string()).or_default();
        let paths = &self.paths;
        let mut doc = state::cluster_document(&spec, res, |p| pods::runtime(paths, cluster, p))?;
        doc.mesh = self.mesh_settings(st, cluster)?;
        let bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| self.state_err("encode cluster state", e.to_string()))?;
        let path = self.paths.cluster_state_file(cluster);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.state_err("create", e.to_string()))?;
        }
        write_atomic(&path, &bytes)
            .map_err(|e| self.state_err("write cluster state", e.to_string()))?;
        Ok(doc.revision)
    }

    fn require(&self) -> Result<LabState, LabError> {
        self.load()?
            .ok_or_else(|| LabError::NotUp(self.paths.name.clone()))
    }

    /// `kubectl apply` (or, with `delete`, `kubectl delete`) of manifests into `cluster`.
    /// Returns the objects' keys. Invalid input changes nothing.
    pub fn apply(
        &self,
        cluster: &str,
        files: &[PathBuf],
        delete: bool,
    ) -> Result<Vec<String>, LabError> {
        check_root()?;
        let mut objects = Vec::new();
        for f in files {
            objects.extend(manifest::load_path(f)?);
        }
        let _lock = self.lock()?;
        let mut st = self.require()?;
        let spec = st
            .topology
            .cluster(cluster)
            .cloned()
            .ok_or_else(|| state::PlanError::NoCluster(cluster.into()))?;
        let cur = st
            .clusters
            .get(cluster)
            .cloned()
            .unwrap_or_else(ClusterResources::new);
        let plan = state::plan(&spec, &cur, &objects, delete)?;
        for p in &plan.delete {
            pods::stop(&self.paths, cluster, p)?;
        }
        let mut res = plan.resources;
        let mut failure = None;
        for p in &plan.create {
            let node = spec.nodes.iter().find(|n| n.name == p.node);
            let result = match node {
                Some(node) => pods::start(&self.paths, &spec, node, p),
                None => continue,
            };
            match result {
                Ok(pids) => {
                    if let Some(rec) = res.pods.get_mut(&p.key()) {
                        rec.pids = pids;
                    }
                }
                Err(e) => {
                    // Keep the state truthful: a pod that failed to start does not exist.
                    res.pods.remove(&p.key());
                    let _ = pods::stop(&self.paths, cluster, p);
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_some() {
            for p in &plan.create {
                if let Some(rec) = res.pods.get(&p.key()).cloned()
                    && rec.pids.is_empty()
                {
                    res.pods.remove(&p.key());
                }
            }
        }
        st.clusters.insert(cluster.to_string(), res);
        self.save(&st)?;
        if let Some(e) = failure {
            self.publish(&mut st, cluster)?;
            self.save(&st)?;
            return Err(e.into());
        }
        self.wait_pods_ready(&st, cluster, &plan.create)?;
        let rev = self.publish(&mut st, cluster)?;
        self.save(&st)?;
        self.wait_cluster_agents(&st, cluster, rev)?;
        Ok(objects
            .iter()
            .map(|(_, o)| format!("{}/{}", o.kind().to_lowercase(), o.key()))
            .collect())
    }

    fn wait_pods_ready(
        &self,
        st: &LabState,
        cluster: &str,
        created: &[PodRecord],
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let res = st.clusters.get(cluster);
        for p in created {
            let Some(rec) = res.and_then(|r| r.pods.get(&p.key())) else {
                continue;
            };
            while !pods::ready(&self.paths, cluster, rec) {
                if Instant::now() > deadline || rec.pids.iter().any(|pid| !process::alive(*pid)) {
                    let dir = self.paths.pod_dir(cluster, &p.namespace, &p.name);
                    return Err(LabError::NotFound(format!(
                        "pod {cluster}/{} did not become ready; its log:\n{}",
                        p.key(),
                        agents::tail(&dir.join("echo.log"), 10)
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    fn wait_cluster_agents(&self, st: &LabState, cluster: &str, rev: u64) -> Result<(), LabError> {
        for (c, n) in st.topology.all_nodes() {
            if c.name == cluster {
                let pid = st.agents.get(&format!("{}/{}", c.name, n.name)).copied();
                agents::wait_ready(&self.paths, &c.name, &n.name, pid, rev, READY_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// Removes everything of the lab: processes, namespaces, cgroups, pinned BPF objects, files.
    /// Works from names alone, so it also cleans up after a crash or `kill -9`.
    pub fn down(&self) -> Result<(), LabError> {
        check_root()?;
        let lock = self.lock()?;
        self.teardown()?;
        // Last, the lock file and the state directory. A `lab up` of the same name waiting on
        // this lock starts over in a fresh directory, which is what it would build anyway.
        let _ = std::fs::remove_file(self.paths.lock_file());
        let _ = std::fs::remove_dir(self.paths.state_dir());
        drop(lock);
        Ok(())
    }

    fn teardown(&self) -> Result<(), LabError> {
        let p = &self.paths;
        if let Ok(Some(st)) = self.load() {
            for pid in st.agents.values() {
                process::kill_group(*pid);
            }
            Self::stop_mesh_endpoints(&st);
        }
        let prefix = p.netns_prefix();
        let spaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        for ns in &spaces {
            for pid in netns::pids(ns) {
                process::kill_one(pid);
            }
        }
        cgroup::remove_tree(p.cgroup_root())?;
        for ns in &spaces {
            netns::delete(ns)?;
        }
        if let Ok(rd) = std::fs::read_dir("/etc/netns") {
            for e in rd.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        strait_ebpf::remove_pins(p.bpf_root())?;
        let _ = std::fs::remove_dir(p.bpf_root());
        // Keep the lock file (we hold it); remove everything else of the state directory.
        if let Ok(rd) = std::fs::read_dir(p.state_dir()) {
            for e in rd.filter_map(Result::ok) {
                if e.path() != p.lock_file() {
                    let _ = if e.path().is_dir() {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    };
                }
            }
        }
        Ok(())
    }

    /// What is running: agents (with their own status), pods and services.
    pub fn status(&self) -> Result<LabStatus, LabError> {
        let st = self.require()?;
        let mut agents_out = Vec::new();
        for (c, n) in st.topology.all_nodes() {
            let pid = st.agents.get(&format!("{}/{}", c.name, n.name)).copied();
            let socket = self.paths.admin_socket(&c.name, &n.name);
            agents_out.push(AgentStatus {
                cluster: c.name.clone(),
                node: n.name.clone(),
                pid,
                running: pid.is_some_and(process::alive),
                status: agents::status_blocking(&socket).ok(),
                admin_socket: socket,
            });
        }
        let mut pods_out = Vec::new();
        let mut services = Vec::new();
        for (cluster, res) in &st.clusters {
            for p in res.pods.values() {
                pods_out.push(PodStatus {
                    cluster: cluster.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    ip: p.ip,
                    ready: pods::ready(&self.paths, cluster, p),
                    labels: p.template.labels.clone(),
                });
            }
            services.extend(res.services.values().cloned());
        }
        Ok(LabStatus {
            name: st.name.clone(),
            topology: st.topology.clone(),
            agents: agents_out,
            pods: pods_out,
            services,
        })
    }

    /// Resolves `CLUSTER/NAMESPACE/POD` or `CLUSTER/NAMESPACE/deploy/NAME` to a pod.
    pub fn find_pod(&self, target: &str) -> Result<(String, PodRecord), LabError> {
        let st = self.require()?;
        let parts: Vec<&str> = target.split('/').collect();
        let bad = || {
            LabError::NotFound(format!(
                "{target:?}: expected CLUSTER/NAMESPACE/POD or CLUSTER/NAMESPACE/deploy/NAME"
            ))
        };
        let (cluster, ns, deploy, name) = match parts.as_slice() {
            [c, ns, pod] => (*c, *ns, false, *pod),
            [c, ns, "deploy" | "deployment", d] => (*c, *ns, true, *d),
            _ => return Err(bad()),
        };
        let res = st
            .clusters
            .get(cluster)
            .ok_or_else(|| LabError::NotFound(format!("cluster {cluster:?} is not in the lab")))?;
        let found = if deploy {
            let owner = format!("{ns}/{name}");
            res.pods
                .values()
                .find(|p| p.owner.as_deref() == Some(owner.as_str()))
        } else {
            res.pods.get(&format!("{ns}/{name}"))
        };
        found
            .cloned()
            .map(|p| (cluster.to_string(), p))
            .ok_or_else(|| {
                LabError::NotFound(format!("no pod {target} in lab {}", self.paths.name))
            })
    }

    /// Runs a command in a pod (its namespace and cgroup), like `kubectl exec`.
    pub fn exec(
        &self,
        target: &str,
        argv: &[String],
    ) -> Result<std::process::ExitStatus, LabError> {
        check_root()?;
        let (cluster, pod) = self.find_pod(target)?;
        let ns = self.paths.pod_netns(&cluster, &pod.namespace, &pod.name);
        let cg = self
            .paths
            .pod_cgroup(&cluster, &pod.node, &pod.namespace, &pod.name);
        Ok(process::run_attached(&ns, Some(&cg), argv)?)
    }
}

fn check_root() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::Precondition(
            "the lab creates network namespaces, cgroups and eBPF programs: run it as root".into(),
        ));
    }
    Ok(())
}

/// Writes via a temporary file and rename, so readers never see a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
