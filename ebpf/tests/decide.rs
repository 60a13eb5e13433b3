//! The connect decision helpers of `bpf/include/connect.h`, run in the kernel through the
//! test-only classifier `bpf/test/connect_decide.bpf.c` (cgroup sock_addr programs have no
//! BPF_PROG_TEST_RUN). Needs root; fails (does not skip) without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use strait_ebpf::{
    DropReason,
    abi::{CFG_DISABLED, Config, ip_to_net},
};

static OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test/connect_decide.bpf.o"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Redirect,
    Reject,
}

#[derive(Debug, PartialEq, Eq)]
struct Decision {
    verdict: Verdict,
    reason: DropReason,
    to: SocketAddrV4,
}

/// `struct strait_decide_in`, serialised by hand (56 bytes).
#[derive(Clone, Copy, Default)]
struct Input {
    cfg: Option<Config>,
    mode: u32,
    dst: Option<SocketAddrV4>,
    bypassed: bool,
    ip6: Option<Ipv6Addr>,
    local_port: u32,
}

struct Harness {
    _ebpf: aya::Ebpf,
}

impl Harness {
    fn new() -> Self {
        support::require_root();
        let mut ebpf = aya::Ebpf::load(OBJ).unwrap();
        let prog: &mut SchedClassifier = ebpf
            .program_mut("strait_test_decide")
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().unwrap();
        Harness { _ebpf: ebpf }
    }

    fn run(&self, input: Input) -> [u8; 16] {
        let cfg = input.cfg.unwrap_or_default();
        let dst = input
            .dst
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut data = Vec::with_capacity(64);
        data.extend(cfg.proxy_ip4.to_ne_bytes());
        data.extend(cfg.proxy_port.to_ne_bytes());
        data.extend(cfg.pad.to_ne_bytes());
        data.extend(cfg.flags.to_ne_bytes());
        data.extend(cfg.policy_rev.to_ne_bytes());
        data.extend(u32::from(input.cfg.is_some()).to_ne_bytes());
        data.extend(input.mode.to_ne_bytes());
        data.extend(dst.ip().octets());
        data.extend(dst.port().to_be_bytes());
        data.extend([0, 0]);
        data.extend(u32::from(input.bypassed).to_ne_bytes());
        data.extend(input.ip6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
        data.extend(input.local_port.to_ne_bytes());
        assert_eq!(data.len(), 56);
        data.resize(64, 0);

        let prog: &SchedClassifier = self
            ._ebpf
            .program("strait_test_decide")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = [0u8; 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.data_out = Some(&mut out);
        let result = prog.test_run(opts).unwrap();
        assert_eq!(result.return_value, 0, "wrapper failed");
        out[..16].try_into().unwrap()
    }

    fn decide(&self, input: Input) -> Decision {
        let out = self.run(input);
        let word = |i: usize| u32::from_ne_bytes(out[i..i + 4].try_into().unwrap());
        let verdict = match word(0) {
            0 => Verdict::Pass,
            1 => Verdict::Redirect,
            2 => Verdict::Reject,
            other => panic!("verdict {other}"),
        };
        Decision {
            verdict,
            reason: DropReason::try_from(word(4)).unwrap(),
            to: SocketAddrV4::new(
                Ipv4Addr::new(out[8], out[9], out[10], out[11]),
                u16::from_be_bytes([out[12], out[13]]),
            ),
        }
    }
}

const PROXY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 16, 1), 15001);
const NONE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

fn pass() -> Decision {
    Decision {
        verdict: Verdict::Pass,
        reason: DropReason::None,
        to: NONE,
    }
}

fn reject(reason: DropReason) -> Decision {
    Decision {
        verdict: Verdict::Reject,
        reason,
        to: NONE,
    }
}

fn redirect() -> Decision {
    Decision {
        verdict: Verdict::Redirect,
        reason: DropReason::None,
        to: PROXY,
    }
}

fn v4(dst: &str, cfg: Option<Config>, bypassed: bool) -> Input {
    Input {
        cfg,
        mode: 0,
        dst: Some(dst.parse().unwrap()),
        bypassed,
        ..Input::default()
    }
}

fn v6(ip6: &str, port: u16, cfg: Option<Config>, bypassed: bool) -> Input {
    Input {
        cfg,
        mode: 1,
        dst: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        bypassed,
        ip6: Some(ip6.parse().unwrap()),
        ..Input::default()
    }
}

