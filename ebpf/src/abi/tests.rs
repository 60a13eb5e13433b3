#![allow(clippy::unwrap_used)]

use std::{
    fmt::Write as _,
    mem::{offset_of, size_of, size_of_val},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

/// One field of a mirrored struct: C struct name, field name, Rust offset and size.
struct Field {
    c_struct: &'static str,
    name: &'static str,
    offset: usize,
    size: usize,
}

macro_rules! fields {
    ($ty:ty, $c:literal, [$($f:ident),* $(,)?]) => {
        fields!($ty, $c, base 0, [$($f),*])
    };
    // `base`: where the Rust struct starts inside the C one (LPM keys: after `prefixlen`).
    ($ty:ty, $c:literal, base $base:expr, [$($f:ident),* $(,)?]) => {
        vec![$(Field {
            c_struct: $c,
            name: stringify!($f),
            offset: $base + offset_of!($ty, $f),
            size: size_of_val(&<$ty>::default().$f),
        }),*]
    };
}

fn structs() -> Vec<(&'static str, usize)> {
    use aya::maps::lpm_trie::Key;
    vec![
        ("strait_config", size_of::<Config>()),
        ("strait_orig_dst", size_of::<OrigDst>()),
        ("strait_sock_key", size_of::<SockKey>()),
        ("strait_ipcache_key", size_of::<Key<u32>>()),
        ("strait_endpoint", size_of::<Endpoint>()),
        ("strait_pod_if", size_of::<PodIf>()),
        ("strait_policy_key", size_of::<Key<PolicyKeyData>>()),
        ("strait_svc_key", size_of::<SvcKey>()),
        ("strait_via_proxy_key", size_of::<ViaProxyKey>()),
        ("strait_svc_backend", size_of::<SvcBackend>()),
        ("strait_svc_entry", size_of::<SvcEntry>()),
        ("strait_ct_key", size_of::<CtKey>()),
        ("strait_ct_entry", size_of::<CtEntry>()),
        ("strait_frag_key", size_of::<FragKey>()),
        ("strait_frag_entry", size_of::<FragEntry>()),
        ("strait_drop_event", size_of::<DropEventRecord>()),
        ("strait_sock", size_of::<SockState>()),
        ("strait_udp_rnat_key", size_of::<UdpRnatKey>()),
        ("strait_flow_event", size_of::<FlowEventRecord>()),
    ]
}

fn fields() -> Vec<Field> {
    let mut all = fields!(
        Config,
        "strait_config",
        [proxy_ip4, proxy_port, pad, flags, policy_rev]
    );
    all.extend(fields!(OrigDst, "strait_orig_dst", [ip4, port, pad]));
    all.extend(fields!(SockKey, "strait_sock_key", [ip4, port, pad]));
    // aya's `lpm_trie::Key<u32>`: a u32 prefix length, then the address.
    all.extend([("prefixlen", 0), ("ip4", 4)].map(|(name, offset)| Field {
        c_struct: "strait_ipcache_key",
        name,
        offset,
        size: 4,
    }));
    all.extend(fields!(Endpoint, "strait_endpoint", [identity, ip4]));
    all.extend(fields!(PodIf, "strait_pod_if", [ip4, identity]));
    all.extend(fields!(
        PolicyKeyData,
        "strait_policy_key",
        base 4,
        [src_identity, dst_identity, reserved, protocol, dport]
    ));
    all.extend(fields!(
        SvcKey,
        "strait_svc_key",
        [vip, port, protocol, pad]
    ));
    all.extend(fields!(
        ViaProxyKey,
        "strait_via_proxy_key",
        [identity, port, protocol, pad]
    ));
    all.extend(fields!(
        SvcBackend,
        "strait_svc_backend",
        [ip4, identity, port, pad]
    ));
    all.extend(fields!(SvcEntry, "strait_svc_entry", [count, backends]));
    all.extend(fields!(
        CtKey,
        "strait_ct_key",
        [saddr, daddr, sport, dport, protocol, pad]
    ));
    all.extend(fields!(
        CtEntry,
        "strait_ct_entry",
        [created_ns, seen_ns, policy_rev, reported]
    ));
    all.extend(fields!(
        UdpRnatKey,
        "strait_udp_rnat_key",
        [cookie, ip4, port, pad]
    ));
    all.extend(fields!(
        SockState,
        "strait_sock",
        [
            start_ns,
            src_ip4,
            dst_ip4,
            svc_ip4,
            svc_port,
            sport,
            dport,
            role,
            protocol,
            src_identity,
            dst_identity,
            close_reason,
            pad
        ]
    ));
    all.extend(fields!(
        FlowEventRecord,
        "strait_flow_event",
        [
            ktime_ns,
            duration_ns,
            bytes_sent,
            bytes_received,
            src_ip4,
            dst_ip4,
            svc_ip4,
            sport,
            dport,
            svc_port,
            protocol,
            direction,
            src_identity,
            dst_identity,
            close_reason,
            hook,
            pad
        ]
    ));
    all.extend(fields!(
        FragKey,
        "strait_frag_key",
        [saddr, daddr, id, protocol, pad]
    ));
    all.extend(fields!(FragEntry, "strait_frag_entry", [sport, dport]));
    all.extend(fields!(
        DropEventRecord,
        "strait_drop_event",
        [
            ktime_ns,
            src_ip,
            dst_ip,
            sport,
            dport,
            protocol,
            hook,
            reason,
            src_identity,
            dst_identity,
            cgroup_id,
            ifindex,
            pod_ip4
        ]
    ));
    all
}

fn constants() -> Vec<(&'static str, u64)> {
    let mut all = vec![
        ("STRAIT_CONFIG_MAX", u64::from(CONFIG_MAX)),
        ("STRAIT_BYPASS_MAX", u64::from(BYPASS_MAX)),
        ("STRAIT_ORIG_MAX", u64::from(ORIG_MAX)),
        ("STRAIT_UDP_RNAT_MAX", u64::from(UDP_RNAT_MAX)),
        ("STRAIT_CFG_DISABLED", u64::from(CFG_DISABLED)),
        ("STRAIT_CFG_NO_FAST_PATH", u64::from(CFG_NO_FAST_PATH)),
        ("STRAIT_ID_FIRST_WORKLOAD", u64::from(ID_FIRST_WORKLOAD)),
        ("STRAIT_CT_REPORTED_EGRESS", u64::from(CT_REPORTED_EGRESS)),
        ("STRAIT_CT_REPORTED_INGRESS", u64::from(CT_REPORTED_INGRESS)),
        ("STRAIT_ID_CIDR_BASE", u64::from(ID_CIDR_BASE)),
        ("STRAIT_SOCK_CLIENT", u64::from(SOCK_CLIENT)),
        ("STRAIT_SOCK_SERVER", u64::from(SOCK_SERVER)),
        ("STRAIT_FLOW_EGRESS", u64::from(FLOW_EGRESS)),
        ("STRAIT_FLOW_INGRESS", u64::from(FLOW_INGRESS)),
        ("STRAIT_FLOW_EVENTS_BYTES", u64::from(FLOW_EVENTS_BYTES)),
        ("STRAIT_IPCACHE_MAX", u64::from(IPCACHE_MAX)),
        ("STRAIT_ENDPOINTS_MAX", u64::from(ENDPOINTS_MAX)),
        ("STRAIT_POD_IFS_MAX", u64::from(POD_IFS_MAX)),
        ("STRAIT_POLICED_MAX", u64::from(POLICED_MAX)),
        ("STRAIT_VIA_PROXY_MAX", u64::from(VIA_PROXY_MAX)),
        ("STRAIT_POLICY_MAX", u64::from(POLICY_MAX)),
        ("STRAIT_SVC_MAX", u64::from(SVC_MAX)),
        ("STRAIT_SVC_BACKENDS_MAX", u64::from(SVC_BACKENDS_MAX)),
        ("STRAIT_CT_MAX", u64::from(CT_MAX)),
        ("STRAIT_FRAG_MAX", u64::from(FRAG_MAX)),
        ("STRAIT_EVENTS_BYTES", u64::from(EVENTS_BYTES)),
        ("STRAIT_DROP_COUNTERS", u64::from(DROP_COUNTERS)),
        ("STRAIT_POLICED_INGRESS", u64::from(POLICED_INGRESS)),
        ("STRAIT_POLICED_EGRESS", u64::from(POLICED_EGRESS)),
        (
            "STRAIT_POLICY_PREFIX_ANY_PROTO",
            u64::from(POLICY_PREFIX_ANY_PROTO),
        ),
        (
            "STRAIT_POLICY_PREFIX_ANY_PORT",
            u64::from(POLICY_PREFIX_ANY_PORT),
        ),
        ("STRAIT_POLICY_PREFIX_FULL", u64::from(POLICY_PREFIX_FULL)),
        ("STRAIT_CT_LIFETIME_TCP_S", u64::from(CT_LIFETIME_TCP_S)),
        ("STRAIT_CT_LIFETIME_OTHER_S", u64::from(CT_LIFETIME_OTHER_S)),
    ];
    for (number, name) in IP_PROTOCOLS {
        let name: &'static str = Box::leak(format!("STRAIT_IPPROTO_{name}").into_boxed_str());
        all.push((name, u64::from(number)));
    }
    for (id, entity) in reserved_identity::NAMES {
        let name = entity.to_ascii_uppercase().replace('-', "_");
        let name: &'static str = Box::leak(format!("STRAIT_ID_{name}").into_boxed_str());
        all.push((name, u64::from(id)));
    }
    for reason in DropReason::ALL {
        let name: &'static str =
            Box::leak(format!("STRAIT_DROP_{}", reason.as_str()).into_boxed_str());
        all.push((name, u64::from(reason as u32)));
    }
    for action in PolicyAction::ALL {
        let name: &'static str =
            Box::leak(format!("STRAIT_POLICY_{}", action.as_str()).into_boxed_str());
        all.push((name, u64::from(action as u32)));
    }
    for hook in DropHook::ALL {
        let name: &'static str =
            Box::leak(format!("STRAIT_HOOK_{}", hook.as_str()).into_boxed_str());
        all.push((name, u64::from(hook as u8)));
    }
    all
}

/// A C file asserting, with `_Static_assert`, that the header has the Rust layouts.
fn layout_checks(fields: &[Field], structs: &[(&str, usize)], constants: &[(&str, u64)]) -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"strait_abi.h\"\n");
    for (name, size) in structs {
        writeln!(c, "_Static_assert(sizeof(struct {name}) == {size}, \"sizeof(struct {name}) != {size} (Rust)\");").unwrap();
    }
    for f in fields {
        let (s, n, off, size) = (f.c_struct, f.name, f.offset, f.size);
        writeln!(c, "_Static_assert(offsetof(struct {s}, {n}) == {off}, \"offsetof({s}.{n}) != {off} (Rust)\");").unwrap();
        writeln!(c, "_Static_assert(sizeof(((struct {s} *)0)->{n}) == {size}, \"sizeof({s}.{n}) != {size} (Rust)\");").unwrap();
    }
    for (name, value) in constants {
        writeln!(
            c,
            "_Static_assert({name} == {value}ULL, \"{name} != {value} (Rust)\");"
        )
        .unwrap();
    }
    c
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/include")
}

