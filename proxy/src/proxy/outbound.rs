//! The outbound listener: every pod TCP connect lands here, redirected by `cgroup/connect4`.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, warn};

use strait_ebpf::abi::IPPROTO_TCP as TCP;

use super::Proxy;
use super::conn::{Admission, peer};
use super::l7::pool::{PoolKey, Upstream};
use super::l7::{self, BoxIo, Connector, FlowSink, HttpJudge, Judgement, RequestInfo};
use super::tables::{Judged, Route};
use super::tls::NodeIdentity;
use super::tunnel::{TunnelPeer, TunnelSource};
use crate::flows::{Direction, DropReason, FlowRecord, FlowRing};

/// Judges each request against the policy in force when it arrives.
pub(super) struct PolicyJudge {
    pub(super) proxy: Arc<Proxy>,
    pub(super) src: u32,
    pub(super) dst: u32,
    pub(super) port: u16,
}

impl HttpJudge for PolicyJudge {
    fn judge(&self, req: &RequestInfo) -> Judgement {
        let v = self
            .proxy
            .tables()
            .policy
            .verdict(self.src, self.dst, TCP, self.port);
        if !v.allowed() {
            return Judgement {
                allowed: false,
                rules: v.deciding_rules(),
            };
        }
        if !v.needs_l7() {
            return Judgement {
                allowed: true,
                rules: v.deciding_rules(),
            };
        }
        let (allowed, rules) = v.judge_http(req);
        Judgement { allowed, rules }
    }
}

/// Per-request flows go to the node's ring.
pub(super) struct RingSink(pub(super) Arc<FlowRing>);

impl FlowSink for RingSink {
    fn record(&self, flow: FlowRecord) {
        self.0.record(flow);
    }
}

/// The upstream of an L7 connection: connections to a local pod come from the node's pool,
/// shared with other client connections; a tunnelled one stays this client connection's own
/// (the far node records the stream as one flow of this source when it ends).
fn l7_upstream(
    proxy: Arc<Proxy>,
    target: SocketAddrV4,
    via: Option<TunnelPeer>,
    source: TunnelSource,
) -> Upstream {
    let key = PoolKey {
        target,
        tunnel: via.as_ref().map(|t| t.addr),
    };
    let pool = match via {
        None => proxy.http_pool.clone(),
        Some(_) => Arc::default(),
    };
    Upstream::new(pool, key, upstream_connector(proxy, target, via, source))
}

/// The upstream of requests judged on this node for a pod of this node: the node's pool.
pub(super) fn pod_upstream(proxy: &Proxy, target: SocketAddrV4) -> Upstream {
    let key = PoolKey {
        target,
        tunnel: None,
    };
    let connect: Connector = Box::new(move || {
        Box::pin(async move {
            let s = TcpStream::connect(target)
                .await
                .map_err(|e| format!("connect {target}: {e}"))?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxIo)
        })
    });
    Upstream::new(proxy.http_pool.clone(), key, connect)
}

/// Opens a new upstream stream of an L7 connection.
fn upstream_connector(
    proxy: Arc<Proxy>,
    target: SocketAddrV4,
    via: Option<TunnelPeer>,
    source: TunnelSource,
) -> Connector {
    let source = Arc::new(source);
    Box::new(move || {
        let proxy = proxy.clone();
        let via = via.clone();
        let source = source.clone();
        Box::pin(async move {
            match via {
                None => {
                    let s = TcpStream::connect(target)
                        .await
                        .map_err(|e| format!("connect {target}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s) as BoxIo)
                }
                Some(tunnel) => proxy
                    .pool
                    .open(&tunnel, target, &source)
                    .await
                    .map(|s| Box::new(s) as BoxIo)
                    .map_err(|e| crate::errors::chain(&e)),
            }
        })
    })
}

/// Accepts redirected connections until the listener fails.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let span = debug_span!("outbound", %client);
        tokio::spawn(handle(proxy, stream, client).instrument(span));
    }
}

