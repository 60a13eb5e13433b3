//! Strait's eBPF data path: C programs (`bpf/`) and their aya loader.
//!
//! Attached to a node's cgroup (which holds all of the node's pods, not the agent), the programs
//! send every pod TCP connect to the node proxy and let the proxy recover where it was going:
//!
//! - `cgroup/connect4` rewrites the destination to the proxy and records the original under the
//!   socket cookie (skipping loopback, the bypass set and the proxy itself; failing closed when
//!   no proxy is configured);
//! - `sockops` copies that record under the client's {ip, port} once the source port is chosen;
//!   the proxy takes it with [`Datapath::take_original_dst`] for the peer of each accepted socket;
//! - `cgroup/getpeername4` shows the application the address it dialed;
//! - `cgroup/connect6` rejects IPv4-mapped IPv6 connects that would otherwise bypass connect4.
//!
//! L3/L4 policy is enforced in the kernel from maps that [`Datapath::apply_policy`] fills from a
//! [`PolicyImage`]: `connect4` refuses a denied pod connect (EPERM, no SYN leaves the pod), and
//! tc programs on each pod's host-side veth ([`Datapath::attach_pod_interface`]) drop packets
//! leaving a pod with a source address that is not the pod's own (before judging anything by
//! it), and denied packets that do not go through the proxy (UDP, ICMP, direct TCP), with
//! connection tracking for replies. Drops are counted ([`Datapath::drop_counters`]) and reported as
//! [`DropEvent`]s ([`Datapath::drop_events`]).
//!
//! The programs stay attached through pinned links while the agent is down, so pods' connects
//! fail rather than bypass the proxy; [`remove_pins`] detaches them.

pub mod abi;
mod events;
mod iter;
mod loader;
mod maps;
mod policy;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, atomic::AtomicBool},
};

use parking_lot::Mutex;

pub use abi::{DropHook, DropReason, PolicyAction, ViaProxyKey};
pub use events::{DropEvent, DropEvents, Error as EventsError, FlowEvents, FlowSide, KernelFlow};
pub use iter::{Error as SockIterError, Rejudged, cgroup_netns};
pub use policy::{
    ApplyStats, EndpointEntry, MapStats, PolicyDelta, PolicyError, PolicyImage, PolicyKey,
    ServiceBackend, ServiceFrontend,
};

/// Everything needed to set up one node's data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Directory on bpffs for this node's maps and links, e.g.
    /// `/sys/fs/bpf/strait/<lab>/<cluster>-<node>`; created if missing.
    pub pin_dir: PathBuf,
    /// The node's cgroup v2 directory, parent of its pods' cgroups.
    pub cgroup: PathBuf,
    /// The node proxy's outbound listener.
    pub proxy: SocketAddrV4,
    /// Destinations never redirected (the node gateway, where DNS and the proxy live).
    pub bypass: Vec<Ipv4Addr>,
}

/// The pod behind a host-side veth: the only source address IPv4 packets leaving it may carry,
/// and the identity tc judges them by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub identity: u32,
}

/// Name, hook and attach state of one program, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub hook: &'static str,
    pub attached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sys(#[from] sys::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    Map(#[from] maps::Error),
    #[error("invalid policy image")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Events(#[from] events::Error),
    #[error(transparent)]
    SockIter(#[from] iter::Error),
    #[error(
        "the socket iterator could not be loaded: live kernel-path connections are not re-judged"
    )]
    SockIterUnavailable(#[source] Arc<iter::Error>),
    #[error("invalid data path config: {reason}")]
    InvalidConfig { reason: String },
    #[error("interface {ifname} not found (the agent must run in the node's network namespace)")]
    InterfaceIndex {
        ifname: String,
        #[source]
        source: nix::Error,
    },
}

pub use loader::Error as LoaderError;
pub use maps::Error as MapError;

