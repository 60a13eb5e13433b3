//! The agent's admin HTTP server: health, status and flows, on a Unix socket and optionally TCP.
//! [`client`] is the other side, used by `strait observe`, `strait ui` and `strait lab status`.
//!
//! What a request may see depends on the listener it came in on ([`Access`]): the Unix socket
//! (reachable only from the node's file system) serves every route; plain TCP on the node
//! address, which every pod can reach, serves only `/healthz` and `/metrics` and answers `403`
//! to everything else, as Hubble's peer service keeps flows behind TLS. The TLS listener
//! ([`BoundAdmin::with_tls`]) serves every route to clients whose certificate the acceptor
//! verified; one without such a certificate never completes the handshake.
//!
//! The Unix socket is how `strait observe` reaches agents living in other network namespaces.
//! Listeners are bound by [`Admin::bind`] before anything is served, so a bad path or a busy port
//! fails startup instead of the first request (as linkerd and ztunnel do).

pub mod client;
mod routes;
#[cfg(test)]
mod tests;

pub use crate::flows::{FlowsQuery, QueryError};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::flows::FlowRing;

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {}: cannot inspect existing file", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("admin socket {}: exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("admin socket {}: another process is serving on it", path.display())]
    InUse { path: PathBuf },
    #[error("admin socket {}: cannot remove stale socket", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("admin socket {}: cannot bind", path.display())]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("admin listener {addr}: cannot bind")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("admin listener {listener}: cannot register with the runtime")]
    Register {
        listener: String,
        #[source]
        source: io::Error,
    },
}

/// What the admin routes read: the flow ring and a snapshot of agent status.
#[derive(Clone)]
pub struct AdminState {
    pub flows: Arc<FlowRing>,
    /// Called on every `GET /status`; returns the whole response document.
    pub status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Called on every `GET /metrics`; returns the Prometheus text exposition.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState")
            .field("flows", &self.flows.stats())
            .finish_non_exhaustive()
    }
}

/// Who is asking, as far as the listener a request came in on tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The Unix socket: a process on the node with access to the agent's state directory.
    Local,
    /// A TLS connection whose client certificate chains to the cluster CA.
    Authenticated,
    /// Plain TCP on the node address: any pod; health and metrics only.
    Public,
}

/// Entry point for binding the admin listeners.
#[derive(Debug)]
pub struct Admin;

/// Admin listeners, bound and not yet serving.
pub struct BoundAdmin {
    unix: std::os::unix::net::UnixListener,
    socket: SocketFile,
    tcp: Option<(std::net::TcpListener, SocketAddr)>,
    tls: Option<(std::net::TcpListener, SocketAddr, TlsAcceptor)>,
}

impl fmt::Debug for BoundAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundAdmin")
            .field("socket", &self.socket.0)
            .field("tcp", &self.tcp_addr())
            .field("tls", &self.tls_addr())
            .finish_non_exhaustive()
    }
}

/// How long a TLS client may take to finish its handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes the socket file when serving stops, so no stale socket outlives the agent.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// === impl Admin ===

impl Admin {
    /// Binds the Unix socket (replacing a stale one) and, if given, a TCP address.
    ///
    /// Needs no runtime; serving does.
    pub fn bind(
        unix_socket_path: &Path,
        tcp: Option<SocketAddr>,
    ) -> Result<BoundAdmin, AdminError> {
        remove_stale_socket(unix_socket_path)?;
        let path = unix_socket_path.to_path_buf();
        let unix = std::os::unix::net::UnixListener::bind(&path).map_err(|source| {
            AdminError::BindUnix {
                path: path.clone(),
                source,
            }
        })?;
        // From here on the guard removes the file if a later step fails.
        let socket = SocketFile(path.clone());
        unix.set_nonblocking(true)
            .map_err(|source| AdminError::BindUnix { path, source })?;
        let tcp = match tcp {
            None => None,
            Some(addr) => Some(bind_tcp(addr)?),
        };
        Ok(BoundAdmin {
            unix,
            socket,
            tcp,
            tls: None,
        })
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), AdminError> {
    let err = |source| AdminError::BindTcp { addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

/// Clears the way for binding: removes a socket file nobody listens on, refuses anything else.
fn remove_stale_socket(path: &Path) -> Result<(), AdminError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(AdminError::Inspect {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket { path: path.into() });
    }
    // A socket file survives its process; only a live listener accepts the connection.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(AdminError::InUse { path: path.into() });
    }
    std::fs::remove_file(path).map_err(|source| AdminError::RemoveStale {
        path: path.into(),
        source,
    })
}

// === impl BoundAdmin ===

impl BoundAdmin {
    /// Path of the bound Unix socket.
    pub fn unix_path(&self) -> &Path {
        &self.socket.0
    }

