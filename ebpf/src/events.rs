//! Kernel events, read asynchronously from ring buffers as typed records: drops (`strait_events`,
//! [`DropEvent`]) and flows the kernel allowed without the proxy (`strait_flowev`,
//! [`KernelFlow`]).
//!
//! One reader per ring at a time: a ring buffer has a single consumer position, so a second
//! reader would steal the first one's events. [`crate::Datapath::drop_events`] and
//! [`crate::Datapath::flow_events`] refuse while a reader of their ring is alive.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use aya::maps::{Map, MapData, MapError, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::abi::{self, DropEventRecord, DropHook, DropReason, FlowEventRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the event ring buffer pinned at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("these events are already being read (one reader at a time)")]
    Busy,
    #[error("reading kernel events needs a tokio runtime with I/O enabled")]
    NoRuntime,
    #[error("waiting for kernel events")]
    Poll(#[source] std::io::Error),
}

/// A packet dropped or a connect refused by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// Wall-clock time of the drop.
    pub time: SystemTime,
    /// The kernel's monotonic timestamp (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    pub hook: DropHook,
    pub reason: DropReason,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: u8,
    /// Connect hooks: the pod's address (0.0.0.0 when its cgroup is unknown), port 0.
    pub src: SocketAddrV4,
    /// Connect hooks: the address dialed (a service frontend stays as dialed).
    pub dst: SocketAddrV4,
    /// 0 when not known (unknown cgroup, malformed packet).
    pub src_identity: u32,
    /// For a service: its first backend's identity.
    pub dst_identity: u32,
    /// Connect hooks: the calling process's cgroup id; tc: 0.
    pub cgroup_id: u64,
    /// tc: the pod's host-side veth; connect hooks: 0.
    pub ifindex: u32,
    /// tc from pod: the address of the pod behind `ifindex` (the sender, whatever source
    /// address it wrote); `None` when the interface has no pod recorded, and elsewhere.
    pub pod_ip: Option<Ipv4Addr>,
}

/// Which side of a kernel-path flow a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowSide {
    /// The source pod is on this node.
    Egress,
    /// The destination pod is on this node.
    Ingress,
}

/// A flow the kernel allowed without the proxy: a kernel-path TCP connection that closed
/// (reported by sockops, once per side), or the first packet of another flow (tc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFlow {
    /// Wall-clock time of the report (TCP: the close).
    pub time: SystemTime,
    pub hook: DropHook,
    pub side: FlowSide,
    /// IP protocol number.
    pub protocol: u8,
    pub src: SocketAddrV4,
    /// The destination pod: for a Service, the backend socket LB chose.
    pub dst: SocketAddrV4,
    /// The Service frontend the source dialed, when it dialed one (known on the source's side).
    pub service: Option<SocketAddrV4>,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Source to destination (first packet for non-TCP flows).
    pub bytes_sent: u64,
    /// Destination to source.
    pub bytes_received: u64,
    pub duration: Duration,
    /// Why Strait ended the connection (a policy or service change), if it did.
    pub close_reason: Option<DropReason>,
}

/// A ring buffer record type and its typed form.
pub trait Record: Sized {
    /// Parses one ring buffer item; `None` for an item of another build.
    fn parse(bytes: &[u8], clock: &Clock) -> Option<Self>;
}

impl Record for DropEvent {
    fn parse(bytes: &[u8], clock: &Clock) -> Option<Self> {
        DropEventRecord::from_bytes(bytes).and_then(|r| DropEvent::from_record(&r, clock))
    }
}

impl Record for KernelFlow {
    fn parse(bytes: &[u8], clock: &Clock) -> Option<Self> {
        let r = FlowEventRecord::from_bytes(bytes)?;
        let addr = |ip, port: u16| SocketAddrV4::new(abi::ip_from_net(ip), u16::from_be(port));
        Some(Self {
            time: clock.wall(r.ktime_ns),
            hook: DropHook::try_from(r.hook).ok()?,
            side: match r.direction {
                abi::FLOW_EGRESS => FlowSide::Egress,
                abi::FLOW_INGRESS => FlowSide::Ingress,
                _ => return None,
            },
            protocol: r.protocol,
            src: addr(r.src_ip4, r.sport),
            dst: addr(r.dst_ip4, r.dport),
            service: (r.svc_ip4 != 0).then(|| addr(r.svc_ip4, r.svc_port)),
            src_identity: r.src_identity,
            dst_identity: r.dst_identity,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            duration: Duration::from_nanos(r.duration_ns),
            close_reason: match r.close_reason {
                0 => None,
                n => Some(DropReason::try_from(u32::from(n)).ok()?),
            },
        })
    }
}

