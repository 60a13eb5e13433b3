//! Kernel drop events (eBPF ring buffer) → flow records, resolved against the proxy's tables
//! (which know pods, services and policy as the kernel's maps were filled from them).

use std::net::SocketAddr;

use strait_ebpf::{DropEvent, DropHook, abi::ip_protocol_name};

use super::conn::peer;
use super::tables::ProxyTables;
use crate::flows::{DecidedBy, Direction, FlowPeer, FlowRecord, ServiceRef, Verdict};

/// The flow record of a packet or connect the kernel refused, resolved against `tables`.
pub fn flow_from_drop(ev: &DropEvent, tables: &ProxyTables) -> FlowRecord {
    let cluster = tables.cluster.name.as_str();
    let src_ep = match ev.hook {
        // connect hooks know the pod by its cgroup; its address is not bound yet.
        DropHook::Connect4 | DropHook::Connect6 => tables
            .endpoint_by_cgroup(ev.cgroup_id)
            .or_else(|| tables.endpoint(*ev.src.ip())),
        _ => tables.endpoint(*ev.src.ip()),
    };
    let mut source = match src_ep {
        Some(ep) => peer(
            cluster,
            Some(ep),
            SocketAddr::new(ep.ip.into(), ev.src.port()),
        ),
        None => peer(cluster, None, ev.src.into()),
    };
    source.identity = ev.src_identity;
    let service = tables.services.get(&ev.dst).map(|s| s.service.clone());
    let mut destination: FlowPeer = match (&service, tables.endpoint(*ev.dst.ip())) {
        (None, Some(ep)) => peer(cluster, Some(ep), ev.dst.into()),
        _ => peer(cluster, None, ev.dst.into()),
    };
    if let Some(svc) = &service
        && let Some(entry) = tables.services.get(&ev.dst)
        && let Some(b) = entry
            .backends
            .iter()
            .find(|b| b.endpoint.identity == ev.dst_identity)
    {
        // A refused service connect names the backend identity that policy denied.
        destination = peer(cluster, Some(&b.endpoint), b.addr.into());
        let _: &ServiceRef = svc;
    }
    destination.identity = ev.dst_identity;
    // The rules that made the kernel refuse, from the same engine that filled its maps.
    let verdict = tables.policy.verdict(
        ev.src_identity,
        ev.dst_identity,
        ev.protocol,
        destination.port,
    );
    let policies = if verdict.allowed() {
        Vec::new()
    } else {
        verdict.deciding_rules()
    };
    FlowRecord {
        time: ev.time,
        node: tables.local_node.clone(),
        cluster: cluster.to_string(),
        direction: match ev.hook {
            DropHook::TcToPod => Direction::Ingress,
            _ => Direction::Egress,
        },
        protocol: ip_protocol_name(ev.protocol).into_owned(),
        source,
        destination,
        original_destination: ev.dst.to_string(),
        service,
        verdict: Verdict::Dropped,
        drop_reason: Some(ev.reason),
        error: None,
        tunnel_peer: None,
        bytes_sent: 0,
        bytes_received: 0,
        duration_us: 0,
        decided_by: Some(DecidedBy::Kernel),
        policies,
        http: None,
        encrypted: false,
    }
}
