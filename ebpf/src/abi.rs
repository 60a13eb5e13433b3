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
    NoProxy = 190,
    V4MappedV6 = 191,
    OrigDstUnrecorded = 192,
}

impl DropReason {
    /// Every reason, in value order.
    pub const ALL: [DropReason; 5] = [
        DropReason::None,
        DropReason::PolicyDenied,
        DropReason::NoProxy,
        DropReason::V4MappedV6,
        DropReason::OrigDstUnrecorded,
    ];

    /// The C enumerator without its `STRAIT_DROP_` prefix; also the metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::None => "NONE",
            DropReason::PolicyDenied => "POLICY_DENIED",
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

#[cfg(test)]
mod tests;
