//! HTTP/2 CONNECT tunnels between node proxies, inside mutual TLS (as ztunnel's HBONE).
//!
//! One TLS session per peer node carries one HTTP/2 connection and, in it, many connections as
//! CONNECT streams: no handshake per connection. Each stream names its target pod in
//! `:authority` and carries the source's identity and address in headers; the receiving proxy
//! believes them only for pods of the node the peer's certificate names (`check_source`).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::Proxy;
use super::conn::{Admission, peer};
use super::l7::BoxIo;
use super::tables::ProxyTables;
use super::tls::{ALPN_H2, HandshakeFailure, NodeIdentity, NodeTls};
use crate::flows::{Direction, DropReason, FlowPeer};

/// Header carrying the source's numeric identity.
pub const SOURCE_IDENTITY: &str = "strait-source-identity";
/// Header carrying the source's `ip:port` as the client saw it.
pub const SOURCE_ADDR: &str = "strait-source-addr";
/// Header carrying the source's cluster name.
pub const SOURCE_CLUSTER: &str = "strait-source-cluster";
/// Header carrying the address the client originally dialed (e.g. a service VIP).
pub const ORIGINAL_DST: &str = "strait-original-destination";

/// HTTP/2 windows large enough that one stream is not throttled by flow control on a LAN.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// A peer that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How tunnels between node proxies are carried.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Mutual TLS with node certificates (what the agent runs).
    Mtls(Arc<NodeTls>),
    /// Plain TCP, no peer authentication: identity headers are believed as sent. Only for
    /// benchmarks measuring the cost of TLS and for tests; the agent never builds it.
    InsecurePlaintext,
}

/// The node at the other end of a tunnel and where its tunnel listener is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TunnelPeer {
    pub node: NodeIdentity,
    pub addr: SocketAddr,
}

