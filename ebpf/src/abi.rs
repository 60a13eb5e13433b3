//! Rust mirrors of `bpf/include/strait_abi.h`.
//!
//! Every type the programs share with user space is defined once in the C header; this module
//! mirrors it with `#[repr(C)]` structs. The tests below generate `_Static_assert`s from these
//! Rust layouts and compile them against the header with `clang -target bpf`, so a field changed
//! on one side only fails `cargo test`.
//!
//! Addresses and ports are kept in network byte order, as the kernel stores them; the
//! constructors and accessors here are the only place that converts.

use std::net::{Ipv4Addr, SocketAddrV4};

/// `STRAIT_CONFIG_MAX`: entries of the config array (one, index 0).
pub const CONFIG_MAX: u32 = 1;
/// `STRAIT_BYPASS_MAX`: capacity of the bypass set.
pub const BYPASS_MAX: u32 = 64;
/// `STRAIT_ORIG_MAX`: capacity of each original-destination LRU map.
pub const ORIG_MAX: u32 = 65536;
/// `STRAIT_CFG_DISABLED`: redirection switched off on purpose.
pub const CFG_DISABLED: u32 = 1 << 0;
/// `STRAIT_IPCACHE_MAX`: capacity of the ipcache LPM trie.
pub const IPCACHE_MAX: u32 = 65536;
/// `STRAIT_ENDPOINTS_MAX`: capacity of the cgroup id → endpoint map.
pub const ENDPOINTS_MAX: u32 = 4096;
/// `STRAIT_POLICED_MAX`: capacity of the identity → enforcement flags map.
pub const POLICED_MAX: u32 = 16384;
/// `STRAIT_POLICY_MAX`: capacity of the policy LPM trie.
pub const POLICY_MAX: u32 = 262144;
/// `STRAIT_SVC_MAX`: capacity of the service frontend → backend identities map.
pub const SVC_MAX: u32 = 4096;
/// `STRAIT_SVC_BACKENDS_MAX`: distinct (identity, port) pairs one service entry holds.
pub const SVC_BACKENDS_MAX: u32 = 16;
/// `STRAIT_CT_MAX`: capacity of the conntrack LRU map.
pub const CT_MAX: u32 = 65536;
/// `STRAIT_FRAG_MAX`: capacity of the fragment LRU map.
pub const FRAG_MAX: u32 = 8192;
/// `STRAIT_EVENTS_BYTES`: size of the drop event ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// `STRAIT_DROP_COUNTERS`: entries of the per-CPU drop counter array (one per reason value).
pub const DROP_COUNTERS: u32 = 256;

/// `STRAIT_ID_HOST`: the node itself (gateway address, proxy, DNS).
pub const ID_HOST: u32 = 1;
/// `STRAIT_ID_WORLD`: any address the ipcache does not know.
pub const ID_WORLD: u32 = 2;
/// `STRAIT_POLICED_INGRESS`: traffic towards the identity needs a rule.
pub const POLICED_INGRESS: u32 = 1 << 0;
/// `STRAIT_POLICED_EGRESS`: traffic from the identity needs a rule.
pub const POLICED_EGRESS: u32 = 1 << 1;
/// `STRAIT_POLICY_PREFIX_ANY_PROTO`: policy key prefix matching src, dst, any protocol.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// `STRAIT_POLICY_PREFIX_ANY_PORT`: ... one protocol, any port.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// `STRAIT_POLICY_PREFIX_FULL`: ... one port.
pub const POLICY_PREFIX_FULL: u32 = 96;
/// `STRAIT_CT_LIFETIME_TCP_S`: idle seconds after which a tracked TCP flow is judged again.
pub const CT_LIFETIME_TCP_S: u32 = 21600;
/// `STRAIT_CT_LIFETIME_OTHER_S`: the same for every other protocol.
pub const CT_LIFETIME_OTHER_S: u32 = 60;

/// `STRAIT_IPPROTO_*`.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// `struct strait_config`, the one entry of the config map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Proxy IPv4 address, network order; 0 = not configured (connects fail closed).
    pub proxy_ip4: u32,
    /// Proxy port, network order.
    pub proxy_port: u16,
    pub pad: u16,
    /// `CFG_*` flags.
    pub flags: u32,
}

impl Config {
    pub fn new(proxy: SocketAddrV4, flags: u32) -> Self {
        Self {
            proxy_ip4: ip_to_net(*proxy.ip()),
            proxy_port: proxy.port().to_be(),
            pad: 0,
            flags,
        }
    }

