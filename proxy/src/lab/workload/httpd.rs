//! The HTTP side of the echo workload (HTTP/1.1 and h2c): a JSON description of the pod and the
//! request, plus `/status/N`, `/bytes/N` and `/stream` for tests and demos.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpStream;
use tracing::debug;

use super::EchoConfig;

const BYTES_CHUNK: usize = 16 * 1024;
pub(super) const STREAM_DEFAULT_SECONDS: u64 = 10;
pub(super) const STREAM_DEFAULT_INTERVAL_MS: u64 = 1000;
pub(super) const STREAM_MIN_INTERVAL_MS: u64 = 10;

pub(super) async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    info: Arc<Identity>,
) {
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
// Unsync: hyper only needs Send, and the /stream timer future need not be Sync.
type EchoBody = UnsyncBoxBody<Bytes, Infallible>;

/// The pod fields of every JSON answer.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Identity {
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
pub(super) enum Route {
    Echo,
    Status(StatusCode),
    Bytes(u64),
    Stream { seconds: u64, interval: Duration },
    BadRequest(String),
}

pub(super) fn route(path: &str, query: Option<&str>) -> Route {
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
