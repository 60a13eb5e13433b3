//! What this cluster knows of one remote cluster: its synced state, the channel's health, and the
//! TTL rule.
//!
//! A remote cluster unreachable for longer than the TTL has its state withdrawn: never before
//! (a blip does not flap endpoints), always after (no stale backends). A reconnect within the
//! TTL keeps serving the old state until the new sync is complete, then swaps it in whole.
//! [`RemoteCluster`] is a pure state machine over explicit instants, so the rule is tested with
//! a fake clock; the client drives it with the real one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::state::{Delta, DeltaError, MeshState};

/// Default time a remote cluster may stay unreachable before its state is withdrawn.
pub const DEFAULT_TTL: Duration = Duration::from_secs(crate::config::DEFAULT_MESH_TTL_SECS);

/// How the channel to a remote cluster behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Unreachable for longer than this: the remote's state is withdrawn.
    pub ttl: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Longest wait for the QUIC handshake.
    pub connect_timeout: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Per remote cluster, what `strait clustermesh status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteStatus {
    pub cluster: String,
    /// The channel is up.
    pub connected: bool,
    /// Connected and synced since the connection came up.
    pub ready: bool,
    /// A state is served (possibly from before a disconnect, within the TTL).
    pub serving: bool,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub services: usize,
    /// Epoch and revision of the served state.
    pub revision: Option<(u64, u64)>,
    pub last_sync: Option<SystemTime>,
    /// Failed connections and broken channels since start.
    pub failures: u64,
    /// Why the last connection failed, as the operator should read it.
    pub last_error: Option<String>,
    /// Whether the state was withdrawn after the TTL.
    pub withdrawn: bool,
    /// The served state was restored from disk at start; no sync has completed since.
    pub restored: bool,
    /// Times the state was withdrawn after the TTL since start.
    pub withdrawals: u64,
    /// Sync frame bytes received since start.
    pub bytes_received: u64,
    /// UDP payload bytes received since start (QUIC and TLS overhead included).
    pub udp_bytes_received: u64,
}

// === impl RemoteCluster ===

/// One remote cluster's synced state and channel health.
#[derive(Debug)]
pub struct RemoteCluster {
    name: String,
    ttl: Duration,
    state: Option<Arc<MeshState>>,
    /// The copy deltas apply to; the served state is replaced by a copy of it once a frame is
    /// fully applied, so readers never see half a delta.
    held: Option<MeshState>,
    connected: bool,
    ready: bool,
    last_sync: Option<SystemTime>,
    failures: u64,
    last_error: Option<String>,
    /// Since when the remote has been unreachable or unsynced; cleared by a completed sync.
    down_since: Option<Instant>,
    withdrawn: bool,
    restored: bool,
    withdrawals: u64,
    bytes_received: u64,
    udp_bytes_received: u64,
}

impl RemoteCluster {
    /// A remote cluster `name` not yet connected.
    pub fn new(name: &str, ttl: Duration) -> Self {
        Self {
            name: name.to_string(),
            ttl,
            state: None,
            held: None,
            connected: false,
            ready: false,
            last_sync: None,
            failures: 0,
            last_error: None,
            down_since: None,
            withdrawn: false,
            restored: false,
            withdrawals: 0,
            bytes_received: 0,
            udp_bytes_received: 0,
        }
    }

    /// A remote cluster `name` whose `state` a previous run served, last known healthy at
    /// `healthy_at`: served at once, and withdrawn after the TTL counted from `healthy_at` unless
    /// a sync completes first (a restart does not restart the clock).
    pub fn restored(name: &str, ttl: Duration, state: MeshState, healthy_at: Instant) -> Self {
        let mut r = Self::new(name, ttl);
        r.state = Some(Arc::new(state.clone()));
        // Held too: a server still in the same epoch resumes with deltas, not a snapshot.
        r.held = Some(state);
        r.down_since = Some(healthy_at);
        r.restored = true;
        r
    }

    /// Counts received traffic: `frame` bytes of sync frames, `udp` bytes of datagrams.
    pub fn received(&mut self, frame: u64, udp: u64) {
        self.bytes_received += frame;
        self.udp_bytes_received += udp;
    }

    /// The state served now: the last complete sync, unless withdrawn.
    pub fn state(&self) -> Option<Arc<MeshState>> {
        self.state.clone()
    }

    /// `(epoch, revision)` held, to ask the server for deltas after a reconnect.
    pub fn have(&self) -> Option<(u64, u64)> {
        self.held.as_ref().map(|s| (s.epoch, s.revision))
    }

    /// The channel came up; the old state stays served until the sync completes.
    pub fn connected(&mut self) {
        self.connected = true;
        self.ready = false;
    }

    /// A full snapshot arrived: it replaces the served state at once.
    pub fn snapshot(&mut self, state: MeshState, wall: SystemTime) {
        self.state = Some(Arc::new(state.clone()));
        self.held = Some(state);
        self.synced(wall);
    }

    /// A delta arrived; on a gap nothing changes and the caller must resync with a snapshot.
    pub fn delta(&mut self, delta: &Delta, wall: SystemTime) -> Result<(), DeltaError> {
        let Some(held) = self.held.as_mut() else {
            return Err(DeltaError::Gap {
                epoch: delta.epoch,
                from: delta.from,
                to: delta.to,
                held_epoch: 0,
                held: 0,
            });
        };
        held.apply(delta)?;
        // An empty delta only confirms the client is current: no copy needed.
        let unchanged = self
            .state
            .as_ref()
            .is_some_and(|s| s.revision == held.revision);
        if !unchanged {
            self.state = Some(Arc::new(held.clone()));
        }
        self.synced(wall);
        Ok(())
    }

    /// Forgets the held copy so the next connection asks for a snapshot; the served state stays.
    pub fn resync(&mut self) {
        self.held = None;
    }

    fn synced(&mut self, wall: SystemTime) {
        self.ready = true;
        self.withdrawn = false;
        self.restored = false;
        self.down_since = None;
        self.last_sync = Some(wall);
    }

    /// The channel failed or could not be opened, for `reason`.
    pub fn failed(&mut self, reason: String, now: Instant) {
        self.connected = false;
        self.ready = false;
        self.failures += 1;
        self.last_error = Some(reason);
        self.down_since.get_or_insert(now);
    }

    /// The last instant the channel was known healthy, asked at `now`: `now` while it is up and
    /// synced, else when it went down (or when a restored state was last healthy).
    pub fn healthy_at(&self, now: Instant) -> Instant {
        match self.down_since {
            Some(since) if !self.ready => since,
            _ => now,
        }
    }

    /// When the served state is withdrawn unless a sync completes first.
    pub fn expires_at(&self) -> Option<Instant> {
        match (&self.state, self.down_since) {
            (Some(_), Some(since)) => Some(since + self.ttl),
            _ => None,
        }
    }

    /// Withdraws the served state if the remote has been down for longer than the TTL; returns
    /// whether it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.expires_at() {
            Some(at) if now > at => {
                self.state = None;
                self.held = None;
                self.withdrawn = true;
                self.withdrawals += 1;
                true
            }
            _ => false,
        }
    }

    /// What `status` shows.
    pub fn status(&self) -> RemoteStatus {
        let s = self.state.as_deref();
        RemoteStatus {
            cluster: self.name.clone(),
            connected: self.connected,
            ready: self.ready,
            serving: s.is_some(),
            nodes: s.map_or(0, |s| s.nodes.len()),
            endpoints: s.map_or(0, MeshState::endpoint_count),
            identities: s.map_or(0, |s| s.identities.len()),
            services: s.map_or(0, |s| s.services.len()),
            revision: s.map(|s| (s.epoch, s.revision)),
            last_sync: self.last_sync,
            failures: self.failures,
            last_error: self.last_error.clone(),
            withdrawn: self.withdrawn,
            restored: self.restored,
            withdrawals: self.withdrawals,
            bytes_received: self.bytes_received,
            udp_bytes_received: self.udp_bytes_received,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::cluster::ClusterId;
    use crate::mesh::state::IpEntry;

    fn state(epoch: u64, rev: u64, pods: u8) -> MeshState {
        let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
        s.epoch = epoch;
        s.revision = rev;
        for i in 0..pods {
            s.ipcache.insert(
                [10, 2, 0, i].into(),
                IpEntry {
                    identity: 7,
                    node: "n".into(),
                    namespace: "demo".into(),
                    pod: format!("p{i}"),
                },
            );
        }
        s
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn state_is_withdrawn_only_after_the_ttl_of_unreachability() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut r = RemoteCluster::new("c2", TTL);
        r.connected();
        r.snapshot(state(1, 1, 3), wall);
        assert!(r.status().ready);
        let down = t0 + Duration::from_secs(5);
        r.failed("timed out".into(), down);
        // A second failure while still down does not restart the clock.
        r.failed("timed out".into(), down + Duration::from_secs(10));
        assert!(!r.expire(down + TTL), "never before (at exactly the TTL)");
        assert_eq!(r.state().unwrap().ipcache.len(), 3);
        assert!(
            r.expire(down + TTL + Duration::from_millis(1)),
            "always after"
        );
        assert!(r.state().is_none() && r.have().is_none());
        let st = r.status();
        assert!(st.withdrawn && !st.serving && !st.connected);
        assert_eq!(
            (st.failures, st.last_error.as_deref()),
            (2, Some("timed out"))
        );
        // Withdrawn once: nothing is left to withdraw later.
        assert!(!r.expire(down + TTL * 2));
        assert_eq!(r.status().withdrawals, 1);
    }

    #[test]
    fn a_reconnect_within_the_ttl_serves_the_old_state_until_the_new_sync_completes() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut r = RemoteCluster::new("c2", TTL);
        r.connected();
        r.snapshot(state(1, 4, 3), wall);
        r.failed("reset by peer".into(), t0 + Duration::from_secs(1));
        // The server restarted (new epoch): the client reconnects within the TTL.
        r.connected();
        assert_eq!(
            r.state().unwrap().revision,
            4,
            "old state served while syncing"
        );
        assert!(!r.status().ready);
        // Still unsynced past the TTL counted from the disconnect: withdrawn after all.
        let mut late = RemoteCluster::new("c2", TTL);
        late.connected();
        late.snapshot(state(1, 4, 3), wall);
        late.failed("reset".into(), t0);
        late.connected();
        assert!(late.expire(t0 + TTL + Duration::from_secs(1)));
        // The new snapshot arrives in time: swapped in whole, the TTL clock stops.
        r.snapshot(state(2, 1, 5), wall);
        assert_eq!(r.state().unwrap().ipcache.len(), 5);
        assert!(!r.expire(t0 + TTL * 10));
        assert!(r.status().ready);
    }

    #[test]
    fn a_restored_state_is_served_at_once_and_its_ttl_runs_from_the_last_healthy_instant() {
        let healthy = Instant::now();
        // The agent restarted 4 s after the channel was last known healthy.
        let start = healthy + Duration::from_secs(4);
        let mut r = RemoteCluster::restored("c2", TTL, state(3, 9, 2), healthy);
        let st = r.status();
        assert!(
            st.serving && st.restored && !st.ready && !st.connected,
            "{st:?}"
        );
        assert_eq!((st.endpoints, st.revision), (0, Some((3, 9))));
        assert_eq!(r.state().unwrap().ipcache.len(), 2);
        assert_eq!(r.have(), Some((3, 9)), "resumes from the revision it holds");
        assert_eq!(r.healthy_at(start), healthy, "the clock did not restart");
        // Connecting does not stop the clock, nor does a failed dial restart it.
        r.connected();
        r.failed("no answer".into(), start + Duration::from_secs(1));
        assert_eq!(r.expires_at(), Some(healthy + TTL));
        assert!(!r.expire(healthy + TTL), "never before");
        assert!(r.state().is_some());
        assert!(
            r.expire(healthy + TTL + Duration::from_millis(1)),
            "always after"
        );
        assert!(r.state().is_none() && r.status().withdrawn);

        // A sync in time replaces the restored state whole and stops the clock.
        let mut r = RemoteCluster::restored("c2", TTL, state(3, 9, 2), healthy);
        r.connected();
        r.snapshot(state(4, 1, 5), SystemTime::UNIX_EPOCH);
        let st = r.status();
        assert!(st.ready && !st.restored && st.serving);
        assert_eq!(r.state().unwrap().ipcache.len(), 5);
        assert!(!r.expire(healthy + TTL * 10));
        let later = healthy + TTL * 10;
        assert_eq!(r.healthy_at(later), later, "healthy while synced");
        r.failed("reset".into(), later);
        assert_eq!(r.healthy_at(later + TTL), later, "frozen at the failure");
    }

    #[test]
    fn deltas_apply_in_order_and_a_gap_changes_nothing() {
        let wall = SystemTime::UNIX_EPOCH;
        let mut r = RemoteCluster::new("c2", TTL);
        let (a, b, c) = (state(1, 1, 1), state(1, 2, 2), state(1, 3, 3));
        assert!(r.delta(&a.delta_to(&b), wall).is_err(), "no state yet");
        r.snapshot(a.clone(), wall);
        assert!(r.delta(&b.delta_to(&c), wall).is_err());
        assert_eq!(r.state().unwrap().revision, 1);
        r.delta(&a.delta_to(&b), wall).unwrap();
        r.delta(&b.delta_to(&c), wall).unwrap();
        assert_eq!(*r.state().unwrap(), c);
        assert_eq!(r.have(), Some((1, 3)));
    }
}