/// A tunnel that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connect to peer proxy {peer}")]
    Connect {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with peer proxy {peer}: {}", reason.as_str())]
    Handshake {
        peer: SocketAddr,
        reason: HandshakeFailure,
    },
    #[error("HTTP/2 with peer proxy {peer}")]
    Http {
        peer: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("peer proxy {peer} refused the tunnel to {target}: {status}")]
    Refused {
        peer: SocketAddr,
        target: SocketAddrV4,
        status: StatusCode,
    },
    #[error("bad tunnel request")]
    Request(#[from] http::Error),
}

/// Who is calling through a tunnel.
#[derive(Debug, Clone)]
pub struct TunnelSource {
    pub identity: u32,
    pub addr: SocketAddr,
    pub cluster: String,
    pub original_dst: String,
}

/// One shared HTTP/2 connection (in one TLS session) per peer node, opened on first use and
/// replaced when it breaks.
pub struct TunnelPool {
    transport: Transport,
    conns: Mutex<HashMap<TunnelPeer, SendRequest<Empty<Bytes>>>>,
}

impl TunnelPool {
    /// A pool dialing over `transport`.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            conns: Mutex::default(),
        }
    }

    /// How this pool's tunnels are carried (the listener uses the same).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A TLS session to `peer`, checked to be that node.
    async fn dial(&self, peer: &TunnelPeer) -> Result<BoxIo, TunnelError> {
        let addr = peer.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TunnelError::Connect { peer: addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = match &self.transport {
            Transport::InsecurePlaintext => return Ok(Box::new(tcp)),
            Transport::Mtls(tls) => tls,
        };
        let failed = |reason| {
            tls.handshake_failed(addr.ip(), "client", reason);
            TunnelError::Handshake { peer: addr, reason }
        };
        let name = NodeTls::server_name(&peer.node).map_err(failed)?;
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector().connect(name, tcp))
            .await
            .map_err(|_| failed(HandshakeFailure::Timeout))?
            .map_err(|e| failed(HandshakeFailure::classify(&e)))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(failed(HandshakeFailure::Alpn));
        }
        // The server name proved the node; the issuer check proves its cluster's CA said so.
        match tls.peer_node(session.peer_certificates()) {
            Ok(node) if node == peer.node => Ok(Box::new(stream)),
            Ok(_) => Err(failed(HandshakeFailure::BadCertificate)),
            Err(reason) => Err(failed(reason)),
        }
    }

    async fn sender(&self, peer: &TunnelPeer) -> Result<SendRequest<Empty<Bytes>>, TunnelError> {
        let mut conns = self.conns.lock().await;
        // A tunnel to a cluster no longer trusted (disconnected) is not reused: the dial below
        // fails its handshake instead.
        let trusted = match &self.transport {
            Transport::Mtls(tls) => tls.trusts(&peer.node.cluster),
            Transport::InsecurePlaintext => true,
        };
        if let Some(s) = conns.get(peer)
            && !s.is_closed()
            && trusted
        {
            return Ok(s.clone());
        }
        let io = self.dial(peer).await?;
        let addr = peer.addr;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| TunnelError::Http { peer: addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(peer = %addr, error = %e, "tunnel connection closed");
            }
        });
        metrics::counter!(crate::metrics::names::TUNNEL_CONNECTIONS, "role" => "client")
            .increment(1);
        conns.insert(peer.clone(), sender.clone());
        Ok(sender)
    }

    /// Opens a tunnelled stream to `target` through the proxy at `peer`.
    pub async fn open(
        &self,
        tunnel: &TunnelPeer,
        target: SocketAddrV4,
        source: &TunnelSource,
    ) -> Result<TokioIo<Upgraded>, TunnelError> {
        let peer = tunnel.addr;
        // A pooled connection can die between check and use; one retry on a fresh one covers it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut sender = self.sender(tunnel).await?;
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(target.to_string())
                .header(SOURCE_IDENTITY, source.identity)
                .header(SOURCE_ADDR, source.addr.to_string())
                .header(SOURCE_CLUSTER, source.cluster.as_str())
                .header(ORIGINAL_DST, source.original_dst.as_str())
                .body(Empty::<Bytes>::new())?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if attempt == 1 => {
                    debug!(%peer, error = %e, "pooled tunnel failed, reconnecting");
                    self.conns.lock().await.remove(tunnel);
                    continue;
                }
                Err(source) => return Err(TunnelError::Http { peer, source }),
            };
            if resp.status() != StatusCode::OK {
                return Err(TunnelError::Refused {
                    peer,
                    target,
                    status: resp.status(),
                });
            }
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|source| TunnelError::Http { peer, source })?;
            metrics::counter!(crate::metrics::names::TUNNEL_STREAMS, "role" => "client")
                .increment(1);
            return Ok(TokioIo::new(upgraded));
        }
    }
}

/// Who the peer of an accepted tunnel is.
#[derive(Debug, Clone)]
enum PeerAuth {
    /// Authenticated by its certificate.
    Node(NodeIdentity),
    /// Plaintext transport: nothing is known (benchmarks only).
    Unauthenticated,
}

/// Serves tunnels from other nodes' proxies until the listener fails.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "tunnel accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let (io, auth) = match proxy.pool.transport().clone() {
                Transport::InsecurePlaintext => (Box::new(tcp) as BoxIo, PeerAuth::Unauthenticated),
                Transport::Mtls(tls) => match accept_tls(&tls, tcp).await {
                    Ok((io, node)) => (io, PeerAuth::Node(node)),
                    Err(reason) => {
                        // Nothing of this connection reaches a pod: it ends here.
                        tls.handshake_failed(from.ip(), "server", reason);
                        return;
                    }
                },
            };
            metrics::counter!(crate::metrics::names::TUNNEL_CONNECTIONS, "role" => "server")
                .increment(1);
            // A peer of another cluster keeps its tunnel only while that cluster is trusted
            // (connected): a disconnect ends it and every stream in it.
            let foreign = match (&auth, proxy.pool.transport()) {
                (PeerAuth::Node(n), Transport::Mtls(tls)) if n.cluster != tls.local.cluster => {
                    Some((tls.clone(), n.cluster.clone()))
                }
                _ => None,
            };
            let auth = Arc::new(auth);
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let auth = auth.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(proxy, from, &auth, req).await) }
            });
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .serve_connection(TokioIo::new(io), svc);
            let result = match foreign {
                None => served.await,
                Some((tls, cluster)) => tokio::select! {
                    result = served => result,
                    () = tls.untrusted(&cluster) => {
                        debug!(%from, %cluster, "cluster no longer trusted: tunnel closed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                debug!(%from, error = %e, "tunnel connection ended");
            }
        });
    }
}

