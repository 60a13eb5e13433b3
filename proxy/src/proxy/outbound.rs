//! The outbound listener: every pod TCP connect lands here, redirected by `cgroup/connect4`.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, warn};

use super::Proxy;
use super::conn::{ConnRecord, peer};
use super::tables::Route;
use super::tunnel::TunnelSource;
use crate::flows::Direction;

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
    let _ = client.set_nodelay(true);
    let tables = proxy.tables();
    let SocketAddr::V4(client_v4) = client_addr else {
        reset(client);
        return;
    };
    let src_ep = tables.endpoint(*client_v4.ip()).cloned();
    let mut rec = ConnRecord::start(
        &proxy.node,
        &proxy.cluster,
        Direction::Egress,
        peer(&tables.cluster.name, src_ep.as_deref(), client_addr),
    );
    let Some(original) = proxy.original_dst.take(client_v4) else {
        // Not redirected by our programs (someone dialed the proxy port directly).
        rec.error("no original destination recorded for this connection");
        proxy.record(rec);
        reset(client);
        return;
    };
    let decision = tables.decide(original);
    let (target, endpoint, via) = match &decision.route {
        Route::Local { target, endpoint } => (*target, endpoint.clone(), None),
        Route::Remote {
            target,
            endpoint,
            node,
            tunnel,
        } => (*target, endpoint.clone(), Some((node.clone(), *tunnel))),
        Route::External { target } => (*target, None, None),
        Route::NoBackend => {
            rec.destination(
                original.to_string(),
                decision.service.clone(),
                peer(&tables.cluster.name, None, original.into()),
            );
            rec.dropped("NO_SERVICE_BACKEND");
            proxy.record(rec);
            reset(client);
            return;
        }
    };
    rec.destination(
        original.to_string(),
        decision.service.clone(),
        peer(&tables.cluster.name, endpoint.as_deref(), target.into()),
    );
    let identity = rec.record.source.identity;
    drop(tables);
    debug!(%original, %target, "routing");
    let result = match via {
        None => forward_direct(&mut client, target).await,
        Some((node, tunnel)) => {
            rec.record.tunnel_peer = Some(node);
            let source = TunnelSource {
                identity,
                addr: client_addr,
                cluster: proxy.cluster.clone(),
                original_dst: original.to_string(),
            };
            match proxy.pool.open(tunnel, target, &source).await {
                Ok(mut upstream) => copy(&mut client, &mut upstream).await,
                Err(e) => Err(crate::errors::chain(&e)),
            }
        }
    };
    match result {
        Ok((sent, received)) => rec.bytes(sent, received),
        Err(e) => {
            rec.error(e);
            proxy.record(rec);
            reset(client);
            return;
        }
    }
    proxy.record(rec);
    let _ = client.shutdown().await;
}

async fn forward_direct(
    client: &mut TcpStream,
    target: SocketAddrV4,
) -> Result<(u64, u64), String> {
    let mut upstream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = upstream.set_nodelay(true);
    copy(client, &mut upstream).await
}

async fn copy<U>(client: &mut TcpStream, upstream: &mut U) -> Result<(u64, u64), String>
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(client, upstream)
        .await
        .map_err(|e| e.to_string())
}