/// A node's attached data path. Dropping it does NOT detach anything: the pinned links keep the
/// programs attached while the agent is down, so pods' connects fail (nothing listens at the
/// proxy address) instead of bypassing the proxy. Use [`remove_pins`] to detach.
pub struct Datapath {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    maps: maps::Maps,
    /// The loaded tc programs, attached to pod interfaces on demand.
    tc: Mutex<aya::Ebpf>,
    /// What the policy maps hold, as last written by this process (`None`: not known, read
    /// the maps). Held while applying, which serialises applies.
    installed: Mutex<Option<policy::State>>,
    /// Set while a [`DropEvents`] reader is alive.
    events_busy: Arc<AtomicBool>,
    flows_busy: Arc<AtomicBool>,
    /// Index of each pod interface with tc attached, as resolved when it was attached (or at
    /// load): detaching removes its pod entry even once the name no longer resolves.
    ifindexes: Mutex<BTreeMap<String, u32>>,
    /// The socket iterator, loaded on first use (or why it could not be).
    sock_iter: OnceLock<Result<iter::SockIter, Arc<iter::Error>>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs, reuses pinned maps, attaches to `cfg.cgroup`, pins the links under
    /// `cfg.pin_dir`. Links pinned by a previous (possibly killed -9) agent are detached only
    /// after the new ones are attached, so there is no window in which pod connects bypass the
    /// proxy.
    pub fn load_and_attach(cfg: &DatapathConfig) -> Result<Datapath, Error> {
        validate(cfg.proxy, &cfg.bypass)?;
        sys::check_bpf()?;
        sys::ensure_bpffs()?;
        sys::require_cgroup2_dir(&cfg.cgroup)?;
        std::fs::create_dir_all(&cfg.pin_dir).map_err(|source| sys::Error::CreateDir {
            path: cfg.pin_dir.clone(),
            source,
        })?;
        sys::require_bpffs(&cfg.pin_dir)?;

        loader::unpin_incompatible_maps(&cfg.pin_dir)?;
        let mut sock = loader::load_object(loader::Object::Sock, &cfg.pin_dir)?;
        let mut sockops = loader::load_object(loader::Object::SockOps, &cfg.pin_dir)?;
        let mut tc = loader::load_object(loader::Object::Tc, &cfg.pin_dir)?;
        loader::load_tc_programs(&mut tc)?;
        // The objects share the pinned maps; take the typed handles from one.
        let maps = maps::Maps::take_from(&mut sock)?;

        // Configure before attaching: a program without a proxy address fails connects closed.
        let old = maps.config().unwrap_or_default();
        maps.set_bypass(&cfg.bypass)?;
        let mut config = abi::Config::new(cfg.proxy, old.flags);
        // A new revision: flows tracked under the previous agent are judged again.
        config.policy_rev = old.policy_rev.wrapping_add(1);
        maps.set_config(config)?;

        let cgroup = loader::open_cgroup(&cfg.cgroup)?;
        for spec in &loader::PROGRAMS {
            let ebpf = match spec.object {
                loader::Object::Sock => &mut sock,
                loader::Object::SockOps => &mut sockops,
                loader::Object::Tc => &mut tc,
            };
            loader::attach_and_pin(ebpf, spec, &cgroup, &cfg.cgroup, &cfg.pin_dir)?;
        }
        tracing::info!(
            cgroup = %cfg.cgroup.display(),
            pin_dir = %cfg.pin_dir.display(),
            proxy = %cfg.proxy,
            "eBPF data path attached"
        );
        let ifindexes = forget_stale_pod_ifs(&maps, &cfg.pin_dir)?;
        Ok(Datapath {
            pin_dir: cfg.pin_dir.clone(),
            cgroup: cfg.cgroup.clone(),
            maps,
            tc: Mutex::new(tc),
            installed: Mutex::new(None),
            events_busy: Arc::new(AtomicBool::new(false)),
            flows_busy: Arc::new(AtomicBool::new(false)),
            ifindexes: Mutex::new(ifindexes),
            sock_iter: OnceLock::new(),
        })
    }

    /// Takes (looks up and deletes) the original destination of a redirected connection whose
    /// client address (the peer of the proxy's accepted socket) is `client`.
    pub fn take_original_dst(&self, client: SocketAddrV4) -> Result<Option<SocketAddrV4>, Error> {
        Ok(self.maps.take_orig_dst(client)?)
    }

    /// Replaces the bypass set and proxy address at runtime.
    pub fn update_config(&self, proxy: SocketAddrV4, bypass: &[Ipv4Addr]) -> Result<(), Error> {
        validate(proxy, bypass)?;
        let old = self.maps.config()?;
        self.maps.set_bypass(bypass)?;
        let mut config = abi::Config::new(proxy, old.flags);
        config.policy_rev = old.policy_rev;
        self.maps.set_config(config)?;
        Ok(())
    }

    /// Switches redirection on or off. Off lets every connect pass unchanged (fail open, on
    /// purpose); it survives agent restarts because the config map is pinned.
    pub fn set_redirect_enabled(&self, enabled: bool) -> Result<(), Error> {
        let mut config = self.maps.config()?;
        if enabled {
            config.flags &= !abi::CFG_DISABLED;
        } else {
            config.flags |= abi::CFG_DISABLED;
        }
        self.maps.set_config(config)?;
        Ok(())
    }

