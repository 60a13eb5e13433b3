//! The node proxy: takes the connections the eBPF programs redirect, routes them to a local pod or
//! through another node's proxy, and records a flow for each.

pub mod conn;
pub mod drops;
pub mod kflows;
pub mod l7;
pub mod outbound;
pub mod relay;
pub mod splice;
pub mod tables;
pub mod tls;
pub mod tunnel;

use std::net::SocketAddrV4;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::flows::{Direction, FlowPeer, FlowRing};
use conn::{ConnGuard, ConnRecord, ConnRegistry};
use tables::ProxyTables;
use tunnel::{Transport, TunnelPool};

/// Where the proxy learns a redirected connection's original destination (the eBPF maps in the
/// agent; a fixed table in tests).
pub trait OriginalDst: Send + Sync {
    /// Takes the original destination recorded for the client address `client`.
    fn take(&self, client: SocketAddrV4) -> Option<SocketAddrV4>;
}

/// State shared by all proxy listeners of a node.
pub struct Proxy {
    pub node: String,
    pub cluster: String,
    tables: ArcSwap<ProxyTables>,
    flows: Arc<FlowRing>,
    pool: TunnelPool,
    /// Upstream HTTP connections of L7 ports, shared across client connections.
    http_pool: Arc<l7::pool::UpstreamPool>,
    original_dst: Arc<dyn OriginalDst>,
    conns: Arc<ConnRegistry>,
    /// Whether new tables re-judge live connections and close those no longer allowed (the
    /// agent's default; off for a proxy built without an agent, in tests and benchmarks).
    rejudge_on_update: bool,
    /// How L7 request paths are normalised before they are judged and forwarded.
    http_paths: l7::path::PathOptions,
}

impl Proxy {
    /// A proxy starting with `tables`.
    pub fn new(
        tables: ProxyTables,
        flows: Arc<FlowRing>,
        original_dst: Arc<dyn OriginalDst>,
    ) -> Self {
        Self {
            node: tables.local_node.clone(),
            cluster: tables.cluster.name.clone(),
            tables: ArcSwap::from_pointee(tables),
            flows,
            pool: TunnelPool::new(Transport::InsecurePlaintext),
            http_pool: Arc::default(),
            original_dst,
            conns: Arc::default(),
            rejudge_on_update: false,
            http_paths: l7::path::PathOptions::default(),
        }
    }

    /// The same proxy, treating escaped slashes in L7 request paths as `escaped_slashes` says.
    #[must_use]
    pub fn http_path_escaped_slashes(
        mut self,
        escaped_slashes: crate::config::EscapedSlashes,
    ) -> Self {
        self.http_paths.escaped_slashes = escaped_slashes;
        self
    }

    /// The same proxy, closing live connections that new tables no longer allow when `on`.
    #[must_use]
    pub fn rejudge_on_update(mut self, on: bool) -> Self {
        self.rejudge_on_update = on;
        self
    }

    /// The same proxy carrying tunnels over `transport` (the agent always passes mTLS; a new
    /// proxy starts on plaintext, which only benchmarks and tests keep).
    #[must_use]
    pub fn tunnel_transport(mut self, transport: Transport) -> Self {
        self.pool = TunnelPool::new(transport);
        self
    }

    /// The tables in force now.
    pub fn tables(&self) -> Arc<ProxyTables> {
        self.tables.load_full()
    }

    /// Installs new tables. Connections already routed keep going unless re-judging is on,
    /// in which case those the new policy denies are closed ([`Proxy::rejudge`]).
    pub fn swap_tables(&self, tables: Arc<ProxyTables>) {
        self.tables.store(tables.clone());
        if self.rejudge_on_update {
            self.rejudge(&tables);
        }
    }

    /// Judges every live connection against `tables` and closes those no longer allowed (their
    /// flows say DROPPED, POLICY_DENIED, with the deciding rules); returns how many.
    pub fn rejudge(&self, tables: &ProxyTables) -> usize {
        let closed = self.conns.rejudge(tables);
        if closed > 0 {
            tracing::info!(closed, "policy change closed live connections");
        }
        closed
    }

    /// The guard of a connection accepted now from `source`.
    pub fn accept(&self, direction: Direction, source: FlowPeer) -> ConnGuard {
        ConnGuard::new(
            ConnRecord::start(&self.node, &self.cluster, direction, source),
            self.flows.clone(),
            self.conns.clone(),
        )
    }

    /// Registers `conn` as admitted for `admission` under `judged_with`.
    pub fn admit(
        &self,
        conn: &mut ConnGuard,
        admission: conn::Admission,
        judged_with: &Arc<ProxyTables>,
    ) {
        let current = self.rejudge_on_update.then(|| self.tables());
        conn.admit(admission, judged_with, current.as_ref());
    }

    /// Live (admitted, not yet ended) connections.
    pub fn live_connections(&self) -> usize {
        self.conns.len()
    }

    /// The flow ring, for the admin API.
    pub fn flows(&self) -> &Arc<FlowRing> {
        &self.flows
    }
}
