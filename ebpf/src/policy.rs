//! The L3/L4 policy image the kernel enforces, and the order in which it gets into the maps.
//!
//! Everything here is pure: [`State::from_image`] validates and normalises a [`PolicyImage`],
//! [`plan`] turns (what the maps hold, what is wanted) into ordered steps; `maps.rs` runs them.
//!
//! # Ordering
//! Map updates are not atomic together, so [`plan`] orders them such that a flow allowed both
//! before and after an update is never denied in between (and enforcement only starts once its
//! rules are in place):
//! 1. `policed`: bits that go away are cleared (entries left with no bit are deleted): this only
//!    stops enforcing;
//! 2. `policy`: entries whose new action is ALLOW or PROXY are added or replaced;
//! 3. `ipcache`, `endpoints`, `services`: entries added or replaced;
//! 4. `policy`: entries whose new action is DENY are added or replaced;
//! 5. `policed`: new bits are set (new enforcement comes last, once its allows are in);
//! 6. `policy`: stale entries removed, ALLOW/PROXY ones before DENY ones (so removing a narrow
//!    deny never briefly exposes a broader allow that is going away too);
//! 7. `ipcache`, `endpoints`, `services`: stale entries removed (an endpoint removed early would
//!    let its pod's connects skip the kernel check).
//!
//! Limits: a flow whose two ends both change identity in one update may briefly be judged with
//! one old and one new identity. When a map cannot hold old and new entries together, its stale
//! entries are removed first (and the plan says so, see [`Plan::early_removals`]).
//!
//! # Deny wins
//! The kernel takes the longest matching prefix. So that a DENY always wins over an ALLOW or
//! PROXY it covers, [`State::from_image`] turns every such allow into a DENY; for the same key,
//! DENY > PROXY > ALLOW.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use ipnet::Ipv4Net;

use crate::abi::{self, PolicyAction};

/// A pod as `connect4` sees it: the cgroup its processes run in, its identity and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointEntry {
    /// Inode number of the pod's cgroup v2 directory (what `bpf_get_current_cgroup_id` returns).
    pub cgroup_id: u64,
    pub identity: u32,
    pub ip: Ipv4Addr,
}

/// What a policy entry matches: a source and destination identity, then a protocol (0 = any)
/// and the first `dport_prefix_len` bits of the destination port (0 = any port, 16 = one port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 132 SCTP); 0 = any protocol (then
    /// `dport_prefix_len` must be 0).
    pub protocol: u8,
    /// Host order. Bits past `dport_prefix_len` are ignored.
    pub dport: u16,
    /// 0..=16.
    pub dport_prefix_len: u8,
}

impl PolicyKey {
    /// Every protocol and port from `src` to `dst` (an L3-only rule).
    pub const fn any(src_identity: u32, dst_identity: u32) -> Self {
        Self {
            src_identity,
            dst_identity,
            protocol: 0,
            dport: 0,
            dport_prefix_len: 0,
        }
    }

    /// One protocol, every port.
    pub const fn protocol(src_identity: u32, dst_identity: u32, protocol: u8) -> Self {
        Self {
            src_identity,
            dst_identity,
            protocol,
            dport: 0,
            dport_prefix_len: 0,
        }
    }

    /// One protocol, one port.
    pub const fn port(src_identity: u32, dst_identity: u32, protocol: u8, dport: u16) -> Self {
        Self {
            src_identity,
            dst_identity,
            protocol,
            dport,
            dport_prefix_len: 16,
        }
    }

    /// The fewest keys covering exactly the ports `first..=last` (empty when `first > last`).
    pub fn port_range(
        src_identity: u32,
        dst_identity: u32,
        protocol: u8,
        first: u16,
        last: u16,
    ) -> Vec<Self> {
        let mut keys = Vec::new();
        let (mut start, end) = (u32::from(first), u32::from(last));
        while start <= end {
            // The largest aligned block starting at `start` that does not pass `end`.
            let mut size_bits = if start == 0 {
                16
            } else {
                start.trailing_zeros().min(16)
            };
            while start + (1 << size_bits) - 1 > end {
                size_bits -= 1;
            }
            keys.push(Self {
                src_identity,
                dst_identity,
                protocol,
                dport: start as u16,
                dport_prefix_len: 16 - size_bits as u8,
            });
            start += 1 << size_bits;
        }
        keys
    }

    /// Whether every packet this key matches is also matched by `self` (same identities).
    pub fn covers(&self, other: &PolicyKey) -> bool {
        if (self.src_identity, self.dst_identity) != (other.src_identity, other.dst_identity) {
            return false;
        }
        if self.protocol == 0 {
            return true;
        }
        self.protocol == other.protocol
            && self.dport_prefix_len <= other.dport_prefix_len
            && mask_port(other.dport, self.dport_prefix_len) == self.dport
    }

