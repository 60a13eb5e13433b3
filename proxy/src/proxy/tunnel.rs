//! HTTP/2 CONNECT tunnels between node proxies.
//!
//! One HTTP/2 connection per peer node carries many connections as CONNECT streams. Each stream
//! names its target pod in `:authority` and carries the source's identity and address in headers,
//! so the receiving node knows who is calling without trusting the packet's source address.

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

/// A tunnel that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connect to peer proxy {peer}")]
    Connect {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
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

/// One shared HTTP/2 connection per peer node, opened on first use and replaced when it breaks.
#[derive(Default)]
pub struct TunnelPool {
    conns: Mutex<HashMap<SocketAddr, SendRequest<Empty<Bytes>>>>,
}

impl TunnelPool {
    async fn sender(&self, peer: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, TunnelError> {
        let mut conns = self.conns.lock().await;
        if let Some(s) = conns.get(&peer)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = TcpStream::connect(peer)
            .await
            .map_err(|source| TunnelError::Connect { peer, source })?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| TunnelError::Http { peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "tunnel connection closed");
            }
        });
        metrics::counter!(crate::metrics::names::TUNNEL_CONNECTIONS, "role" => "client")
            .increment(1);
        conns.insert(peer, sender.clone());
        Ok(sender)
    }

    /// Opens a tunnelled stream to `target` through the proxy at `peer`.
    pub async fn open(
        &self,
        peer: SocketAddr,
        target: SocketAddrV4,
        source: &TunnelSource,
    ) -> Result<TokioIo<Upgraded>, TunnelError> {
        // A pooled connection can die between check and use; one retry on a fresh one covers it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut sender = self.sender(peer).await?;
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
                    self.conns.lock().await.remove(&peer);
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

/// Serves tunnels from other nodes' proxies until the listener fails.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "tunnel accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        metrics::counter!(crate::metrics::names::TUNNEL_CONNECTIONS, "role" => "server")
            .increment(1);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(proxy, from, req).await) }
            });
            let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            if let Err(e) = result {
                debug!(%from, error = %e, "tunnel connection ended");
            }
        });
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
    let original = header(&req, ORIGINAL_DST).unwrap_or_default().to_string();
    let source = match src_addr {
        SocketAddr::V4(v4) if src_cluster == tables.cluster.name => peer(
            &src_cluster,
            tables.endpoint(*v4.ip()).map(|e| &**e),
            src_addr,
        ),
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
    rec.record.tunnel_peer = Some(from.ip().to_string());
    let dst_peer = peer(
        &tables.cluster.name,
        tables.endpoint(*target.ip()).map(|e| &**e),
        target.into(),
    );
    rec.destination(original, None, dst_peer);
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
            tokio::io::copy_bidirectional(&mut tunnel, &mut upstream)
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::flows::Verdict;

    use crate::proxy::conn::tests::{FRONTEND, ONLY_FRONTEND, ONLY_OTHER, proxy, tables};

    fn source(identity: u32, ip: [u8; 4]) -> TunnelSource {
        TunnelSource {
            identity,
            addr: SocketAddr::from((ip, 40000)),
            cluster: "c1".into(),
            original_dst: String::new(),
        }
    }

    #[tokio::test]
    async fn ingress_policy_is_judged_with_the_identity_the_tunnel_carries() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(target) = echo.local_addr().unwrap() else {
            panic!("v4")
        };
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = proxy(ONLY_FRONTEND, false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, proxy.clone()));
        let pool = TunnelPool::default();

        let err = pool
            .open(peer, target, &source(65794, [10, 0, 0, 6]))
            .await
            .expect_err("other is denied");
        assert!(
            matches!(err, TunnelError::Refused { status, .. } if status == StatusCode::FORBIDDEN),
            "{err:?}"
        );
        let mut ok = pool
            .open(peer, target, &source(65793, [10, 0, 0, 5]))
            .await
            .expect("frontend is allowed");
        ok.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        ok.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        let flows = proxy.flows().recent(None);
        let denied = flows
            .iter()
            .find(|f| f.verdict == Verdict::Dropped)
            .expect("a drop flow");
        assert_eq!(denied.source.identity, 65794);
        assert_eq!(denied.drop_reason, Some(DropReason::PolicyDenied));
        assert_eq!(denied.decided_by, Some(crate::flows::DecidedBy::Proxy));
        assert!(
            denied.policies[0].contains("default deny (ingress)"),
            "{denied:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_policy_revokes_is_closed_when_rejudging_is_on() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(target) = echo.local_addr().unwrap() else {
            panic!("v4")
        };
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = proxy(ONLY_FRONTEND, true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, proxy.clone()));
        let pool = TunnelPool::default();
        let mut frontend = pool
            .open(peer, target, &source(FRONTEND, [10, 0, 0, 5]))
            .await
            .expect("frontend is allowed");
        frontend.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        frontend.read_exact(&mut buf).await.unwrap();

        // `other` becomes the only allowed client: the live frontend stream must end.
        proxy.swap_tables(Arc::new(tables(ONLY_OTHER)));
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            frontend.read_to_end(&mut rest),
        )
        .await
        .expect("the revoked stream is closed");
        assert!(
            read.map_or(true, |n| n == 0),
            "no more data after the close"
        );
        // The flow is written by the stream's task as it ends.
        let mut flow = None;
        for _ in 0..100 {
            flow = proxy.flows().recent(None).last().cloned();
            if flow.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let flow = flow.expect("a flow for the closed stream");
        assert_eq!(flow.source.identity, FRONTEND);
        assert_eq!(flow.verdict, Verdict::Dropped);
        assert_eq!(flow.drop_reason, Some(DropReason::PolicyDenied));
        assert!(!flow.policies.is_empty(), "{flow:?}");
        assert_eq!(proxy.live_connections(), 0);
    }
}
