//! The client side of the mesh channel: keeps one remote cluster's state in sync, reconnecting
//! with backoff and resuming from the revision it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cluster::ClusterId;
use super::persist::{Restored, StateDir};
use super::remote::{RemoteCluster, RemoteConfig, RemoteStatus};
use super::state::MeshState;
use super::tls::{MeshTls, MeshTlsError};
use super::wire::{self, Hello, ServerFrame, WireError};

/// How often the TTL rule is checked while a remote is down: the withdrawal lands at most this
/// long after the TTL.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// How often the served state is compared with the persisted one: at most one write per remote
/// per tick, however fast deltas arrive.
const PERSIST_TICK: Duration = Duration::from_millis(200);

/// Where a client keeps its remote's served state across restarts, and the state a previous run
/// left there (served at once, see [`RemoteCluster::restored`]).
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Where the served state is written.
    pub dir: StateDir,
    /// What a previous run left there, young enough to serve.
    pub restored: Option<Restored>,
}

/// The client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("mesh client of cluster {local} for cluster {remote}: TLS")]
    Tls {
        local: String,
        remote: String,
        #[source]
        source: Box<MeshTlsError>,
    },
    #[error("mesh client of cluster {local}: bind a UDP socket")]
    Bind {
        local: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running sync with one remote cluster; dropping it stops the sync (the state it served is
/// dropped with it: disconnecting withdraws the remote).
#[derive(Debug)]
pub struct MeshClient {
    remote: Arc<Mutex<RemoteCluster>>,
    state_rx: watch::Receiver<Option<Arc<MeshState>>>,
    tasks: Vec<JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    /// Set when the client is dropped, under the lock every persisted write holds: no write of
    /// this client lands after its drop (the peer's file may then be removed for good).
    closed: Arc<Mutex<bool>>,
}

struct Session {
    tls: Arc<MeshTls>,
    config: quinn::ClientConfig,
    local: ClusterId,
    remote_name: String,
    addr: SocketAddr,
    settings: RemoteConfig,
    endpoint: quinn::Endpoint,
    remote: Arc<Mutex<RemoteCluster>>,
    state_tx: watch::Sender<Option<Arc<MeshState>>>,
    closed: Arc<Mutex<bool>>,
}

impl MeshClient {
    /// Starts syncing remote cluster `remote` from its mesh endpoint at `addr`, as `local`.
    pub fn spawn(
        tls: Arc<MeshTls>,
        local: ClusterId,
        remote: &str,
        addr: SocketAddr,
        settings: RemoteConfig,
    ) -> Result<Self, ClientError> {
        Self::spawn_persisted(tls, local, remote, addr, settings, None)
    }

    /// As [`MeshClient::spawn`], serving `persistence.restored` until the first sync completes and
    /// keeping the served state in `persistence.dir` (removed when the state is withdrawn).
    pub fn spawn_persisted(
        tls: Arc<MeshTls>,
        local: ClusterId,
        remote: &str,
        addr: SocketAddr,
        settings: RemoteConfig,
        persistence: Option<Persistence>,
    ) -> Result<Self, ClientError> {
        let config = tls
            .client_config(remote)
            .map_err(|source| ClientError::Tls {
                local: local.name.clone(),
                remote: remote.to_string(),
                source: Box::new(source),
            })?;
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|source| ClientError::Bind {
            local: local.name.clone(),
            source,
        })?;
        let (dir, restored) = match persistence {
            Some(p) => (Some(p.dir), p.restored),
            None => (None, None),
        };
        let cluster = match restored {
            Some(r) => {
                let now = Instant::now();
                let healthy = now.checked_sub(r.age).unwrap_or(now);
                RemoteCluster::restored(remote, settings.ttl, r.state, healthy)
            }
            None => RemoteCluster::new(remote, settings.ttl),
        };
        let (state_tx, state_rx) = watch::channel(cluster.state());
        let cluster = Arc::new(Mutex::new(cluster));
        let closed = Arc::new(Mutex::new(false));
        let session = Arc::new(Session {
            tls,
            config,
            local,
            remote_name: remote.to_string(),
            addr,
            settings,
            endpoint: endpoint.clone(),
            remote: cluster.clone(),
            state_tx,
            closed: closed.clone(),
        });
        let mut tasks = vec![
            tokio::spawn(session.clone().run()),
            tokio::spawn(session.clone().expire_loop()),
        ];
        if let Some(dir) = dir {
            tasks.push(tokio::spawn(session.persist_loop(dir)));
        }
        Ok(Self {
            remote: cluster,
            state_rx,
            tasks,
            endpoint,
            closed,
        })
    }

    /// The remote's state as served now (`None` before the first sync and after withdrawal);
    /// changes whenever a sync frame has been applied or the state is withdrawn.
    pub fn state(&self) -> watch::Receiver<Option<Arc<MeshState>>> {
        self.state_rx.clone()
    }

    /// Connection, sync and failure status of the remote.
    pub fn status(&self) -> RemoteStatus {
        self.remote.lock().status()
    }
}

impl Drop for MeshClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"disconnected");
        // Waits for a write in flight (milliseconds) so none lands after the drop.
        *self.closed.lock() = true;
    }
}

