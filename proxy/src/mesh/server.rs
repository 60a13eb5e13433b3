//! The mesh endpoint: publishes this cluster's state to connected clusters over QUIC (the role
//! of Cilium's clustermesh-apiserver, without etcd).
//!
//! The [`Publisher`] numbers published states and keeps the last deltas; each connection sends
//! a snapshot or the deltas since the client's revision, then follows the publisher. A client
//! that falls further behind than the kept deltas gets a fresh snapshot, never a gap.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cluster::ClusterId;
use super::state::{Delta, MeshState};
use super::tls::{MeshTls, MeshTlsError};
use super::wire::{self, Hello, ServerFrame, WireError};

/// Deltas kept for clients that reconnect or lag.
pub const HISTORY: usize = 256;

/// The mesh endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("mesh endpoint of cluster {cluster}: TLS")]
    Tls {
        cluster: String,
        #[source]
        source: Box<MeshTlsError>,
    },
    #[error("mesh endpoint of cluster {cluster}: bind {addr}")]
    Bind {
        cluster: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Published {
    current: Arc<MeshState>,
    /// Deltas ending at `current`, oldest first, consecutive.
    history: VecDeque<Arc<Delta>>,
}

/// What a connection must send to bring a client from its revision to the current one.
#[derive(Debug, Clone)]
pub enum Catchup {
    /// Nothing: the client is current.
    None,
    /// These deltas, in order.
    Deltas(Vec<Arc<Delta>>),
    /// The whole state.
    Snapshot(Arc<MeshState>),
}

// === impl Publisher ===

/// This cluster's published state: numbered revisions in one epoch, and the recent deltas.
#[derive(Debug)]
pub struct Publisher {
    inner: Mutex<Published>,
    rev_tx: watch::Sender<u64>,
}

impl Publisher {
    /// A publisher of `cluster` with an empty state at revision 0 of a new random epoch.
    pub fn new(cluster: ClusterId) -> Self {
        let mut state = MeshState::empty(cluster);
        // A restarted endpoint must not be taken for its previous incarnation: a client's
        // revision from another epoch always gets a snapshot.
        state.epoch = rand::random::<u64>() | 1;
        Self {
            inner: Mutex::new(Published {
                current: Arc::new(state),
                history: VecDeque::new(),
            }),
            rev_tx: watch::channel(0).0,
        }
    }

    /// Publishes `state`'s content as the next revision, if it differs from the current one;
    /// returns the current revision.
    pub fn publish(&self, mut state: MeshState) -> u64 {
        let mut inner = self.inner.lock();
        let cur = &inner.current;
        state.epoch = cur.epoch;
        state.revision = cur.revision + 1;
        state.cluster = cur.cluster.clone();
        let delta = cur.delta_to(&state);
        if delta.is_empty() {
            return cur.revision;
        }
        let rev = state.revision;
        inner.current = Arc::new(state);
        inner.history.push_back(Arc::new(delta));
        if inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        drop(inner);
        self.rev_tx.send_replace(rev);
        rev
    }

    /// The state published now.
    pub fn current(&self) -> Arc<MeshState> {
        self.inner.lock().current.clone()
    }

    /// What brings a client holding `have` (epoch, revision) to the current revision.
    pub fn catchup(&self, have: Option<(u64, u64)>) -> Catchup {
        let inner = self.inner.lock();
        let cur = &inner.current;
        match have {
            Some((epoch, rev)) if epoch == cur.epoch && rev == cur.revision => Catchup::None,
            Some((epoch, rev)) if epoch == cur.epoch && rev < cur.revision => {
                match inner.history.iter().position(|d| d.from == rev) {
                    Some(i) => Catchup::Deltas(inner.history.iter().skip(i).cloned().collect()),
                    None => Catchup::Snapshot(cur.clone()),
                }
            }
            _ => Catchup::Snapshot(cur.clone()),
        }
    }

    /// A receiver notified at every new revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rev_tx.subscribe()
    }
}

// === impl MeshServer ===

/// A running mesh endpoint; dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct MeshServer {
    endpoint: quinn::Endpoint,
    /// The TLS new connections are judged by; replaced when the trusted clusters change.
    tls: Arc<Mutex<Arc<MeshTls>>>,
    task: JoinHandle<()>,
}

impl MeshServer {
    /// Binds the mesh endpoint of `tls.cluster` at `addr` and serves `publisher` to clusters
    /// presenting a certificate of a CA in `tls`'s trust list.
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<MeshTls>,
        publisher: Arc<Publisher>,
    ) -> Result<Self, ServerError> {
        let cluster = tls.cluster.clone();
        let config = tls.server_config().map_err(|source| ServerError::Tls {
            cluster: cluster.clone(),
            source: Box::new(source),
        })?;
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|source| ServerError::Bind {
                cluster,
                addr,
                source,
            })?;
        let tls = Arc::new(Mutex::new(tls));
        let task = tokio::spawn(accept_loop(endpoint.clone(), tls.clone(), publisher));
        Ok(Self {
            endpoint,
            tls,
            task,
        })
    }

    /// Serves new connections with `tls` (other trusted clusters), without rebinding: clusters
    /// already connected stay connected until they go.
    pub fn set_tls(&self, tls: Arc<MeshTls>) -> Result<(), ServerError> {
        let config = tls.server_config().map_err(|source| ServerError::Tls {
            cluster: tls.cluster.clone(),
            source: Box::new(source),
        })?;
        self.endpoint.set_server_config(Some(config));
        *self.tls.lock() = tls;
        Ok(())
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }
}