    /// Validated, with the bits past the prefix cleared.
    fn canonical(self) -> Result<Self, PolicyError> {
        if self.dport_prefix_len > 16 {
            return Err(PolicyError::PortPrefixTooLong { key: self });
        }
        if self.protocol == 0 && self.dport_prefix_len != 0 {
            return Err(PolicyError::PortWithoutProtocol { key: self });
        }
        Ok(Self {
            dport: mask_port(self.dport, self.dport_prefix_len),
            ..self
        })
    }

    /// The LPM key the kernel stores (see `struct strait_policy_key`).
    pub(crate) fn to_abi(self) -> (u32, abi::PolicyKeyData) {
        let prefixlen = if self.protocol == 0 {
            abi::POLICY_PREFIX_ANY_PROTO
        } else {
            abi::POLICY_PREFIX_ANY_PORT + u32::from(self.dport_prefix_len)
        };
        let data = abi::PolicyKeyData {
            src_identity: self.src_identity,
            dst_identity: self.dst_identity,
            reserved: 0,
            protocol: self.protocol,
            dport: self.dport.to_be(),
        };
        (prefixlen, data)
    }

    /// The inverse of [`Self::to_abi`]; `None` for keys this crate never writes.
    pub(crate) fn from_abi(prefixlen: u32, data: abi::PolicyKeyData) -> Option<Self> {
        if data.reserved != 0 {
            return None;
        }
        let key = match prefixlen {
            abi::POLICY_PREFIX_ANY_PROTO => Self::any(data.src_identity, data.dst_identity),
            p if (abi::POLICY_PREFIX_ANY_PORT..=abi::POLICY_PREFIX_FULL).contains(&p) => Self {
                src_identity: data.src_identity,
                dst_identity: data.dst_identity,
                protocol: data.protocol,
                dport: u16::from_be(data.dport),
                dport_prefix_len: (p - abi::POLICY_PREFIX_ANY_PORT) as u8,
            },
            _ => return None,
        };
        key.canonical().ok()
    }
}

fn mask_port(port: u16, prefix_len: u8) -> u16 {
    match prefix_len {
        0 => 0,
        n if n >= 16 => port,
        n => port & (u16::MAX << (16 - n)),
    }
}

/// A Service frontend: protocol, ClusterIP and port (the key of `strait_svc_ids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceFrontend {
    /// `abi::IPPROTO_TCP` or `abi::IPPROTO_UDP`.
    pub protocol: u8,
    pub addr: SocketAddrV4,
}

impl ServiceFrontend {
    /// A TCP frontend.
    pub const fn tcp(addr: SocketAddrV4) -> Self {
        Self {
            protocol: abi::IPPROTO_TCP,
            addr,
        }
    }

    /// A UDP frontend.
    pub const fn udp(addr: SocketAddrV4) -> Self {
        Self {
            protocol: abi::IPPROTO_UDP,
            addr,
        }
    }
}

impl From<SocketAddrV4> for ServiceFrontend {
    /// A TCP frontend, the common case.
    fn from(addr: SocketAddrV4) -> Self {
        Self::tcp(addr)
    }
}

impl std::fmt::Display for ServiceFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, abi::ip_protocol_name(self.protocol))
    }
}

/// Parses `ip:port` (TCP) or `ip:port/UDP` (`/TCP` also accepted).
impl std::str::FromStr for ServiceFrontend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, proto) = s.split_once('/').unwrap_or((s, "TCP"));
        let addr: SocketAddrV4 = addr
            .parse()
            .map_err(|e| format!("service frontend {s:?}: {e}"))?;
        match proto.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::tcp(addr)),
            "UDP" => Ok(Self::udp(addr)),
            other => Err(format!(
                "service frontend {s:?}: protocol {other} is not TCP or UDP"
            )),
        }
    }
}

/// One ready backend of a service: where socket LB sends a connection, and what policy judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceBackend {
    /// The backend pod's address.
    pub ip: Ipv4Addr,
    pub identity: u32,
    /// The backend's target port (host order), which policy rules name.
    pub port: u16,
}