// === impl Session ===

impl Session {
    async fn run(self: Arc<Self>) {
        let mut backoff = self.settings.backoff_min;
        loop {
            let reason = self.sync().await;
            let was_ready = {
                let mut r = self.remote.lock();
                let ready = r.status().ready;
                r.failed(reason.clone(), Instant::now());
                ready
            };
            if was_ready {
                backoff = self.settings.backoff_min;
            }
            tracing::info!(remote = %self.remote_name, addr = %self.addr, %reason, retry_in = ?backoff,
                "mesh channel down");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// Withdraws the remote's state once it has been down for longer than the TTL.
    async fn expire_loop(self: Arc<Self>) {
        // Never a zero period (tokio refuses one), even with a zero TTL.
        let period = EXPIRY_TICK
            .min(self.settings.ttl / 4)
            .max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let expired = self.remote.lock().expire(Instant::now());
            if expired {
                tracing::warn!(remote = %self.remote_name, ttl = ?self.settings.ttl,
                    "remote cluster unreachable for longer than the TTL; its state is withdrawn");
                self.state_tx.send_replace(None);
            }
        }
    }

    /// Keeps the served state on disk: rewritten (coalesced to one write per tick) when it
    /// changes, removed when withdrawn, and its healthy time refreshed every quarter TTL while
    /// the channel is healthy, and once more when it goes down.
    async fn persist_loop(self: Arc<Self>, dir: StateDir) {
        let refresh = (self.settings.ttl / 4).max(PERSIST_TICK);
        let mut written = self.state_tx.borrow().clone();
        // A restored state's file already carries its healthy time.
        let mut marked = self.remote.lock().healthy_at(Instant::now());
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(PERSIST_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let served = self.state_tx.borrow().clone();
            let now = Instant::now();
            let healthy = self.remote.lock().healthy_at(now);
            let wall = SystemTime::now();
            let healthy_wall = wall
                .checked_sub(now.saturating_duration_since(healthy))
                .unwrap_or(wall);
            let changed = match (&served, &written) {
                (Some(s), Some(w)) => !Arc::ptr_eq(s, w),
                (None, None) => false,
                _ => true,
            };
            // Down: the healthy time froze when it went down, after the last refresh.
            let frozen = healthy != now && healthy != marked;
            let due = frozen || healthy.saturating_duration_since(marked) >= refresh;
            let job = match (&served, changed) {
                (None, true) => Job::Remove,
                (Some(s), true) => Job::Save(s.clone()),
                (Some(_), false) if due => Job::Touch,
                _ => continue,
            };
            let (dir2, name, closed) = (dir.clone(), self.remote_name.clone(), self.closed.clone());
            let done = tokio::task::spawn_blocking(move || {
                let closed = closed.lock();
                if *closed {
                    return Ok(());
                }
                match job {
                    Job::Remove => dir2.remove(&name),
                    Job::Save(s) => dir2.save(&s, healthy_wall),
                    Job::Touch => dir2.touch(&name, healthy_wall),
                }
            })
            .await;
            match done {
                Ok(Ok(())) => {
                    written = served;
                    marked = healthy;
                    last_error = None;
                }
                Ok(Err(e)) => {
                    let msg = crate::errors::chain(&e);
                    if last_error.as_ref() != Some(&msg) {
                        tracing::warn!(remote = %self.remote_name, error = %msg,
                            "cannot persist the remote's state; a restarted agent would start without it");
                        last_error = Some(msg);
                    }
                }
                Err(e) => {
                    tracing::error!(remote = %self.remote_name, error = %e, "persist task failed")
                }
            }
        }
    }

    /// One connection: handshake, hello, then frames until it breaks; returns why it ended.
    async fn sync(&self) -> String {
        let connecting = match self.endpoint.connect_with(
            self.config.clone(),
            self.addr,
            &crate::pki::mesh_server_name(&self.remote_name),
        ) {
            Ok(c) => c,
            Err(e) => return format!("cannot dial {}: {e}", self.addr),
        };
        let conn = match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Err(_) => return format!("no answer from the mesh endpoint at {}", self.addr),
            Ok(Err(e)) => return describe(&e, self.addr),
            Ok(Ok(c)) => c,
        };
        match self.tls.peer_cluster(&conn) {
            Ok(c) if c == self.remote_name => {}
            Ok(c) => {
                return format!(
                    "the endpoint at {} is cluster {c}, not {}",
                    self.addr, self.remote_name
                );
            }
            Err(why) => return why,
        }
        let reason = match self.stream(&conn).await {
            Ok(reason) => reason,
            Err(e) => match conn.close_reason() {
                Some(c) => describe(&c, self.addr),
                None => crate::errors::chain(&e),
            },
        };
        conn.close(quinn::VarInt::from_u32(0), b"resync");
        reason
    }

