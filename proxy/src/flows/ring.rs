//! The agent's bounded history of recent flows and the live feed `strait observe --follow` reads.
//!
//! Recording happens on the data path (a connection guard's drop), so it takes one short lock and
//! a non-blocking broadcast send. Readers never hold up the recorder: a follower that falls behind
//! the feed loses the oldest flows and learns how many, as Hubble's observer does.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::FlowRecord;

/// Feed buffer used by [`FlowRing::new`]: how far a follower may fall behind before losing flows.
pub const DEFAULT_FEED_CAPACITY: usize = 1024;

/// What a follower receives: a flow, or how many flows it missed by falling behind.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    Flow(Arc<FlowRecord>),
    /// The follower fell behind the feed and this many flows were skipped.
    Lost(u64),
}

/// Told of every flow as it is recorded, on the recording thread (metrics derive from flows
/// this way). It must not block: it runs on the data path.
pub trait FlowObserver: Send + Sync {
    /// Called once per recorded flow, before it enters the ring.
    fn observe(&self, flow: &FlowRecord);
}

/// Bounded ring of recent flows plus a live feed for followers.
pub struct FlowRing {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<FlowRecord>>,
    observers: Vec<Box<dyn FlowObserver>>,
}

impl std::fmt::Debug for FlowRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRing")
            .field("inner", &self.inner)
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    flows: VecDeque<Arc<FlowRecord>>,
    capacity: usize,
    recorded: u64,
    evicted: u64,
}

/// Counters describing a ring, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RingStats {
    pub capacity: usize,
    /// Flows currently held.
    pub len: usize,
    /// Flows recorded since start.
    pub recorded: u64,
    /// Flows pushed out of the ring by newer ones.
    pub evicted: u64,
    /// Live subscriptions, such as `/flows?follow=true` responses.
    pub followers: usize,
}

/// A live feed of flows recorded after it was created.
#[derive(Debug)]
pub struct FlowSubscription {
    rx: broadcast::Receiver<Arc<FlowRecord>>,
}

// === impl FlowRing ===

impl FlowRing {
    /// A ring keeping the last `capacity` flows (at least one), with the default feed buffer.
    pub fn new(capacity: usize) -> Self {
        Self::with_feed_capacity(capacity, DEFAULT_FEED_CAPACITY)
    }

    /// A ring keeping `capacity` flows whose followers may lag by up to `feed_capacity` flows.
    pub fn with_feed_capacity(capacity: usize, feed_capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // broadcast::channel panics on zero.
        let (feed, _) = broadcast::channel(feed_capacity.max(1));
        Self {
            inner: Mutex::new(Inner {
                flows: VecDeque::with_capacity(capacity),
                capacity,
                recorded: 0,
                evicted: 0,
            }),
            feed,
            observers: Vec::new(),
        }
    }