/// The whole desired kernel policy state of a node. [`crate::Datapath::apply_policy`] diffs it
/// against what the maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyImage {
    /// Prefix → identity: pod addresses as /32, CIDR identities, the node gateway /32 → 1
    /// (host). Addresses not covered are `world` (2).
    pub ipcache: Vec<(Ipv4Net, u32)>,
    /// The node's pods, for `connect4` (cgroup → identity).
    pub endpoints: Vec<EndpointEntry>,
    /// (identity, ingress enforced, egress enforced). Identities not listed are not policed.
    pub policed: Vec<(u32, bool, bool)>,
    /// Rules; see [`PolicyKey`]. For a policed direction, what no rule allows is denied.
    pub rules: Vec<(PolicyKey, PolicyAction)>,
    /// Service frontends (TCP) → their ready backends, which `connect4` balances over. A
    /// connect to a frontend is refused in the kernel only when policy denies all of them. More
    /// than [`abi::SVC_BACKENDS_MAX`] backends, or none, leave balancing and the decision to
    /// the proxy.
    pub services: Vec<(ServiceFrontend, Vec<ServiceBackend>)>,
}

/// Entries added, replaced and removed in one map by one apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

impl MapStats {
    pub fn changes(&self) -> usize {
        self.added + self.updated + self.removed
    }
}

/// What [`crate::Datapath::apply_policy`] changed, per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub ipcache: MapStats,
    pub endpoints: MapStats,
    pub policed: MapStats,
    pub policy: MapStats,
    pub services: MapStats,
}

impl ApplyStats {
    pub fn changes(&self) -> usize {
        [
            self.ipcache,
            self.endpoints,
            self.policed,
            self.policy,
            self.services,
        ]
        .iter()
        .map(MapStats::changes)
        .sum()
    }
}

/// Why a [`PolicyImage`] was rejected. A rejected image changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy key {key:?}: dport_prefix_len {} is over 16", key.dport_prefix_len)]
    PortPrefixTooLong { key: PolicyKey },
    #[error("policy key {key:?}: a port prefix needs a protocol (protocol 0 means any)")]
    PortWithoutProtocol { key: PolicyKey },
    #[error("{map}: {what} is given twice with different values")]
    Conflict { map: &'static str, what: String },
    #[error("{map}: {count} entries, the map holds at most {max}")]
    TooMany {
        map: &'static str,
        count: usize,
        max: u32,
    },
    #[error("endpoint {ip} (identity {identity}): cgroup id 0 is not a cgroup")]
    NoCgroup { ip: Ipv4Addr, identity: u32 },
    #[error("policy key {key:?} is not of identity pair {pair:?}")]
    OutsidePair { key: PolicyKey, pair: (u32, u32) },
}

/// A normalised image: exactly what the maps should hold, in domain types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    pub endpoints: BTreeMap<u64, (u32, Ipv4Addr)>,
    /// Identity → `POLICED_*` flags, never 0.
    pub policed: BTreeMap<u32, u32>,
    pub policy: BTreeMap<PolicyKey, PolicyAction>,
    /// Distinct backends, sorted; empty = the kernel cannot tell.
    pub services: BTreeMap<ServiceFrontend, Vec<ServiceBackend>>,
}

impl State {
    pub(crate) fn from_image(image: &PolicyImage) -> Result<State, PolicyError> {
        let mut state = State::default();
        for (net, identity) in &image.ipcache {
            insert_unique(&mut state.ipcache, "ipcache", net.trunc(), *identity)?;
        }
        for ep in &image.endpoints {
            if ep.cgroup_id == 0 {
                return Err(PolicyError::NoCgroup {
                    ip: ep.ip,
                    identity: ep.identity,
                });
            }
            insert_unique(
                &mut state.endpoints,
                "endpoints",
                ep.cgroup_id,
                (ep.identity, ep.ip),
            )?;
        }
        for &(identity, ingress, egress) in &image.policed {
            let flags = policed_flags(ingress, egress);
            if flags != 0 {
                *state.policed.entry(identity).or_default() |= flags;
            }
        }
        for &(key, action) in &image.rules {
            let slot = state.policy.entry(key.canonical()?).or_insert(action);
            *slot = stronger(*slot, action);
        }
        deny_wins(&mut state.policy);
        for (frontend, backends) in &image.services {
            insert_unique(
                &mut state.services,
                "services",
                *frontend,
                normalize_backends(backends),
            )?;
        }
        Totals::of(&state).check_capacity()?;
        Ok(state)
    }
}

/// How many entries each map holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub ipcache: usize,
    pub endpoints: usize,
    pub policed: usize,
    pub policy: usize,
    pub services: usize,
}

impl Totals {
    pub(crate) fn of(state: &State) -> Self {
        Self {
            ipcache: state.ipcache.len(),
            endpoints: state.endpoints.len(),
            policed: state.policed.len(),
            policy: state.policy.len(),
            services: state.services.len(),
        }
    }

