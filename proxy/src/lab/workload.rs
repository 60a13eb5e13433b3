//! The built-in "echo" workload a lab pod runs when it has no container command.
//!
//! Every declared port answers on TCP and UDP. TCP connections that open with an HTTP/1.x request
//! line or the HTTP/2 prior-knowledge preface get a JSON description of the pod and the request
//! (so tests and demos see which pod answered and what the mesh did to the request); anything else
//! is echoed back byte for byte. UDP datagrams are echoed to their sender.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{Instrument, debug, debug_span};

/// How long to wait for enough of a connection's first bytes to tell HTTP from raw bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);
/// Enough for any sane request line; longer ones are judged on their start.
const SNIFF_LEN: usize = 512;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Longest method token accepted when sniffing (`OPTIONS`, `CONNECT`, WebDAV's `PROPPATCH`).
const MAX_METHOD_LEN: usize = 16;
/// Attempts to find an ephemeral port free for both TCP and UDP.
const EPHEMERAL_ATTEMPTS: usize = 32;
const UDP_BUF: usize = 64 * 1024;
const BYTES_CHUNK: usize = 16 * 1024;
const STREAM_DEFAULT_SECONDS: u64 = 10;
const STREAM_DEFAULT_INTERVAL_MS: u64 = 1000;
const STREAM_MIN_INTERVAL_MS: u64 = 10;

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

/// Peeks at the first bytes until they decide the protocol. The wait for the *first* byte is
/// unbounded: the echo server never speaks first, so a client waiting for a greeting is served
/// the same either way, and a late HTTP client (say, a pre-opened pooled connection) still gets
/// HTTP. Only an undecided prefix (e.g. `GET` and a pause) is bounded by [`SNIFF_TIMEOUT`], after
/// which it is echoed.
async fn sniff(stream: &TcpStream) -> Sniff {
    let mut buf = [0u8; SNIFF_LEN];
    let n = match stream.peek(&mut buf).await {
        Ok(n) => n,
        Err(_) => return Sniff::Raw,
    };
    let mut kind = classify(buf.get(..n).unwrap_or_default());
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    while kind == Sniff::NeedMore && tokio::time::Instant::now() < deadline {
        // peek returns at once while unread bytes sit in the queue, so poll gently.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return Sniff::Raw,
        };
        kind = classify(buf.get(..n).unwrap_or_default());
    }
    kind
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    Http,
    Raw,
    NeedMore,
}

/// Classifies a connection prefix: an HTTP/1.x request line (`METHOD SP target SP HTTP/1.d`) or
/// the h2c preface is HTTP. The version is required so that line protocols with uppercase
/// commands (`SET a b`) are still echoed.
fn classify(prefix: &[u8]) -> Sniff {
    if prefix.is_empty() {
        return Sniff::Raw;
    }
    if prefix.starts_with(H2_PREFACE) {
        return Sniff::Http;
    }
    let method_len = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > MAX_METHOD_LEN {
        return Sniff::Raw;
    }
    match prefix.get(method_len) {
        None => return Sniff::NeedMore,
        Some(b' ') => {}
        Some(_) => return Sniff::Raw,
    }
    let rest = prefix.get(method_len + 1..).unwrap_or_default();
    let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
        // No line end yet: a full buffer of `METHOD /...` is a long URL, not a chat line.
        if prefix.len() >= SNIFF_LEN && matches!(rest.first(), Some(b'/' | b'*')) {
            return Sniff::Http;
        }
        return if rest.contains(&b'\r') {
            Sniff::Raw
        } else {
            Sniff::NeedMore
        };
    };
    let line = rest.get(..eol).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
        return Sniff::Raw;
    };
    let version_ok = matches!(version, b"HTTP/1.0" | b"HTTP/1.1");
    if !target.is_empty() && version_ok {
        Sniff::Http
    } else {
        Sniff::Raw
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

async fn serve_http(stream: TcpStream, peer: SocketAddr, port: u16, info: Arc<Identity>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer makes hyper's 30 s header-read timeout apply, shedding clients that stall mid-head.
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let info = info.clone();
        async move { Ok::<_, Infallible>(respond(&info, port, peer, req).await) }
    });
    if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
        debug!(%error, "http connection ended with error");
    }
}

// === HTTP responses ===

// Unsync: hyper only needs Send, and the /stream timer future need not be Sync.
type EchoBody = UnsyncBoxBody<Bytes, Infallible>;