    /// Switches the kernel fast path on (the default: connections allowed at L4 to a pod go
    /// straight to it) or off (every pod TCP connect goes through the proxy). Pinned, like the
    /// rest of the config.
    pub fn set_fast_path(&self, enabled: bool) -> Result<(), Error> {
        let mut config = self.maps.config()?;
        if enabled {
            config.flags &= !abi::CFG_NO_FAST_PATH;
        } else {
            config.flags |= abi::CFG_NO_FAST_PATH;
        }
        self.maps.set_config(config)?;
        Ok(())
    }

    /// Makes the via-proxy set exactly `keys`: TCP connections to these other clusters'
    /// identities and ports leave through the proxy, whose tunnel reaches the node that judges
    /// their L7 rules. Returns whether the set changed (then sockets are worth judging again).
    pub fn set_via_proxy(
        &self,
        keys: &std::collections::BTreeSet<ViaProxyKey>,
    ) -> Result<bool, Error> {
        Ok(self.maps.set_via_proxy(keys)?)
    }

    /// The via-proxy set the map holds.
    pub fn via_proxy(&self) -> Result<std::collections::BTreeSet<ViaProxyKey>, Error> {
        Ok(self.maps.via_proxy()?)
    }

    /// The policy revision tracked flows are judged against (bumped by every policy install
    /// that changed the maps).
    pub fn policy_revision(&self) -> Result<u32, Error> {
        Ok(self.maps.config()?.policy_rev)
    }

    /// The proxy address, bypass set and redirect switch currently in the maps.
    pub fn current_config(&self) -> Result<(SocketAddrV4, Vec<Ipv4Addr>, bool), Error> {
        let config = self.maps.config()?;
        let enabled = config.flags & abi::CFG_DISABLED == 0;
        Ok((config.proxy(), self.maps.bypass()?, enabled))
    }

    /// Makes the policy maps hold exactly `image`, changing only what differs from what they hold
    /// now (also after an agent restart: the maps are pinned). An invalid image changes nothing.
    ///
    /// Updates are ordered so that a flow allowed before and after is never denied in between:
    /// enforcement that goes away is lifted first; then allow rules, identities, endpoints and
    /// services are written; then deny rules; then new enforcement; stale entries go last (stale
    /// allows before stale denies). "Deny wins": an allow rule covered by a deny rule of the same
    /// identities is written as a deny. Entries whose map cannot hold old and new together are
    /// removed first (logged).
    pub fn apply_policy(&self, image: &PolicyImage) -> Result<ApplyStats, Error> {
        let desired = policy::State::from_image(image)?;
        let mut installed = self.installed.lock();
        let current = match installed.take() {
            Some(state) => state,
            None => self.maps.policy_state()?,
        };
        let plan = policy::plan(&current, &desired, policy::Totals::of(&current));
        self.run(&plan)?;
        *installed = Some(desired);
        Ok(plan.stats)
    }

    /// Applies only what changed since the last [`Self::apply_policy`] or
    /// [`Self::apply_policy_delta`], with the same ordering guarantees. Its cost follows the size
    /// of the delta, not of the maps. An invalid delta changes nothing.
    pub fn apply_policy_delta(&self, delta: &PolicyDelta) -> Result<ApplyStats, Error> {
        let mut installed = self.installed.lock();
        let mut state = match installed.take() {
            Some(state) => state,
            None => self.maps.policy_state()?,
        };
        let prepared = policy::sub_states(&state, delta).and_then(|(cur, want)| {
            policy::totals_after(&state, &cur, &want).check_capacity()?;
            Ok((cur, want))
        });
        let (cur, want) = match prepared {
            Ok(x) => x,
            Err(e) => {
                *installed = Some(state);
                return Err(e.into());
            }
        };
        let plan = policy::plan(&cur, &want, policy::Totals::of(&state));
        // After a failed step the maps are partly updated: `installed` stays unknown (None),
        // so the next apply reads them back.
        self.run(&plan)?;
        policy::patch(&mut state, &cur, &want);
        *installed = Some(state);
        Ok(plan.stats)
    }

    fn run(&self, plan: &policy::Plan) -> Result<(), Error> {
        if !plan.early_removals.is_empty() {
            tracing::warn!(maps = ?plan.early_removals,
                "maps too full for old and new policy entries together: removing stale entries first");
        }
        for step in &plan.steps {
            self.maps.apply_step(step)?;
        }
        if !plan.steps.is_empty() {
            // After the maps: a flow judged again must see the new entries.
            let mut config = self.maps.config()?;
            config.policy_rev = config.policy_rev.wrapping_add(1);
            self.maps.set_config(config)?;
        }
        tracing::debug!(stats = ?plan.stats, "policy maps updated");
        Ok(())
    }

