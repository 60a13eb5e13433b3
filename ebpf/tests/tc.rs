//! The tc programs (`bpf/tc.bpf.c`) on crafted packets through BPF_PROG_TEST_RUN, against maps
//! filled by `Datapath::apply_policy` and `Datapath::attach_pod_interface` (the object is loaded
//! on the data path's pin directory). Each packet is run as seen on a pod's host-side veth (a
//! veth pair in the fixture's namespace, its index passed in the `__sk_buff` context). Needs
//! root; fails (does not skip) without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use strait_ebpf::{
    Datapath, DropEvent, DropHook, DropReason, PodAddress, PolicyAction, PolicyImage, PolicyKey,
    abi::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use support::Fixture;

static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.bpf.o"));

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const FROM_POD: &str = "strait_tc_from_pod";
const TO_POD: &str = "strait_tc_to_pod";

const A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// A third pod, policy allows it nothing towards B.
const C: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
const GW: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
const ID_A: u32 = 1000;
const ID_B: u32 = 1001;
const ID_C: u32 = 1002;

/// Host-side veths of pods A, B and C, and one no pod was recorded for.
const LXC_A: &str = "lxca";
const LXC_B: &str = "lxcb";
const LXC_C: &str = "lxcc";
const LXC_NONE: &str = "lxcn";

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

// === packets ===

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    p.extend(ethertype.to_be_bytes());
    p.extend(payload);
    p
}

/// An IPv4 packet in an Ethernet frame; `frag` is the raw flags + offset field.
fn ipv4(protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend((20 + l4.len() as u16).to_be_bytes());
    ip.extend(id.to_be_bytes());
    ip.extend(frag.to_be_bytes());
    ip.extend([64, protocol, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(l4);
    ethernet(0x0800, &ip)
}

fn ports(src: u16, dst: u16, rest: usize) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(src.to_be_bytes());
    l4.extend(dst.to_be_bytes());
    l4.resize(4 + rest, 0);
    l4
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let l4 = ports(src.port(), dst.port(), 8);
    ipv4(IPPROTO_UDP, *src.ip(), *dst.ip(), 1, 0, &l4)
}

fn tcp_syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut l4 = ports(src.port(), dst.port(), 16);
    l4[12] = 0x50;
    l4[13] = 0x02;
    ipv4(IPPROTO_TCP, *src.ip(), *dst.ip(), 1, 0, &l4)
}

/// The first fragment (MF set) or a later one (offset 1480) of datagram `id`.
fn udp_fragment(src: SocketAddrV4, dst: SocketAddrV4, id: u16, first: bool) -> Vec<u8> {
    if first {
        ipv4(
            IPPROTO_UDP,
            *src.ip(),
            *dst.ip(),
            id,
            0x2000,
            &ports(src.port(), dst.port(), 1476),
        )
    } else {
        ipv4(
            IPPROTO_UDP,
            *src.ip(),
            *dst.ip(),
            id,
            1480 / 8,
            &[0x55; 100],
        )
    }
}

fn icmp(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut l4 = vec![kind, code, 0, 0];
    l4.extend(rest);
    l4.extend(quote);
    ipv4(IPPROTO_ICMP, src, dst, 1, 0, &l4)
}

/// ICMP port unreachable from `from`, quoting a UDP datagram `quoted_src` → `quoted_dst`.
fn port_unreachable(from: Ipv4Addr, quoted_src: SocketAddrV4, quoted_dst: SocketAddrV4) -> Vec<u8> {
    let quoted = udp(quoted_src, quoted_dst);
    // The IP header and first 8 bytes of the datagram, without its Ethernet header.
    icmp(from, *quoted_src.ip(), 3, 3, [0; 4], &quoted[14..14 + 28])
}

// === harness ===

struct Harness {
    fx: Fixture,
    datapath: Datapath,
    ebpf: aya::Ebpf,
}