/// Compiles `source` with `clang -target bpf -fsyntax-only`; Err(clang's stderr) on failure.
fn clang_check(name: &str, source: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("strait-abi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("check.c");
    std::fs::write(&file, source).unwrap();
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-fsyntax-only", "-Werror", "-I"])
        .arg(include_dir());
    let multiarch = Command::new(&clang)
        .arg("-print-multiarch")
        .output()
        .unwrap();
    let multiarch = String::from_utf8_lossy(&multiarch.stdout).trim().to_owned();
    if !multiarch.is_empty() {
        cmd.arg("-I").arg(Path::new("/usr/include").join(multiarch));
    }
    let out = cmd
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {clang} (apt-get install clang llvm libbpf-dev): {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rust_layouts_match_strait_abi_h() {
    let source = layout_checks(&fields(), &structs(), &constants());
    if let Err(stderr) = clang_check("match", &source) {
        panic!("strait_abi.h and src/abi.rs disagree:\n{stderr}");
    }
}

#[test]
fn layout_check_fails_when_the_two_diverge() {
    // The check above must be able to fail: shift one offset, change one size and one constant.
    let mut wrong = fields();
    wrong[1].offset += 2;
    let source = layout_checks(
        &wrong,
        &[("strait_orig_dst", 12)],
        &[("STRAIT_BYPASS_MAX", 65)],
    );
    let stderr = clang_check("diverge", &source).expect_err("a wrong layout must not compile");
    assert!(
        stderr.contains("offsetof(strait_config.proxy_port)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sizeof(struct strait_orig_dst) != 12"),
        "{stderr}"
    );
    assert!(stderr.contains("STRAIT_BYPASS_MAX != 65"), "{stderr}");
}

#[test]
fn drop_reasons_convert_from_values_and_names() {
    for reason in DropReason::ALL {
        assert_eq!(DropReason::try_from(reason as u32), Ok(reason));
        assert_eq!(reason.as_str().parse(), Ok(reason));
    }
    assert_eq!(DropReason::try_from(7), Err(7));
    assert_eq!(DropReason::PolicyDenied.as_str(), "POLICY_DENIED");
    assert_eq!(DropReason::V4MappedV6.as_str(), "V4_MAPPED_V6");
    assert!(!DropReason::KERNEL.contains(&DropReason::NotLocalEndpoint));
    assert!(DropReason::KERNEL.contains(&DropReason::PolicyDenied));
    assert!("POLICY_DENIED ".parse::<DropReason>().is_err());
    assert_eq!(ip_protocol_name(IPPROTO_UDP), "UDP");
    assert_eq!(ip_protocol_name(47), "IP/47");
}

#[test]
fn addresses_are_stored_in_network_order() {
    let cfg = Config::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 250, 1), 15001), 0);
    assert_eq!(cfg.proxy_ip4.to_ne_bytes(), [198, 18, 250, 1]);
    assert_eq!(cfg.proxy_port.to_ne_bytes(), 15001u16.to_be_bytes());
    assert_eq!(cfg.proxy(), "198.18.250.1:15001".parse().unwrap());

    let addr: SocketAddrV4 = "10.1.2.3:8080".parse().unwrap();
    let orig = OrigDst::from(addr);
    assert_eq!(orig.ip4.to_ne_bytes(), [10, 1, 2, 3]);
    assert_eq!(orig.port.to_ne_bytes(), [0x1f, 0x90]);
    assert_eq!(orig.addr(), addr);

    let key = SockKey::from(addr);
    assert_eq!((key.ip4, key.port, key.pad), (orig.ip4, orig.port, 0));
}