/// The pod fields of every JSON answer.
#[derive(Debug, Clone, Serialize)]
struct Identity {
    cluster: String,
    namespace: String,
    pod: String,
    node: String,
    ip: Ipv4Addr,
}

impl From<EchoConfig> for Identity {
    fn from(c: EchoConfig) -> Self {
        Self {
            cluster: c.cluster,
            namespace: c.namespace,
            pod: c.pod,
            node: c.node,
            ip: c.ip,
        }
    }
}

#[derive(Debug, Serialize)]
struct Echoed<'a> {
    #[serde(flatten)]
    pod: &'a Identity,
    port: u16,
    request: RequestInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RequestInfo {
    method: String,
    path: String,
    version: String,
    headers: BTreeMap<String, String>,
    remote: String,
    /// Request body length; the body is read (and dropped) so keep-alive survives uploads.
    body_bytes: u64,
}

async fn respond(
    info: &Identity,
    port: u16,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<EchoBody> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let (status, error) = match route(parts.uri.path(), parts.uri.query()) {
        Route::Echo => (StatusCode::OK, None),
        Route::Status(status) => (status, None),
        Route::BadRequest(why) => (StatusCode::BAD_REQUEST, Some(why)),
        Route::Bytes(n) => return bytes_response(n),
        Route::Stream { seconds, interval } => return stream_response(info, seconds, interval),
    };
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.to_string());
    let request = RequestInfo {
        method: parts.method.to_string(),
        path,
        version: format!("{:?}", parts.version),
        headers,
        remote: peer.to_string(),
        body_bytes,
    };
    json_response(
        status,
        &Echoed {
            pod: info,
            port,
            request,
            error,
        },
    )
}

/// What a request path asks of the echo server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Echo,
    Status(StatusCode),
    Bytes(u64),
    Stream { seconds: u64, interval: Duration },
    BadRequest(String),
}

fn route(path: &str, query: Option<&str>) -> Route {
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(c) => StatusCode::from_u16(c)
                .map_or_else(|e| Route::BadRequest(e.to_string()), Route::Status),
            None => Route::BadRequest(format!("status {code:?} is not a number in 200..=599")),
        };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) => Route::Bytes(n),
            Err(_) => Route::BadRequest(format!("byte count {n:?} is not a number")),
        };
    }
    if path == "/stream" {
        let mut seconds = STREAM_DEFAULT_SECONDS;
        let mut interval_ms = STREAM_DEFAULT_INTERVAL_MS;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "seconds" => &mut seconds,
                "interval_ms" => &mut interval_ms,
                _ => continue,
            };
            match value.parse() {
                Ok(v) => *slot = v,
                Err(_) => return Route::BadRequest(format!("{key}={value:?} is not a number")),
            }
        }
        let interval = Duration::from_millis(interval_ms.max(STREAM_MIN_INTERVAL_MS));
        return Route::Stream { seconds, interval };
    }
    Route::Echo
}

