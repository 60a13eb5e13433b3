//! The built-in "echo" workload a lab pod runs when it has no container command.
//!
//! Every declared port answers on TCP and UDP. TCP connections that open with an HTTP/1.x request
//! line or the HTTP/2 prior-knowledge preface get a JSON description of the pod and the request
//! (so tests and demos see which pod answered and what the mesh did to the request); anything else
//! is echoed back byte for byte. UDP datagrams are echoed to their sender.
//!
//! `sniff` tells HTTP from raw bytes and `httpd` answers HTTP/1.1 and h2c; this module binds the
//! ports and echoes raw TCP and UDP.

mod httpd;
mod sniff;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{Instrument, debug, debug_span};

use httpd::{Identity, serve_http};
use sniff::{Sniff, sniff};

/// Attempts to find an ephemeral port free for both TCP and UDP.
const EPHEMERAL_ATTEMPTS: usize = 32;
const UDP_BUF: usize = 64 * 1024;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Who the echo workload says it is, and which ports it serves (0 picks an ephemeral port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoConfig {
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<u16>,
}

/// Transport of a socket, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Why the echo workload could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("echo workload for pod {pod} has no ports to serve")]
    NoPorts { pod: String },
    #[error("binding echo {transport:?} port {port}")]
    Bind {
        transport: Transport,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("reading the local address of echo {transport:?} port {port}")]
    LocalAddr {
        transport: Transport,
        port: u16,
        #[source]
        source: io::Error,
    },
}

/// Binds every port of `cfg`, then serves them forever.
pub async fn run_echo(cfg: EchoConfig) -> Result<(), WorkloadError> {
    bind_echo(cfg).await?.serve().await;
    Ok(())
}

/// Binds TCP and UDP on `0.0.0.0` for every port of `cfg` without serving yet.
pub async fn bind_echo(cfg: EchoConfig) -> Result<BoundEcho, WorkloadError> {
    if cfg.ports.is_empty() {
        return Err(WorkloadError::NoPorts { pod: cfg.pod });
    }
    let mut seen = Vec::new();
    let mut sockets = Vec::new();
    for &port in &cfg.ports {
        if port != 0 && seen.contains(&port) {
            continue;
        }
        seen.push(port);
        sockets.push(bind_port(port).await?);
    }
    Ok(BoundEcho {
        info: Identity::from(cfg),
        sockets,
    })
}

/// Binds TCP and UDP on the same port number; for port 0, retries until one is free for both.
async fn bind_port(port: u16) -> Result<(TcpListener, UdpSocket, u16), WorkloadError> {
    let bind_err = |transport, port| {
        move |source| WorkloadError::Bind {
            transport,
            port,
            source,
        }
    };
    if port != 0 {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(bind_err(Transport::Tcp, port))?;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(bind_err(Transport::Udp, port))?;
        return Ok((tcp, udp, port));
    }
    let mut last = None;
    for _ in 0..EPHEMERAL_ATTEMPTS {
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let tcp = TcpListener::bind(any)
            .await
            .map_err(bind_err(Transport::Tcp, 0))?;
        let chosen = tcp
            .local_addr()
            .map_err(|source| WorkloadError::LocalAddr {
                transport: Transport::Tcp,
                port: 0,
                source,
            })?
            .port();
        match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, chosen)).await {
            Ok(udp) => return Ok((tcp, udp, chosen)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(bind_err(Transport::Udp, chosen)(e)),
        }
    }
    let source = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse));
    Err(bind_err(Transport::Udp, 0)(source))
}

// === impl BoundEcho ===

/// An echo workload whose sockets are bound; [`BoundEcho::serve`] starts answering.
#[derive(Debug)]
pub struct BoundEcho {
    info: Identity,
    sockets: Vec<(TcpListener, UdpSocket, u16)>,
}

impl BoundEcho {
    /// The bound addresses, in config order; TCP and UDP share each port number.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .map(|(_, _, port)| SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port)))
            .collect()
    }

    /// Answers on every socket until the future is dropped; per-connection errors are only logged.
    pub async fn serve(self) {
        let info = Arc::new(self.info);
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for (listener, socket, port) in self.sockets {
            tcp.push(accept_loop(listener, port, info.clone()));
            udp.push(udp_loop(socket, port));
        }
        // The loops run inside this future, so dropping it closes every listener.
        futures::future::join(join_all(tcp), join_all(udp)).await;
    }
}

async fn accept_loop(listener: TcpListener, port: u16, info: Arc<Identity>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
                let span = debug_span!("echo_conn", id, %peer, port);
                tokio::spawn(handle_tcp(stream, peer, port, info.clone()).instrument(span));
            }
            Err(error) => {
                // Usually EMFILE under load: back off instead of spinning, keep serving.
                debug!(%error, port, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn udp_loop(socket: UdpSocket, port: u16) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let Some(data) = buf.get(..n) else { continue };
                if let Err(error) = socket.send_to(data, peer).await {
                    debug!(%error, %peer, port, "udp echo send failed");
                }
            }
            Err(error) => debug!(%error, port, "udp recv failed"),
        }
    }
}

async fn handle_tcp(stream: TcpStream, peer: SocketAddr, port: u16, info: Arc<Identity>) {
    let kind = sniff(&stream).await;
    debug!(?kind, "connection classified");
    match kind {
        Sniff::Http => serve_http(stream, peer, port, info).await,
        Sniff::Raw | Sniff::NeedMore => echo_bytes(stream).await,
    }
}
async fn echo_bytes(mut stream: TcpStream) {
    let (mut rd, mut wr) = stream.split();
    match tokio::io::copy(&mut rd, &mut wr).await {
        Ok(n) => debug!(bytes = n, "echo finished"),
        Err(error) => debug!(%error, "echo failed"),
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
}
