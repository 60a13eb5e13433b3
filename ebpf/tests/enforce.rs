//! Policy enforcement against the real kernel: two pods joined to a node by veths (see
//! `support/pods.rs`), the data path attached to the node cgroup and to both pods' host-side
//! veths, policy written with `Datapath::apply_policy`. Needs root; fails (does not skip)
//! without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;
use strait_ebpf::{
    Datapath, DropEvent, DropEvents, DropHook, DropReason, EndpointEntry, PodAddress, PolicyAction,
    PolicyDelta, PolicyImage, PolicyKey,
    abi::{IPPROTO_TCP, IPPROTO_UDP},
};
use support::pods::{GW, LXC_A, LXC_B, POD_A, POD_B, Pods};

const PROXY_PORT: u16 = 15001;
const ID_A: u32 = 1000;
const ID_B: u32 = 1001;

/// The pod behind host-side veth `lxc`.
fn pod(lxc: &str) -> PodAddress {
    match lxc {
        LXC_A => PodAddress {
            ip: POD_A,
            identity: ID_A,
        },
        _ => PodAddress {
            ip: POD_B,
            identity: ID_B,
        },
    }
}

fn image(pods: &Pods, udp_allowed: bool) -> PolicyImage {
    let net = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).unwrap();
    let mut rules = vec![(
        PolicyKey::port(ID_A, ID_B, IPPROTO_TCP, 8080),
        PolicyAction::Allow,
    )];
    if udp_allowed {
        rules.push((
            PolicyKey::port(ID_A, ID_B, IPPROTO_UDP, 5353),
            PolicyAction::Allow,
        ));
    }
    PolicyImage {
        ipcache: vec![(net(GW), 1), (net(POD_A), ID_A), (net(POD_B), ID_B)],
        endpoints: vec![EndpointEntry {
            cgroup_id: pods.cgroup_id_a(),
            identity: ID_A,
            ip: POD_A,
        }],
        policed: vec![(ID_B, true, false)],
        rules,
        services: vec![],
    }
}

/// Number of Strait tc programs on `ifname` in `direction`, as the kernel lists them.
fn tc_programs(pods: &Pods, ifname: &'static str, direction: TcAttachType) -> usize {
    pods.in_node(move || {
        let (_, programs) = SchedClassifier::query_tcx(ifname, direction).unwrap();
        programs
            .iter()
            .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("strait_tc_")))
            .count()
    })
}

fn attached_everywhere(pods: &Pods) -> bool {
    [LXC_A, LXC_B].into_iter().all(|lxc| {
        tc_programs(pods, lxc, TcAttachType::Ingress) == 1
            && tc_programs(pods, lxc, TcAttachType::Egress) == 1
    })
}

fn next_event(rt: &tokio::runtime::Runtime, events: &mut DropEvents) -> DropEvent {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), events.next()).await })
        .expect("a drop event within 5 s")
        .unwrap()
}

fn denied(datapath: &Datapath) -> u64 {
    datapath
        .drop_counters()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == DropReason::PolicyDenied)
        .unwrap()
        .1
}

