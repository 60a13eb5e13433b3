//! The flow record: one per proxied connection, the unit `strait observe` shows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use strait_ebpf::DropReason;

use crate::model::Labels;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
    Error,
    Audit,
}

/// Where a flow's verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    /// The eBPF programs (a refused connect or a dropped packet).
    Kernel,
    /// The node proxy.
    Proxy,
}

impl DecidedBy {
    /// The JSON value and metric label: `kernel` or `proxy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Kernel => "kernel",
            DecidedBy::Proxy => "proxy",
        }
    }
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the connection this node's proxy handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Direction {
    /// The source pod is on this node.
    Egress,
    /// The connection arrived through a tunnel from another node's proxy.
    Ingress,
}

/// One end of a flow. Pod fields are empty for addresses outside the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    pub ip: Option<IpAddr>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: SharedLabels,
    /// Numeric security identity; 0 when unknown.
    #[serde(default)]
    pub identity: u32,
}

/// A pod's labels as a flow carries them: one allocation shared by every flow of pods with the
/// same labels (a full ring otherwise holds thousands of copies of the same few maps). Reads
/// and writes like a [`Labels`] map; serialises as one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SharedLabels(Arc<Labels>);

/// Label sets handed out by [`SharedLabels::interned`]; cleared when it reaches this many.
const INTERNED_MAX: usize = 4096;

static INTERNED: LazyLock<Mutex<HashMap<Labels, SharedLabels>>> = LazyLock::new(Mutex::default);

// === impl SharedLabels ===

impl SharedLabels {
    /// `labels` shared with every earlier flow that carried an equal set.
    pub fn interned(labels: &Labels) -> Self {
        if labels.is_empty() {
            return Self::default();
        }
        let mut interned = INTERNED.lock();
        if let Some(shared) = interned.get(labels) {
            return shared.clone();
        }
        // Label sets come from pods, so this stays small; a churn of pods cannot grow it forever.
        if interned.len() >= INTERNED_MAX {
            interned.clear();
        }
        let shared = Self(Arc::new(labels.clone()));
        interned.insert(labels.clone(), shared.clone());
        shared
    }
}

impl Deref for SharedLabels {
    type Target = Labels;

    fn deref(&self) -> &Labels {
        &self.0
    }
}

impl DerefMut for SharedLabels {
    /// Copies the set first when other flows share it.
    fn deref_mut(&mut self) -> &mut Labels {
        Arc::make_mut(&mut self.0)
    }
}

impl From<Labels> for SharedLabels {
    fn from(labels: Labels) -> Self {
        Self(Arc::new(labels))
    }
}

impl<const N: usize> From<[(String, String); N]> for SharedLabels {
    fn from(pairs: [(String, String); N]) -> Self {
        Self(Arc::new(pairs.into()))
    }
}

impl FromIterator<(String, String)> for SharedLabels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(Arc::new(iter.into_iter().collect()))
    }
}

/// A service the client addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// One connection through a node proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the connection was accepted, RFC 3339 with nanoseconds in JSON.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// Node whose agent recorded the flow.
    pub node: String,
    /// Cluster of that node.
    pub cluster: String,
    pub direction: Direction,
    pub protocol: String,
    pub source: FlowPeer,
    /// The chosen backend (after service translation).
    pub destination: FlowPeer,
    /// The address the client dialed (a service VIP or a pod IP).
    pub original_destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<DropReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Peer node whose proxy received the connection through the tunnel, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_peer: Option<String>,
    /// Bytes from the client towards the server.
    pub bytes_sent: u64,
    /// Bytes from the server back to the client.
    pub bytes_received: u64,
    /// Connection lifetime in microseconds.
    pub duration_us: u64,
    /// Where the verdict was reached: `kernel` (eBPF) or `proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
    /// The policy rules that decided, as `namespace/name: spec.path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The HTTP request, for flows of one L7 request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFlow>,
    /// Whether the flow crossed the underlay encrypted (WireGuard between clusters).
    #[serde(default)]
    pub encrypted: bool,
}

/// One HTTP request and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFlow {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Response status; absent when no response was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Time from request to response headers, in microseconds.
    pub latency_us: u64,
}

impl FlowRecord {
    /// Nanoseconds since the Unix epoch, for ordering merged streams.
    pub fn unix_nanos(&self) -> u128 {
        self.time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos()
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_and_decider_keep_their_json_spelling() {
        let mut f = crate::flows::test_flow(1, 1);
        f.verdict = Verdict::Dropped;
        f.drop_reason = Some(DropReason::NotLocalEndpoint);
        f.decided_by = Some(DecidedBy::Kernel);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["drop_reason"], "NOT_LOCAL_ENDPOINT");
        assert_eq!(json["decided_by"], "kernel");
        let back: FlowRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, f);
        let mut unknown = json;
        unknown["drop_reason"] = "NOT_A_REASON".into();
        assert!(serde_json::from_value::<FlowRecord>(unknown).is_err());
    }

    #[test]
    fn shared_labels_serialise_as_a_map_and_are_shared_between_flows() {
        let labels: Labels = [("app".to_string(), "web".to_string())].into();
        let (a, b) = (
            SharedLabels::interned(&labels),
            SharedLabels::interned(&labels),
        );
        assert!(Arc::ptr_eq(&a.0, &b.0), "equal label sets share one map");
        let mut f = crate::flows::test_flow(1, 1);
        f.source.labels = a.clone();
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["source"]["labels"], serde_json::json!({"app": "web"}));
        assert!(json["destination"].get("labels").is_none());
        let back: FlowRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.source.labels, a);
        // Writing through one flow's labels leaves the others alone.
        let mut c = b.clone();
        c.insert("tier".into(), "front".into());
        assert_eq!(b.len(), 1);
        assert_eq!(c.len(), 2);
    }
}
