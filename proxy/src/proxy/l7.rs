//! HTTP-aware forwarding for connections whose port carries L7 rules: every request is judged,
//! denied ones get `403 Access denied` (as Cilium answers) and the connection stays usable.
//!
//! The client side speaks HTTP/1.1 (keep-alive, pipelining) or HTTP/2 (prior knowledge); the
//! upstream connection, opened on the first allowed request, speaks the same version.

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
use tokio::net::TcpStream;
use tracing::debug;

use crate::flows::{DecidedBy, DropReason, FlowRecord, HttpFlow, Verdict};

/// Body Cilium's proxy sends with a policy denial.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// Any byte stream the upstream side can run over (a TCP stream or a tunnel stream).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed upstream stream.
pub type BoxIo = Box<dyn Io>;
/// Opens the upstream stream when the first request is allowed.
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

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

struct Upstream {
    connect: Connector,
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Upstream {
    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
        let mut guard = self.sender.lock().await;
        if guard.is_none() {
            let io = TokioIo::new((self.connect)().await?);
            let sender = if req.version() == Version::HTTP_2 {
                let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake with upstream: {e}"))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                Sender::H2(s)
            } else {
                let (s, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake with upstream: {e}"))?;
                tokio::spawn(async move {
                    match conn.without_shutdown().await {
                        Ok(parts) => close_gracefully(parts.io.into_inner()).await,
                        Err(e) => debug!(error = %e, "upstream HTTP/1.1 connection ended"),
                    }
                });
                Sender::H1(s)
            };
            *guard = Some(sender);
        }
        match guard.as_mut() {
            Some(Sender::H2(s)) => {
                let mut s = s.clone();
                // HTTP/2 multiplexes: release the lock before waiting for the answer.
                drop(guard);
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            Some(Sender::H1(s)) => {
                // HTTP/1.1 carries one request at a time; the lock keeps them in order.
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            None => Err("no upstream connection".into()),
        }
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
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

fn request_info(req: &Request<Incoming>) -> RequestInfo {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    RequestInfo {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
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

fn bad_gateway() -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(b"upstream connect error\r\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

/// Serves HTTP on `client` until it closes, judging each request. `template` is the connection's
/// flow record; each request gets a copy with its HTTP details.
pub async fn serve(
    client: TcpStream,
    connect: Connector,
    judge: Arc<dyn HttpJudge>,
    sink: Arc<dyn FlowSink>,
    template: FlowRecord,
) -> Result<(), String> {
    let upstream = Arc::new(Upstream {
        connect,
        sender: tokio::sync::Mutex::new(None),
    });
    let template = Arc::new(template);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let upstream = upstream.clone();
        let judge = judge.clone();
        let sink = sink.clone();
        let template = template.clone();
        async move {
            let started = Instant::now();
            let info = request_info(&req);
            let verdict = judge.judge(&info);
            let mut flow = (*template).clone();
            flow.time = std::time::SystemTime::now();
            flow.protocol = match req.version() {
                Version::HTTP_2 => "HTTP/2".into(),
                _ => "HTTP/1.1".into(),
            };
            flow.decided_by = Some(DecidedBy::Proxy);
            flow.policies = verdict.rules.clone();
            let mut http_flow = HttpFlow {
                method: info.method.clone(),
                path: info.path.clone(),
                host: info.host.clone(),
                status: None,
                latency_us: 0,
            };
            let response = if !verdict.allowed {
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
                        resp.map(|b| b.boxed())
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
struct Counted {
    inner: TcpStream,
    read: u64,
    written: u64,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let names = crate::metrics::names::BYTES;
        metrics::counter!(names, "direction" => "sent").increment(self.read);
        metrics::counter!(names, "direction" => "received").increment(self.written);
    }
}

impl AsyncRead for Counted {
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

impl AsyncWrite for Counted {
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
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use parking_lot::Mutex;
    use tokio::net::TcpListener;

    use super::*;
    use crate::flows::{Direction, FlowPeer};
    use crate::lab::workload::{EchoConfig, bind_echo};
    use crate::proxy::conn::ConnRecord;

    struct PublicOnly;
    impl HttpJudge for PublicOnly {
        fn judge(&self, req: &RequestInfo) -> Judgement {
            Judgement {
                allowed: req.method == "GET" && req.path.starts_with("/public"),
                rules: vec!["demo/l7: spec.ingress[0].toPorts[0].rules.http[0]".into()],
            }
        }
    }

    #[derive(Default)]
    struct Sink(Mutex<Vec<FlowRecord>>);
    impl FlowSink for Sink {
        fn record(&self, flow: FlowRecord) {
            self.0.lock().push(flow);
        }
    }

    /// An echo backend and an L7 proxy in front of it; returns the proxy's address.
    async fn setup(sink: Arc<Sink>) -> SocketAddr {
        let echo = bind_echo(EchoConfig {
            cluster: "c1".into(),
            namespace: "demo".into(),
            pod: "backend".into(),
            node: "node-1".into(),
            ip: Ipv4Addr::LOCALHOST,
            ports: vec![0],
        })
        .await
        .unwrap();
        let backend = echo
            .local_addrs()
            .into_iter()
            .find(|a| a.is_ipv4())
            .unwrap();
        let backend = SocketAddr::from((Ipv4Addr::LOCALHOST, backend.port()));
        tokio::spawn(echo.serve());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let template =
                    ConnRecord::start("node-1", "c1", Direction::Egress, FlowPeer::default())
                        .finish();
                let connect: Connector = Box::new(move || {
                    Box::pin(async move {
                        TcpStream::connect(backend)
                            .await
                            .map(|s| Box::new(s) as BoxIo)
                            .map_err(|e| e.to_string())
                    })
                });
                tokio::spawn(serve(
                    client,
                    connect,
                    Arc::new(PublicOnly),
                    sink.clone(),
                    template,
                ));
            }
        });
        addr
    }

    async fn curl(args: Vec<String>) -> String {
        let out = tokio::process::Command::new("curl")
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test]
    async fn denied_requests_get_403_and_the_connection_stays_usable_http1() {
        let sink = Arc::new(Sink::default());
        let addr = setup(sink.clone()).await;
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "-w".into(),
            "\n[%{url_effective} %{http_code} conns=%{num_connects}]\n".into(),
        ];
        for path in ["/public/x", "/private", "/public/y"] {
            args.push(format!("http://{addr}{path}"));
        }
        let out = curl(args).await;
        assert!(
            out.contains(&format!("[http://{addr}/public/x 200 conns=1]")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "Access denied\r\n\n[http://{addr}/private 403 conns=0]"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("[http://{addr}/public/y 200 conns=0]")),
            "same connection: {out}"
        );
        assert!(out.contains("\"pod\":\"backend\""), "{out}");
        let flows = sink.0.lock().clone();
        assert_eq!(flows.len(), 3);
        let denied: Vec<_> = flows
            .iter()
            .filter(|f| f.verdict == Verdict::Dropped)
            .collect();
        assert_eq!(denied.len(), 1);
        let http = denied[0].http.as_ref().unwrap();
        assert_eq!(
            (http.method.as_str(), http.path.as_str(), http.status),
            ("GET", "/private", Some(403))
        );
        assert_eq!(denied[0].drop_reason, Some(DropReason::PolicyDenied));
        assert_eq!(denied[0].decided_by, Some(DecidedBy::Proxy));
        assert_eq!(denied[0].policies.len(), 1);
        assert!(flows.iter().all(|f| f.protocol == "HTTP/1.1"));
    }

    // curl 7.88 cannot reuse an h2c prior-knowledge connection, so HTTP/2 uses hyper's client.
    #[tokio::test]
    async fn denied_requests_get_403_on_one_http2_connection() {
        let sink = Arc::new(Sink::default());
        let addr = setup(sink.clone()).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for (path, want) in [("/public/x", 200), ("/private", 403), ("/public/y", 200)] {
            let req = Request::get(format!("http://backend{path}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), want, "{path}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if want == 403 {
                assert_eq!(&body[..], ACCESS_DENIED.as_bytes());
            } else {
                assert!(String::from_utf8_lossy(&body).contains("\"version\":\"HTTP/2.0\""));
            }
        }
        let flows = sink.0.lock().clone();
        assert_eq!(flows.len(), 3);
        assert!(flows.iter().all(|f| f.protocol == "HTTP/2"));
        assert_eq!(
            flows
                .iter()
                .filter(|f| f.verdict == Verdict::Dropped)
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_judged_one_by_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = setup(Arc::new(Sink::default())).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /private HTTP/1.1\r\nHost: b\r\n\r\nGET /public/1 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let first = buf.find("403 Forbidden").unwrap();
        let second = buf.find("200 OK").unwrap();
        assert!(first < second, "{buf}");
    }
}