impl Drop for MeshServer {
    fn drop(&mut self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"mesh endpoint stopped");
        self.task.abort();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    tls: Arc<Mutex<Arc<MeshTls>>>,
    publisher: Arc<Publisher>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (tls, publisher) = (tls.lock().clone(), publisher.clone());
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "mesh handshake failed");
                    return;
                }
            };
            if let Err(e) = serve(&conn, &tls, &publisher).await {
                tracing::debug!(%peer, error = %crate::errors::chain(&e), "mesh connection ended");
            }
        });
    }
}

/// Serves one connection until it closes.
async fn serve(
    conn: &quinn::Connection,
    tls: &MeshTls,
    publisher: &Publisher,
) -> Result<(), WireError> {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return Ok(());
    };
    let (hello, _) = wire::read::<Hello>("hello", &mut recv).await?;
    let refused = match tls.peer_cluster(conn) {
        Err(why) => Some(why),
        Ok(c) if c != hello.cluster.name => Some(format!(
            "hello names cluster {} but the certificate is of cluster {c}",
            hello.cluster.name
        )),
        Ok(_) if hello.server != tls.cluster => Some(format!(
            "this is the mesh endpoint of cluster {}, not of {}",
            tls.cluster, hello.server
        )),
        Ok(_) => {
            let local = &publisher.current().cluster;
            (hello.cluster.name == local.name || hello.cluster.id == local.id).then(|| {
                format!(
                    "cluster {} conflicts with cluster {local}: names and IDs must differ",
                    hello.cluster
                )
            })
        }
    };
    if let Some(reason) = refused {
        tracing::warn!(peer = %conn.remote_address(), client = %hello.cluster, %reason,
            "mesh client refused");
        let frame = wire::encode("refusal", &ServerFrame::Refused { reason })?;
        wire::write(&mut send, &frame).await?;
        let _ = send.finish();
        // Give the refusal time to arrive before the connection goes.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed()).await;
        return Ok(());
    }
    tracing::info!(peer = %conn.remote_address(), client = %hello.cluster, "mesh client connected");
    let mut revs = publisher.subscribe();
    let mut have = hello.have;
    let mut first = true;
    loop {
        revs.mark_unchanged();
        match publisher.catchup(have) {
            Catchup::None if first => {
                // The client is current: an empty delta tells it the sync is complete.
                let (epoch, rev) = have.unwrap_or_default();
                let frame = wire::encode("delta", &ServerFrame::Delta(Delta::empty(epoch, rev)))?;
                wire::write(&mut send, &frame).await?;
            }
            Catchup::None => {}
            Catchup::Deltas(deltas) => {
                for d in deltas {
                    // Encode outside any lock; a delta is shared by every connection.
                    let frame = wire::encode("delta", &ServerFrame::Delta((*d).clone()))?;
                    wire::write(&mut send, &frame).await?;
                    have = Some((d.epoch, d.to));
                }
            }
            Catchup::Snapshot(state) => {
                let frame = wire::encode("snapshot", &ServerFrame::Snapshot((*state).clone()))?;
                wire::write(&mut send, &frame).await?;
                have = Some((state.epoch, state.revision));
            }
        }
        first = false;
        tokio::select! {
            changed = revs.changed() => if changed.is_err() { return Ok(()) },
            _ = conn.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::state::{IpEntry, MeshState};

    fn with_pods(n: u8) -> MeshState {
        let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
        for i in 0..n {
            s.ipcache.insert(
                [10, 2, 0, i].into(),
                IpEntry {
                    identity: 1,
                    node: "n".into(),
                    namespace: "demo".into(),
                    pod: format!("p{i}"),
                },
            );
        }
        s
    }

    #[test]
    fn catchup_sends_deltas_it_has_and_a_snapshot_otherwise() {
        let p = Publisher::new(ClusterId::new("c2", 2).unwrap());
        let epoch = p.current().epoch;
        assert_eq!(p.publish(with_pods(1)), 1);
        assert_eq!(p.publish(with_pods(1)), 1, "no change, no revision");
        assert_eq!(p.publish(with_pods(3)), 2);
        assert!(matches!(p.catchup(Some((epoch, 2))), Catchup::None));
        let Catchup::Deltas(d) = p.catchup(Some((epoch, 0))) else {
            panic!("deltas expected")
        };
        assert_eq!(
            d.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(),
            [(0, 1), (1, 2)]
        );
        assert!(matches!(p.catchup(None), Catchup::Snapshot(s) if s.revision == 2));
        assert!(matches!(
            p.catchup(Some((epoch + 2, 2))),
            Catchup::Snapshot(_)
        ));
        for i in 0..HISTORY {
            p.publish(with_pods(i as u8 % 2 + 5));
        }
        assert!(matches!(p.catchup(Some((epoch, 0))), Catchup::Snapshot(_)));
    }
}
