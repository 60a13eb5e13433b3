//! Typed wrappers around the maps of `bpf/include/maps.h`. Callers never spell a map name.
//!
//! Each map sits behind its own lock: the agent's tasks call in concurrently (`&self`), and aya
//! needs `&mut` to update or delete.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, MapType, PerCpuArray, lpm_trie::Key},
};
use ipnet::Ipv4Net;
use parking_lot::Mutex;

use crate::{
    PodAddress,
    abi::{
        self, Config, CtEntry, CtKey, DropReason, Endpoint, FragEntry, FragKey, OrigDst, PodIf,
        PolicyAction, PolicyKeyData, SockKey, SvcBackend, SvcEntry, SvcKey, ViaProxyKey,
    },
    policy::{PolicyKey, ServiceBackend, ServiceFrontend, State, Step},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("eBPF object has no map `{map}`")]
    Missing { map: &'static str },
    #[error("map `{map}` does not have the expected type or key/value sizes")]
    Layout {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{op} on map `{map}`")]
    Op {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{count} bypass addresses given, map `{map}` holds at most {max}")]
    TooManyBypass {
        map: &'static str,
        count: usize,
        max: u32,
    },
    #[error("{count} entries given, map `{map}` holds at most {max}")]
    TooMany {
        map: &'static str,
        count: usize,
        max: u32,
    },
}

/// What a map of `maps.h` must look like; checked against maps pinned by an earlier agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

pub(crate) const CONFIG: MapSpec = MapSpec {
    name: "strait_cfg",
    map_type: MapType::Array,
    key_size: size::<u32>(),
    value_size: size::<Config>(),
    max_entries: abi::CONFIG_MAX,
};
pub(crate) const BYPASS: MapSpec = MapSpec {
    name: "strait_bypass",
    map_type: MapType::Hash,
    key_size: size::<u32>(),
    value_size: size::<u8>(),
    max_entries: abi::BYPASS_MAX,
};
pub(crate) const ORIG_BY_COOKIE: MapSpec = MapSpec {
    name: "strait_orig_ck",
    map_type: MapType::LruHash,
    key_size: size::<u64>(),
    value_size: size::<OrigDst>(),
    max_entries: abi::ORIG_MAX,
};
pub(crate) const ORIG_BY_CLIENT: MapSpec = MapSpec {
    name: "strait_orig_tp",
    map_type: MapType::LruHash,
    key_size: size::<SockKey>(),
    value_size: size::<OrigDst>(),
    max_entries: abi::ORIG_MAX,
};
pub(crate) const POD_IFS: MapSpec = MapSpec {
    name: "strait_pod_ifs",
    map_type: MapType::Hash,
    key_size: size::<u32>(),
    value_size: size::<PodIf>(),
    max_entries: abi::POD_IFS_MAX,
};

pub(crate) const IPCACHE: MapSpec = MapSpec {
    name: "strait_ipcache",
    map_type: MapType::LpmTrie,
    key_size: size::<Key<u32>>(),
    value_size: size::<u32>(),
    max_entries: abi::IPCACHE_MAX,
};
pub(crate) const ENDPOINTS: MapSpec = MapSpec {
    name: "strait_endpoint",
    map_type: MapType::Hash,
    key_size: size::<u64>(),
    value_size: size::<Endpoint>(),
    max_entries: abi::ENDPOINTS_MAX,
};
pub(crate) const POLICED: MapSpec = MapSpec {
    name: "strait_policed",
    map_type: MapType::Hash,
    key_size: size::<u32>(),
    value_size: size::<u32>(),
    max_entries: abi::POLICED_MAX,
};
pub(crate) const POLICY: MapSpec = MapSpec {
    name: "strait_policy",
    map_type: MapType::LpmTrie,
    key_size: size::<Key<PolicyKeyData>>(),
    value_size: size::<u32>(),
    max_entries: abi::POLICY_MAX,
};
pub(crate) const VIA_PROXY: MapSpec = MapSpec {
    name: "strait_viaproxy",
    map_type: MapType::Hash,
    key_size: size::<ViaProxyKey>(),
    value_size: size::<u8>(),
    max_entries: abi::VIA_PROXY_MAX,
};
pub(crate) const SERVICES: MapSpec = MapSpec {
    name: "strait_svc_ids",
    map_type: MapType::Hash,
    key_size: size::<SvcKey>(),
    value_size: size::<SvcEntry>(),
    max_entries: abi::SVC_MAX,
};
pub(crate) const CONNTRACK: MapSpec = MapSpec {
    name: "strait_ct",
    map_type: MapType::LruHash,
    key_size: size::<CtKey>(),
    value_size: size::<CtEntry>(),
    max_entries: abi::CT_MAX,
};
pub(crate) const FRAGS: MapSpec = MapSpec {
    name: "strait_frags",
    map_type: MapType::LruHash,
    key_size: size::<FragKey>(),
    value_size: size::<FragEntry>(),
    max_entries: abi::FRAG_MAX,
};
pub(crate) const EVENTS: MapSpec = MapSpec {
    name: "strait_events",
    map_type: MapType::RingBuf,
    key_size: 0,
    value_size: 0,
    max_entries: abi::EVENTS_BYTES,
};
pub(crate) const DROPS: MapSpec = MapSpec {
    name: "strait_drops",
    map_type: MapType::PerCpuArray,
    key_size: size::<u32>(),
    value_size: size::<u64>(),
    max_entries: abi::DROP_COUNTERS,
};

pub(crate) const SOCKETS: MapSpec = MapSpec {
    name: "strait_sock",
    map_type: MapType::SkStorage,
    key_size: size::<i32>(),
    value_size: size::<abi::SockState>(),
    max_entries: 0,
};
pub(crate) const UDP_RNAT: MapSpec = MapSpec {
    name: "strait_udp_rnat",
    map_type: MapType::LruHash,
    key_size: size::<abi::UdpRnatKey>(),
    value_size: size::<OrigDst>(),
    max_entries: abi::UDP_RNAT_MAX,
};
pub(crate) const FLOW_EVENTS: MapSpec = MapSpec {
    name: "strait_flowev",
    map_type: MapType::RingBuf,
    key_size: 0,
    value_size: 0,
    max_entries: abi::FLOW_EVENTS_BYTES,
};

/// Every map of `maps.h`, all pinned by name.
pub(crate) const ALL: [MapSpec; 18] = [
    CONFIG,
    BYPASS,
    VIA_PROXY,
    ORIG_BY_COOKIE,
    ORIG_BY_CLIENT,
    POD_IFS,
    IPCACHE,
    ENDPOINTS,
    POLICED,
    POLICY,
    SERVICES,
    CONNTRACK,
    FRAGS,
    EVENTS,
    DROPS,
    SOCKETS,
    FLOW_EVENTS,
    UDP_RNAT,
];

/// The maps user space reads and writes.
pub(crate) struct Maps {
    config: Mutex<Array<MapData, Config>>,
    bypass: Mutex<HashMap<MapData, u32, u8>>,
    orig_by_client: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    pod_ifs: Mutex<HashMap<MapData, u32, PodIf>>,
    ipcache: Mutex<LpmTrie<MapData, u32, u32>>,
    endpoints: Mutex<HashMap<MapData, u64, Endpoint>>,
    policed: Mutex<HashMap<MapData, u32, u32>>,
    policy: Mutex<LpmTrie<MapData, PolicyKeyData, u32>>,
    services: Mutex<HashMap<MapData, SvcKey, SvcEntry>>,
    via_proxy: Mutex<HashMap<MapData, ViaProxyKey, u8>>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    frags: HashMap<MapData, FragKey, FragEntry>,
    drops: PerCpuArray<MapData, u64>,
}

impl Maps {
    /// Takes the maps out of a loaded object (the maps stay pinned).
    pub(crate) fn take_from(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Ok(Self {
            config: Mutex::new(take(ebpf, &CONFIG)?),
            bypass: Mutex::new(take(ebpf, &BYPASS)?),
            orig_by_client: Mutex::new(take(ebpf, &ORIG_BY_CLIENT)?),
            pod_ifs: Mutex::new(take(ebpf, &POD_IFS)?),
            ipcache: Mutex::new(take(ebpf, &IPCACHE)?),
            endpoints: Mutex::new(take(ebpf, &ENDPOINTS)?),
            policed: Mutex::new(take(ebpf, &POLICED)?),
            policy: Mutex::new(take(ebpf, &POLICY)?),
            services: Mutex::new(take(ebpf, &SERVICES)?),
            via_proxy: Mutex::new(take(ebpf, &VIA_PROXY)?),
            conntrack: take(ebpf, &CONNTRACK)?,
            frags: take(ebpf, &FRAGS)?,
            drops: take(ebpf, &DROPS)?,
        })
    }

    pub(crate) fn config(&self) -> Result<Config, Error> {
        self.config.lock().get(&0, 0).map_err(|source| Error::Op {
            map: CONFIG.name,
            op: "read",
            source,
        })
    }

    pub(crate) fn set_config(&self, config: Config) -> Result<(), Error> {
        self.config
            .lock()
            .set(0, config, 0)
            .map_err(|source| Error::Op {
                map: CONFIG.name,
                op: "write",
                source,
            })
    }

    /// Makes the bypass set exactly `ips`. Stale entries go first, so that while this runs the
    /// set is never larger than the old one or the new one (and never over capacity).
    pub(crate) fn set_bypass(&self, ips: &[Ipv4Addr]) -> Result<(), Error> {
        let wanted: BTreeSet<u32> = ips.iter().map(|ip| abi::ip_to_net(*ip)).collect();
        if wanted.len() > BYPASS.max_entries as usize {
            return Err(Error::TooManyBypass {
                map: BYPASS.name,
                count: wanted.len(),
                max: BYPASS.max_entries,
            });
        }
        let op_err = |op| {
            move |source| Error::Op {
                map: BYPASS.name,
                op,
                source,
            }
        };
        let mut map = self.bypass.lock();
        let present: BTreeSet<u32> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op_err("list"))?;
        for stale in present.difference(&wanted) {
            ignore_missing(map.remove(stale)).map_err(op_err("delete"))?;
        }
        for ip in wanted.difference(&present) {
            map.insert(ip, 1, 0).map_err(op_err("insert"))?;
        }
        Ok(())
    }

    /// Makes the via-proxy set exactly `keys`, stale entries first (as [`Self::set_bypass`]).
    /// Returns whether anything changed.
    pub(crate) fn set_via_proxy(&self, keys: &BTreeSet<ViaProxyKey>) -> Result<bool, Error> {
        if keys.len() > VIA_PROXY.max_entries as usize {
            return Err(Error::TooMany {
                map: VIA_PROXY.name,
                count: keys.len(),
                max: VIA_PROXY.max_entries,
            });
        }
        let op_err = |op| {
            move |source| Error::Op {
                map: VIA_PROXY.name,
                op,
                source,
            }
        };
        let mut map = self.via_proxy.lock();
        let present: BTreeSet<ViaProxyKey> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op_err("list"))?;
        for stale in present.difference(keys) {
            ignore_missing(map.remove(stale)).map_err(op_err("delete"))?;
        }
        for key in keys.difference(&present) {
            map.insert(key, 1, 0).map_err(op_err("insert"))?;
        }
        Ok(present != *keys)
    }

    /// The via-proxy set in the map.
    pub(crate) fn via_proxy(&self) -> Result<BTreeSet<ViaProxyKey>, Error> {
        self.via_proxy
            .lock()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| Error::Op {
                map: VIA_PROXY.name,
                op: "list",
                source,
            })
    }

    pub(crate) fn bypass(&self) -> Result<Vec<Ipv4Addr>, Error> {
        let keys: Vec<u32> = self
            .bypass
            .lock()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| Error::Op {
                map: BYPASS.name,
                op: "list",
                source,
            })?;
        let mut ips: Vec<Ipv4Addr> = keys.into_iter().map(abi::ip_from_net).collect();
        ips.sort();
        Ok(ips)
    }

    /// Looks up and deletes the original destination recorded for `client`.
    pub(crate) fn take_orig_dst(
        &self,
        client: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>, Error> {
        let key = SockKey::from(client);
        let op_err = |op| {
            move |source| Error::Op {
                map: ORIG_BY_CLIENT.name,
                op,
                source,
            }
        };
        let mut map = self.orig_by_client.lock();
        let orig = match map.get(&key, 0) {
            Ok(orig) => orig,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(op_err("lookup")(source)),
        };
        // LRU eviction may have beaten us to it; the value is ours either way.
        ignore_missing(map.remove(&key)).map_err(op_err("delete"))?;
        Ok(Some(orig.addr()))
    }
}

