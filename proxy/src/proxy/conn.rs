//! One record per connection: what the proxy learnt about it, turned into a flow when it ends.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::flows::{Direction, FlowPeer, FlowRecord, ServiceRef, Verdict};
use crate::proxy::tables::EndpointInfo;

/// A flow end from what the tables know about an address.
pub fn peer(cluster: &str, endpoint: Option<&EndpointInfo>, addr: SocketAddr) -> FlowPeer {
    match endpoint {
        Some(ep) => FlowPeer {
            ip: Some(addr.ip()),
            port: addr.port(),
            cluster: cluster.to_string(),
            namespace: ep.namespace.clone(),
            pod: ep.name.clone(),
            workload: ep.workload.clone(),
            node: Some(ep.node.clone()),
            labels: ep.labels.clone(),
            identity: ep.identity,
        },
        None => FlowPeer {
            ip: Some(addr.ip()),
            port: addr.port(),
            identity: crate::identity::reserved::WORLD,
            ..FlowPeer::default()
        },
    }
}

/// Collects a connection's facts while it runs.
#[derive(Debug)]
pub struct ConnRecord {
    started: Instant,
    pub record: FlowRecord,
}

impl ConnRecord {
    /// Starts a record for a connection accepted now.
    pub fn start(node: &str, cluster: &str, direction: Direction, source: FlowPeer) -> Self {
        Self {
            started: Instant::now(),
            record: FlowRecord {
                time: SystemTime::now(),
                node: node.to_string(),
                cluster: cluster.to_string(),
                direction,
                protocol: "TCP".into(),
                source,
                destination: FlowPeer::default(),
                original_destination: String::new(),
                service: None,
                verdict: Verdict::Forwarded,
                drop_reason: None,
                error: None,
                tunnel_peer: None,
                bytes_sent: 0,
                bytes_received: 0,
                duration_us: 0,
                decided_by: None,
                policies: Vec::new(),
                http: None,
                encrypted: false,
            },
        }
    }

    /// Sets where the client wanted to go and where it went.
    pub fn destination(&mut self, original: String, service: Option<ServiceRef>, dst: FlowPeer) {
        self.record.original_destination = original;
        self.record.service = service;
        self.record.destination = dst;
    }

    /// Marks the connection dropped for `reason` (a `DropReason` name).
    pub fn dropped(&mut self, reason: &str) {
        self.record.verdict = Verdict::Dropped;
        self.record.drop_reason = Some(reason.to_string());
    }

    /// Marks the connection failed.
    pub fn error(&mut self, err: impl std::fmt::Display) {
        self.record.verdict = Verdict::Error;
        self.record.error = Some(err.to_string());
    }

    /// Adds byte counts (client→server, server→client).
    pub fn bytes(&mut self, sent: u64, received: u64) {
        self.record.bytes_sent += sent;
        self.record.bytes_received += received;
    }

    /// The finished record.
    pub fn finish(mut self) -> FlowRecord {
        self.record.duration_us =
            u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.record
    }
}