/// The TLS handshake of an accepted tunnel and the node its certificate names.
async fn accept_tls(
    tls: &NodeTls,
    tcp: TcpStream,
) -> Result<(BoxIo, NodeIdentity), HandshakeFailure> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp))
        .await
        .map_err(|_| HandshakeFailure::Timeout)?
        .map_err(|e| HandshakeFailure::classify(&e))?;
    let (_, session) = stream.get_ref();
    if session.alpn_protocol() != Some(ALPN_H2) {
        return Err(HandshakeFailure::Alpn);
    }
    let node = tls.peer_node(session.peer_certificates())?;
    Ok((Box::new(stream), node))
}

/// Whether the authenticated `peer` node may speak for a stream from `addr` with `identity` of
/// `cluster`: only for a pod of its own (by endpoint; by pod CIDR when the pod is not known yet,
/// and then only with the identity this node would give that address itself). A node of another
/// cluster of the mesh speaks only for that cluster's pods as synced from it (whose identities
/// the cluster owns): never for a pod of this cluster, never for an address not synced yet.
pub fn check_source(
    tables: &ProxyTables,
    peer: &NodeIdentity,
    cluster: &str,
    addr: SocketAddr,
    identity: u32,
) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    if cluster != peer.cluster {
        return false;
    }
    let ep = tables.endpoint(*v4.ip());
    if peer.cluster != tables.cluster.name {
        return ep.is_some_and(|ep| {
            ep.cluster.as_deref() == Some(peer.cluster.as_str())
                && ep.node == peer.node
                && ep.identity == identity
        });
    }
    match ep {
        Some(ep) => ep.cluster.is_none() && ep.node == peer.node && ep.identity == identity,
        None => {
            tables.nodes.iter().any(|n| {
                n.cluster.is_none()
                    && n.name == peer.node
                    && n.pod_cidrs.iter().any(|c| c.contains(v4.ip()))
            }) && tables.identity_of(*v4.ip()) == identity
        }
    }
}

fn reply(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    r
}

