use std::net::{Ipv4Addr, SocketAddr};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

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
    setup_with(sink, PathOptions::default()).await
}

async fn setup_with(sink: Arc<Sink>, paths: PathOptions) -> SocketAddr {
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
    proxy_to(backend, sink, paths).await
}

/// An L7 proxy (judging with [`PublicOnly`]) in front of `backend`, its client connections
/// sharing one upstream pool; returns the proxy's address.
async fn proxy_to(backend: SocketAddr, sink: Arc<Sink>, paths: PathOptions) -> SocketAddr {
    let SocketAddr::V4(target) = backend else {
        panic!("IPv4 backend expected")
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = Arc::new(pool::UpstreamPool::default());
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let template =
                ConnRecord::start("node-1", "c1", Direction::Egress, FlowPeer::default()).finish();
            let connect: Connector = Box::new(move || {
                Box::pin(async move {
                    TcpStream::connect(backend)
                        .await
                        .map(|s| Box::new(s) as BoxIo)
                        .map_err(|e| e.to_string())
                })
            });
            let key = pool::PoolKey {
                target,
                tunnel: None,
            };
            tokio::spawn(serve(
                client,
                pool::Upstream::new(pool.clone(), key, connect),
                Arc::new(PublicOnly),
                sink.clone(),
                template,
                paths,
            ));
        }
    });
    addr
}

/// An HTTP/1.1 backend counting the connections it accepts; `/public/close` answers with
/// `Connection: close`, `/public/upgrade` with `101 Switching Protocols`.
async fn counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                match req.uri().path() {
                    "/public/close" => {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    "/public/upgrade" => {
                        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                        resp.headers_mut()
                            .insert(http::header::UPGRADE, "echo".parse().unwrap());
                    }
                    _ => {}
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades(),
            );
        }
    });
    (addr, accepted)
}

