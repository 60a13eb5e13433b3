//! Starting node agents and waiting until they serve, through their admin Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use super::paths::LabPaths;
use super::process;
use super::topology::{ClusterSpec, NodeSpec};
use crate::config::{
    ADMIN_PORT, ADMIN_TLS_PORT, AgentConfig, DEFAULT_CERT_VALIDITY_SECS, DEFAULT_FLOW_RING,
    EscapedSlashes, IssuerFiles, OUTBOUND_PORT, TUNNEL_PORT, TlsConfig, TrustedCaFile,
};

/// An agent that did not come up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {cluster}/{node}: {what}")]
    Io {
        cluster: String,
        node: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NotReady(Box<NotReady>),
    #[error(transparent)]
    Spawn(#[from] process::SpawnError),
    #[error("CA of cluster {cluster}")]
    Pki {
        cluster: String,
        #[source]
        source: crate::pki::PkiError,
    },
}

/// An agent that did not become ready in time, with the end of its log.
#[derive(Debug, thiserror::Error)]
#[error("agent {cluster}/{node}: {reason}\n--- last lines of {log} ---\n{tail}")]
pub struct NotReady {
    pub cluster: String,
    pub node: String,
    pub reason: String,
    pub log: String,
    pub tail: String,
}

/// The agent configuration the lab writes for a node.
pub fn config_for(paths: &LabPaths, c: &ClusterSpec, n: &NodeSpec) -> AgentConfig {
    AgentConfig {
        cluster: c.name.clone(),
        node: n.name.clone(),
        state_file: paths.cluster_state_file(&c.name),
        cgroup: paths.node_cgroup(&c.name, &n.name),
        bpf_pin_dir: paths.node_bpf_dir(&c.name, &n.name),
        outbound: std::net::SocketAddrV4::new(n.gateway, OUTBOUND_PORT),
        tunnel: (n.underlay_ip, TUNNEL_PORT).into(),
        dns: Some((n.gateway, 53).into()),
        admin_socket: paths.admin_socket(&c.name, &n.name),
        admin_tcp: Some((n.underlay_ip, ADMIN_PORT).into()),
        admin_tls: Some((n.underlay_ip, ADMIN_TLS_PORT).into()),
        flow_ring_capacity: DEFAULT_FLOW_RING,
        metrics_pod_labels: false,
        rejudge_on_update: true,
        kernel_fast_path: true,
        policy_default_local_cluster: true,
        http_path_escaped_slashes: EscapedSlashes::default(),
        tls: TlsConfig {
            trust: vec![TrustedCaFile {
                cluster: c.name.clone(),
                ca_cert: paths.cluster_ca_cert(&c.name),
            }],
            node_key: paths.node_key(&c.name, &n.name),
            node_cert: paths.node_cert(&c.name, &n.name),
            issuer: IssuerFiles {
                ca_cert: paths.cluster_ca_cert(&c.name),
                ca_key: paths.cluster_ca_key(&c.name),
            },
            cert_validity_secs: DEFAULT_CERT_VALIDITY_SECS,
        },
        mesh_ttl_secs: c
            .mesh_ttl_secs
            .unwrap_or_else(crate::config::default_mesh_ttl),
        mesh_state_dir: Some(paths.node_dir(&c.name, &n.name).join("mesh")),
    }
}

/// Creates the cluster's CA in the lab's state directory unless it is there already (agents
/// of a running cluster keep trusting the CA they started with).
pub fn ensure_ca(paths: &LabPaths, cluster: &str) -> Result<(), AgentError> {
    let (cert, key) = (
        paths.cluster_ca_cert(cluster),
        paths.cluster_ca_key(cluster),
    );
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let pki = |source| AgentError::Pki {
        cluster: cluster.to_string(),
        source,
    };
    if let Some(dir) = key.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AgentError::Io {
                cluster: cluster.to_string(),
                node: String::new(),
                what: "create PKI directory",
                source,
            })?;
    }
    crate::pki::ClusterCa::create(cluster)
        .and_then(|ca| ca.save(&cert, &key))
        .map_err(pki)
}

/// Writes the node's agent config and starts the agent in the node's namespace. Returns its PID.
pub fn start(paths: &LabPaths, c: &ClusterSpec, n: &NodeSpec) -> Result<i32, AgentError> {
    let io = |what, source| AgentError::Io {
        cluster: c.name.clone(),
        node: n.name.clone(),
        what,
        source,
    };
    ensure_ca(paths, &c.name)?;
    let dir = paths.node_dir(&c.name, &n.name);
    std::fs::create_dir_all(&dir).map_err(|e| io("create state directory", e))?;
    let cfg = config_for(paths, c, n);
    let cfg_path = dir.join("agent.json");
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| io("encode config", e.into()))?;
    std::fs::write(&cfg_path, json).map_err(|e| io("write config", e))?;
    let exe = std::env::current_exe().map_err(|e| io("find own executable", e))?;
    let argv = vec![
        exe.display().to_string(),
        "agent".into(),
        "--config".into(),
        cfg_path.display().to_string(),
    ];
    let pid = process::spawn_detached(
        &paths.node_netns(&c.name, &n.name),
        None,
        process::Enter::NetworkOnly,
        &argv,
        &dir.join("agent.log"),
    )?;
    std::fs::write(dir.join("agent.pid"), pid.to_string()).map_err(|e| io("write pid file", e))?;
    Ok(pid)
}

/// Waits until the agent answers on its admin socket with a model at least at `revision`.
pub fn wait_ready(
    paths: &LabPaths,
    cluster: &str,
    node: &str,
    pid: Option<i32>,
    revision: u64,
    timeout: Duration,
) -> Result<(), AgentError> {
    let socket = paths.admin_socket(cluster, node);
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(pid) = pid
            && !process::alive(pid)
        {
            last = "the agent exited".into();
            break;
        }
        match status_blocking(&socket) {
            Ok(v) => {
                let have = v
                    .get("source_revision")
                    .and_then(|r| r.as_u64())
                    .unwrap_or(0);
                if v.get("ready").and_then(|r| r.as_bool()) == Some(true) && have >= revision {
                    return Ok(());
                }
                last = format!("at revision {have}, waiting for {revision}");
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let log = paths.node_dir(cluster, node).join("agent.log");
    Err(AgentError::NotReady(Box::new(NotReady {
        cluster: cluster.into(),
        node: node.into(),
        reason: last,
        tail: tail(&log, 15),
        log: log.display().to_string(),
    })))
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET /status from an agent's admin socket, from synchronous code.
pub fn status_blocking(socket: &Path) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let agent = crate::admin::client::AgentEndpoint {
        cluster: String::new(),
        node: String::new(),
        socket: socket.to_path_buf(),
    };
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), crate::admin::client::status(&agent))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| crate::errors::chain(&e))
    })
}
