//! The lookups of `bpf/include/policy.h` and `conntrack.h`, run in the kernel through the
//! test-only classifier `bpf/test/policy_decide.bpf.c`, on maps filled by
//! `Datapath::apply_policy` (the wrapper is loaded on the data path's pin directory). Needs
//! root; fails (does not skip) without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use strait_ebpf::{
    Datapath, EndpointEntry, PolicyAction, PolicyImage, PolicyKey, ServiceBackend,
    abi::{CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use support::Fixture;

static OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test/policy_decide.bpf.o"));

/// `enum strait_policy_match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Host = 1,
    Unpoliced = 2,
    Allow = 3,
    Proxy = 4,
    Deferred = 5,
    Deny = 6,
    None = 7,
}

impl Match {
    fn from(raw: u32) -> Self {
        [
            Match::Host,
            Match::Unpoliced,
            Match::Allow,
            Match::Proxy,
            Match::Deferred,
            Match::Deny,
            Match::None,
        ]
        .into_iter()
        .find(|m| *m as u32 == raw)
        .unwrap_or_else(|| panic!("match {raw}"))
    }
}

/// `enum strait_ct_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ct {
    New,
    Established,
    Reply,
}

struct Harness {
    _fx: Fixture,
    datapath: Datapath,
    ebpf: aya::Ebpf,
}

impl Harness {
    fn new(test: &str) -> Self {
        let fx = Fixture::new(test);
        let datapath = Datapath::load_and_attach(&fx.config(15001)).unwrap();
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&fx.pin_dir)
            .load(OBJ)
            .unwrap();
        let prog: &mut SchedClassifier = ebpf
            .program_mut("strait_test_policy")
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().unwrap();
        Harness {
            _fx: fx,
            datapath,
            ebpf,
        }
    }

    /// `struct strait_policy_in` (48 bytes) → `struct strait_policy_out`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        mode: u32,
        src_id: u32,
        dst_id: u32,
        protocol: u8,
        dport: u16,
        ip: Ipv4Addr,
        tuple: CtKey,
        now: u64,
    ) -> (u32, u32) {
        let mut data = Vec::with_capacity(64);
        data.extend(mode.to_ne_bytes());
        data.extend(src_id.to_ne_bytes());
        data.extend(dst_id.to_ne_bytes());
        data.extend([protocol, 0]);
        data.extend(dport.to_be_bytes());
        data.extend(ip.octets());
        data.extend(tuple.saddr.to_ne_bytes());
        data.extend(tuple.daddr.to_ne_bytes());
        data.extend(tuple.sport.to_ne_bytes());
        data.extend(tuple.dport.to_ne_bytes());
        data.extend([tuple.protocol, 0, 0, 0]);
        data.extend([0; 4]);
        data.extend(now.to_ne_bytes());
        assert_eq!(data.len(), 48);
        data.resize(64, 0);

        let prog: &SchedClassifier = self
            .ebpf
            .program("strait_test_policy")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = [0u8; 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.data_out = Some(&mut out);
        let result = prog.test_run(opts).unwrap();
        assert_eq!(result.return_value, 0, "wrapper failed");
        let word = |i: usize| u32::from_ne_bytes(out[i..i + 4].try_into().unwrap());
        (word(0), word(4))
    }

    fn check(&self, src: u32, dst: u32, protocol: u8, dport: u16) -> Match {
        let (m, _) = self.run(
            0,
            src,
            dst,
            protocol,
            dport,
            Ipv4Addr::UNSPECIFIED,
            CtKey::default(),
            0,
        );
        Match::from(m)
    }

    fn identity(&self, ip: &str) -> u32 {
        let ip = ip.parse().unwrap();
        self.run(1, 0, 0, 0, 0, ip, CtKey::default(), 0).0
    }

    fn connect(&self, src: u32, dst: &str) -> (Match, u32) {
        let dst: SocketAddrV4 = dst.parse().unwrap();
        let (m, id) = self.run(2, src, 0, 0, dst.port(), *dst.ip(), CtKey::default(), 0);
        (Match::from(m), id)
    }

    fn ct_create(&self, tuple: CtKey, now: u64) {
        self.run(3, 0, 0, 0, 0, Ipv4Addr::UNSPECIFIED, tuple, now);
    }

    fn ct_lookup(&self, tuple: CtKey, now: u64) -> Ct {
        match self.run(4, 0, 0, 0, 0, Ipv4Addr::UNSPECIFIED, tuple, now).0 {
            0 => Ct::New,
            1 => Ct::Established,
            2 => Ct::Reply,
            other => panic!("ct state {other}"),
        }
    }
}