    /// The same ring, telling `observer` of every flow recorded from now on.
    #[must_use]
    pub fn observed_by(mut self, observer: impl FlowObserver + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// Stores a flow, evicting the oldest when full, and hands it to followers without waiting.
    pub fn record(&self, flow: FlowRecord) {
        // Observed before the lock: observers (metrics) need no ordering with readers.
        for o in &self.observers {
            o.observe(&flow);
        }
        let flow = Arc::new(flow);
        let mut inner = self.inner.lock();
        if inner.flows.len() == inner.capacity {
            inner.flows.pop_front();
            inner.evicted += 1;
        }
        inner.flows.push_back(flow.clone());
        inner.recorded += 1;
        // Sent under the lock so the feed order matches the ring order and `follow` can take a
        // snapshot and a subscription with nothing missed or repeated between them. A send never
        // waits on receivers; it fails only when there are none, which is fine.
        let _ = self.feed.send(flow);
    }

    /// The last `last` flows (all when `None`), oldest first.
    pub fn recent(&self, last: Option<usize>) -> Vec<Arc<FlowRecord>> {
        let inner = self.inner.lock();
        tail(&inner.flows, last)
    }

    /// A feed of flows recorded from now on.
    pub fn subscribe(&self) -> FlowSubscription {
        FlowSubscription {
            rx: self.feed.subscribe(),
        }
    }

    /// The last `last` flows and a feed continuing exactly after them.
    pub fn follow(&self, last: Option<usize>) -> (Vec<Arc<FlowRecord>>, FlowSubscription) {
        let inner = self.inner.lock();
        let sub = FlowSubscription {
            rx: self.feed.subscribe(),
        };
        (tail(&inner.flows, last), sub)
    }

    /// Flows pushed out of the ring by newer ones since start.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }

    /// Current counters.
    pub fn stats(&self) -> RingStats {
        let inner = self.inner.lock();
        RingStats {
            capacity: inner.capacity,
            len: inner.flows.len(),
            recorded: inner.recorded,
            evicted: inner.evicted,
            followers: self.feed.receiver_count(),
        }
    }
}

fn tail(flows: &VecDeque<Arc<FlowRecord>>, last: Option<usize>) -> Vec<Arc<FlowRecord>> {
    let skip = last.map_or(0, |n| flows.len().saturating_sub(n));
    flows.iter().skip(skip).cloned().collect()
}

// === impl FlowSubscription ===

impl FlowSubscription {
    /// The next event; `None` once the ring is gone.
    pub async fn recv(&mut self) -> Option<FlowEvent> {
        match self.rx.recv().await {
            Ok(flow) => Some(FlowEvent::Flow(flow)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FlowEvent::Lost(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::flows::{Direction, FlowPeer, Verdict};

    /// A minimal flow whose time is `secs` after the epoch, told apart by its source port.
    pub(crate) fn flow(secs: u64, port: u16) -> FlowRecord {
        FlowRecord {
            time: UNIX_EPOCH + Duration::from_secs(secs),
            node: "node-1".into(),
            cluster: "c1".into(),
            direction: Direction::Egress,
            protocol: "TCP".into(),
            source: FlowPeer {
                port,
                ..FlowPeer::default()
            },
            destination: FlowPeer::default(),
            original_destination: "10.0.0.1:80".into(),
            service: None,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            error: None,
            tunnel_peer: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_us: 0,
            decided_by: None,
            policies: Vec::new(),
            http: None,
            encrypted: false,
        }
    }

    fn ports(flows: &[Arc<FlowRecord>]) -> Vec<u16> {
        flows.iter().map(|f| f.source.port).collect()
    }

    #[test]
    fn keeps_last_capacity_flows_oldest_first() {
        let ring = FlowRing::new(3);
        for p in 1..=5 {
            ring.record(flow(p.into(), p));
        }
        assert_eq!(ports(&ring.recent(None)), [3, 4, 5]);
        assert_eq!(ports(&ring.recent(Some(2))), [4, 5]);
        assert_eq!(ports(&ring.recent(Some(10))), [3, 4, 5]);
        assert!(ring.recent(Some(0)).is_empty());
        assert_eq!(ring.evicted(), 2);
        assert_eq!(
            ring.stats(),
            RingStats {
                capacity: 3,
                len: 3,
                recorded: 5,
                evicted: 2,
                followers: 0,
            }
        );
    }

    #[test]
    fn zero_capacity_keeps_one() {
        let ring = FlowRing::with_feed_capacity(0, 0);
        ring.record(flow(1, 1));
        ring.record(flow(2, 2));
        assert_eq!(ports(&ring.recent(None)), [2]);
    }

    #[test]
    fn recording_without_followers_is_fine() {
        let ring = FlowRing::new(2);
        ring.record(flow(1, 1));
        drop(ring.subscribe());
        ring.record(flow(2, 2));
        assert_eq!(ring.stats().recorded, 2);
    }

    #[tokio::test]
    async fn follow_continues_after_snapshot() {
        let ring = FlowRing::new(10);
        ring.record(flow(1, 1));
        ring.record(flow(2, 2));
        let (backlog, mut sub) = ring.follow(Some(1));
        assert_eq!(ports(&backlog), [2]);
        ring.record(flow(3, 3));
        match sub.recv().await {
            Some(FlowEvent::Flow(f)) => assert_eq!(f.source.port, 3),
            other => panic!("expected flow 3, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lagging_follower_is_told_how_many_it_lost() {
        let ring = FlowRing::with_feed_capacity(100, 2);
        let mut sub = ring.subscribe();
        // The recorder must not wait on the idle follower.
        for p in 1..=5 {
            ring.record(flow(p.into(), p));
        }
        assert_eq!(sub.recv().await, Some(FlowEvent::Lost(3)));
        match sub.recv().await {
            Some(FlowEvent::Flow(f)) => assert_eq!(f.source.port, 4),
            other => panic!("expected flow 4, got {other:?}"),
        }
        // The ring itself kept everything.
        assert_eq!(ring.recent(None).len(), 5);
    }

    #[test]
    fn observers_see_every_flow_once() {
        struct Count(Arc<std::sync::atomic::AtomicU64>);
        impl FlowObserver for Count {
            fn observe(&self, _: &FlowRecord) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ring = FlowRing::new(1).observed_by(Count(seen.clone()));
        for p in 1..=3 {
            ring.record(flow(p.into(), p));
        }
        // Eviction does not hide flows from observers.
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn feed_ends_when_ring_is_dropped() {
        let ring = FlowRing::new(1);
        let mut sub = ring.subscribe();
        drop(ring);
        assert_eq!(sub.recv().await, None);
    }
}