    pub fn proxy(&self) -> SocketAddrV4 {
        SocketAddrV4::new(ip_from_net(self.proxy_ip4), u16::from_be(self.proxy_port))
    }
}

/// `struct strait_orig_dst`: where a redirected socket originally connected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network order.
    pub ip4: u32,
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

impl OrigDst {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(ip_from_net(self.ip4), u16::from_be(self.port))
    }
}

impl From<SocketAddrV4> for OrigDst {
    fn from(addr: SocketAddrV4) -> Self {
        Self {
            ip4: ip_to_net(*addr.ip()),
            port: addr.port().to_be(),
            pad: 0,
        }
    }
}

/// `struct strait_sock_key`: a client's {local ip4, local port}, the peer address the proxy
/// sees on the connection it accepted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network order.
    pub ip4: u32,
    /// Network order.
    pub port: u16,
    /// Always zero: part of the hash key.
    pub pad: u16,
}

impl From<SocketAddrV4> for SockKey {
    fn from(addr: SocketAddrV4) -> Self {
        Self {
            ip4: ip_to_net(*addr.ip()),
            port: addr.port().to_be(),
            pad: 0,
        }
    }
}

/// `struct strait_endpoint`: value of the endpoint map, keyed by the pod's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub identity: u32,
    /// Network order.
    pub ip4: u32,
}

/// The data of `struct strait_policy_key` after its `prefixlen` (which aya's
/// `lpm_trie::Key` adds): the C offsets are these plus 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKeyData {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Always zero, always inside the prefix.
    pub reserved: u8,
    /// `IPPROTO_*`; zero for "any protocol" (prefix 72).
    pub protocol: u8,
    /// Network order; bits past the prefix zero.
    pub dport: u16,
}

/// `enum strait_policy_action`: what a policy entry says.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyAction {
    /// Allowed at L3/L4.
    Allow = 1,
    /// Denied. Wins over any allow it covers.
    Deny = 2,
    /// Allowed at L4, the proxy applies L7 rules (an allow for the kernel).
    Proxy = 3,
}

impl PolicyAction {
    pub const ALL: [PolicyAction; 3] =
        [PolicyAction::Allow, PolicyAction::Deny, PolicyAction::Proxy];

    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Allow => "ALLOW",
            PolicyAction::Deny => "DENY",
            PolicyAction::Proxy => "PROXY",
        }
    }
}

impl TryFrom<u32> for PolicyAction {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        PolicyAction::ALL
            .into_iter()
            .find(|a| *a as u32 == value)
            .ok_or(value)
    }
}

/// `struct strait_svc_key`: a service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcKey {
    /// Network order.
    pub vip: u32,
    /// Network order.
    pub port: u16,
    pub protocol: u8,
    pub pad: u8,
}

impl SvcKey {
    pub fn tcp(frontend: SocketAddrV4) -> Self {
        Self {
            vip: ip_to_net(*frontend.ip()),
            port: frontend.port().to_be(),
            protocol: IPPROTO_TCP,
            pad: 0,
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(ip_from_net(self.vip), u16::from_be(self.port))
    }
}

/// `struct strait_svc_backend`: one (identity, target port) of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcBackend {
    pub identity: u32,
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

/// `struct strait_svc_entry`: the distinct backends of a service; `count` 0 = the kernel
/// cannot tell (the proxy decides).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcEntry {
    pub count: u32,
    pub backends: [SvcBackend; SVC_BACKENDS_MAX as usize],
}

/// `struct strait_ct_key`: a tracked flow's 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Network order.
    pub saddr: u32,
    /// Network order.
    pub daddr: u32,
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
}

impl CtKey {
    pub fn new(protocol: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            saddr: ip_to_net(*src.ip()),
            daddr: ip_to_net(*dst.ip()),
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            protocol,
            pad: [0; 3],
        }
    }
}

/// `struct strait_ct_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    pub seen_ns: u64,
}

/// `struct strait_frag_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub protocol: u8,
    pub pad: u8,
}

/// `struct strait_frag_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub sport: u16,
    pub dport: u16,
}

/// `enum strait_hook`: where a drop happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropHook {
    /// `cgroup/connect4`: the application's connect() failed (EPERM).
    Connect4 = 1,
    /// tc ingress of a pod's host-side veth: a packet leaving the pod.
    TcFromPod = 2,
    /// tc egress of a pod's host-side veth: a packet entering the pod.
    TcToPod = 3,
    /// `cgroup/connect6` (IPv4-mapped destinations).
    Connect6 = 4,
}