    pub(crate) fn check_capacity(&self) -> Result<(), PolicyError> {
        let sizes = [
            ("ipcache", self.ipcache, abi::IPCACHE_MAX),
            ("endpoints", self.endpoints, abi::ENDPOINTS_MAX),
            ("policed", self.policed, abi::POLICED_MAX),
            ("policy", self.policy, abi::POLICY_MAX),
            ("services", self.services, abi::SVC_MAX),
        ];
        for (map, count, max) in sizes {
            if count > max as usize {
                return Err(PolicyError::TooMany { map, count, max });
            }
        }
        Ok(())
    }
}

/// The `POLICED_*` bits for the enforced directions.
pub(crate) fn policed_flags(ingress: bool, egress: bool) -> u32 {
    (if ingress { abi::POLICED_INGRESS } else { 0 })
        | (if egress { abi::POLICED_EGRESS } else { 0 })
}

fn insert_unique<K: Ord + std::fmt::Debug, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    name: &'static str,
    key: K,
    value: V,
) -> Result<(), PolicyError> {
    match map.get(&key) {
        Some(existing) if *existing != value => Err(PolicyError::Conflict {
            map: name,
            what: format!("{key:?}"),
        }),
        Some(_) => Ok(()),
        None => {
            map.insert(key, value);
            Ok(())
        }
    }
}

