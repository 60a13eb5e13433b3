//! The agent's configuration: written by whoever starts the agent (the lab, or a DaemonSet's
//! config map), read once at start. Nothing else reads the environment.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default number of flows each agent keeps.
pub const DEFAULT_FLOW_RING: usize = 8192;
/// Port of the outbound listener that connect4 redirects pod connects to.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the HTTP/2 CONNECT tunnel listener between node proxies.
pub const TUNNEL_PORT: u16 = 15008;
/// Port of the admin API on the node's underlay address.
pub const ADMIN_PORT: u16 = 9876;
/// Port of the admin API's TLS listener (client certificate required) on the underlay address.
pub const ADMIN_TLS_PORT: u16 = 9877;

/// Everything an agent needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub cluster: String,
    pub node: String,
    /// The cluster's state file (`sources::lab::LabClusterState`), replaced atomically by its writer.
    pub state_file: PathBuf,
    /// cgroup v2 directory holding this node's pods; the socket programs attach here.
    pub cgroup: PathBuf,
    /// bpffs directory for this node's pinned maps and links.
    pub bpf_pin_dir: PathBuf,
    /// Listener for redirected pod connections (the node's gateway address).
    pub outbound: SocketAddrV4,
    /// Listener for tunnels from other nodes' proxies.
    pub tunnel: SocketAddr,
    /// Cluster DNS server address, if this agent serves DNS.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    pub admin_socket: PathBuf,
    /// Plain TCP admin listener: `/healthz` and `/metrics` only.
    #[serde(default)]
    pub admin_tcp: Option<SocketAddr>,
    /// TLS admin listener serving every route to clients with a certificate of this cluster's
    /// CA (off unless set).
    #[serde(default)]
    pub admin_tls: Option<SocketAddr>,
    #[serde(default = "default_ring")]
    pub flow_ring_capacity: usize,
    /// Label HTTP metrics with pod names too (unbounded cardinality; off by default).
    #[serde(default)]
    pub metrics_pod_labels: bool,
    /// Close live connections a new policy revision denies (proxied ones by the proxy,
    /// kernel-path ones by the socket iterator and tc). On by default, as in Cilium.
    #[serde(default = "default_true")]
    pub rejudge_on_update: bool,
    /// Send connections that policy allows at L4 to a pod straight there, balanced in the
    /// kernel (Cilium's socket LB), instead of through the proxy. On by default; off sends every
    /// pod TCP connection through the proxy.
    #[serde(default = "default_true")]
    pub kernel_fast_path: bool,
    /// Endpoint selectors that name no cluster select only this cluster's endpoints (Cilium's
    /// `policy-default-local-cluster`, default since 1.18); `false` keeps the old behaviour of
    /// selecting matching endpoints of every connected cluster.
    #[serde(default = "default_true")]
    pub policy_default_local_cluster: bool,
    /// What the L7 proxy does with `%2F`, `%5C` and `\` in a request path (default: reject with
    /// `400`), since backends disagree on whether they separate path segments.
    #[serde(default)]
    pub http_path_escaped_slashes: EscapedSlashes,
    /// Mutual TLS of the tunnel between node proxies.
    pub tls: TlsConfig,
    /// Seconds a remote cluster of the mesh may stay unreachable before its state is withdrawn.
    #[serde(default = "default_mesh_ttl")]
    pub mesh_ttl_secs: u64,
    /// Directory where the agent keeps each mesh peer's last served state, so a restarted agent
    /// serves it (within the TTL) until its new sync completes; none: a restart starts empty.
    #[serde(default)]
    pub mesh_state_dir: Option<PathBuf>,
}

/// Default port of a cluster's mesh endpoint (UDP, QUIC), as Cilium's clustermesh-apiserver.
pub const MESH_PORT: u16 = 32379;

/// Everything a cluster's mesh endpoint (`strait clustermesh-endpoint`) needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshEndpointConfig {
    pub cluster: String,
    /// The cluster's state file, read with the agents' code; its `mesh` section names the
    /// clusters whose CAs are trusted.
    pub state_file: PathBuf,
    /// UDP address the endpoint listens on.
    pub listen: SocketAddr,
    /// The CA the endpoint issues its mesh certificate with (the lab's stand-in for a CSR).
    pub issuer: IssuerFiles,
    /// Written (atomically) after every change: listen address and trusted clusters, so the
    /// lab knows when a connect is in force.
    pub status_file: PathBuf,
    #[serde(default = "default_cert_validity")]
    pub cert_validity_secs: u64,
}