const TCP: u8 = IPPROTO_TCP;
const UDP: u8 = IPPROTO_UDP;
const HOST: u32 = 1;
const WORLD: u32 = 2;
const A: u32 = 1000; // egress policed
const B: u32 = 1001; // ingress policed
const C: u32 = 1002; // not policed
const D: u32 = 1003; // not policed
const E: u32 = 1004; // not policed
const F: u32 = 1005; // not policed

fn verdict_image() -> PolicyImage {
    use PolicyAction::*;
    let mut rules = vec![
        (PolicyKey::port(A, C, TCP, 80), Allow),
        (PolicyKey::port(A, B, TCP, 80), Allow),
        (PolicyKey::port(D, B, UDP, 53), Allow),
        // Deny wins: a narrow deny under a broad allow, and a broad deny over a narrow allow.
        (PolicyKey::protocol(C, B, TCP), Allow),
        (PolicyKey::port(C, B, TCP, 22), Deny),
        (PolicyKey::any(WORLD, B), Deny),
        (PolicyKey::port(WORLD, B, TCP, 443), Allow),
        (PolicyKey::port(E, B, TCP, 9000), Proxy),
        (PolicyKey::any(F, B), Allow),
    ];
    rules.extend(
        PolicyKey::port_range(E, B, TCP, 8080, 8083)
            .into_iter()
            .map(|k| (k, Allow)),
    );
    PolicyImage {
        policed: vec![(A, false, true), (B, true, false)],
        rules,
        ..PolicyImage::default()
    }
}

#[test]
fn verdict_table() {
    let h = Harness::new("verdict");
    let stats = h.datapath.apply_policy(&verdict_image()).unwrap();
    assert_eq!(stats.policy.added, 10);
    assert_eq!(stats.policed.added, 2);

    let cases = [
        // Not policed either way.
        ((C, D, TCP, 80), Match::Unpoliced),
        ((D, A, UDP, 53), Match::Unpoliced), // A polices egress only
        // Egress enforced (A): allowed by a rule, or not.
        ((A, C, TCP, 80), Match::Allow),
        ((A, C, TCP, 81), Match::None),
        ((A, C, UDP, 80), Match::None),
        ((A, D, TCP, 80), Match::None),
        // Ingress enforced (B).
        ((D, B, UDP, 53), Match::Allow),
        ((D, B, UDP, 54), Match::None),
        ((D, B, TCP, 53), Match::None),
        // Both ends enforced: one entry answers for both.
        ((A, B, TCP, 80), Match::Allow),
        ((A, B, TCP, 81), Match::None),
        // Deny wins.
        ((C, B, TCP, 21), Match::Allow),
        ((C, B, TCP, 22), Match::Deny),
        ((C, B, UDP, 22), Match::None),
        ((WORLD, B, TCP, 443), Match::Deny),
        ((WORLD, B, UDP, 53), Match::Deny),
        // Port range 8080..=8083 as one /14 prefix.
        ((E, B, TCP, 8079), Match::None),
        ((E, B, TCP, 8080), Match::Allow),
        ((E, B, TCP, 8083), Match::Allow),
        ((E, B, TCP, 8084), Match::None),
        // Proxy action: an allow for the kernel.
        ((E, B, TCP, 9000), Match::Proxy),
        // Any protocol.
        ((F, B, IPPROTO_ICMP, 0), Match::Allow),
        ((F, B, UDP, 9999), Match::Allow),
        // Unknown identities are not policed, but B is.
        ((4242, B, TCP, 80), Match::None),
        // The host is never judged.
        ((HOST, B, TCP, 1), Match::Host),
        ((A, HOST, UDP, 53), Match::Host),
    ];
    for ((src, dst, proto, port), want) in cases {
        assert_eq!(
            h.check(src, dst, proto, port),
            want,
            "{src} -> {dst} proto {proto} port {port}"
        );
    }

    // Policy updates: lifting B's enforcement opens (C, B, 22)'s pair only via flags.
    let mut image = verdict_image();
    image.policed = vec![(A, false, true)];
    h.datapath.apply_policy(&image).unwrap();
    assert_eq!(h.check(D, B, UDP, 54), Match::Unpoliced);
    assert_eq!(h.check(A, B, TCP, 81), Match::None);
    // An empty image empties the maps.
    let stats = h.datapath.apply_policy(&PolicyImage::default()).unwrap();
    assert_eq!((stats.policy.removed, stats.policed.removed), (10, 1));
    assert_eq!(h.check(A, C, TCP, 81), Match::Unpoliced);
    assert!(
        h.datapath
            .map_fill()
            .iter()
            .filter(|(name, _, _)| ["strait_policy", "strait_policed"].contains(name))
            .all(|(_, n, max)| *n == 0 && *max > 0)
    );
}