#[test]
fn drop_event_records_parse_from_ring_buffer_bytes() {
    let record = DropEventRecord {
        ktime_ns: 0x0102_0304_0506_0708,
        src_ip: ip_to_net(Ipv4Addr::new(10, 0, 0, 1)),
        dst_ip: ip_to_net(Ipv4Addr::new(10, 0, 0, 2)),
        sport: 40000u16.to_be(),
        dport: 53u16.to_be(),
        protocol: IPPROTO_UDP,
        hook: DropHook::TcToPod as u8,
        reason: DropReason::PolicyDenied as u16,
        src_identity: 1000,
        dst_identity: 1001,
        cgroup_id: 0xdead_beef_0000_0001,
        ifindex: 7,
        pod_ip4: ip_to_net(Ipv4Addr::new(10, 0, 0, 9)),
    };
    // The bytes the kernel writes: the struct's memory, field by field in native order.
    let mut bytes = Vec::new();
    bytes.extend(record.ktime_ns.to_ne_bytes());
    bytes.extend(record.src_ip.to_ne_bytes());
    bytes.extend(record.dst_ip.to_ne_bytes());
    bytes.extend(record.sport.to_ne_bytes());
    bytes.extend(record.dport.to_ne_bytes());
    bytes.extend([record.protocol, record.hook]);
    bytes.extend(record.reason.to_ne_bytes());
    bytes.extend(record.src_identity.to_ne_bytes());
    bytes.extend(record.dst_identity.to_ne_bytes());
    bytes.extend(record.cgroup_id.to_ne_bytes());
    bytes.extend(record.ifindex.to_ne_bytes());
    bytes.extend(record.pod_ip4.to_ne_bytes());
    assert_eq!(bytes.len(), DropEventRecord::SIZE);
    assert_eq!(DropEventRecord::from_bytes(&bytes), Some(record));
    assert_eq!(DropEventRecord::from_bytes(&bytes[..47]), None);
    assert_eq!(DropHook::try_from(3), Ok(DropHook::TcToPod));
    assert_eq!(DropHook::try_from(9), Err(9));
    assert_eq!(PolicyAction::try_from(3), Ok(PolicyAction::Proxy));
    assert_eq!(PolicyAction::try_from(0), Err(0));
}