#[test]
fn connect4_precedence() {
    let h = Harness::new();
    let cfg = Some(Config::new(PROXY, 0));
    let disabled = Some(Config::new(PROXY, CFG_DISABLED));
    let unset = Some(Config::default());
    let no_port = Some(Config::new(SocketAddrV4::new(*PROXY.ip(), 0), 0));

    let cases = [
        // 1. loopback / unspecified pass, even without any config
        (v4("127.0.0.1:80", cfg, false), pass()),
        (v4("127.255.0.9:80", None, false), pass()),
        (v4("0.0.0.0:80", unset, false), pass()),
        // 2. no config entry: fail closed
        (v4("10.0.0.1:80", None, false), reject(DropReason::NoProxy)),
        // 3. switched off on purpose: pass, even unconfigured
        (v4("10.0.0.1:80", disabled, false), pass()),
        (
            v4(
                "10.0.0.1:80",
                Some(Config {
                    flags: CFG_DISABLED,
                    ..Config::default()
                }),
                false,
            ),
            pass(),
        ),
        // 4. proxy not configured: fail closed, even for bypassed destinations
        (v4("10.0.0.1:80", unset, false), reject(DropReason::NoProxy)),
        (v4("10.0.0.1:80", unset, true), reject(DropReason::NoProxy)),
        (
            v4("10.0.0.1:80", no_port, false),
            reject(DropReason::NoProxy),
        ),
        // 5. the proxy itself passes; its host on another port does not (unless bypassed)
        (v4("198.18.16.1:15001", cfg, false), pass()),
        (v4("198.18.16.1:53", cfg, false), redirect()),
        // 6. bypass set
        (v4("198.18.16.1:53", cfg, true), pass()),
        // 7. everything else goes to the proxy
        (v4("10.0.0.1:80", cfg, false), redirect()),
        (v4("128.0.0.1:443", cfg, false), redirect()),
    ];
    for (input, expected) in cases {
        assert_eq!(
            h.decide(input),
            expected,
            "dst {:?} cfg {:?} bypassed {}",
            input.dst,
            input.cfg,
            input.bypassed
        );
    }
}

#[test]
fn connect6_rejects_only_mapped_addresses_connect4_would_redirect() {
    let h = Harness::new();
    let cfg = Some(Config::new(PROXY, 0));
    let cases = [
        (
            v6("::ffff:10.0.0.1", 80, cfg, false),
            reject(DropReason::V4MappedV6),
        ),
        (v6("::ffff:10.0.0.1", 80, cfg, true), pass()),
        (v6("::ffff:127.0.0.1", 80, None, false), pass()),
        (v6("::ffff:198.18.16.1", 15001, cfg, false), pass()),
        (
            v6("::ffff:10.0.0.1", 80, None, false),
            reject(DropReason::NoProxy),
        ),
        // Real IPv6 (and IPv4-compatible, NAT64) is left alone for now.
        (v6("2001:db8::1", 80, None, false), pass()),
        (v6("::1", 80, cfg, false), pass()),
        (v6("::10.0.0.1", 80, cfg, false), pass()),
        (v6("64:ff9b::a00:1", 80, cfg, false), pass()),
    ];
    for (input, expected) in cases {
        assert_eq!(h.decide(input), expected, "{:?}", input.ip6);
    }
}

#[test]
fn client_key_converts_the_host_order_local_port() {
    let h = Harness::new();
    let input = Input {
        mode: 2,
        dst: Some("10.1.2.3:0".parse().unwrap()),
        local_port: 40000,
        ..Input::default()
    };
    let out = h.run(input);
    assert_eq!(&out[8..12], &[10, 1, 2, 3]);
    assert_eq!(&out[12..14], &40000u16.to_be_bytes());
    assert_eq!(&out[14..16], &[0, 0], "padding of the key must be zero");
    // The same bytes user space builds for the proxy's peer address.
    let key = strait_ebpf::abi::SockKey::from("10.1.2.3:40000".parse::<SocketAddrV4>().unwrap());
    assert_eq!(key.ip4, ip_to_net(Ipv4Addr::new(10, 1, 2, 3)));
    assert_eq!(key.port.to_ne_bytes(), [out[12], out[13]]);
}