impl Harness {
    fn new(test: &str) -> Self {
        let fx = Fixture::new(test);
        for (lxc, peer) in [
            (LXC_A, "peera"),
            (LXC_B, "peerb"),
            (LXC_C, "peerc"),
            (LXC_NONE, "peern"),
        ] {
            support::run(
                "ip",
                &[
                    "-n", &fx.netns, "link", "add", lxc, "type", "veth", "peer", "name", peer,
                ],
            );
        }
        let datapath = Datapath::load_and_attach(&fx.config(15001)).unwrap();
        let dp = &datapath;
        fx.in_ns(|| {
            for (lxc, ip, identity) in [(LXC_A, A, ID_A), (LXC_B, B, ID_B), (LXC_C, C, ID_C)] {
                dp.attach_pod_interface(lxc, PodAddress { ip, identity })
                    .unwrap();
            }
        });
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&fx.pin_dir)
            .load(OBJ)
            .unwrap();
        for name in [FROM_POD, TO_POD] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load().unwrap();
        }
        let net = |ip: Ipv4Addr| ipnet::Ipv4Net::new(ip, 32).unwrap();
        datapath
            .apply_policy(&PolicyImage {
                ipcache: vec![(net(A), ID_A), (net(B), ID_B), (net(C), ID_C), (net(GW), 1)],
                // Both pods police ingress: replies pass only through conntrack.
                policed: vec![(ID_A, true, false), (ID_B, true, false)],
                rules: vec![
                    (
                        PolicyKey::port(ID_A, ID_B, IPPROTO_UDP, 5353),
                        PolicyAction::Allow,
                    ),
                    (
                        PolicyKey::port(ID_A, ID_B, IPPROTO_TCP, 8080),
                        PolicyAction::Proxy,
                    ),
                ],
                ..PolicyImage::default()
            })
            .unwrap();
        Harness { fx, datapath, ebpf }
    }

    fn ifindex(&self, ifname: &str) -> u32 {
        self.fx
            .in_ns(|| nix::net::if_::if_nametoindex(ifname).unwrap())
    }

    /// Runs `program` on `packet` as seen on the veth of the pod it leaves (`FROM_POD`: its
    /// source) or enters (`TO_POD`: its destination); A's veth for any other address.
    fn run(&self, program: &str, packet: &[u8]) -> i32 {
        let at = if program == FROM_POD { 26 } else { 30 };
        let ip = packet
            .get(at..at + 4)
            .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        let lxc = match ip {
            Some(B) => LXC_B,
            Some(C) => LXC_C,
            _ => LXC_A,
        };
        self.run_on(lxc, program, packet)
    }

    /// Runs `program` on `packet` as seen on interface `lxc`.
    fn run_on(&self, lxc: &str, program: &str, packet: &[u8]) -> i32 {
        self.try_run_on(lxc, program, packet)
            .unwrap_or_else(|e| panic!("test run of {} bytes on {lxc}: {e}", packet.len()))
    }

    fn try_run(&self, program: &str, packet: &[u8]) -> Result<i32, aya::programs::ProgramError> {
        self.try_run_on(LXC_A, program, packet)
    }

    fn try_run_on(
        &self,
        lxc: &str,
        program: &str,
        packet: &[u8],
    ) -> Result<i32, aya::programs::ProgramError> {
        let prog: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        // `struct __sk_buff` up to `ifindex` (offset 40): the kernel runs the program as if
        // the packet were on that interface, which must exist in the caller's namespace.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&self.ifindex(lxc).to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 64];
        self.fx.in_ns(|| {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(packet);
            opts.data_out = Some(&mut out);
            opts.ctx_in = Some(&ctx);
            Ok(prog.test_run(opts)?.return_value as i32)
        })
    }

    fn counter(&self, reason: DropReason) -> u64 {
        self.datapath
            .drop_counters()
            .unwrap()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .unwrap()
            .1
    }
}

fn verdict(code: i32) -> &'static str {
    match code {
        TC_ACT_OK => "pass",
        TC_ACT_SHOT => "drop",
        _ => "other",
    }
}