#[test]
fn ipcache_longest_prefix() {
    let h = Harness::new("ipcache");
    let net = |s: &str| s.parse().unwrap();
    h.datapath
        .apply_policy(&PolicyImage {
            ipcache: vec![
                (net("10.0.0.0/8"), 100),
                (net("10.1.0.0/16"), 101),
                (net("10.1.2.3/32"), 102),
                (net("198.18.0.1/32"), HOST),
                (net("0.0.0.0/1"), 7),
            ],
            ..PolicyImage::default()
        })
        .unwrap();
    for (ip, want) in [
        ("10.1.2.3", 102),
        ("10.1.2.4", 101),
        ("10.1.255.255", 101),
        ("10.2.0.0", 100),
        ("10.255.255.255", 100),
        ("11.0.0.1", 7),
        ("198.18.0.1", HOST),
        ("198.18.0.2", WORLD),
        ("200.0.0.1", WORLD),
    ] {
        assert_eq!(h.identity(ip), want, "{ip}");
    }
    assert!(
        h.datapath
            .map_fill()
            .contains(&("strait_ipcache", 5, 65536))
    );
}

#[test]
fn connect_policy_judges_services_by_their_backends() {
    use PolicyAction::*;
    let h = Harness::new("connect");
    // One pod per identity; a second backend of the same identity gets the next address.
    let b = |identity: u32, port: u16| ServiceBackend {
        ip: Ipv4Addr::from(0x0a00_0000 + identity * 256 + u32::from(port % 7)),
        identity,
        port,
    };
    let net = |s: &str| s.parse().unwrap();
    h.datapath
        .apply_policy(&PolicyImage {
            ipcache: vec![(net("10.0.0.2/32"), B), (net("10.0.0.3/32"), C)],
            endpoints: vec![EndpointEntry {
                cgroup_id: 1,
                identity: A,
                ip: Ipv4Addr::new(10, 0, 0, 1),
            }],
            policed: vec![(B, true, false)],
            rules: vec![
                (PolicyKey::port(A, B, TCP, 8080), Allow),
                (PolicyKey::any(D, B), Deny),
            ],
            services: vec![
                // Port 80 → target 8080: policy names the target port.
                ("10.96.0.10:80".parse().unwrap(), vec![b(B, 8080)]),
                // Two backends: allowed if any backend is.
                (
                    "10.96.0.11:80".parse().unwrap(),
                    vec![b(B, 9090), b(C, 9090)],
                ),
                (
                    "10.96.0.13:80".parse().unwrap(),
                    vec![b(B, 9090), b(B, 8080)],
                ),
                // No backends: the kernel cannot tell.
                ("10.96.0.12:80".parse().unwrap(), vec![]),
            ],
        })
        .unwrap();
    let cases = [
        ((A, "10.96.0.10:80"), (Match::Allow, B)),
        ((D, "10.96.0.10:80"), (Match::Deny, B)),
        ((E, "10.96.0.10:80"), (Match::None, B)),
        ((E, "10.96.0.11:80"), (Match::Unpoliced, C)),
        ((D, "10.96.0.11:80"), (Match::Unpoliced, C)),
        // Denied only when every backend is.
        ((D, "10.96.0.13:80"), (Match::Deny, B)),
        ((A, "10.96.0.13:80"), (Match::Allow, B)),
        ((D, "10.96.0.12:80"), (Match::Deferred, 0)),
        // The same VIP on another port is no service: ipcache → world.
        ((A, "10.96.0.10:81"), (Match::Unpoliced, WORLD)),
        // Not a service: the address's identity and the port dialed.
        ((A, "10.0.0.2:8080"), (Match::Allow, B)),
        ((A, "10.0.0.2:80"), (Match::None, B)),
        ((D, "10.0.0.3:80"), (Match::Unpoliced, C)),
    ];
    for ((src, dst), want) in cases {
        assert_eq!(h.connect(src, dst), want, "{src} -> {dst}");
    }
}

