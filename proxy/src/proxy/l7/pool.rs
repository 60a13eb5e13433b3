//! Upstream HTTP connections shared by the client connections of a node proxy, as Envoy's and
//! linkerd's connection pools do: an HTTP/1.1 connection goes back to the pool once a response
//! has been read to its end and both sides allow keep-alive; an HTTP/2 connection is shared by
//! all requests to its destination while it lives.
//!
//! A connection is never returned after `Connection: close` (either side), an upgrade, a
//! response read only in part, or an error: such a connection is dropped and hyper closes it.
//! Policy and flows stay per request: the pool only decides which connection carries it.
//!
//! A pool may be the node's (shared by all client connections) or one client connection's
//! own: the outbound proxy gives tunnelled upstreams a pool per client connection, because the
//! far node records one flow per tunnel stream, named by the source that opened it, when the
//! stream ends; the tunnel's HTTP/2 connection to the peer node is shared in any case.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tracing::debug;

use super::{BoxIo, Connector, ProxyBody};

/// Idle HTTP/1.1 connections kept per destination; more are closed when they come back.
const MAX_IDLE_PER_KEY: usize = 16;
/// An idle connection older than this is closed rather than reused (servers close theirs after
/// tens of seconds; nginx after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which connections may carry a request: the same destination pod, reached the same way
/// (directly, or through the tunnel to the peer node at this address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub target: SocketAddrV4,
    pub tunnel: Option<SocketAddr>,
}

/// A node proxy's pooled upstream connections.
#[derive(Default)]
pub struct UpstreamPool {
    h1: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<HashMap<PoolKey, http2::SendRequest<Incoming>>>,
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// The upstream of one client connection: a pool, the key its requests share, and how to open
/// a new connection when the pool has none.
pub struct Upstream {
    pool: Arc<UpstreamPool>,
    key: PoolKey,
    connect: Connector,
}

/// Whether `headers` ask to close the connection after this message.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Whether a request leaves its connection reusable: HTTP/1.1 without `Connection: close` or an
/// upgrade.
fn request_keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !wants_close(headers)
        && !headers.contains_key(http::header::UPGRADE)
}

/// Whether a response leaves its connection reusable: HTTP/1.1, no `Connection: close`, not
/// `101 Switching Protocols`.
fn response_keeps_alive(version: Version, status: StatusCode, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !wants_close(headers)
        && status != StatusCode::SWITCHING_PROTOCOLS
}