/// Closes with RST so the client sees the failure at once, as with no proxy in between.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn handle(proxy: Arc<Proxy>, mut client: TcpStream, client_addr: SocketAddr) {
    let _open = crate::metrics::OpenConnection::start(Direction::Egress);
    let _ = client.set_nodelay(true);
    let tables = proxy.tables();
    let SocketAddr::V4(client_v4) = client_addr else {
        reset(client);
        return;
    };
    let src_ep = tables.endpoint(*client_v4.ip()).cloned();
    // Records the connection's one flow however this function returns.
    let mut rec = proxy.accept(
        Direction::Egress,
        peer(&tables.cluster.name, src_ep.as_deref(), client_addr),
    );
    let Some(original) = proxy.original_dst.take(client_v4) else {
        // Not redirected by our programs (someone dialed the proxy port directly).
        rec.error("no original destination recorded for this connection");
        reset(client);
        return;
    };
    let src_identity = match &src_ep {
        Some(ep) => ep.identity,
        None => tables.identity_of(*client_v4.ip()),
    };
    let (decision, judged) = tables.decide_for(original, src_identity);
    let (target, endpoint, via) = match &decision.route {
        Route::Local { target, endpoint } => (*target, endpoint.clone(), None),
        Route::Remote {
            target,
            endpoint,
            node,
            cluster,
            tunnel,
        } => (
            *target,
            endpoint.clone(),
            Some(TunnelPeer {
                node: NodeIdentity {
                    cluster: cluster.clone().unwrap_or_else(|| proxy.cluster.clone()),
                    node: node.clone(),
                },
                addr: *tunnel,
            }),
        ),
        Route::External { target } => (*target, None, None),
        Route::NoBackend => {
            rec.destination(
                original.to_string(),
                decision.service.clone(),
                peer(&tables.cluster.name, None, original.into()),
            );
            rec.dropped(DropReason::NoServiceBackend);
            reset(client);
            return;
        }
    };
    rec.destination(
        original.to_string(),
        decision.service.clone(),
        peer(&tables.cluster.name, endpoint.as_deref(), target.into()),
    );
    let Judged {
        dst_identity,
        verdict,
    } = judged.unwrap_or_else(|| tables.judge_tcp(src_identity, target));
    rec.record.destination.identity = dst_identity;
    // The kernel refuses most denied connects already; this catches the rest (a service whose
    // backends the kernel could not judge, a policy that changed in between).
    if !verdict.allowed() {
        rec.denied(verdict.deciding_rules());
        reset(client);
        return;
    }
    let admission = Admission {
        src_identity,
        dst_identity,
        port: target.port(),
    };
    proxy.admit(&mut rec, admission, &tables);
    drop(tables);
    let closed = rec.close_signal();
    debug!(%original, %target, "routing");
    if verdict.needs_l7() {
        let source = TunnelSource {
            identity: src_identity,
            addr: client_addr,
            cluster: proxy.cluster.clone(),
            original_dst: original.to_string(),
        };
        if let Some(peer) = &via {
            rec.record.tunnel_peer = Some(peer.node.node.clone());
        }
        let upstream = l7_upstream(proxy.clone(), target, via, source);
        let judge = Arc::new(PolicyJudge {
            proxy: proxy.clone(),
            src: src_identity,
            dst: dst_identity,
            port: target.port(),
        });
        let sink = Arc::new(RingSink(proxy.flows().clone()));
        let template = rec.per_request();
        tokio::select! {
            // Boxed: the HTTP server's state would otherwise size every L4 connection's task.
            result = Box::pin(l7::serve(client, upstream, judge, sink, template, proxy.http_paths)) => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended");
                }
            }
            // Dropping the server closes the client connection; the guard records the close.
            () = closed.closed() => debug!("policy change closed the HTTP connection"),
        }
        return;
    }
    if let Some(peer) = &via {
        rec.record.tunnel_peer = Some(peer.node.node.clone());
    }
    let relay = async {
        match via {
            None => forward_direct(&mut client, target).await,
            Some(tunnel) => {
                let source = TunnelSource {
                    identity: src_identity,
                    addr: client_addr,
                    cluster: proxy.cluster.clone(),
                    original_dst: original.to_string(),
                };
                // Boxed, as the HTTP server above: opening a tunnel is a large, short-lived state.
                match Box::pin(proxy.pool.open(&tunnel, target, &source)).await {
                    Ok(mut upstream) => copy(&mut client, &mut upstream).await,
                    Err(e) => Err(crate::errors::chain(&e)),
                }
            }
        }
    };
    let result = tokio::select! {
        result = relay => Some(result),
        () = closed.closed() => None,
    };
    match result {
        Some(Ok((sent, received))) => {
            rec.bytes(sent, received);
            let _ = client.shutdown().await;
        }
        Some(Err(e)) => {
            rec.error(e);
            reset(client);
        }
        // Revoked by a policy change: the guard marks the flow denied.
        None => reset(client),
    }
}

async fn forward_direct(
    client: &mut TcpStream,
    target: SocketAddrV4,
) -> Result<(u64, u64), String> {
    let mut upstream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = upstream.set_nodelay(true);
    // Two plain sockets: the kernel moves the bytes; anything else gets the buffered relay.
    match super::splice::probe(client) {
        Ok(()) => super::splice::relay(client, &upstream)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => {
            debug!(error = %e, "buffered relay");
            copy(client, &mut upstream).await
        }
    }
}

async fn copy<U>(client: &mut TcpStream, upstream: &mut U) -> Result<(u64, u64), String>
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    super::relay::relay(client, upstream)
        .await
        .map_err(|e| e.to_string())
}
