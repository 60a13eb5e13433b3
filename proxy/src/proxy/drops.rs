//! Kernel drop events (eBPF ring buffer) → flow records, resolved against the proxy's tables
//! (which know pods, services and policy as the kernel's maps were filled from them).

use std::net::SocketAddr;

use strait_ebpf::{DropEvent, DropHook, DropReason, abi::ip_protocol_name};

use super::conn::peer;
use super::tables::ProxyTables;
use crate::flows::{DecidedBy, Direction, FlowPeer, FlowRecord, ServiceRef, Verdict};

/// The flow record of a packet or connect the kernel refused, resolved against `tables`.
pub fn flow_from_drop(ev: &DropEvent, tables: &ProxyTables) -> FlowRecord {
    let cluster = tables.cluster.name.as_str();
    let src_ep = match ev.hook {
        // connect hooks know the pod by its cgroup; its address is not bound yet.
        DropHook::Connect4 | DropHook::Connect6 | DropHook::Sendmsg4 => tables
            .endpoint_by_cgroup(ev.cgroup_id)
            .or_else(|| tables.endpoint(*ev.src.ip())),
        // Leaving a pod, the sender is the pod behind the interface, whatever source address
        // it wrote (a forged one is the reason of a SOURCE_IP_INVALID drop).
        DropHook::TcFromPod => match ev.pod_ip {
            Some(ip) => tables.endpoint(ip),
            None if ev.reason == DropReason::SourceIpInvalid => None,
            None => tables.endpoint(*ev.src.ip()),
        },
        DropHook::TcToPod | DropHook::SockOps | DropHook::SockIter => tables.endpoint(*ev.src.ip()),
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
    let policies = if verdict.allowed() || ev.reason == DropReason::SourceIpInvalid {
        Vec::new()
    } else {
        verdict.deciding_rules()
    };
    // The flow names the real sender; the address it forged goes in the error.
    let error = (ev.reason == DropReason::SourceIpInvalid).then(|| match ev.pod_ip {
        Some(pod) => format!("source address {} is not the pod's ({pod})", ev.src.ip()),
        None => format!(
            "source address {} from an interface without a pod (ifindex {})",
            ev.src.ip(),
            ev.ifindex
        ),
    });
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
        error,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::SystemTime;

    use super::*;
    use crate::proxy::conn::tests::{BACKEND, FRONTEND, OTHER, tables};

    fn event(reason: DropReason, pod_ip: Option<Ipv4Addr>) -> DropEvent {
        DropEvent {
            time: SystemTime::now(),
            ktime_ns: 1,
            hook: DropHook::TcFromPod,
            reason,
            protocol: 17,
            // `frontend`'s address, as written by whoever sent the packet.
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 40000),
            dst: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080),
            src_identity: OTHER,
            dst_identity: BACKEND,
            cgroup_id: 0,
            ifindex: 7,
            pod_ip,
        }
    }

    #[test]
    fn a_forged_source_is_reported_as_the_pod_that_sent_it() {
        let tables = tables("frontend");
        let other = Ipv4Addr::new(10, 0, 0, 6);
        let rec = flow_from_drop(&event(DropReason::SourceIpInvalid, Some(other)), &tables);
        assert_eq!(rec.verdict, Verdict::Dropped);
        assert_eq!(rec.drop_reason, Some(DropReason::SourceIpInvalid));
        assert_eq!(
            (rec.source.pod.as_str(), rec.source.ip, rec.source.identity),
            ("other", Some(other.into()), OTHER)
        );
        assert_eq!(rec.destination.pod, "backend");
        assert!(rec.policies.is_empty(), "{:?}", rec.policies);
        let error = rec.error.unwrap();
        assert!(
            error.contains("10.0.0.5") && error.contains("10.0.0.6"),
            "{error}"
        );
        let json = serde_json::to_value(flow_from_drop(
            &event(DropReason::SourceIpInvalid, Some(other)),
            &tables,
        ))
        .unwrap();
        assert_eq!(json["drop_reason"], "SOURCE_IP_INVALID");

        // No pod behind the interface: nobody is named, least of all the forged address's.
        let rec = flow_from_drop(&event(DropReason::SourceIpInvalid, None), &tables);
        assert_eq!((rec.source.pod.as_str(), rec.source.identity), ("", OTHER));
        assert!(rec.error.unwrap().contains("ifindex 7"));

        // A policy drop names the same sender, with the rules that decided it.
        let mut ev = event(DropReason::PolicyDenied, Some(Ipv4Addr::new(10, 0, 0, 5)));
        ev.src_identity = FRONTEND;
        let rec = flow_from_drop(&ev, &tables);
        assert_eq!((rec.source.pod.as_str(), rec.error), ("frontend", None));
    }
}