#[cfg(test)]
fn reusable_parts(
    req_version: Version,
    req_headers: &HeaderMap,
    resp_version: Version,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> bool {
    request_keeps_alive(req_version, req_headers)
        && response_keeps_alive(resp_version, status, resp_headers)
}

// === impl UpstreamPool ===

impl UpstreamPool {
    /// An idle HTTP/1.1 connection to `key` that is still open, if any.
    fn checkout_h1(&self, key: &PoolKey) -> Option<http1::SendRequest<Incoming>> {
        let mut h1 = self.h1.lock();
        let idle = h1.get_mut(key)?;
        let found = loop {
            let Some(c) = idle.pop() else { break None };
            if !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                break Some(c.sender);
            }
        };
        if idle.is_empty() {
            h1.remove(key);
        }
        found
    }

    /// Returns a connection whose response was read to its end.
    fn checkin_h1(&self, key: PoolKey, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut h1 = self.h1.lock();
        let idle = h1.entry(key).or_default();
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE_PER_KEY {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Idle HTTP/1.1 connections held for `key`.
    pub fn idle(&self, key: &PoolKey) -> usize {
        self.h1.lock().get(key).map_or(0, Vec::len)
    }

    /// The live HTTP/2 connection to `key`, if any.
    fn h2(&self, key: &PoolKey) -> Option<http2::SendRequest<Incoming>> {
        let h2 = self.h2.lock();
        h2.get(key).filter(|s| !s.is_closed()).cloned()
    }
}

// === impl Upstream ===

impl Upstream {
    /// Requests to `key` through `pool`; `connect` opens a new connection when needed.
    pub fn new(pool: Arc<UpstreamPool>, key: PoolKey, connect: Connector) -> Self {
        Self { pool, key, connect }
    }

    /// Sends `req` on a pooled connection of its version, or on a new one.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, String> {
        if req.version() == Version::HTTP_2 {
            return self.send_h2(req).await;
        }
        let keep_alive = request_keeps_alive(req.version(), req.headers());
        let (sender, resp) = self.send_h1(req).await?;
        if !(keep_alive && response_keeps_alive(resp.version(), resp.status(), resp.headers())) {
            // Dropping the sender lets hyper close the connection once this exchange is over.
            return Ok(resp.map(BodyExt::boxed));
        }
        let checkin = Checkin {
            pool: self.pool.clone(),
            key: self.key.clone(),
            sender,
        };
        Ok(resp.map(|body| PoolBody::new(body, checkin).boxed()))
    }

    async fn send_h1(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<(http1::SendRequest<Incoming>, Response<Incoming>), String> {
        // A pooled connection the server closed meanwhile gives the request back unsent.
        while let Some(mut sender) = self.pool.checkout_h1(&self.key) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        debug!(error = %e.error(), "pooled upstream connection failed, retrying");
                        req = unsent;
                    }
                    None => return Err(e.error().to_string()),
                },
            }
        }
        let mut sender = self.connect_h1().await?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok((sender, resp))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Incoming>, String> {
        let io = TokioIo::new((self.connect)().await?);
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with upstream: {e}"))?;
        tokio::spawn(async move {
            match conn.without_shutdown().await {
                Ok(parts) => close_gracefully(parts.io.into_inner()).await,
                Err(e) => debug!(error = %e, "upstream HTTP/1.1 connection ended"),
            }
        });
        Ok(sender)
    }

    async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, String> {
        let mut sender = match self.pool.h2(&self.key) {
            Some(s) => s,
            None => {
                let io = TokioIo::new((self.connect)().await?);
                let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake with upstream: {e}"))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                self.pool.h2.lock().insert(self.key.clone(), s.clone());
                s
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.map(BodyExt::boxed))
    }
}

/// Closes our side of an upstream stream and waits (briefly) for the peer to close its side, so
/// a tunnel stream ends with both halves closed rather than reset under the peer's last write.
async fn close_gracefully(mut io: BoxIo) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 1024];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// What returns a connection to the pool.
struct Checkin {
    pool: Arc<UpstreamPool>,
    key: PoolKey,
    sender: http1::SendRequest<Incoming>,
}

/// A response body that returns its connection to the pool when read to its end; dropped
/// earlier, or ending in an error, it takes the connection with it.
struct PoolBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

impl PoolBody {
    fn new(inner: Incoming, checkin: Checkin) -> Self {
        let mut body = Self {
            inner,
            checkin: Some(checkin),
        };
        // An empty body is never polled: the exchange is complete already.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.checkin_h1(c.key, c.sender);
        }
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ok(
        req: &[(&str, &str)],
        version: Version,
        status: StatusCode,
        resp: &[(&str, &str)],
    ) -> bool {
        reusable_parts(
            Version::HTTP_11,
            &headers(req),
            version,
            status,
            &headers(resp),
        )
    }

    #[test]
    fn keep_alive_exchanges_are_reusable_close_and_upgrades_are_not() {
        let h11 = Version::HTTP_11;
        assert!(ok(&[], h11, StatusCode::OK, &[]));
        assert!(ok(
            &[],
            h11,
            StatusCode::NOT_FOUND,
            &[("connection", "keep-alive")]
        ));
        assert!(!ok(&[], h11, StatusCode::OK, &[("connection", "close")]));
        assert!(!ok(
            &[],
            h11,
            StatusCode::OK,
            &[("Connection", "x-foo, Close")]
        ));
        assert!(!ok(&[("connection", "close")], h11, StatusCode::OK, &[]));
        assert!(!ok(&[], Version::HTTP_10, StatusCode::OK, &[]));
        assert!(!ok(
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            h11,
            StatusCode::SWITCHING_PROTOCOLS,
            &[("connection", "upgrade")]
        ));
        assert!(!ok(&[], h11, StatusCode::SWITCHING_PROTOCOLS, &[]));
        let h10_request = reusable_parts(
            Version::HTTP_10,
            &HeaderMap::new(),
            h11,
            StatusCode::OK,
            &HeaderMap::new(),
        );
        assert!(!h10_request);
    }
}