#[test]
fn conntrack_matches_the_reverse_tuple_until_idle() {
    let h = Harness::new("ct");
    let a: SocketAddrV4 = "10.0.0.1:40000".parse().unwrap();
    let b: SocketAddrV4 = "10.0.0.2:53".parse().unwrap();
    let s = 1_000_000_000u64;
    let flow = CtKey::new(UDP, a, b);
    let reply = CtKey::new(UDP, b, a);

    assert_eq!(h.ct_lookup(flow, s), Ct::New);
    h.ct_create(flow, s);
    assert_eq!(h.ct_lookup(flow, 2 * s), Ct::Established);
    assert_eq!(h.ct_lookup(reply, 2 * s), Ct::Reply);
    // Other ports, protocol or addresses are other flows.
    assert_eq!(
        h.ct_lookup(CtKey::new(UDP, a, "10.0.0.2:54".parse().unwrap()), 2 * s),
        Ct::New
    );
    assert_eq!(h.ct_lookup(CtKey::new(TCP, b, a), 2 * s), Ct::New);
    // Each packet keeps the flow alive; 60 s of silence ends it (UDP).
    assert_eq!(h.ct_lookup(reply, 50 * s), Ct::Reply);
    assert_eq!(h.ct_lookup(flow, 109 * s), Ct::Established);
    assert_eq!(h.ct_lookup(reply, 170 * s), Ct::New);
    assert_eq!(h.ct_lookup(flow, 170 * s), Ct::New);
    // TCP flows idle out after 6 hours instead.
    let tcp = CtKey::new(TCP, a, b);
    h.ct_create(tcp, s);
    assert_eq!(h.ct_lookup(CtKey::new(TCP, b, a), 3600 * s), Ct::Reply);
    assert_eq!(h.ct_lookup(tcp, (3600 + 21_601) * s), Ct::New);
    // Re-created after expiry, it is tracked again.
    h.ct_create(flow, 200 * s);
    assert_eq!(h.ct_lookup(reply, 201 * s), Ct::Reply);
    let fill = h.datapath.map_fill();
    assert!(
        fill.iter()
            .any(|(name, n, _)| *name == "strait_ct" && *n == 2),
        "{fill:?}"
    );
}