    /// Local address of the TCP listener, with the real port when bound to port 0.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|(_, addr)| *addr)
    }

    /// Also binds a TLS listener on `addr`, whose connections are served with
    /// [`Access::Authenticated`]: `acceptor` must require a client certificate.
    pub fn with_tls(mut self, addr: SocketAddr, acceptor: TlsAcceptor) -> Result<Self, AdminError> {
        let (l, local) = bind_tcp(addr)?;
        self.tls = Some((l, local, acceptor));
        Ok(self)
    }

    /// Local address of the TLS listener, with the real port when bound to port 0.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(_, addr, _)| *addr)
    }

    /// Serves until the future is dropped; the socket file is removed then.
    pub async fn serve(self, state: AdminState) -> Result<(), AdminError> {
        let BoundAdmin {
            unix,
            socket,
            tcp,
            tls,
        } = self;
        let unix =
            tokio::net::UnixListener::from_std(unix).map_err(|source| AdminError::Register {
                listener: socket.0.display().to_string(),
                source,
            })?;
        let tcp = match tcp {
            None => None,
            Some((l, addr)) => Some(tokio::net::TcpListener::from_std(l).map_err(|source| {
                AdminError::Register {
                    listener: addr.to_string(),
                    source,
                }
            })?),
        };
        let tls = match tls {
            None => None,
            Some((l, addr, acceptor)) => Some((
                tokio::net::TcpListener::from_std(l).map_err(|source| AdminError::Register {
                    listener: addr.to_string(),
                    source,
                })?,
                acceptor,
            )),
        };
        tracing::debug!(socket = %socket.0.display(), tcp = ?tcp.as_ref().and_then(|l| l.local_addr().ok()),
            tls = ?tls.as_ref().and_then(|(l, _)| l.local_addr().ok()), "admin server listening");
        loop {
            tokio::select! {
                r = unix.accept() => match r {
                    Ok((io, _)) => spawn_connection(io, state.clone(), Access::Local),
                    Err(e) => accept_failed("unix", e).await,
                },
                r = accept_tcp(tcp.as_ref()) => match r {
                    Ok((io, _)) => spawn_connection(io, state.clone(), Access::Public),
                    Err(e) => accept_failed("tcp", e).await,
                },
                r = accept_tcp(tls.as_ref().map(|(l, _)| l)) => match (r, &tls) {
                    (Ok((io, peer)), Some((_, acceptor))) => {
                        spawn_tls_connection(io, peer, acceptor.clone(), state.clone());
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => accept_failed("tls", e).await,
                },
            }
        }
    }

    /// Serves on a new task.
    pub fn spawn(self, state: AdminState) -> tokio::task::JoinHandle<Result<(), AdminError>> {
        tokio::spawn(self.serve(state))
    }
}

async fn accept_tcp(
    l: Option<&tokio::net::TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_failed(listener: &'static str, error: io::Error) {
    tracing::warn!(listener, %error, "admin server cannot accept connections");
    // Accept errors such as EMFILE repeat at once; pausing keeps the loop from spinning.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Completes the TLS handshake (the acceptor verifies the client certificate), then serves the
/// connection as [`Access::Authenticated`].
fn spawn_tls_connection(
    io: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: AdminState,
) {
    tokio::spawn(async move {
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(tls)) => spawn_connection(tls, state, Access::Authenticated),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "admin TLS handshake refused");
            }
            Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
        }
    });
}

/// Serves one admin connection whose caller has `access` (a TLS listener passes its
/// authenticated streams here with [`Access::Authenticated`]).
pub(crate) fn spawn_connection<I>(io: I, state: AdminState, access: Access)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let rsp = routes::route(&req, &state, access);
            async move { Ok::<_, std::convert::Infallible>(rsp) }
        });
        if let Err(error) = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            tracing::debug!(%error, "admin connection ended with an error");
        }
    });
}