/// Default of [`AgentConfig::mesh_ttl_secs`]: how long Strait keeps a remote cluster's state
/// while it is unreachable.
pub const DEFAULT_MESH_TTL_SECS: u64 = 30;

/// Default of [`AgentConfig::mesh_ttl_secs`].
pub fn default_mesh_ttl() -> u64 {
    DEFAULT_MESH_TTL_SECS
}

/// Treatment of encoded slashes (`%2F`), encoded backslashes (`%5C`) and raw backslashes in an
/// HTTP request path, after Envoy's `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Answer `400 Bad Request`: the rule and the backend could read a different path.
    #[default]
    Reject,
    /// Judge and forward them unchanged: safe only if no backend decodes them into separators.
    Keep,
    /// Decode them into `/` before dot segments are removed, so judge and backend agree.
    Decode,
}

/// Default validity of node certificates: a day, renewed at two thirds.
pub const DEFAULT_CERT_VALIDITY_SECS: u64 = 24 * 3600;

/// The node's certificate, key and trust for tunnels between node proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificates whose node certificates are believed, each for one cluster (this
    /// cluster's; the cluster mesh adds its peers').
    pub trust: Vec<TrustedCaFile>,
    /// This node's private key (PEM); created with mode 0600 on first start, reused after.
    pub node_key: PathBuf,
    /// Where the agent writes its current certificate (PEM).
    pub node_cert: PathBuf,
    /// The CA the agent issues its own certificate with. The lab's stand-in for a CSR service:
    /// a real deployment keeps the CA key off the nodes and has the agent request a certificate.
    pub issuer: IssuerFiles,
    /// Validity of the node certificate in seconds; it is renewed at two thirds of that.
    #[serde(default = "default_cert_validity")]
    pub cert_validity_secs: u64,
}

/// A CA certificate trusted for one cluster's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedCaFile {
    pub cluster: String,
    pub ca_cert: PathBuf,
}

/// A CA certificate and its key (PEM files; the key 0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

fn default_cert_validity() -> u64 {
    DEFAULT_CERT_VALIDITY_SECS
}

fn default_true() -> bool {
    true
}

fn default_ring() -> usize {
    DEFAULT_FLOW_RING
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
}

impl AgentConfig {
    /// Reads a JSON agent configuration.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        read_json(path)
    }
}

impl MeshEndpointConfig {
    /// Reads a JSON mesh endpoint configuration.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        read_json(path)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
        file,
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<AgentConfig, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"cluster": "c1", "node": "n1", "state_file": "/s", "cgroup": "/c",
                "bpf_pin_dir": "/b", "outbound": "10.0.0.1:15001", "tunnel": "10.0.0.1:15008",
                "admin_socket": "/a",
                "tls": {{"trust": [{{"cluster": "c1", "ca_cert": "/ca.crt"}}],
                         "node_key": "/n.key", "node_cert": "/n.crt",
                         "issuer": {{"ca_cert": "/ca.crt", "ca_key": "/ca.key"}}}}{extra}}}"#
        ))
    }

    #[test]
    fn escaped_slashes_default_to_reject_and_parse_by_name() {
        let cfg = parse("").expect("minimal config");
        assert_eq!(cfg.http_path_escaped_slashes, EscapedSlashes::Reject);
        assert_eq!(cfg.mesh_ttl_secs, 30, "Cilium-like default TTL");
        assert_eq!(parse(r#", "mesh_ttl_secs": 5"#).unwrap().mesh_ttl_secs, 5);
        for (name, want) in [
            ("reject", EscapedSlashes::Reject),
            ("keep", EscapedSlashes::Keep),
            ("decode", EscapedSlashes::Decode),
        ] {
            let cfg = parse(&format!(r#", "http_path_escaped_slashes": "{name}""#)).expect(name);
            assert_eq!(cfg.http_path_escaped_slashes, want);
        }
        let err = parse(r#", "http_path_escaped_slashes": "unescape""#).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown variant `unescape`"),
            "{err}"
        );
    }
}