/// One request on a new client connection (kept alive); returns the status.
async fn one_request(proxy: SocketAddr, path: &str, headers: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: backend\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // Headers, then a body of Content-Length bytes (none after a 101).
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "{path}: closed after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if status == 101 || body.len() >= length {
            break status;
        }
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_across_client_connections() {
    use std::sync::atomic::Ordering;
    let (backend, accepted) = counting_backend().await;
    let sink = Arc::new(Sink::default());
    let proxy = proxy_to(backend, sink.clone(), PathOptions::default()).await;
    for _ in 0..5 {
        assert_eq!(one_request(proxy, "/public/a", "").await, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream for five clients"
    );
    // A denied request never touches the upstream; the next allowed one reuses it still.
    assert_eq!(one_request(proxy, "/private", "").await, 403);
    assert_eq!(one_request(proxy, "/public/b", "").await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Flows stay per request.
    assert_eq!(sink.0.lock().len(), 7);
}

#[tokio::test]
async fn close_and_upgrade_never_return_a_connection_to_the_pool() {
    use std::sync::atomic::Ordering;
    let (backend, accepted) = counting_backend().await;
    let proxy = proxy_to(backend, Arc::new(Sink::default()), PathOptions::default()).await;
    // The server's `Connection: close`: the next request needs a new connection.
    assert_eq!(one_request(proxy, "/public/close", "").await, 200);
    assert_eq!(one_request(proxy, "/public/a", "").await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // The client's `Connection: close` goes upstream and ends that connection too.
    assert_eq!(
        one_request(proxy, "/public/a", "Connection: close\r\n").await,
        200
    );
    assert_eq!(one_request(proxy, "/public/a", "").await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // An upgraded connection belongs to its client alone.
    assert_eq!(
        one_request(
            proxy,
            "/public/upgrade",
            "Connection: upgrade\r\nUpgrade: echo\r\n"
        )
        .await,
        101
    );
    assert_eq!(one_request(proxy, "/public/a", "").await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
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

// === path normalisation through the proxy ===

/// Raw request target → status and the path as judged (what the flow shows and, when allowed,
/// what the backend receives); a 400 flow shows the target as sent.
const PATH_CASES: &[(&str, u16, &str)] = &[
    ("/public/x", 200, "/public/x"),
    ("/public/./x", 200, "/public/x"),
    ("/x/../public/y", 200, "/public/y"),
    (
        "//public//a%41%3f?q=/../x&r=%2f",
        200,
        "/public/aA%3F?q=/../x&r=%2f",
    ),
    ("/public/../private", 403, "/private"),
    ("/public/%2e%2e/private", 403, "/private"),
    ("/public/%2E%2e/private", 403, "/private"),
    ("/public/..%2fprivate", 400, "/public/..%2fprivate"),
    ("/public/%5Cx", 400, "/public/%5Cx"),
    ("/public\\..\\private", 400, "/public\\..\\private"),
    ("/public/a%zz", 400, "/public/a%zz"),
    ("/public/a%4", 400, "/public/a%4"),
    ("/public/a%00", 400, "/public/a%00"),
];

/// The path the echo backend saw, for allowed cases.
fn forwarded(status: u16, judged: &str) -> String {
    if status == 200 {
        judged.to_string()
    } else {
        String::new()
    }
}

fn echoed_path(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["request"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn h1_get(addr: SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{target}: no status in {text}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, echoed_path(body.as_bytes()))
}

/// One flow per case, in order, with the judged path and the drop reason the status implies.
fn assert_flows_show_judged_paths(flows: &[FlowRecord]) {
    assert_eq!(flows.len(), PATH_CASES.len(), "{flows:#?}");
    for (f, (raw, status, judged)) in flows.iter().zip(PATH_CASES) {
        let http = f.http.as_ref().expect("an HTTP flow");
        let (verdict, reason) = match status {
            200 => (Verdict::Forwarded, None),
            400 => (Verdict::Dropped, Some(DropReason::HttpPathInvalid)),
            _ => (Verdict::Dropped, Some(DropReason::PolicyDenied)),
        };
        assert_eq!(
            (http.status, http.path.as_str(), f.verdict, f.drop_reason),
            (Some(*status), *judged, verdict, reason),
            "{raw}"
        );
        assert_eq!(f.decided_by, Some(DecidedBy::Proxy), "{raw}");
        // A path that was never judged has no deciding rule.
        assert_eq!(f.policies.is_empty(), *status == 400, "{raw}");
    }
}

#[tokio::test]
async fn paths_are_judged_and_forwarded_normalised_http1() {
    let sink = Arc::new(Sink::default());
    let addr = setup(sink.clone()).await;
    for (raw, status, judged) in PATH_CASES {
        let got = h1_get(addr, raw).await;
        assert_eq!(got, (*status, forwarded(*status, judged)), "{raw}");
    }
    assert_flows_show_judged_paths(&sink.0.lock());
}

#[tokio::test]
async fn paths_are_judged_and_forwarded_normalised_http2() {
    let sink = Arc::new(Sink::default());
    let addr = setup(sink.clone()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (raw, status, judged) in PATH_CASES {
        let req = Request::get(format!("http://backend{raw}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let got_status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            (got_status, echoed_path(&body)),
            (*status, forwarded(*status, judged)),
            "{raw}"
        );
    }
    let flows = sink.0.lock().clone();
    assert!(flows.iter().all(|f| f.protocol == "HTTP/2"));
    assert_flows_show_judged_paths(&flows);
}

#[tokio::test]
async fn escaped_slashes_can_be_decoded_or_kept() {
    let decode = setup_with(
        Arc::new(Sink::default()),
        PathOptions {
            escaped_slashes: crate::config::EscapedSlashes::Decode,
        },
    )
    .await;
    assert_eq!(h1_get(decode, "/public/..%2fprivate").await.0, 403);
    assert_eq!(
        h1_get(decode, "/public%2Fx").await,
        (200, "/public/x".to_string())
    );
    assert_eq!(
        h1_get(decode, "/private\\..\\public\\x").await,
        (200, "/public/x".to_string())
    );
    let keep = setup_with(
        Arc::new(Sink::default()),
        PathOptions {
            escaped_slashes: crate::config::EscapedSlashes::Keep,
        },
    )
    .await;
    assert_eq!(
        h1_get(keep, "/public/..%2fprivate").await,
        (200, "/public/..%2Fprivate".to_string())
    );
}