    /// Attaches the tc programs to a pod's host-side veth `ifname` (ingress: from the pod;
    /// egress: to the pod), as TCX links pinned at `<pin_dir>/tc_<ifname>_{in,eg}`, after
    /// recording `pod` as the pod behind it: IPv4 packets leaving the interface must carry
    /// `pod.ip` as their source and are judged as `pod.identity`. Idempotent, and the way to
    /// change the pod's address or identity; links pinned before (by this agent or a previous
    /// one) are replaced without a gap. The name is resolved in the calling thread's network
    /// namespace (the node's).
    pub fn attach_pod_interface(&self, ifname: &str, pod: PodAddress) -> Result<(), Error> {
        loader::check_ifname(ifname)?;
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|source| Error::InterfaceIndex {
                ifname: ifname.to_owned(),
                source,
            })?;
        // Before the programs run there: an interface without an entry lets no IPv4 out.
        self.maps.set_pod_if(ifindex, pod)?;
        let previous = self.ifindexes.lock().insert(ifname.to_owned(), ifindex);
        if let Some(old) = previous.filter(|old| *old != ifindex) {
            // The interface was re-created under the same name.
            self.maps.remove_pod_if(old)?;
        }
        loader::attach_tc(&mut self.tc.lock(), ifname, &self.pin_dir)?;
        tracing::debug!(ifname, ifindex, ip = %pod.ip, identity = pod.identity, "tc programs attached");
        Ok(())
    }

    /// Detaches the tc programs from `ifname` (removes its link pins), then forgets its pod.
    /// Fine if nothing is attached, or if the interface is gone already (its links are then
    /// defunct, but pinned).
    pub fn detach_pod_interface(&self, ifname: &str) -> Result<(), Error> {
        loader::detach_tc(ifname, &self.pin_dir)?;
        let ifindex = self.ifindexes.lock().remove(ifname);
        if let Some(ifindex) = ifindex {
            self.maps.remove_pod_if(ifindex)?;
        }
        Ok(())
    }

    /// The pod recorded behind each pod interface, by interface index.
    pub fn pod_addresses(&self) -> Result<Vec<(u32, PodAddress)>, Error> {
        Ok(self.maps.pod_ifs()?)
    }

    /// Interfaces whose tc links are pinned, sorted.
    pub fn pod_interfaces(&self) -> Vec<String> {
        loader::tc_interfaces(&self.pin_dir)
    }

    /// The reader of kernel drop events. Needs a tokio runtime; one reader at a time
    /// ([`EventsError::Busy`] while another is alive).
    pub fn drop_events(&self) -> Result<DropEvents, Error> {
        let path = self.pin_dir.join(maps::EVENTS.name);
        Ok(DropEvents::open(&path, self.events_busy.clone())?)
    }

    /// The reader of flows the kernel allowed without the proxy. Needs a tokio runtime; one
    /// reader at a time.
    pub fn flow_events(&self) -> Result<FlowEvents, Error> {
        let path = self.pin_dir.join(maps::FLOW_EVENTS.name);
        Ok(FlowEvents::open(&path, self.flows_busy.clone())?)
    }

    /// Kernel drops per reason since the maps were created (every reason but `None`).
    pub fn drop_counters(&self) -> Result<Vec<(DropReason, u64)>, Error> {
        Ok(self.maps.drop_counters()?)
    }

    /// (map name, entries, capacity) of each map that fills up, for metrics.
    pub fn map_fill(&self) -> Vec<(&'static str, usize, usize)> {
        self.maps.fill()
    }

    /// Judges every kernel-path TCP connection in the network namespace `netns` (a
    /// `/proc/<pid>/ns/net` or `/run/netns/<name>` path; see [`cgroup_netns`]) against the policy
    /// and service maps as they are now, and ends those no longer allowed with `bpf_sock_destroy`
    /// (their close flow names the reason). Call it after installing a policy or service change,
    /// for each local pod's namespace. Blocking (it runs on a thread of its own that enters
    /// `netns`); the first call loads the iterator program (parsing kernel BTF, ~0.1 s). Needs
    /// kernel 6.5+ with BTF: elsewhere every call returns [`Error::SockIterUnavailable`], and
    /// the first one logs why.
    pub fn rejudge_sockets(&self, netns: &Path) -> Result<Rejudged, Error> {
        let loaded = self.sock_iter.get_or_init(|| {
            iter::SockIter::load(&self.pin_dir).map_err(|error| {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error),
                    "socket iterator unavailable: policy changes will not end live kernel-path connections");
                Arc::new(error)
            })
        });
        match loaded {
            Ok(sock_iter) => Ok(sock_iter.run_in(netns)?),
            Err(error) => Err(Error::SockIterUnavailable(error.clone())),
        }
    }

    /// [`Self::rejudge_sockets`] in the network namespace of every pod below the node cgroup
    /// (each distinct namespace once), with the counts summed. A pod that goes away meanwhile
    /// is skipped.
    pub fn rejudge_pods(&self) -> Result<Rejudged, Error> {
        let mut total = Rejudged::default();
        for netns in iter::pod_namespaces(&self.cgroup)? {
            match self.rejudge_sockets(&netns) {
                Ok(counts) => total.merge(counts),
                Err(Error::SockIter(iter::Error::OpenNetns { path, source })) => {
                    tracing::debug!(netns = %path.display(), error = %source, "pod gone before its sockets were judged");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Name, hook and attach state of each program, for the agent's status endpoint.
    pub fn programs(&self) -> Vec<ProgramStatus> {
        program_status(&self.pin_dir)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

/// Name, hook and attach state of each program pinned under `pin_dir` (no agent needed).
pub fn program_status(pin_dir: &Path) -> Vec<ProgramStatus> {
    loader::PROGRAMS
        .iter()
        .map(|spec| ProgramStatus {
            name: spec.name,
            hook: spec.hook,
            attached: loader::is_attached(spec, pin_dir),
        })
        .collect()
}

/// Removes everything pinned under `pin_dir` (detaching the programs) and the directory itself.
/// Used by `lab down`, also after crashes; a missing directory is fine. Refuses to touch a
/// directory that is not on bpffs.
pub fn remove_pins(pin_dir: &Path) -> Result<(), Error> {
    if !pin_dir.exists() {
        return Ok(());
    }
    sys::require_bpffs(pin_dir)?;
    loader::remove_pins(pin_dir)?;
    Ok(())
}

/// The index of each interface with tc links pinned under `pin_dir` that still resolves (in
/// the calling thread's network namespace); removes the pod entries of every other index, left
/// by interfaces that went away while no agent ran.
fn forget_stale_pod_ifs(maps: &maps::Maps, pin_dir: &Path) -> Result<BTreeMap<String, u32>, Error> {
    let live: BTreeMap<String, u32> = loader::tc_interfaces(pin_dir)
        .into_iter()
        .filter_map(|ifname| {
            let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).ok()?;
            Some((ifname, ifindex))
        })
        .collect();
    for (ifindex, pod) in maps.pod_ifs()? {
        if !live.values().any(|i| *i == ifindex) {
            tracing::debug!(ifindex, ip = %pod.ip, "forgetting the pod of a vanished interface");
            maps.remove_pod_if(ifindex)?;
        }
    }
    Ok(live)
}

fn validate(proxy: SocketAddrV4, bypass: &[Ipv4Addr]) -> Result<(), Error> {
    let invalid = |reason: String| Err(Error::InvalidConfig { reason });
    if proxy.ip().is_unspecified() || proxy.port() == 0 {
        return invalid(format!("proxy address {proxy} needs an IP and a port"));
    }
    if proxy.ip().is_loopback() {
        // Pods live in their own network namespaces: their loopback is not the agent's.
        return invalid(format!(
            "proxy address {proxy} is loopback, which pods in other network namespaces cannot reach"
        ));
    }
    let distinct: std::collections::BTreeSet<_> = bypass.iter().collect();
    if distinct.len() > abi::BYPASS_MAX as usize {
        return invalid(format!(
            "{} bypass addresses, at most {} fit",
            distinct.len(),
            abi::BYPASS_MAX
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datapath_is_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Datapath>();
    }

    #[test]
    fn rejects_unusable_configs() {
        let ok: SocketAddrV4 = "198.18.16.1:15001"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert!(validate(ok, &[Ipv4Addr::new(198, 18, 16, 1)]).is_ok());
        for bad in ["0.0.0.0:15001", "198.18.16.1:0", "127.0.0.1:15001"] {
            let bad: SocketAddrV4 = bad.parse().unwrap_or_else(|_| unreachable!());
            assert!(
                matches!(validate(bad, &[]), Err(Error::InvalidConfig { .. })),
                "{bad}"
            );
        }
        let many: Vec<Ipv4Addr> = (0..=64u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        assert!(validate(ok, &many).is_err());
        assert!(validate(ok, &many[..64]).is_ok());
    }
}
