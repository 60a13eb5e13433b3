//! HTTP-aware forwarding for connections whose port carries L7 rules: every request is judged,
//! denied ones get `403 Access denied` (as Cilium answers) and the connection stays usable.
//!
//! The client side speaks HTTP/1.1 (keep-alive, pipelining) or HTTP/2 (prior knowledge); each
//! allowed request goes upstream in the same version, on a connection of the node's
//! [`pool::UpstreamPool`] shared with other client connections to the same destination.
//!
//! Each request path is normalised ([`path`]) before it is judged, and the normalised path is
//! what goes upstream; a path that cannot be normalised gets `400 Bad Request`.

pub mod path;
pub mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::flows::{DecidedBy, DropReason, FlowRecord, HttpFlow, Verdict};
use path::{PathError, PathOptions};

/// Body Cilium's proxy sends with a policy denial.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// Any byte stream the upstream side can run over (a TCP stream or a tunnel stream).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed upstream stream.
pub type BoxIo = Box<dyn Io>;
/// Opens a new upstream stream when the pool has no connection for a request.
pub type Connector =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<BoxIo, String>> + Send>> + Send + Sync>;
/// Response body: the upstream's or our own.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub use crate::model::http::RequestInfo;

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub allowed: bool,
    /// Deciding rules, for the flow record.
    pub rules: Vec<String>,
}

/// Judges requests of one connection against the policy in force when each request arrives.
pub trait HttpJudge: Send + Sync {
    /// Whether this request may pass.
    fn judge(&self, req: &RequestInfo) -> Judgement;
}

/// Where per-request flow records go.
pub trait FlowSink: Send + Sync {
    /// Records one finished request.
    fn record(&self, flow: FlowRecord);
}

/// The request as rules see it, with `path` (and query) already normalised.
fn request_info(req: &Request<Incoming>, path: String) -> RequestInfo {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    RequestInfo {
        method: req.method().to_string(),
        path,
        host,
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
    }
}

fn denied() -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(ACCESS_DENIED.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Normalises the request target in place; returns it as judged. A target without a path
/// (authority form, as in `CONNECT`) is judged as `/` and forwarded unchanged.
fn normalize_target(
    req: &mut Request<Incoming>,
    options: PathOptions,
) -> Result<String, PathError> {
    let Some(raw) = req.uri().path_and_query() else {
        return Ok("/".to_string());
    };
    let normalized = path::normalize_path(raw.as_str(), options)?;
    if normalized != raw.as_str() {
        // Never forward anything but the judged path: if it cannot be written, refuse.
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(normalized.parse().map_err(|_| PathError::Unforwardable)?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::Unforwardable)?;
    }
    Ok(normalized)
}

fn bad_request(error: &PathError) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("Bad Request: {error}\r\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn bad_gateway() -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(b"upstream connect error\r\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

/// Serves HTTP on `client` until it closes, judging each request with its path normalised by
/// `paths`. `template` is the connection's flow record; each request gets a copy with its HTTP
/// details.
pub async fn serve<C>(
    client: C,
    upstream: pool::Upstream,
    judge: Arc<dyn HttpJudge>,
    sink: Arc<dyn FlowSink>,
    template: FlowRecord,
    paths: PathOptions,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstream = Arc::new(upstream);
    let template = Arc::new(template);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let upstream = upstream.clone();
        let judge = judge.clone();
        let sink = sink.clone();
        let template = template.clone();
        async move {
            let started = Instant::now();
            let mut flow = (*template).clone();
            flow.time = std::time::SystemTime::now();
            flow.protocol = match req.version() {
                Version::HTTP_2 => "HTTP/2".into(),
                _ => "HTTP/1.1".into(),
            };
            flow.decided_by = Some(DecidedBy::Proxy);
            let judged = normalize_target(&mut req, paths);
            // A path that cannot be judged is shown as sent.
            let path = match &judged {
                Ok(path) => path.clone(),
                Err(_) => req
                    .uri()
                    .path_and_query()
                    .map_or_else(String::new, |p| p.to_string()),
            };
            let info = request_info(&req, path);
            let mut http_flow = HttpFlow {
                method: info.method.clone(),
                path: info.path.clone(),
                host: info.host.clone(),
                status: None,
                latency_us: 0,
            };
            let verdict = match &judged {
                Ok(_) => judge.judge(&info),
                Err(_) => Judgement {
                    allowed: false,
                    rules: Vec::new(),
                },
            };
            flow.policies = verdict.rules.clone();
            let response = if let Err(e) = &judged {
                debug!(error = %e, path = %info.path, "request path refused");
                flow.verdict = Verdict::Dropped;
                flow.drop_reason = Some(DropReason::HttpPathInvalid);
                bad_request(e)
            } else if !verdict.allowed {
                flow.verdict = Verdict::Dropped;
                flow.drop_reason = Some(DropReason::PolicyDenied);
                denied()
            } else {
                if req.version() == Version::HTTP_2 && req.uri().authority().is_none() {
                    // An HTTP/2 upstream needs an absolute URI; rebuild it from the Host header.
                    let authority = info.host.clone().unwrap_or_else(|| "localhost".into());
                    if let Ok(uri) = format!("http://{authority}{}", info.path).parse() {
                        *req.uri_mut() = uri;
                    }
                }
                match upstream.send(req).await {
                    Ok(resp) => {
                        flow.verdict = Verdict::Forwarded;
                        resp
                    }
                    Err(e) => {
                        flow.verdict = Verdict::Error;
                        flow.error = Some(e);
                        bad_gateway()
                    }
                }
            };
            http_flow.status = Some(response.status().as_u16());
            http_flow.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            flow.duration_us = http_flow.latency_us;
            flow.http = Some(http_flow);
            sink.record(flow);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let counted = Counted {
        inner: client,
        read: 0,
        written: 0,
    };
    // Per-request flows carry no byte counts; the wrapper counts the connection's into metrics.
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(counted), svc)
        .await
        .map_err(|e| e.to_string())
}

/// Counts a client stream's bytes into the proxy byte metrics as they pass.
struct Counted<C> {
    inner: C,
    read: u64,
    written: u64,
}

impl<C> Drop for Counted<C> {
    fn drop(&mut self) {
        let names = crate::metrics::names::BYTES;
        metrics::counter!(names, "direction" => "sent").increment(self.read);
        metrics::counter!(names, "direction" => "received").increment(self.written);
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Counted<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counted<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