#[test]
fn connect_and_tc_enforce_policy() {
    let mut pods = Pods::new("enforce");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let datapath = Datapath::load_and_attach(&pods.config(PROXY_PORT)).unwrap();
    // The proxy path: allowed TCP is redirected (tests/fastpath.rs covers the fast path).
    datapath.set_fast_path(false).unwrap();
    let dp = &datapath;
    pods.in_node(|| {
        for lxc in [LXC_A, LXC_B, LXC_A] {
            dp.attach_pod_interface(lxc, pod(lxc)).unwrap();
        }
    });
    assert!(attached_everywhere(&pods), "attaching twice replaces");
    assert_eq!(datapath.pod_interfaces(), [LXC_A, LXC_B]);
    let mut events = {
        let _rt = rt.enter();
        datapath.drop_events().unwrap()
    };

    let proxy = pods.listen_node(SocketAddrV4::new(GW, PROXY_PORT), "proxy");
    pods.udp_echo_b(5353);
    pods.udp_echo_b(5354);
    let stats = datapath.apply_policy(&image(&pods, true)).unwrap();
    assert_eq!(
        (
            stats.ipcache.added,
            stats.endpoints.added,
            stats.policy.added
        ),
        (3, 1, 2)
    );

    // Allowed TCP: redirected to the proxy as before.
    let target = SocketAddrV4::new(POD_B, 8080);
    let (peer, reply) = pods.connect_a(target).unwrap();
    assert_eq!((peer, reply.as_str()), (target.to_string(), "proxy"));
    assert_eq!(
        datapath.take_original_dst(proxy.accepted()).unwrap(),
        Some(target)
    );

    // Denied TCP: connect() fails with EPERM, nothing reaches the proxy.
    let denied_target = SocketAddrV4::new(POD_B, 9090);
    assert_eq!(pods.connect_a(denied_target), Err("EPERM".into()));
    proxy.assert_idle();
    let event = next_event(&rt, &mut events);
    assert_eq!(
        (event.hook, event.reason, event.protocol),
        (DropHook::Connect4, DropReason::PolicyDenied, IPPROTO_TCP)
    );
    assert_eq!((event.src_identity, event.dst_identity), (ID_A, ID_B));
    assert_eq!(*event.src.ip(), POD_A);
    assert_eq!(event.dst, denied_target);
    assert_eq!(event.cgroup_id, pods.cgroup_id_a());
    assert_eq!(denied(&datapath), 1);

    // Direct UDP: the allowed port answers, the other is dropped by tc leaving pod A.
    let mut udp = pods.udp_client_a();
    let allowed = SocketAddrV4::new(POD_B, 5353);
    assert_eq!(udp.ask("s1", allowed).as_deref(), Some("s1"));
    assert_eq!(udp.ask("s2", SocketAddrV4::new(POD_B, 5354)), None);
    let event = next_event(&rt, &mut events);
    assert_eq!(
        (event.hook, event.reason, event.protocol),
        (DropHook::TcFromPod, DropReason::PolicyDenied, IPPROTO_UDP)
    );
    assert_eq!((event.src_identity, event.dst_identity), (ID_A, ID_B));
    assert_eq!(event.dst, SocketAddrV4::new(POD_B, 5354));
    assert_eq!(event.ifindex, pods.node_ifindex(LXC_A));
    assert_eq!(event.cgroup_id, 0);

    // Allow → deny: the established flow is judged again and stops, and so does a new one.
    let rev = datapath.policy_revision().unwrap();
    let stats = datapath.apply_policy(&image(&pods, false)).unwrap();
    assert_eq!((stats.policy.removed, stats.changes()), (1, 1));
    assert_eq!(datapath.policy_revision().unwrap(), rev.wrapping_add(1));
    assert_eq!(udp.ask("s1", allowed), None);
    let event = next_event(&rt, &mut events);
    assert_eq!(
        (event.hook, event.dst, event.reason),
        (DropHook::TcFromPod, allowed, DropReason::PolicyDenied)
    );
    assert_eq!(udp.ask("s3", allowed), None);
    let event = next_event(&rt, &mut events);
    assert_eq!((event.hook, event.dst), (DropHook::TcFromPod, allowed));
    assert_eq!(denied(&datapath), 4);

    // The agent restarts: it reattaches (replacing, not adding) and the flow still passes.
    drop(events);
    drop(datapath);
    let datapath = Datapath::load_and_attach(&pods.config(PROXY_PORT)).unwrap();
    let dp = &datapath;
    pods.in_node(|| {
        for lxc in [LXC_A, LXC_B] {
            dp.attach_pod_interface(lxc, pod(lxc)).unwrap();
        }
    });
    assert!(attached_everywhere(&pods), "the old links are gone");
    assert_eq!(
        datapath
            .apply_policy(&image(&pods, false))
            .unwrap()
            .changes(),
        0,
        "the pinned maps still hold the policy"
    );
    assert_eq!(udp.ask("s4", allowed), None);
    assert_eq!(denied(&datapath), 5, "the counters are pinned too");

    // A delta that allows the UDP port again: only that pair is rewritten, and the maps then
    // hold exactly what the full image says (applying it changes nothing).
    let allow_udp = PolicyDelta {
        pairs: vec![(
            (ID_A, ID_B),
            image(&pods, true)
                .rules
                .into_iter()
                .filter(|(k, _)| (k.src_identity, k.dst_identity) == (ID_A, ID_B))
                .collect(),
        )],
        ..PolicyDelta::default()
    };
    let stats = datapath.apply_policy_delta(&allow_udp).unwrap();
    assert_eq!((stats.policy.added, stats.changes()), (1, 1));
    assert_eq!(udp.ask("s5", allowed).as_deref(), Some("s5"));
    assert_eq!(
        datapath
            .apply_policy(&image(&pods, true))
            .unwrap()
            .changes(),
        0
    );
    let fill = datapath.map_fill();
    assert!(
        fill.iter()
            .any(|(name, n, _)| *name == "strait_ct" && *n >= 1),
        "{fill:?}"
    );

    // Detaching: no tc program left on pod A's veth; idempotent.
    datapath.detach_pod_interface(LXC_A).unwrap();
    datapath.detach_pod_interface(LXC_A).unwrap();
    // The kernel releases a link when its last reference goes, which it may defer a little
    // under load: wait up to a second for the programs to leave the interface.
    let detached = || {
        tc_programs(&pods, LXC_A, TcAttachType::Ingress) == 0
            && tc_programs(&pods, LXC_A, TcAttachType::Egress) == 0
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while !detached() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Ingress), 0);
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Egress), 0);
    assert_eq!(datapath.pod_interfaces(), [LXC_B]);
    let err = datapath
        .attach_pod_interface("no.such.if", pod(LXC_A))
        .unwrap_err();
    assert!(err.to_string().contains("cannot carry"), "{err}");
    let err = pods
        .in_node(|| datapath.attach_pod_interface("lxcnone", pod(LXC_A)))
        .unwrap_err();
    assert!(
        format!("{:?}", anyhow_chain(&err)).contains("lxcnone"),
        "{err}"
    );
}

fn anyhow_chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    chain
}

#[test]
fn reattaches_after_the_interface_is_recreated() {
    let pods = Pods::new("recreate");
    let datapath = Datapath::load_and_attach(&pods.config(PROXY_PORT)).unwrap();
    let dp = &datapath;
    pods.in_node(|| dp.attach_pod_interface(LXC_A, pod(LXC_A)))
        .unwrap();
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Ingress), 1);
    // The pod's veth goes away and comes back under the same name: the pinned links are
    // defunct, so new ones replace them.
    support::run("ip", &["-n", &pods.node, "link", "del", LXC_A]);
    support::run(
        "ip",
        &[
            "-n",
            &pods.node,
            "link",
            "add",
            LXC_A,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pods.pod_a,
        ],
    );
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Ingress), 0);
    pods.in_node(|| dp.attach_pod_interface(LXC_A, pod(LXC_A)))
        .unwrap();
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Ingress), 1);
    assert_eq!(tc_programs(&pods, LXC_A, TcAttachType::Egress), 1);
    assert_eq!(datapath.pod_interfaces(), [LXC_A]);
}
