//! Flows of the kernel fast path (eBPF `strait_flowev` ring) → flow records, resolved against the
//! proxy's tables like the proxy's own, so `strait observe`, metrics and the UI see no difference
//! but `decided_by: kernel`.

use std::net::SocketAddr;

use strait_ebpf::{DropReason, FlowSide, KernelFlow, abi::ip_protocol_name};

use super::conn::peer;
use super::tables::ProxyTables;
use crate::flows::{DecidedBy, Direction, FlowRecord, Verdict};

/// The flow record of a connection (TCP: at its close) or flow (other protocols: its first
/// packet) that went pod to pod without the proxy.
pub fn flow_from_kernel(ev: &KernelFlow, tables: &ProxyTables) -> FlowRecord {
    let cluster = tables.cluster.name.as_str();
    let mut source = peer(
        cluster,
        tables.endpoint(*ev.src.ip()).map(AsRef::as_ref),
        SocketAddr::V4(ev.src),
    );
    source.identity = ev.src_identity;
    let mut destination = peer(
        cluster,
        tables.endpoint(*ev.dst.ip()).map(AsRef::as_ref),
        SocketAddr::V4(ev.dst),
    );
    destination.identity = ev.dst_identity;
    // Only the source's side knows the frontend it dialed (the destination sees the backend's
    // address, as Hubble's to-endpoint events do): naming a service there would be a guess.
    let service = ev
        .service
        .and_then(|frontend| tables.services.get(&frontend))
        .map(|s| s.service.clone());
    let (verdict, policies) = match ev.close_reason {
        None => (Verdict::Forwarded, Vec::new()),
        Some(reason) => (Verdict::Dropped, closing_rules(tables, ev, reason)),
    };
    FlowRecord {
        time: ev.time,
        node: tables.local_node.clone(),
        cluster: cluster.to_string(),
        direction: match ev.side {
            FlowSide::Egress => Direction::Egress,
            FlowSide::Ingress => Direction::Ingress,
        },
        protocol: ip_protocol_name(ev.protocol).into_owned(),
        source,
        destination,
        original_destination: ev.service.unwrap_or(ev.dst).to_string(),
        service,
        verdict,
        drop_reason: ev.close_reason,
        error: None,
        tunnel_peer: None,
        bytes_sent: ev.bytes_sent,
        bytes_received: ev.bytes_received,
        duration_us: u64::try_from(ev.duration.as_micros()).unwrap_or(u64::MAX),
        decided_by: Some(DecidedBy::Kernel),
        policies,
        http: None,
        encrypted: false,
    }
}

/// The rules that made Strait end a connection: the policy now in force for it.
fn closing_rules(tables: &ProxyTables, ev: &KernelFlow, reason: DropReason) -> Vec<String> {
    match reason {
        DropReason::PolicyDenied | DropReason::ProxyRequired => tables
            .policy
            .verdict(
                tables.identity_of(*ev.src.ip()),
                tables.identity_of(*ev.dst.ip()),
                ev.protocol,
                ev.dst.port(),
            )
            .deciding_rules(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::{Duration, SystemTime};

    use strait_ebpf::DropHook;

    use super::*;
    use crate::proxy::conn::tests::{BACKEND, FRONTEND, tables};

    fn closed(reason: Option<DropReason>) -> KernelFlow {
        KernelFlow {
            time: SystemTime::now(),
            hook: DropHook::SockOps,
            side: FlowSide::Egress,
            protocol: 6,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 40000),
            dst: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080),
            service: None,
            src_identity: FRONTEND,
            dst_identity: BACKEND,
            bytes_sent: 120,
            bytes_received: 4096,
            duration: Duration::from_millis(1500),
            close_reason: reason,
        }
    }

    #[test]
    fn a_closed_kernel_connection_reads_like_a_proxied_one() {
        let rec = flow_from_kernel(&closed(None), &tables("frontend"));
        assert_eq!(rec.verdict, Verdict::Forwarded);
        assert_eq!(rec.decided_by, Some(DecidedBy::Kernel));
        assert_eq!(
            (rec.source.pod.as_str(), rec.destination.pod.as_str()),
            ("frontend", "backend")
        );
        assert_eq!((rec.bytes_sent, rec.bytes_received), (120, 4096));
        assert_eq!(rec.duration_us, 1_500_000);
        assert_eq!(rec.protocol, "TCP");
        assert_eq!(rec.direction, Direction::Egress);
        assert_eq!(rec.original_destination, "127.0.0.1:8080");
    }

    #[test]
    fn a_connection_ended_by_policy_names_the_rules_in_force() {
        // `tables("other")` allows only `other` into the backend: the frontend is denied now.
        let rec = flow_from_kernel(&closed(Some(DropReason::PolicyDenied)), &tables("other"));
        assert_eq!(rec.verdict, Verdict::Dropped);
        assert_eq!(rec.drop_reason, Some(DropReason::PolicyDenied));
        assert!(!rec.policies.is_empty(), "{rec:?}");
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["decided_by"], "kernel");
        assert_eq!(json["drop_reason"], "POLICY_DENIED");
    }
}
