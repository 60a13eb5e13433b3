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
    maps::{Array, HashMap, MapData, MapError, MapType},
};
use parking_lot::Mutex;

use crate::abi::{self, Config, OrigDst, SockKey};

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

/// Every map of `maps.h`, all pinned by name.
pub(crate) const ALL: [MapSpec; 4] = [CONFIG, BYPASS, ORIG_BY_COOKIE, ORIG_BY_CLIENT];

/// The maps user space reads and writes.
pub(crate) struct Maps {
    config: Mutex<Array<MapData, Config>>,
    bypass: Mutex<HashMap<MapData, u32, u8>>,
    orig_by_client: Mutex<HashMap<MapData, SockKey, OrigDst>>,
}

impl Maps {
    /// Takes the maps out of a loaded object (the maps stay pinned).
    pub(crate) fn take_from(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Ok(Self {
            config: Mutex::new(take(ebpf, &CONFIG)?),
            bypass: Mutex::new(take(ebpf, &BYPASS)?),
            orig_by_client: Mutex::new(take(ebpf, &ORIG_BY_CLIENT)?),
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