/// For one key given twice: DENY > PROXY > ALLOW.
pub(crate) fn stronger(a: PolicyAction, b: PolicyAction) -> PolicyAction {
    let rank = |a: PolicyAction| match a {
        PolicyAction::Allow => 0,
        PolicyAction::Proxy => 1,
        PolicyAction::Deny => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Turns every allow covered by a deny of the same identity pair into a deny.
pub(crate) fn deny_wins(policy: &mut BTreeMap<PolicyKey, PolicyAction>) {
    let mut denies: BTreeMap<(u32, u32), Vec<PolicyKey>> = BTreeMap::new();
    for (key, action) in policy.iter() {
        if *action == PolicyAction::Deny {
            denies
                .entry((key.src_identity, key.dst_identity))
                .or_default()
                .push(*key);
        }
    }
    for (key, action) in policy.iter_mut() {
        if *action != PolicyAction::Deny
            && denies
                .get(&(key.src_identity, key.dst_identity))
                .is_some_and(|ds| ds.iter().any(|d| d.covers(key)))
        {
            *action = PolicyAction::Deny;
        }
    }
}

/// Distinct, sorted. More than [`abi::SVC_BACKENDS_MAX`] are written as "too many" (the proxy
/// balances them).
pub(crate) fn normalize_backends(backends: &[ServiceBackend]) -> Vec<ServiceBackend> {
    let mut distinct = backends.to_vec();
    distinct.sort();
    distinct.dedup();
    distinct
}

/// One map operation: `Some` = insert or replace, `None` = delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Policed(u32, Option<u32>),
    Policy(PolicyKey, Option<PolicyAction>),
    Ipcache(Ipv4Net, Option<u32>),
    Endpoint(u64, Option<(u32, Ipv4Addr)>),
    Service(ServiceFrontend, Option<Vec<ServiceBackend>>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub stats: ApplyStats,
    /// Maps too small for old and new entries together, whose stale entries go first.
    pub early_removals: Vec<&'static str>,
}

struct Diff<K, V> {
    added: Vec<(K, V)>,
    updated: Vec<(K, V, V)>,
    removed: Vec<(K, V)>,
}

impl<K, V> Diff<K, V> {
    fn stats(&self) -> MapStats {
        MapStats {
            added: self.added.len(),
            updated: self.updated.len(),
            removed: self.removed.len(),
        }
    }

    /// Whether old and new entries together exceed `max` (`current`: entries in the map now).
    fn overflows(&self, current: usize, max: u32) -> bool {
        current + self.added.len() > max as usize
    }
}

fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let mut d = Diff {
        added: Vec::new(),
        updated: Vec::new(),
        removed: Vec::new(),
    };
    for (k, v) in desired {
        match current.get(k) {
            None => d.added.push((k.clone(), v.clone())),
            Some(old) if old != v => d.updated.push((k.clone(), v.clone(), old.clone())),
            Some(_) => {}
        }
    }
    for (k, v) in current {
        if !desired.contains_key(k) {
            d.removed.push((k.clone(), v.clone()));
        }
    }
    d
}

/// The ordered steps taking the maps from `current` to `desired` (see the module docs).
/// `current` may be a part of the maps (the keys a delta touches); `held` counts what the maps
/// hold in all, for the capacity decisions.
pub(crate) fn plan(current: &State, desired: &State, held: Totals) -> Plan {
    let policed = diff(&current.policed, &desired.policed);
    let policy = diff(&current.policy, &desired.policy);
    let ipcache = diff(&current.ipcache, &desired.ipcache);
    let endpoints = diff(&current.endpoints, &desired.endpoints);
    let services = diff(&current.services, &desired.services);

    let mut plan = Plan {
        stats: ApplyStats {
            ipcache: ipcache.stats(),
            endpoints: endpoints.stats(),
            policed: policed.stats(),
            policy: policy.stats(),
            services: services.stats(),
        },
        ..Plan::default()
    };
    let steps = &mut plan.steps;

    // 1. Stop enforcing what goes away (policed removals never need capacity).
    for (id, new, old) in &policed.updated {
        if old & !new != 0 {
            let kept = old & new;
            steps.push(Step::Policed(*id, (kept != 0).then_some(kept)));
        }
    }
    for (id, _) in &policed.removed {
        steps.push(Step::Policed(*id, None));
    }

    let policy_early = policy.overflows(held.policy, abi::POLICY_MAX);
    let policy_removals = || {
        let (allows, denies): (Vec<_>, Vec<_>) = policy
            .removed
            .iter()
            .copied()
            .partition(|(_, a)| *a != PolicyAction::Deny);
        allows
            .into_iter()
            .chain(denies)
            .map(|(k, _)| Step::Policy(k, None))
            .collect::<Vec<_>>()
    };
    if policy_early {
        plan.early_removals.push("policy");
        steps.extend(policy_removals());
    }
    // 2. New and replaced allows.
    let policy_upserts = |deny: bool| {
        policy
            .added
            .iter()
            .map(|(k, a)| (k, a))
            .chain(policy.updated.iter().map(|(k, a, _)| (k, a)))
            .filter(move |(_, a)| (**a == PolicyAction::Deny) == deny)
            .map(|(k, a)| Step::Policy(*k, Some(*a)))
            .collect::<Vec<_>>()
    };
    steps.extend(policy_upserts(false));

    // 3. Identities, endpoints, services.
    let ipcache_early = ipcache.overflows(held.ipcache, abi::IPCACHE_MAX);
    let endpoints_early = endpoints.overflows(held.endpoints, abi::ENDPOINTS_MAX);
    let services_early = services.overflows(held.services, abi::SVC_MAX);
    if ipcache_early {
        plan.early_removals.push("ipcache");
        steps.extend(ipcache.removed.iter().map(|(k, _)| Step::Ipcache(*k, None)));
    }
    steps.extend(upserts(&ipcache, |k, v| Step::Ipcache(k, Some(v))));
    if endpoints_early {
        plan.early_removals.push("endpoints");
        steps.extend(
            endpoints
                .removed
                .iter()
                .map(|(k, _)| Step::Endpoint(*k, None)),
        );
    }
    steps.extend(upserts(&endpoints, |k, v| Step::Endpoint(k, Some(v))));
    if services_early {
        plan.early_removals.push("services");
        steps.extend(
            services
                .removed
                .iter()
                .map(|(k, _)| Step::Service(*k, None)),
        );
    }
    steps.extend(upserts(&services, |k, v| Step::Service(k, Some(v))));

    // 4. New and replaced denies.
    steps.extend(policy_upserts(true));

    // 5. New enforcement, last.
    for (id, flags) in &policed.added {
        steps.push(Step::Policed(*id, Some(*flags)));
    }
    for (id, new, old) in &policed.updated {
        if new & !old != 0 {
            steps.push(Step::Policed(*id, Some(*new)));
        }
    }

    // 6. and 7. Stale entries.
    if !policy_early {
        steps.extend(policy_removals());
    }
    if !ipcache_early {
        steps.extend(ipcache.removed.iter().map(|(k, _)| Step::Ipcache(*k, None)));
    }
    if !endpoints_early {
        steps.extend(
            endpoints
                .removed
                .iter()
                .map(|(k, _)| Step::Endpoint(*k, None)),
        );
    }
    if !services_early {
        steps.extend(
            services
                .removed
                .iter()
                .map(|(k, _)| Step::Service(*k, None)),
        );
    }
    plan
}

fn upserts<K: Clone, V: Clone>(d: &Diff<K, V>, step: impl Fn(K, V) -> Step) -> Vec<Step> {
    d.added
        .iter()
        .map(|(k, v)| step(k.clone(), v.clone()))
        .chain(d.updated.iter().map(|(k, v, _)| step(k.clone(), v.clone())))
        .collect()
}

mod delta;

pub use delta::PolicyDelta;
pub(crate) use delta::{patch, sub_states, totals_after};

#[cfg(test)]
mod tests;