// === pod interfaces ===

impl Maps {
    /// Records `pod` as the pod behind the interface with index `ifindex`.
    pub(crate) fn set_pod_if(&self, ifindex: u32, pod: PodAddress) -> Result<(), Error> {
        let value = PodIf {
            ip4: abi::ip_to_net(pod.ip),
            identity: pod.identity,
        };
        self.pod_ifs
            .lock()
            .insert(ifindex, value, 0)
            .map_err(op_err(&POD_IFS, "insert"))
    }

    /// Forgets the pod behind `ifindex`; fine if none was recorded.
    pub(crate) fn remove_pod_if(&self, ifindex: u32) -> Result<(), Error> {
        ignore_missing(self.pod_ifs.lock().remove(&ifindex)).map_err(op_err(&POD_IFS, "delete"))
    }

    /// Every recorded interface index with its pod, sorted by index.
    pub(crate) fn pod_ifs(&self) -> Result<Vec<(u32, PodAddress)>, Error> {
        let mut all: Vec<(u32, PodAddress)> = self
            .pod_ifs
            .lock()
            .iter()
            .map(|entry| {
                entry.map(|(ifindex, v)| {
                    let pod = PodAddress {
                        ip: abi::ip_from_net(v.ip4),
                        identity: v.identity,
                    };
                    (ifindex, pod)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(op_err(&POD_IFS, "list"))?;
        all.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(all)
    }
}

// === policy maps ===

impl Maps {
    /// What the policy maps hold now, as a [`State`]. Entries this crate never writes (a
    /// malformed policy key, a non-TCP service) are left out, with a warning.
    pub(crate) fn policy_state(&self) -> Result<State, Error> {
        let mut state = State::default();
        for entry in self.ipcache.lock().iter() {
            let (key, identity) = entry.map_err(op_err(&IPCACHE, "list"))?;
            match Ipv4Net::new(abi::ip_from_net(key.data()), key.prefix_len() as u8) {
                Ok(net) => {
                    state.ipcache.insert(net.trunc(), identity);
                }
                Err(_) => tracing::warn!(
                    map = IPCACHE.name,
                    prefix_len = key.prefix_len(),
                    "ignoring an entry with an impossible prefix"
                ),
            }
        }
        for entry in self.endpoints.lock().iter() {
            let (cgroup_id, ep) = entry.map_err(op_err(&ENDPOINTS, "list"))?;
            state
                .endpoints
                .insert(cgroup_id, (ep.identity, abi::ip_from_net(ep.ip4)));
        }
        for entry in self.policed.lock().iter() {
            let (identity, flags) = entry.map_err(op_err(&POLICED, "list"))?;
            state.policed.insert(identity, flags);
        }
        for entry in self.policy.lock().iter() {
            let (key, action) = entry.map_err(op_err(&POLICY, "list"))?;
            let Some(key) = PolicyKey::from_abi(key.prefix_len(), key.data()) else {
                tracing::warn!(map = POLICY.name, prefix_len = key.prefix_len(), data = ?key.data(),
                    "ignoring an entry Strait does not write");
                continue;
            };
            // The kernel treats an unknown action as a deny.
            let action = PolicyAction::try_from(action).unwrap_or(PolicyAction::Deny);
            state.policy.insert(key, action);
        }
        for entry in self.services.lock().iter() {
            let (key, svc) = entry.map_err(op_err(&SERVICES, "list"))?;
            if key.protocol != abi::IPPROTO_TCP && key.protocol != abi::IPPROTO_UDP {
                tracing::warn!(
                    map = SERVICES.name,
                    ?key,
                    "ignoring an entry of another protocol"
                );
                continue;
            }
            let count = svc.count as usize;
            let backends = svc
                .backends
                .get(..count)
                .unwrap_or_default()
                .iter()
                .map(|b| ServiceBackend {
                    ip: abi::ip_from_net(b.ip4),
                    identity: b.identity,
                    port: u16::from_be(b.port),
                })
                .collect();
            // "More than fit" (count > max) reads back empty: the next full apply rewrites it.
            let frontend = ServiceFrontend {
                protocol: key.protocol,
                addr: key.addr(),
            };
            state.services.insert(frontend, backends);
        }
        Ok(state)
    }

    /// Runs one step of a [`crate::policy::Plan`].
    pub(crate) fn apply_step(&self, step: &Step) -> Result<(), Error> {
        match step {
            Step::Ipcache(net, value) => {
                let key = Key::new(u32::from(net.prefix_len()), abi::ip_to_net(net.network()));
                let mut map = self.ipcache.lock();
                match value {
                    Some(id) => map.insert(&key, id, 0).map_err(op_err(&IPCACHE, "insert")),
                    None => ignore_missing(map.remove(&key)).map_err(op_err(&IPCACHE, "delete")),
                }
            }
            Step::Endpoint(cgroup_id, value) => {
                let mut map = self.endpoints.lock();
                match value {
                    Some((identity, ip)) => {
                        let ep = Endpoint {
                            identity: *identity,
                            ip4: abi::ip_to_net(*ip),
                        };
                        map.insert(cgroup_id, ep, 0)
                            .map_err(op_err(&ENDPOINTS, "insert"))
                    }
                    None => {
                        ignore_missing(map.remove(cgroup_id)).map_err(op_err(&ENDPOINTS, "delete"))
                    }
                }
            }
            Step::Policed(identity, value) => {
                let mut map = self.policed.lock();
                match value {
                    Some(flags) => map
                        .insert(identity, flags, 0)
                        .map_err(op_err(&POLICED, "insert")),
                    None => {
                        ignore_missing(map.remove(identity)).map_err(op_err(&POLICED, "delete"))
                    }
                }
            }
            Step::Policy(key, value) => {
                let (prefixlen, data) = key.to_abi();
                let key = Key::new(prefixlen, data);
                let mut map = self.policy.lock();
                match value {
                    Some(action) => map
                        .insert(&key, *action as u32, 0)
                        .map_err(op_err(&POLICY, "insert")),
                    None => ignore_missing(map.remove(&key)).map_err(op_err(&POLICY, "delete")),
                }
            }
            Step::Service(frontend, value) => {
                let key = SvcKey::new(frontend.protocol, frontend.addr);
                let mut map = self.services.lock();
                match value {
                    Some(backends) => map
                        .insert(key, svc_entry(backends), 0)
                        .map_err(op_err(&SERVICES, "insert")),
                    None => ignore_missing(map.remove(&key)).map_err(op_err(&SERVICES, "delete")),
                }
            }
        }
    }

    /// Drops per reason since the maps were created, summed over CPUs (every reason the kernel
    /// reports).
    pub(crate) fn drop_counters(&self) -> Result<Vec<(DropReason, u64)>, Error> {
        DropReason::KERNEL
            .into_iter()
            .map(|reason| {
                let per_cpu = self
                    .drops
                    .get(&(reason as u32), 0)
                    .map_err(op_err(&DROPS, "read"))?;
                Ok((
                    reason,
                    per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
                ))
            })
            .collect()
    }

    /// (map name, entries, capacity) of every map that fills up.
    pub(crate) fn fill(&self) -> Vec<(&'static str, usize, usize)> {
        let entry = |spec: &MapSpec, n: usize| (spec.name, n, spec.max_entries as usize);
        vec![
            entry(&POD_IFS, self.pod_ifs.lock().keys().flatten().count()),
            entry(&IPCACHE, self.ipcache.lock().keys().flatten().count()),
            entry(&ENDPOINTS, self.endpoints.lock().keys().flatten().count()),
            entry(&POLICED, self.policed.lock().keys().flatten().count()),
            entry(&POLICY, self.policy.lock().keys().flatten().count()),
            entry(&SERVICES, self.services.lock().keys().flatten().count()),
            entry(&CONNTRACK, self.conntrack.keys().flatten().count()),
            entry(&FRAGS, self.frags.keys().flatten().count()),
            entry(
                &ORIG_BY_CLIENT,
                self.orig_by_client.lock().keys().flatten().count(),
            ),
        ]
    }
}

fn svc_entry(backends: &[ServiceBackend]) -> SvcEntry {
    let mut entry = SvcEntry::default();
    if backends.len() > entry.backends.len() {
        // "More than fit": the kernel leaves balancing to the proxy, and keeps connections.
        entry.count = abi::SVC_BACKENDS_MAX + 1;
    } else {
        for (slot, b) in entry.backends.iter_mut().zip(backends) {
            *slot = SvcBackend {
                ip4: abi::ip_to_net(b.ip),
                identity: b.identity,
                port: b.port.to_be(),
                pad: 0,
            };
        }
        entry.count = backends.len() as u32;
    }
    entry
}

fn op_err(spec: &MapSpec, op: &'static str) -> impl Fn(MapError) -> Error {
    let map = spec.name;
    move |source| Error::Op { map, op, source }
}

fn take<V>(ebpf: &mut Ebpf, spec: &MapSpec) -> Result<V, Error>
where
    V: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(spec.name)
        .ok_or(Error::Missing { map: spec.name })?;
    V::try_from(map).map_err(|source| Error::Layout {
        map: spec.name,
        source,
    })
}

/// Treats "no such element" (ENOENT) from a delete as success.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