impl DropHook {
    pub const ALL: [DropHook; 4] = [
        DropHook::Connect4,
        DropHook::TcFromPod,
        DropHook::TcToPod,
        DropHook::Connect6,
    ];

    /// The C enumerator without its `STRAIT_HOOK_` prefix.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropHook::Connect4 => "CONNECT4",
            DropHook::TcFromPod => "TC_FROM_POD",
            DropHook::TcToPod => "TC_TO_POD",
            DropHook::Connect6 => "CONNECT6",
        }
    }
}

impl TryFrom<u8> for DropHook {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        DropHook::ALL
            .into_iter()
            .find(|h| *h as u8 == value)
            .ok_or(value)
    }
}

impl std::fmt::Display for DropHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `struct strait_drop_event`: one record of the drop event ring buffer, as the kernel writes
/// it. [`crate::DropEvent`] is the typed form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEventRecord {
    pub ktime_ns: u64,
    /// Network order.
    pub src_ip: u32,
    /// Network order.
    pub dst_ip: u32,
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub protocol: u8,
    /// `DropHook`.
    pub hook: u8,
    /// `DropReason`.
    pub reason: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub cgroup_id: u64,
    pub ifindex: u32,
    pub pad: u32,
}

impl DropEventRecord {
    pub const SIZE: usize = size_of::<DropEventRecord>();

    /// Reads a record from the bytes of a ring buffer item (native byte order, as written).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..Self::SIZE)?;
        let at = |i: usize| -> [u8; 8] {
            std::array::from_fn(|k| bytes.get(i + k).copied().unwrap_or(0))
        };
        let u16_at = |i: usize| u16::from_ne_bytes([at(i)[0], at(i)[1]]);
        let u32_at = |i: usize| {
            let b = at(i);
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        };
        let u64_at = |i: usize| u64::from_ne_bytes(at(i));
        Some(Self {
            ktime_ns: u64_at(0),
            src_ip: u32_at(8),
            dst_ip: u32_at(12),
            sport: u16_at(16),
            dport: u16_at(18),
            protocol: bytes[20],
            hook: bytes[21],
            reason: u16_at(22),
            src_identity: u32_at(24),
            dst_identity: u32_at(28),
            cgroup_id: u64_at(32),
            ifindex: u32_at(40),
            pad: u32_at(44),
        })
    }
}

/// An IPv4 address as the maps store it (network order in memory).
pub fn ip_to_net(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The inverse of [`ip_to_net`].
pub fn ip_from_net(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// `enum strait_drop_reason`: why Strait dropped or refused something. Kernel drops, proxy
/// denials, flow records and metrics all use this one list.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    None = 0,
    PolicyDenied = 133,
    Invalid = 134,
    FragNotFound = 175,
    NoProxy = 190,
    V4MappedV6 = 191,
    OrigDstUnrecorded = 192,
}

impl DropReason {
    /// Every reason, in value order.
    pub const ALL: [DropReason; 7] = [
        DropReason::None,
        DropReason::PolicyDenied,
        DropReason::Invalid,
        DropReason::FragNotFound,
        DropReason::NoProxy,
        DropReason::V4MappedV6,
        DropReason::OrigDstUnrecorded,
    ];

    /// The C enumerator without its `STRAIT_DROP_` prefix; also the metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::None => "NONE",
            DropReason::PolicyDenied => "POLICY_DENIED",
            DropReason::Invalid => "INVALID",
            DropReason::FragNotFound => "FRAG_NOT_FOUND",
            DropReason::NoProxy => "NO_PROXY",
            DropReason::V4MappedV6 => "V4_MAPPED_V6",
            DropReason::OrigDstUnrecorded => "ORIG_DST_UNRECORDED",
        }
    }
}

impl TryFrom<u32> for DropReason {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        DropReason::ALL
            .into_iter()
            .find(|r| *r as u32 == value)
            .ok_or(value)
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers (every bit pattern is valid),
// and has no implicit padding: its padding is the explicit `pad` field, always written as zero,
// so the bytes aya copies to and from the kernel are fully initialised. The layout tests below
// check that the fields sit where `strait_abi.h` puts them.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Config {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for OrigDst {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SockKey {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: see `Config` above (`reserved` is the explicit padding).
#[allow(unsafe_code)]
unsafe impl aya::Pod for PolicyKeyData {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SvcKey {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SvcBackend {}
// SAFETY: see `Config` above; an array of `SvcBackend`s after a `u32` leaves no gap.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SvcEntry {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtKey {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtEntry {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FragKey {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FragEntry {}
// SAFETY: see `Config` above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for DropEventRecord {}

#[cfg(test)]
mod tests;
