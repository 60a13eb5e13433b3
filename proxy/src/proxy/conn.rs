//! Per-connection ownership: what the proxy learnt about a connection ([`ConnRecord`]), the guard
//! that turns it into exactly one flow however the connection ends ([`ConnGuard`]), and the
//! registry of live connections that a new policy revision re-judges ([`ConnRegistry`]).
//!
//! As ztunnel's connection manager does, each admitted connection is registered with the
//! identities and port it was admitted for; [`ConnRegistry::rejudge`] evaluates them against new
//! tables and signals those no longer allowed to close. The connection's task selects on
//! [`CloseSignal::closed`] next to its relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use strait_ebpf::abi::IPPROTO_TCP;
use tokio::sync::watch;

use crate::flows::{
    DecidedBy, Direction, DropReason, FlowPeer, FlowRecord, FlowRing, ServiceRef, SharedLabels,
    Verdict,
};
use crate::proxy::tables::{EndpointInfo, ProxyTables};

/// A flow end from what the tables know about an address.
pub fn peer(cluster: &str, endpoint: Option<&EndpointInfo>, addr: SocketAddr) -> FlowPeer {
    match endpoint {
        Some(ep) => FlowPeer {
            ip: Some(addr.ip()),
            port: addr.port(),
            cluster: ep.cluster.as_deref().unwrap_or(cluster).to_string(),
            namespace: ep.namespace.clone(),
            pod: ep.name.clone(),
            workload: ep.workload.clone(),
            node: Some(ep.node.clone()),
            labels: SharedLabels::interned(&ep.labels),
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

/// What a connection was admitted for: the policy question a new revision asks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Destination (target) port, TCP.
    pub port: u16,
}

/// Live connections of one proxy, by id.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, LiveConn>>,
}

#[derive(Debug)]
struct LiveConn {
    admission: Admission,
    /// `Some(rules)` once policy revoked the connection.
    close: watch::Sender<Option<Arc<[String]>>>,
}

/// Resolves when policy revokes the connection it belongs to.
#[derive(Debug, Clone)]
pub struct CloseSignal(watch::Receiver<Option<Arc<[String]>>>);

/// Owns one proxied connection from accept to end: writes exactly one flow record when dropped
/// (early return, error, panic unwinding or task cancellation alike), and while admitted is
/// registered so that a policy change can close it.
#[derive(Debug)]
pub struct ConnGuard {
    rec: ConnRecord,
    flows: Arc<FlowRing>,
    registry: Arc<ConnRegistry>,
    /// Set once admitted (registered).
    id: Option<u64>,
    signal: CloseSignal,
    close: Option<watch::Sender<Option<Arc<[String]>>>>,
    /// L7 connections record one flow per request instead; the guard then records only a close
    /// by policy.
    per_request: bool,
}

// === impl ConnRecord ===

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

    /// Marks the connection dropped for `reason`.
    pub fn dropped(&mut self, reason: DropReason) {
        self.record.verdict = Verdict::Dropped;
        self.record.drop_reason = Some(reason);
    }

    /// Marks the connection denied by the proxy's policy check, naming the deciding `rules`.
    pub fn denied(&mut self, rules: Vec<String>) {
        self.dropped(DropReason::PolicyDenied);
        self.record.decided_by = Some(DecidedBy::Proxy);
        self.record.policies = rules;
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

// === impl ConnRegistry ===

impl ConnRegistry {
    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.live.lock().is_empty()
    }

    /// Judges every live connection against `tables` and signals those no longer allowed to
    /// close; returns how many were told to close.
    pub fn rejudge(&self, tables: &ProxyTables) -> usize {
        let live = self.live.lock();
        live.values()
            .filter(|c| c.close.borrow().is_none() && revoke(&c.close, c.admission, tables))
            .count()
    }

    fn register(&self, admission: Admission, close: watch::Sender<Option<Arc<[String]>>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live.lock().insert(id, LiveConn { admission, close });
        id
    }

    fn deregister(&self, id: u64) {
        self.live.lock().remove(&id);
    }
}

/// Signals `close` when `tables` deny `admission`; whether it did.
fn revoke(
    close: &watch::Sender<Option<Arc<[String]>>>,
    admission: Admission,
    tables: &ProxyTables,
) -> bool {
    let v = tables.policy.verdict(
        admission.src_identity,
        admission.dst_identity,
        IPPROTO_TCP,
        admission.port,
    );
    if v.allowed() {
        return false;
    }
    close.send_replace(Some(v.deciding_rules().into()));
    true
}

// === impl CloseSignal ===

impl CloseSignal {
    /// Waits until policy revokes the connection; pending forever if it never does.
    pub async fn closed(mut self) {
        if self.0.wait_for(Option::is_some).await.is_err() {
            // The sender lives in the guard; gone means the connection is ending anyway.
            std::future::pending::<()>().await;
        }
    }

    fn rules(&self) -> Option<Arc<[String]>> {
        self.0.borrow().clone()
    }
}

// === impl ConnGuard ===

impl ConnGuard {
    /// A guard for a connection accepted now; it records into `flows`.
    pub fn new(rec: ConnRecord, flows: Arc<FlowRing>, registry: Arc<ConnRegistry>) -> Self {
        let (close, rx) = watch::channel(None);
        Self {
            rec,
            flows,
            registry,
            id: None,
            signal: CloseSignal(rx),
            close: Some(close),
            per_request: false,
        }
    }

    /// Registers the connection as admitted for `admission` under `judged_with`; if `current`
    /// tables were swapped in meanwhile (and re-judging is on), judges it again at once so that
    /// no revision is missed.
    pub fn admit(
        &mut self,
        admission: Admission,
        judged_with: &Arc<ProxyTables>,
        current: Option<&Arc<ProxyTables>>,
    ) {
        let Some(close) = self.close.take() else {
            return;
        };
        if let Some(now) = current
            && !Arc::ptr_eq(now, judged_with)
        {
            revoke(&close, admission, now);
        }
        self.id = Some(self.registry.register(admission, close));
    }

    /// Resolves when policy revokes this connection; select on it next to the relay.
    pub fn close_signal(&self) -> CloseSignal {
        self.signal.clone()
    }

    /// Switches to one flow per request (L7): returns the connection's record as the template
    /// each request's flow starts from. The guard then records a flow only if policy closes the
    /// connection.
    pub fn per_request(&mut self) -> FlowRecord {
        self.per_request = true;
        self.rec.record.clone()
    }

    fn finish(&mut self) -> Option<FlowRecord> {
        if let Some(rules) = self.signal.rules() {
            self.rec.denied(rules.to_vec());
        } else if self.per_request {
            return None;
        } else if std::thread::panicking() {
            self.rec.error("connection task panicked");
        }
        let direction = self.rec.record.direction;
        // The guard is being dropped: what is left behind is never read.
        let rec = std::mem::replace(
            &mut self.rec,
            ConnRecord::start("", "", direction, FlowPeer::default()),
        );
        Some(rec.finish())
    }
}

impl std::ops::Deref for ConnGuard {
    type Target = ConnRecord;

    fn deref(&self) -> &ConnRecord {
        &self.rec
    }
}

impl std::ops::DerefMut for ConnGuard {
    fn deref_mut(&mut self) -> &mut ConnRecord {
        &mut self.rec
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.registry.deregister(id);
        }
        if let Some(flow) = self.finish() {
            self.flows.record(flow);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