#[test]
fn udp_and_tcp_verdicts_with_replies_tracked() {
    let h = Harness::new("tc_l4");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut events = h.datapath.drop_events().unwrap();
    assert!(
        h.datapath.drop_events().is_err(),
        "one drop event reader at a time"
    );

    let a = sa(A, 40000);
    let cases: [(&str, Vec<u8>, &str, &str); 13] = [
        ("allowed UDP", udp(a, sa(B, 5353)), FROM_POD, "pass"),
        ("... on entering B too", udp(a, sa(B, 5353)), TO_POD, "pass"),
        ("its reply", udp(sa(B, 5353), a), FROM_POD, "pass"),
        ("its reply into A", udp(sa(B, 5353), a), TO_POD, "pass"),
        ("denied UDP port", udp(a, sa(B, 5354)), FROM_POD, "drop"),
        (
            "unsolicited B to A",
            udp(sa(B, 5353), sa(A, 40001)),
            TO_POD,
            "drop",
        ),
        (
            "PROXY (an L7 port) pod to pod: only through the proxy",
            tcp_syn(a, sa(B, 8080)),
            FROM_POD,
            "drop",
        ),
        (
            "TCP without a rule",
            tcp_syn(a, sa(B, 22)),
            FROM_POD,
            "drop",
        ),
        (
            "world to B",
            udp(sa(OUTSIDE, 53), sa(B, 5353)),
            TO_POD,
            "drop",
        ),
        (
            "gateway (proxy) to B",
            tcp_syn(sa(GW, 41000), sa(B, 22)),
            TO_POD,
            "pass",
        ),
        (
            "B to gateway (DNS)",
            udp(sa(B, 41000), sa(GW, 53)),
            FROM_POD,
            "pass",
        ),
        (
            "ICMP echo without a rule",
            icmp(A, B, 8, 0, [0, 7, 0, 1], &[]),
            FROM_POD,
            "drop",
        ),
        (
            "B unpoliced egress to world",
            udp(sa(B, 1234), sa(OUTSIDE, 53)),
            FROM_POD,
            "pass",
        ),
    ];
    for (what, packet, program, want) in &cases {
        assert_eq!(verdict(h.run(program, packet)), *want, "{what}");
    }

    // ICMP errors about a tracked flow get through; about anything else they are judged.
    let related = port_unreachable(B, a, sa(B, 5353));
    assert_eq!(verdict(h.run(TO_POD, &related)), "pass");
    let unrelated = port_unreachable(B, sa(A, 40999), sa(B, 5353));
    assert_eq!(verdict(h.run(TO_POD, &unrelated)), "drop");

    // The first drop, as the ring buffer reports it.
    let event: DropEvent = events.try_next().unwrap();
    assert_eq!(event.hook, DropHook::TcFromPod);
    assert_eq!(event.reason, DropReason::PolicyDenied);
    assert_eq!(event.protocol, IPPROTO_UDP);
    assert_eq!((event.src, event.dst), (a, sa(B, 5354)));
    assert_eq!((event.src_identity, event.dst_identity), (ID_A, ID_B));
    assert_eq!(event.cgroup_id, 0);
    assert!(event.ifindex > 0);
    let age = std::time::SystemTime::now()
        .duration_since(event.time)
        .unwrap();
    assert!(age < std::time::Duration::from_secs(60), "{age:?}");
    let rest: Vec<DropEvent> = std::iter::from_fn(|| events.try_next()).collect();
    assert_eq!(rest.len(), 6, "{rest:#?}");
    assert_eq!(rest[0].hook, DropHook::TcToPod);
    assert_eq!(
        (rest[1].reason, rest[1].dst),
        (DropReason::ProxyRequired, sa(B, 8080))
    );
    assert_eq!(rest[3].src_identity, 2, "world");
    assert_eq!(rest[4].protocol, IPPROTO_ICMP);
    assert_eq!(h.counter(DropReason::PolicyDenied), 6);
    assert_eq!(h.counter(DropReason::ProxyRequired), 1);
}