impl DropEvent {
    fn from_record(r: &DropEventRecord, clock: &Clock) -> Option<Self> {
        Some(Self {
            time: clock.wall(r.ktime_ns),
            ktime_ns: r.ktime_ns,
            hook: DropHook::try_from(r.hook).ok()?,
            reason: DropReason::try_from(u32::from(r.reason)).ok()?,
            protocol: r.protocol,
            src: SocketAddrV4::new(abi::ip_from_net(r.src_ip), u16::from_be(r.sport)),
            dst: SocketAddrV4::new(abi::ip_from_net(r.dst_ip), u16::from_be(r.dport)),
            src_identity: r.src_identity,
            dst_identity: r.dst_identity,
            cgroup_id: r.cgroup_id,
            ifindex: r.ifindex,
            pod_ip: Some(abi::ip_from_net(r.pod_ip4)).filter(|ip| !ip.is_unspecified()),
        })
    }
}

/// Maps `bpf_ktime_get_ns` (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock nanoseconds since the epoch minus monotonic nanoseconds, when opened.
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
            i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
        });
        Self {
            offset_ns: wall - mono,
        }
    }

    fn wall(&self, ktime_ns: u64) -> SystemTime {
        let nanos = (self.offset_ns + i128::from(ktime_ns)).max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The async reader of one event ring. Dropping it lets another reader start.
pub struct EventRing<E> {
    ring: AsyncFd<RingBuf<MapData>>,
    clock: Clock,
    busy: Arc<AtomicBool>,
    _record: std::marker::PhantomData<fn() -> E>,
}

/// The reader of kernel drop events.
pub type DropEvents = EventRing<DropEvent>;
/// The reader of kernel-path flows.
pub type FlowEvents = EventRing<KernelFlow>;

impl<E> std::fmt::Debug for EventRing<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing").finish_non_exhaustive()
    }
}

impl<E: Record> EventRing<E> {
    /// Opens the ring buffer pinned at `path`; `busy` is the one-reader flag.
    pub(crate) fn open(path: &Path, busy: Arc<AtomicBool>) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        if busy.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy);
        }
        let release = |e| {
            busy.store(false, Ordering::Release);
            e
        };
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let ring = MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .and_then(RingBuf::try_from)
            .map_err(open_err)
            .map_err(release)?;
        // `AsyncFd::register` is the non-deprecated form, but `unsafe`; its safety condition
        // holds here: `RingBuf` owns its map fd and neither closes nor changes it while alive.
        #[expect(deprecated, reason = "the safe form of AsyncFd::register, see above")]
        let ring = AsyncFd::new(ring).map_err(Error::Poll).map_err(release)?;
        Ok(Self {
            ring,
            clock: Clock::now(),
            busy,
            _record: std::marker::PhantomData,
        })
    }

    /// The next event, waiting for one if none is queued.
    pub async fn next(&mut self) -> Result<E, Error> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(Error::Poll)?;
            if let Some(event) = pop(guard.get_inner_mut(), &self.clock) {
                return Ok(event);
            }
            // Tokio keeps readiness that arrived since it was observed, so nothing is lost.
            guard.clear_ready();
        }
    }

    /// The next queued event, without waiting.
    pub fn try_next(&mut self) -> Option<E> {
        pop(self.ring.get_mut(), &self.clock)
    }
}

impl<E> Drop for EventRing<E> {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// Consumes records until one parses; `None` when the ring is empty.
fn pop<E: Record>(ring: &mut RingBuf<MapData>, clock: &Clock) -> Option<E> {
    loop {
        let item = ring.next()?;
        let event = E::parse(&item, clock);
        let len = item.len();
        drop(item);
        match event {
            Some(event) => return Some(event),
            // Written by another build of the programs (e.g. a previous agent's, still attached).
            None => tracing::debug!(len, "skipping an unreadable kernel event"),
        }
    }
}