fn header<'a>(req: &'a Request<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    proxy: Arc<Proxy>,
    from: SocketAddr,
    auth: &PeerAuth,
    mut req: Request<hyper::body::Incoming>,
) -> Response<Empty<Bytes>> {
    if req.method() != Method::CONNECT {
        return reply(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddrV4>().ok())
    else {
        return reply(StatusCode::BAD_REQUEST);
    };
    let tables = proxy.tables();
    let src_addr: SocketAddr = header(&req, SOURCE_ADDR)
        .and_then(|s| s.parse().ok())
        .unwrap_or(from);
    let src_identity: u32 = header(&req, SOURCE_IDENTITY)
        .and_then(|s| s.parse().ok())
        .unwrap_or(crate::identity::reserved::WORLD);
    let src_cluster = header(&req, SOURCE_CLUSTER).unwrap_or_default().to_string();
    let src_cluster_checked = src_cluster.clone();
    let original = header(&req, ORIGINAL_DST).unwrap_or_default().to_string();
    // The pod as synced (of this cluster, or of the cluster the header names).
    let known = match src_addr {
        SocketAddr::V4(v4) => tables.endpoint(*v4.ip()).filter(|e| {
            e.cluster.as_deref().unwrap_or(&tables.cluster.name) == src_cluster.as_str()
        }),
        SocketAddr::V6(_) => None,
    };
    let source = match known {
        Some(ep) => peer(&tables.cluster.name, Some(&**ep), src_addr),
        _ => FlowPeer {
            ip: Some(src_addr.ip()),
            port: src_addr.port(),
            cluster: src_cluster,
            identity: src_identity,
            ..FlowPeer::default()
        },
    };
    // Records the stream's one flow however it ends.
    let mut rec = proxy.accept(Direction::Ingress, source);
    rec.record.source.identity = src_identity;
    rec.record.tunnel_peer = Some(match auth {
        PeerAuth::Node(n) => n.node.clone(),
        PeerAuth::Unauthenticated => from.ip().to_string(),
    });
    let dst_peer = peer(
        &tables.cluster.name,
        tables.endpoint(*target.ip()).map(|e| &**e),
        target.into(),
    );
    rec.destination(original, None, dst_peer);
    // A node speaks only for its own pods: a forged or foreign source never reaches policy.
    if let PeerAuth::Node(node) = auth
        && !check_source(&tables, node, &src_cluster_checked, src_addr, src_identity)
    {
        debug!(peer = %node.node, source = %src_addr, identity = src_identity,
            "tunnel stream refused: source is not a pod of the peer node");
        rec.dropped(DropReason::IdentityMismatch);
        return reply(StatusCode::FORBIDDEN);
    }
    // Only this node's pods: a tunnel endpoint must not become an open relay.
    if !tables.is_local_pod(*target.ip()) {
        rec.dropped(DropReason::NotLocalEndpoint);
        return reply(StatusCode::MISDIRECTED_REQUEST);
    }
    // Ingress policy of the destination, judged with the identity the source node vouches for.
    let judged = tables.judge_tcp(src_identity, target);
    rec.record.destination.identity = judged.dst_identity;
    let verdict = judged.verdict;
    if !verdict.allowed() {
        rec.denied(verdict.deciding_rules());
        return reply(StatusCode::FORBIDDEN);
    }
    let admission = Admission {
        src_identity,
        dst_identity: judged.dst_identity,
        port: target.port(),
    };
    proxy.admit(&mut rec, admission, &tables);
    drop(tables);
    // Another cluster's proxy knows only its own policies: this cluster's L7 rules for its pods
    // are judged here, request by request. A node of this cluster judged them already.
    if src_cluster_checked != proxy.cluster && verdict.needs_l7() {
        let judge = Arc::new(super::outbound::PolicyJudge {
            proxy: proxy.clone(),
            src: src_identity,
            dst: admission.dst_identity,
            port: target.port(),
        });
        serve_http(proxy, req, rec, target, judge);
        return reply(StatusCode::OK);
    }
    let upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            rec.error(format!("connect {target}: {e}"));
            return reply(StatusCode::BAD_GATEWAY);
        }
    };
    let _ = upstream.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let closed = rec.close_signal();
    tokio::spawn(async move {
        let mut rec = rec;
        let _open = crate::metrics::OpenConnection::start(Direction::Ingress);
        metrics::counter!(crate::metrics::names::TUNNEL_STREAMS, "role" => "server").increment(1);
        let relay = async {
            let mut tunnel = TokioIo::new(on_upgrade.await.map_err(|e| e.to_string())?);
            let mut upstream = upstream;
            super::relay::relay(&mut tunnel, &mut upstream)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::select! {
            result = relay => match result {
                Ok((sent, received)) => rec.bytes(sent, received),
                Err(e) => rec.error(e),
            },
            // Revoked by a policy change: dropping both ends closes the stream and the pod
            // connection; the guard marks the flow denied.
            () = closed.closed() => {}
        }
    });
    reply(StatusCode::OK)
}

/// Serves an accepted stream as HTTP, judging each request, towards the local pod `target`.
fn serve_http(
    proxy: Arc<Proxy>,
    mut req: Request<hyper::body::Incoming>,
    mut rec: super::conn::ConnGuard,
    target: SocketAddrV4,
    judge: Arc<super::outbound::PolicyJudge>,
) {
    let template = rec.per_request();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let closed = rec.close_signal();
    tokio::spawn(async move {
        // Held to the end: it records a flow only if policy closes the stream.
        let _rec = rec;
        let _open = crate::metrics::OpenConnection::start(Direction::Ingress);
        metrics::counter!(crate::metrics::names::TUNNEL_STREAMS, "role" => "server").increment(1);
        let io = match on_upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!(error = %e, "tunnel stream upgrade failed");
                return;
            }
        };
        let upstream = super::outbound::pod_upstream(&proxy, target);
        let sink = Arc::new(super::outbound::RingSink(proxy.flows().clone()));
        tokio::select! {
            result = Box::pin(super::l7::serve(io, upstream, judge, sink, template, proxy.http_paths)) => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP stream ended");
                }
            }
            () = closed.closed() => debug!("policy change closed the HTTP stream"),
        }
    });
}

#[cfg(test)]
mod tests;