#[test]
fn established_flows_are_judged_again_after_policy_updates() {
    let h = Harness::new("tc_update");
    let flow = udp(sa(A, 40000), sa(B, 5353));
    let other = udp(sa(A, 40002), sa(B, 5353));
    assert_eq!(verdict(h.run(FROM_POD, &flow)), "pass");
    assert_eq!(verdict(h.run(FROM_POD, &other)), "pass");
    let image = |rules| PolicyImage {
        ipcache: vec![
            (ipnet::Ipv4Net::new(A, 32).unwrap(), ID_A),
            (ipnet::Ipv4Net::new(B, 32).unwrap(), ID_B),
        ],
        policed: vec![(ID_A, true, false), (ID_B, true, false)],
        rules,
        ..PolicyImage::default()
    };
    // An unrelated rule is added: tracked flows are judged again and go on, replies too.
    h.datapath
        .apply_policy(&image(vec![
            (
                PolicyKey::port(ID_A, ID_B, IPPROTO_UDP, 5353),
                PolicyAction::Allow,
            ),
            (
                PolicyKey::port(ID_B, ID_A, IPPROTO_TCP, 22),
                PolicyAction::Allow,
            ),
        ]))
        .unwrap();
    assert_eq!(verdict(h.run(FROM_POD, &flow)), "pass");
    assert_eq!(
        verdict(h.run(FROM_POD, &udp(sa(B, 5353), sa(A, 40000)))),
        "pass"
    );
    // The rule goes away: the tracked flows stop, in either direction, and stay stopped.
    h.datapath.apply_policy(&image(vec![])).unwrap();
    assert_eq!(verdict(h.run(FROM_POD, &flow)), "drop");
    assert_eq!(verdict(h.run(TO_POD, &flow)), "drop");
    assert_eq!(
        verdict(h.run(FROM_POD, &udp(sa(B, 5353), sa(A, 40002)))),
        "drop",
        "a reply is judged in its flow's direction"
    );
    assert_eq!(
        verdict(h.run(FROM_POD, &udp(sa(A, 40001), sa(B, 5353)))),
        "drop"
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    let h = Harness::new("tc_frag");
    let a = sa(A, 40000);
    let before = h.counter(DropReason::FragNotFound);
    let cases = [
        (
            "allowed first fragment",
            udp_fragment(a, sa(B, 5353), 77, true),
            "pass",
        ),
        (
            "its later fragment",
            udp_fragment(a, sa(B, 5353), 77, false),
            "pass",
        ),
        (
            "again (retransmit)",
            udp_fragment(a, sa(B, 5353), 77, false),
            "pass",
        ),
        (
            "a later fragment alone",
            udp_fragment(a, sa(B, 5353), 78, false),
            "drop",
        ),
        (
            "denied first fragment",
            udp_fragment(a, sa(B, 5354), 79, true),
            "drop",
        ),
        (
            "its later fragment",
            udp_fragment(a, sa(B, 5354), 79, false),
            "drop",
        ),
        // Same id, other source (pod C's own): another datagram.
        (
            "other source",
            udp_fragment(sa(C, 1), sa(B, 5353), 77, false),
            "drop",
        ),
    ];
    for (what, packet, want) in &cases {
        assert_eq!(verdict(h.run(FROM_POD, packet)), *want, "{what}");
    }
    assert_eq!(h.counter(DropReason::FragNotFound) - before, 3);
    assert_eq!(h.counter(DropReason::PolicyDenied), 1);
}

#[test]
fn malformed_and_short_packets_are_dropped_and_others_pass() {
    let h = Harness::new("tc_malformed");
    let good = udp(sa(A, 40000), sa(B, 5353));
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f; // 60-byte header, packet shorter
    let mut tot_len_too_small = good.clone();
    tot_len_too_small[16..18].copy_from_slice(&10u16.to_be_bytes());
    let cut_ports = ipv4(IPPROTO_UDP, A, B, 1, 0, &[0x9c, 0x40]);
    let cut_icmp = ipv4(IPPROTO_ICMP, A, B, 1, 0, &[8, 0, 0, 0]);
    // BPF_PROG_TEST_RUN on this kernel refuses frames with an IPv4 EtherType and less than an
    // IPv4 header; the parser would drop them (its first load fails), but cannot be shown them.
    for short in [ethernet(0x0800, &[0x45]), ethernet(0x0800, &good[14..24])] {
        assert!(h.try_run(FROM_POD, &short).is_err());
    }
    let drop_cases: [(&str, Vec<u8>); 6] = [
        ("IP version 6 in an IPv4 frame", bad_version),
        ("IHL below 5", short_ihl),
        ("IHL past the end", long_ihl),
        ("total length below the header", tot_len_too_small),
        ("UDP ports cut", cut_ports),
        ("ICMP header cut", cut_icmp),
    ];
    for (what, packet) in &drop_cases {
        for program in [FROM_POD, TO_POD] {
            assert_eq!(
                verdict(h.run(program, packet)),
                "drop",
                "{what} ({program})"
            );
        }
    }
    assert_eq!(h.counter(DropReason::Invalid), 2 * drop_cases.len() as u64);

    // Not IPv4: not judged.
    let arp = ethernet(0x0806, &[0; 28]);
    let ipv6 = ethernet(0x86dd, &[0x60; 40]);
    let bare = ethernet(0x88b5, &[]);
    for packet in [&arp, &ipv6, &bare] {
        assert_eq!(verdict(h.run(FROM_POD, packet)), "pass");
    }
    // Other IP protocols are judged by address (and protocol) alone.
    let gre = ipv4(47, A, B, 1, 0, &[0; 4]);
    assert_eq!(verdict(h.run(FROM_POD, &gre)), "drop");
    let gre_to_world = ipv4(47, B, OUTSIDE, 1, 0, &[0; 4]);
    assert_eq!(verdict(h.run(FROM_POD, &gre_to_world)), "pass");
    // IP options are skipped.
    let mut with_options = vec![0x46, 0];
    with_options.extend(32u16.to_be_bytes());
    with_options.extend([0, 1, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    with_options.extend(A.octets());
    with_options.extend(B.octets());
    with_options.extend([1, 1, 1, 0]); // NOP NOP NOP EOL
    with_options.extend(ports(40002, 5353, 4));
    assert_eq!(
        verdict(h.run(FROM_POD, &ethernet(0x0800, &with_options))),
        "pass"
    );
    assert_eq!(
        verdict(h.run(FROM_POD, &ethernet(0x0800, &with_options[..26]))),
        "drop",
        "options present, ports cut"
    );
}

#[test]
fn source_address_is_verified_before_anything_else() {
    let h = Harness::new("tc_srcaddr");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut events = h.datapath.drop_events().unwrap();
    let b = sa(B, 5353);

    // A's own datagram passes; C, allowed nothing towards B, is denied as itself.
    assert_eq!(
        verdict(h.run_on(LXC_A, FROM_POD, &udp(sa(A, 40000), b))),
        "pass"
    );
    assert_eq!(
        verdict(h.run_on(LXC_C, FROM_POD, &udp(sa(C, 40000), b))),
        "drop"
    );
    let event = events.try_next().unwrap();
    assert_eq!(event.reason, DropReason::PolicyDenied);
    assert_eq!((event.src_identity, event.pod_ip), (ID_C, Some(C)));

    // C writes A's address as its source: policy would allow A, but the packet is dropped
    // before any lookup, reported as C's, and counted.
    let forged = udp(sa(A, 40001), b);
    assert_eq!(verdict(h.run_on(LXC_C, FROM_POD, &forged)), "drop");
    let event = events.try_next().unwrap();
    assert_eq!(
        (event.hook, event.reason, event.protocol),
        (
            DropHook::TcFromPod,
            DropReason::SourceIpInvalid,
            IPPROTO_UDP
        )
    );
    assert_eq!((event.src, event.dst), (sa(A, 40001), b), "as written");
    assert_eq!((event.src_identity, event.dst_identity), (ID_C, ID_B));
    assert_eq!(event.pod_ip, Some(C));
    assert_eq!(event.ifindex, h.ifindex(LXC_C));
    // Nor can it hide behind an address nobody has, or a later fragment.
    for packet in [
        udp(sa(OUTSIDE, 53), b),
        udp_fragment(sa(A, 40000), b, 91, false),
        icmp(B, A, 0, 0, [0, 7, 0, 1], &[]),
    ] {
        assert_eq!(verdict(h.run_on(LXC_C, FROM_POD, &packet)), "drop");
    }
    // Entering a pod, the source is whatever the sender's own veth let through.
    assert_eq!(
        verdict(h.run_on(LXC_C, TO_POD, &udp(sa(OUTSIDE, 53), sa(C, 53)))),
        "pass"
    );

    // An interface no pod was recorded for lets no IPv4 out (fail closed); ARP and IPv6 pass.
    assert_eq!(
        verdict(h.run_on(LXC_NONE, FROM_POD, &udp(sa(A, 40000), b))),
        "drop"
    );
    let event = std::iter::from_fn(|| events.try_next()).last().unwrap();
    assert_eq!(event.reason, DropReason::SourceIpInvalid);
    assert_eq!((event.src_identity, event.pod_ip), (0, None));
    assert_eq!(event.ifindex, h.ifindex(LXC_NONE));
    for packet in [ethernet(0x0806, &[0; 28]), ethernet(0x86dd, &[0x60; 40])] {
        assert_eq!(verdict(h.run_on(LXC_NONE, FROM_POD, &packet)), "pass");
    }
    assert_eq!(h.counter(DropReason::SourceIpInvalid), 5);
    assert_eq!(h.counter(DropReason::PolicyDenied), 1);

    // Attaching again records a new address; detaching forgets the pod.
    let c2 = Ipv4Addr::new(10, 200, 0, 4);
    let dp = &h.datapath;
    h.fx.in_ns(|| {
        dp.attach_pod_interface(
            LXC_C,
            PodAddress {
                ip: c2,
                identity: ID_C,
            },
        )
        .unwrap()
    });
    let lxc_c = h.ifindex(LXC_C);
    let recorded = |ifindex| {
        h.datapath
            .pod_addresses()
            .unwrap()
            .into_iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, pod)| pod)
    };
    assert_eq!(
        recorded(lxc_c),
        Some(PodAddress {
            ip: c2,
            identity: ID_C
        })
    );
    assert_eq!(
        verdict(h.run_on(LXC_C, FROM_POD, &udp(sa(C, 40000), b))),
        "drop"
    );
    assert_eq!(h.counter(DropReason::SourceIpInvalid), 6);
    h.datapath.detach_pod_interface(LXC_C).unwrap();
    assert_eq!(recorded(lxc_c), None);
    assert_eq!(
        verdict(h.run_on(LXC_C, FROM_POD, &udp(sa(c2, 40000), b))),
        "drop"
    );
    assert_eq!(h.counter(DropReason::SourceIpInvalid), 7);

    // B's veth goes away with its pod while no agent runs: the next agent forgets its pod.
    let lxc_b = h.ifindex(LXC_B);
    support::run("ip", &["-n", &h.fx.netns, "link", "del", LXC_B]);
    let config = h.fx.config(15001);
    let restarted = h.fx.in_ns(|| Datapath::load_and_attach(&config).unwrap());
    let left: Vec<u32> = restarted
        .pod_addresses()
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(left, [h.ifindex(LXC_A)], "B's entry was {lxc_b}");
}