fn json_response<T: Serialize>(status: StatusCode, doc: &T) -> Response<EchoBody> {
    // 204 and 304 must not carry a body.
    let body = if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        Vec::new()
    } else {
        let mut body = serde_json::to_vec(doc).unwrap_or_default();
        body.push(b'\n');
        body
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn bytes_response(n: u64) -> Response<EchoBody> {
    let mut resp = Response::new(FillBody { remaining: n }.boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// One JSON line every `interval` from the start, then the body ends `seconds` after the start.
fn stream_response(info: &Identity, seconds: u64, interval: Duration) -> Response<EchoBody> {
    let pod = info.pod.clone();
    let total = Duration::from_secs(seconds);
    let start = tokio::time::Instant::now();
    let lines = futures::stream::unfold(0u32, move |seq| {
        let pod = pod.clone();
        async move {
            let offset = interval.checked_mul(seq).filter(|o| seq == 0 || *o < total);
            let Some(offset) = offset else {
                tokio::time::sleep_until(start + total).await;
                return None;
            };
            tokio::time::sleep_until(start + offset).await;
            let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let line = serde_json::json!({ "seq": seq, "pod": pod, "elapsed_ms": elapsed_ms });
            let mut buf = line.to_string().into_bytes();
            buf.push(b'\n');
            Some((Ok(Frame::data(Bytes::from(buf))), seq.checked_add(1)?))
        }
    });
    let mut resp = Response::new(StreamBody::new(lines).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

static FILL: [u8; BYTES_CHUNK] = [b'x'; BYTES_CHUNK];

/// `remaining` bytes of `x`, generated in chunks so `/bytes/N` never holds N bytes in memory.
struct FillBody {
    remaining: u64,
}

impl Body for FillBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining).map_or(BYTES_CHUNK, |r| r.min(BYTES_CHUNK));
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL).slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinSet;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn cfg(ports: Vec<u16>) -> EchoConfig {
        EchoConfig {
            cluster: "lab".into(),
            namespace: "demo".into(),
            pod: "echo-7f9c".into(),
            node: "node-1".into(),
            ip: Ipv4Addr::new(10, 1, 0, 7),
            ports,
        }
    }

    /// Starts an echo workload on one ephemeral port; it stops with the test's runtime.
    async fn start() -> u16 {
        let bound = bind_echo(cfg(vec![0])).await.expect("bind echo");
        let addrs = bound.local_addrs();
        tokio::spawn(bound.serve());
        addrs.first().expect("one address").port()
    }

    async fn curl(args: &[&str]) -> String {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .await
            .expect("run curl (Debian package curl)");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    async fn connect(port: u16) -> TcpStream {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("connect")
    }

    /// Reads until `want` bytes arrived or EOF.
    async fn read_n(stream: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
                .await
                .expect("echo in time")
                .expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn classify_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n"), Sniff::Http);
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\n"), Sniff::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Sniff::Http);
        assert_eq!(classify(b"GET"), Sniff::NeedMore);
        assert_eq!(classify(b"GET /partial"), Sniff::NeedMore);
        assert_eq!(classify(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(classify(b"hello\n"), Sniff::Raw);
        assert_eq!(classify(b"SET a b\r\n"), Sniff::Raw);
        assert_eq!(classify(b"PING\r\n"), Sniff::Raw);
        assert_eq!(classify(b"GET / HTTP/3.0\r\n"), Sniff::Raw);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Sniff::Raw);
        assert_eq!(classify(b""), Sniff::Raw);
        let mut long = b"GET /".to_vec();
        long.resize(SNIFF_LEN, b'a');
        assert_eq!(classify(&long), Sniff::Http);
    }

    #[test]
    fn routes() {
        assert_eq!(route("/", None), Route::Echo);
        assert_eq!(
            route("/status/503", None),
            Route::Status(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(matches!(route("/status/99", None), Route::BadRequest(_)));
        assert!(matches!(route("/status/x", None), Route::BadRequest(_)));
        assert_eq!(route("/bytes/42", None), Route::Bytes(42));
        assert!(matches!(route("/bytes/-1", None), Route::BadRequest(_)));
        assert_eq!(
            route("/stream", Some("seconds=2&interval_ms=1&x=y")),
            Route::Stream {
                seconds: 2,
                interval: Duration::from_millis(STREAM_MIN_INTERVAL_MS)
            }
        );
        assert_eq!(
            route("/stream", None),
            Route::Stream {
                seconds: STREAM_DEFAULT_SECONDS,
                interval: Duration::from_millis(STREAM_DEFAULT_INTERVAL_MS)
            }
        );
        assert!(matches!(
            route("/stream", Some("seconds=abc")),
            Route::BadRequest(_)
        ));
    }

    #[tokio::test]
    async fn bind_error_names_the_port() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = bind_echo(cfg(vec![port])).await.expect_err("port is taken");
        assert!(
            matches!(err, WorkloadError::Bind { port: p, .. } if p == port),
            "{err:?}"
        );
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(matches!(
            bind_echo(cfg(vec![])).await,
            Err(WorkloadError::NoPorts { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn curl_gets_json_naming_the_pod() {
        let port = start().await;
        let out = curl(&[
            "-H",
            "x-test: 1",
            &format!("http://127.0.0.1:{port}/hello?a=b"),
        ])
        .await;
        assert!(out.ends_with('\n'));
        let doc: serde_json::Value = serde_json::from_str(&out).expect("json body");
        assert_eq!(doc["pod"], "echo-7f9c");
        assert_eq!(doc["namespace"], "demo");
        assert_eq!(doc["cluster"], "lab");
        assert_eq!(doc["node"], "node-1");
        assert_eq!(doc["ip"], "10.1.0.7");
        assert_eq!(doc["port"], port);
        assert_eq!(doc["request"]["method"], "GET");
        assert_eq!(doc["request"]["path"], "/hello?a=b");
        assert_eq!(doc["request"]["version"], "HTTP/1.1");
        assert_eq!(doc["request"]["headers"]["x-test"], "1");
        let remote = doc["request"]["remote"].as_str().expect("remote");
        assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_reuses_one_connection() {
        let port = start().await;
        let url = format!("http://127.0.0.1:{port}/");
        let out = curl(&[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} ",
            &url,
            &url,
        ])
        .await;
        assert_eq!(out, "1 0 ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_both_answered() {
        let port = start().await;
        let mut s = connect(port).await;
        let req = "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out))
            .await
            .expect("responses in time")
            .expect("read");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        let one = out.find("\"/one\"").expect("first answer");
        let two = out.find("\"/two\"").expect("second answer");
        assert!(one < two);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn h2_prior_knowledge() {
        let port = start().await;
        let url = format!("http://127.0.0.1:{port}/h2");
        let out = curl(&["--http2-prior-knowledge", &url]).await;
        let doc: serde_json::Value = serde_json::from_str(&out).expect("json body");
        assert_eq!(doc["request"]["version"], "HTTP/2.0");
        assert_eq!(doc["request"]["path"], "/h2");
        assert_eq!(doc["pod"], "echo-7f9c");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_path_sets_the_code() {
        let port = start().await;
        let url = format!("http://127.0.0.1:{port}/status/503");
        let out = curl(&["-w", "\n%{http_code}", &url]).await;
        let (body, code) = out.rsplit_once('\n').expect("code line");
        assert_eq!(code, "503");
        let doc: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(doc["pod"], "echo-7f9c");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_path_sends_n_bytes() {
        let port = start().await;
        let url = format!("http://127.0.0.1:{port}/bytes/100000");
        let out = curl(&["-w", "\n%{content_type} %{size_download}", &url]).await;
        let (body, meta) = out.rsplit_once('\n').expect("meta line");
        assert_eq!(body.len(), 100_000);
        assert_eq!(meta, "application/octet-stream 100000");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_path_sends_one_line_per_interval() {
        let port = start().await;
        let url = format!("http://127.0.0.1:{port}/stream?seconds=1&interval_ms=200");
        let started = std::time::Instant::now();
        let out = curl(&[&url]).await;
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(lines[4]["seq"], 4);
        assert_eq!(lines[0]["pod"], "echo-7f9c");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_bytes_are_echoed() {
        let port = start().await;
        let mut s = connect(port).await;
        let payload = b"hello strait\n\x00\x01\xff binary";
        s.write_all(payload).await.expect("write");
        assert_eq!(read_n(&mut s, payload.len()).await, payload);
        s.shutdown().await.expect("shutdown");
        assert!(read_n(&mut s, 1).await.is_empty(), "EOF after half-close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_that_waits_then_sends_gets_echo() {
        let port = start().await;
        let mut s = connect(port).await;
        tokio::time::sleep(SNIFF_TIMEOUT * 2).await;
        s.write_all(b"ping\n").await.expect("write");
        assert_eq!(read_n(&mut s, 5).await, b"ping\n");
        // An undecided prefix followed by silence is echoed after the sniff timeout.
        let mut s = connect(port).await;
        s.write_all(b"GET").await.expect("write");
        assert_eq!(read_n(&mut s, 3).await, b"GET");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn udp_datagrams_are_echoed() {
        let port = start().await;
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        sock.connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("connect");
        for msg in [&b"one"[..], b"two", b"\x00\x01\x02"] {
            sock.send(msg).await.expect("send");
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(TIMEOUT, sock.recv(&mut buf))
                .await
                .expect("echo in time")
                .expect("recv");
            assert_eq!(&buf[..n], msg);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_connections() {
        let port = start().await;
        let mut clients = JoinSet::new();
        for i in 0..200u32 {
            clients.spawn(async move {
                let mut s = connect(port).await;
                if i % 2 == 0 {
                    let msg = format!("client {i}\n");
                    s.write_all(msg.as_bytes()).await.expect("write");
                    assert_eq!(read_n(&mut s, msg.len()).await, msg.as_bytes());
                } else {
                    let req = "GET /many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                    s.write_all(req.as_bytes()).await.expect("write");
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.expect("read");
                    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
    }
}
