//! The node proxy: takes the connections the eBPF programs redirect, routes them to a local pod or
//! through another node's proxy, and records a flow for each.

pub mod conn;
pub mod l7;
pub mod outbound;
pub mod tables;
pub mod tunnel;

use std::net::SocketAddrV4;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::flows::FlowRing;
use conn::ConnRecord;
use tables::ProxyTables;
use tunnel::TunnelPool;

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
    original_dst: Arc<dyn OriginalDst>,
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
            pool: TunnelPool::default(),
            original_dst,
        }
    }

    /// The tables in force now.
    pub fn tables(&self) -> Arc<ProxyTables> {
        self.tables.load_full()
    }

    /// Installs new tables; connections already routed keep going.
    pub fn swap_tables(&self, tables: Arc<ProxyTables>) {
        self.tables.store(tables);
    }

    /// Records a finished connection.
    pub fn record(&self, rec: ConnRecord) {
        self.flows.record(rec.finish());
    }

    /// The flow ring, for the admin API.
    pub fn flows(&self) -> &Arc<FlowRing> {
        &self.flows
    }
}