    async fn stream(&self, conn: &quinn::Connection) -> Result<String, WireError> {
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Ok(describe(&e, self.addr)),
        };
        let have = self.remote.lock().have();
        let hello = Hello {
            cluster: self.local.clone(),
            server: self.remote_name.clone(),
            have,
        };
        wire::write(&mut send, &wire::encode("hello", &hello)?).await?;
        self.remote.lock().connected();
        let mut udp_seen = 0;
        loop {
            let (frame, len) = wire::read::<ServerFrame>("server frame", &mut recv).await?;
            let udp = conn.stats().udp_rx.bytes;
            let served = {
                let mut r = self.remote.lock();
                r.received(len as u64, udp - udp_seen);
                udp_seen = udp;
                match frame {
                    ServerFrame::Refused { reason } => {
                        return Ok(format!("refused by cluster {}: {reason}", self.remote_name));
                    }
                    ServerFrame::Snapshot(state) if state.cluster.name != self.remote_name => {
                        return Ok(format!(
                            "the endpoint at {} publishes cluster {}, not {}",
                            self.addr, state.cluster, self.remote_name
                        ));
                    }
                    ServerFrame::Snapshot(state) => r.snapshot(state, SystemTime::now()),
                    ServerFrame::Delta(delta) => {
                        if let Err(e) = r.delta(&delta, SystemTime::now()) {
                            // Ask for a snapshot next time; the served state stays meanwhile.
                            r.resync();
                            return Ok(e.to_string());
                        }
                    }
                }
                r.state()
            };
            self.state_tx.send_if_modified(|cur| {
                let changed = match (cur.as_ref(), served.as_ref()) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    (None, None) => false,
                    _ => true,
                };
                *cur = served;
                changed
            });
        }
    }
}

/// One write of the persist loop.
enum Job {
    Save(Arc<MeshState>),
    Touch,
    Remove,
}

/// A QUIC connection error as an operator should read it.
fn describe(e: &quinn::ConnectionError, addr: SocketAddr) -> String {
    use quinn::ConnectionError as E;
    let crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        E::TransportError(t) if crypto(u64::from(t.code)) => format!(
            "TLS: the certificate of the mesh endpoint at {addr} was refused: {}",
            t.reason
        ),
        E::ConnectionClosed(c) if crypto(u64::from(c.error_code)) => format!(
            "TLS: the mesh endpoint at {addr} refused this cluster's certificate ({})",
            c.error_code
        ),
        E::TimedOut => format!("no answer from the mesh endpoint at {addr} (timed out)"),
        E::ApplicationClosed(c) => format!(
            "closed by the mesh endpoint at {addr}: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        e => format!("mesh endpoint at {addr}: {e}"),
    }
}
