//! Pods: a network namespace wired to its node, a cgroup below the node's, and processes.

use std::path::PathBuf;

use super::cgroup::{self, CgroupError};
use super::netns::{self, NetError};
use super::paths::LabPaths;
use super::process::{self, SpawnError};
use super::state::PodRecord;
use super::topology::{ClusterSpec, NodeSpec};

/// A pod that could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}")]
    Net {
        pod: String,
        #[source]
        source: NetError,
    },
    #[error("pod {pod}")]
    Cgroup {
        pod: String,
        #[source]
        source: CgroupError,
    },
    #[error("pod {pod}")]
    Spawn {
        pod: String,
        #[source]
        source: SpawnError,
    },
    #[error("pod {pod}: {what} {path}")]
    Io {
        pod: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Host-side interface name of a pod's veth: unique per node, at most 15 characters.
pub fn host_ifname(namespace: &str, pod: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{namespace}/{pod}").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("lxc{h:08x}")
}

/// Port of the built-in echo workload when a pod declares none.
const DEFAULT_ECHO_PORT: u16 = 80;

/// Creates the pod's namespace, veth, routes, resolv.conf and cgroup, then starts its containers.
/// Returns the PIDs of the started processes.
pub fn start(
    paths: &LabPaths,
    cluster: &ClusterSpec,
    node: &NodeSpec,
    pod: &PodRecord,
) -> Result<Vec<i32>, PodError> {
    let key = format!("{}/{}/{}", cluster.name, pod.namespace, pod.name);
    let net = |source| PodError::Net {
        pod: key.clone(),
        source,
    };
    let io = |what, path: PathBuf, source| PodError::Io {
        pod: key.clone(),
        what,
        path,
        source,
    };
    let pod_ns = paths.pod_netns(&cluster.name, &pod.namespace, &pod.name);
    let node_ns = paths.node_netns(&cluster.name, &node.name);
    // A leftover from an interrupted run would make every step below fail.
    netns::delete(&pod_ns).map_err(net)?;
    netns::create(&pod_ns).map_err(net)?;

    let etc = LabPaths::etc_netns(&pod_ns);
    std::fs::create_dir_all(&etc).map_err(|e| io("create", etc.clone(), e))?;
    let resolv = format!(
        "# written by strait lab\nnameserver {gw}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        gw = node.gateway,
        ns = pod.namespace
    );
    std::fs::write(etc.join("resolv.conf"), resolv)
        .map_err(|e| io("write", etc.join("resolv.conf"), e))?;
    let hosts = format!(
        "127.0.0.1 localhost\n{ip} {name}.{ns}.pod.cluster.local {name}\n",
        ip = pod.ip,
        name = pod.name,
        ns = pod.namespace
    );
    std::fs::write(etc.join("hosts"), hosts).map_err(|e| io("write", etc.join("hosts"), e))?;

    let lxc = host_ifname(&pod.namespace, &pod.name);
    // The old pair survives its namespace's deletion while a stray process still holds that
    // namespace (a `lab exec` left running): remove its host side, or the new pair cannot be
    // made. Absent is the normal case.
    let _ = netns::ip(&["-n", &node_ns, "link", "del", &lxc]);
    netns::ip_batch(
        Some(&node_ns),
        &[
            format!("link add {lxc} type veth peer name eth0 netns {pod_ns}"),
            format!("link set {lxc} up"),
            format!("route add {}/32 dev {lxc} src {}", pod.ip, node.gateway),
        ],
    )
    .map_err(net)?;
    netns::ip_batch(
        Some(&pod_ns),
        &[
            format!("addr add {}/32 dev eth0", pod.ip),
            "link set eth0 up".into(),
            format!("route add {} dev eth0 scope link", node.gateway),
            format!("route add default via {} dev eth0", node.gateway),
        ],
    )
    .map_err(net)?;

    let cg = paths.pod_cgroup(&cluster.name, &node.name, &pod.namespace, &pod.name);
    cgroup::create(&cg).map_err(|source| PodError::Cgroup {
        pod: key.clone(),
        source,
    })?;
    let dir = paths.pod_dir(&cluster.name, &pod.namespace, &pod.name);
    std::fs::create_dir_all(&dir).map_err(|e| io("create", dir.clone(), e))?;
    let _ = std::fs::remove_file(dir.join("ready"));

    let mut pids = Vec::new();
    let mut echo_ports: Vec<u16> = Vec::new();
    let mut any_echo = false;
    for c in &pod.template.containers {
        if c.argv.is_empty() {
            any_echo = true;
            echo_ports.extend(c.ports.iter().map(|p| p.port));
            continue;
        }
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(c.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(c.argv.iter().cloned());
        let log = dir.join(format!("{}.log", c.name));
        pids.push(
            process::spawn_detached(&pod_ns, Some(&cg), process::Enter::Pod, &argv, &log).map_err(
                |source| PodError::Spawn {
                    pod: key.clone(),
                    source,
                },
            )?,
        );
    }
    if any_echo {
        if echo_ports.is_empty() {
            echo_ports.push(DEFAULT_ECHO_PORT);
        }
        echo_ports.sort_unstable();
        echo_ports.dedup();
        let exe =
            std::env::current_exe().map_err(|e| io("find", PathBuf::from("own executable"), e))?;
        let mut argv = vec![
            exe.display().to_string(),
            "lab".into(),
            "workload".into(),
            "--cluster".into(),
            cluster.name.clone(),
            "--namespace".into(),
            pod.namespace.clone(),
            "--pod".into(),
            pod.name.clone(),
            "--node".into(),
            node.name.clone(),
            "--ip".into(),
            pod.ip.to_string(),
            "--ready-file".into(),
            dir.join("ready").display().to_string(),
        ];
        for p in echo_ports {
            argv.push("--port".into());
            argv.push(p.to_string());
        }
        pids.push(
            process::spawn_detached(
                &pod_ns,
                Some(&cg),
                process::Enter::Pod,
                &argv,
                &dir.join("echo.log"),
            )
            .map_err(|source| PodError::Spawn {
                pod: key.clone(),
                source,
            })?,
        );
    } else {
        // Pods running their own command are ready once started; there are no probes yet.
        std::fs::write(dir.join("ready"), b"").map_err(|e| io("write", dir.join("ready"), e))?;
    }
    Ok(pids)
}

/// What the running pod looks like to its node: readiness, cgroup ID, host interface.
pub fn runtime(paths: &LabPaths, cluster: &str, pod: &PodRecord) -> super::state::PodRuntime {
    use std::os::unix::fs::MetadataExt;
    let cg = paths.pod_cgroup(cluster, &pod.node, &pod.namespace, &pod.name);
    super::state::PodRuntime {
        ready: ready(paths, cluster, pod),
        // A cgroup v2 directory's inode number is the ID the kernel reports for it.
        cgroup_id: std::fs::metadata(&cg).ok().map(|m| m.ino()),
        host_ifname: Some(host_ifname(&pod.namespace, &pod.name)),
    }
}

/// Whether the pod's processes are up and its workload said it is serving.
pub fn ready(paths: &LabPaths, cluster: &str, pod: &PodRecord) -> bool {
    !pod.pids.is_empty()
        && pod.pids.iter().all(|p| process::alive(*p))
        && paths
            .pod_dir(cluster, &pod.namespace, &pod.name)
            .join("ready")
            .exists()
}

/// Stops the pod's processes and removes its cgroup, namespace and files.
pub fn stop(paths: &LabPaths, cluster: &str, pod: &PodRecord) -> Result<(), PodError> {
    let key = format!("{cluster}/{}/{}", pod.namespace, pod.name);
    for pid in &pod.pids {
        process::kill_group(*pid);
    }
    let cg = paths.pod_cgroup(cluster, &pod.node, &pod.namespace, &pod.name);
    cgroup::remove_tree(&cg).map_err(|source| PodError::Cgroup {
        pod: key.clone(),
        source,
    })?;
    let pod_ns = paths.pod_netns(cluster, &pod.namespace, &pod.name);
    for pid in netns::pids(&pod_ns) {
        process::kill_one(pid);
    }
    netns::delete(&pod_ns).map_err(|source| PodError::Net {
        pod: key.clone(),
        source,
    })?;
    let _ = std::fs::remove_dir_all(LabPaths::etc_netns(&pod_ns));
    let _ = std::fs::remove_dir_all(paths.pod_dir(cluster, &pod.namespace, &pod.name));
    Ok(())
}
