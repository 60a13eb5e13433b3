use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::*;
use crate::admin::client::{self, AgentEndpoint, ClientError};
use crate::flows::test_flow as flow;
use crate::flows::{Criterion, FlowEvent, FlowFilter, FlowRecord, Verdict};

/// A directory removed on drop, short enough for a Unix socket path.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strait-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("admin.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn state(ring: &Arc<FlowRing>) -> AdminState {
    let r = ring.clone();
    AdminState {
        flows: ring.clone(),
        status: Arc::new(move || serde_json::json!({ "node": "node-1", "flows": r.stats() })),
        metrics: Arc::new(|| "strait_build_info{version=\"test\"} 1\n".to_string()),
    }
}

fn dropped(secs: u64, port: u16) -> FlowRecord {
    let mut f = flow(secs, port);
    f.verdict = Verdict::Dropped;
    f
}

async fn body_text(rsp: http::Response<routes::Body>) -> String {
    let bytes = rsp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).expect("request")
}

fn ports(events: &[FlowEvent]) -> Vec<u16> {
    events
        .iter()
        .map(|e| match e {
            FlowEvent::Flow(f) => f.source.port,
            FlowEvent::Lost(n) => panic!("unexpected loss of {n}"),
        })
        .collect()
}

// === routes, without sockets ===

#[tokio::test]
async fn routes_answer_without_io() {
    let ring = Arc::new(FlowRing::new(10));
    let st = state(&ring);
    let rsp = routes::route(&get("/healthz"), &st, Access::Local);
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(body_text(rsp).await, "ok");

    let rsp = routes::route(&get("/status"), &st, Access::Local);
    assert_eq!(
        rsp.headers()[http::header::CONTENT_TYPE],
        "application/json"
    );
    let v: serde_json::Value = serde_json::from_str(&body_text(rsp).await).expect("json");
    assert_eq!(v["node"], "node-1");

    let rsp = routes::route(&get("/nope"), &st, Access::Local);
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);

    let post = Request::builder()
        .method(Method::POST)
        .uri("/flows")
        .body(())
        .expect("request");
    let rsp = routes::route(&post, &st, Access::Local);
    assert_eq!(rsp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(rsp.headers()[http::header::ALLOW], "GET");

    let rsp = routes::route(&get("/flows?last=many"), &st, Access::Local);
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_text(rsp).await, "`last=many` is not a number\n");
}

#[tokio::test]
async fn public_access_serves_health_and_metrics_only() {
    let ring = Arc::new(FlowRing::new(10));
    ring.record(flow(1, 1));
    let st = state(&ring);
    for access in [Access::Local, Access::Authenticated, Access::Public] {
        let rsp = routes::route(&get("/healthz"), &st, access);
        assert_eq!(rsp.status(), StatusCode::OK, "{access:?}");
        let rsp = routes::route(&get("/metrics"), &st, access);
        assert_eq!(rsp.status(), StatusCode::OK, "{access:?}");
        assert!(body_text(rsp).await.contains("strait_build_info"));
    }
    for access in [Access::Local, Access::Authenticated] {
        for path in ["/flows", "/status"] {
            let rsp = routes::route(&get(path), &st, access);
            assert_eq!(rsp.status(), StatusCode::OK, "{access:?} {path}");
        }
    }
    // Unknown paths too: a route added later is closed to the public until listed.
    for path in [
        "/flows",
        "/flows?last=1",
        "/status",
        "/nope",
        "/",
        "/metrics/",
        "//flows",
    ] {
        let rsp = routes::route(&get(path), &st, Access::Public);
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN, "{path}");
        let body = body_text(rsp).await;
        assert!(
            body.contains("Unix socket or a client certificate"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn flows_filters_before_taking_the_last() {
    let ring = Arc::new(FlowRing::new(10));
    ring.record(dropped(1, 1));
    ring.record(flow(2, 2));
    ring.record(dropped(3, 3));
    ring.record(flow(4, 4));
    let st = state(&ring);
    let rsp = routes::route(&get("/flows?verdict=DROPPED&last=5"), &st, Access::Local);
    assert_eq!(rsp.headers()[http::header::CONTENT_TYPE], routes::NDJSON);
    let body = body_text(rsp).await;
    let events: Vec<FlowEvent> = body
        .lines()
        .map(|l| client::decode_line(l.as_bytes()).expect("line"))
        .collect();
    assert_eq!(ports(&events), [1, 3]);

    let body = body_text(routes::route(&get("/flows?last=3"), &st, Access::Local)).await;
    assert_eq!(body.lines().count(), 3);
    let body = body_text(routes::route(&get("/flows"), &st, Access::Local)).await;
    assert_eq!(body.lines().count(), 4);
}

#[tokio::test]
async fn lagging_follower_gets_a_lost_line() {
    let ring = FlowRing::with_feed_capacity(10, 2);
    let (_, feed) = ring.follow(Some(0));
    for p in 1..=5 {
        ring.record(flow(p.into(), p));
    }
    let filter = FlowFilter::new().with(Criterion::Verdict(Verdict::Forwarded));
    let mut lines = Box::pin(routes::live_lines(feed, filter));
    assert_eq!(lines.next().await, Some(Bytes::from("{\"lost\":3}\n")));
    let line = lines.next().await.expect("flow 4");
    assert_eq!(
        client::decode_line(&line).expect("decodes"),
        FlowEvent::Flow(Arc::new(flow(4, 4)))
    );
}

// === over a real socket ===

fn agent(sock: PathBuf) -> AgentEndpoint {
    AgentEndpoint {
        cluster: "c1".into(),
        node: "node-1".into(),
        socket: sock,
    }
}

async fn next_within(s: &mut client::FlowStream) -> Option<Result<FlowEvent, ClientError>> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("flow within 5s")
}

#[tokio::test]
async fn serves_everything_on_unix_and_health_and_metrics_on_tcp() {
    let dir = TempDir::new("serve");
    let ring = Arc::new(FlowRing::new(100));
    ring.record(flow(1, 1));
    ring.record(dropped(2, 2));
    ring.record(flow(3, 3));
    let bound = Admin::bind(&dir.sock(), Some("127.0.0.1:0".parse().expect("addr"))).expect("bind");
    let tcp = bound.tcp_addr().expect("tcp bound");
    let server = bound.spawn(state(&ring));
    let agent = agent(dir.sock());

    // One-shot: the whole backlog, then the stream ends.
    let q = FlowsQuery {
        last: Some(2),
        ..FlowsQuery::default()
    };
    let got: Vec<FlowEvent> = client::flows(&agent, &q)
        .await
        .expect("flows")
        .map(|r| r.expect("event"))
        .collect()
        .await;
    assert_eq!(ports(&got), [2, 3]);

    // Server-side filter.
    let q = FlowsQuery {
        filter: FlowFilter::new().with(Criterion::Verdict(Verdict::Dropped)),
        ..FlowsQuery::default()
    };
    let got: Vec<FlowEvent> = client::flows(&agent, &q)
        .await
        .expect("flows")
        .map(|r| r.expect("event"))
        .collect()
        .await;
    assert_eq!(ports(&got), [2]);

    // Follow: backlog, then a flow recorded after the follow started.
    let q = FlowsQuery {
        last: Some(1),
        follow: true,
        ..FlowsQuery::default()
    };
    let mut live = client::flows(&agent, &q).await.expect("follow");
    let first = next_within(&mut live)
        .await
        .expect("backlog")
        .expect("event");
    assert_eq!(ports(&[first]), [3]);
    ring.record(flow(4, 4));
    let next = next_within(&mut live).await.expect("live").expect("event");
    assert_eq!(ports(&[next]), [4]);
    assert_eq!(ring.stats().followers, 1);
    drop(live);
    // The server notices the closed connection by the next write at the latest.
    ring.record(flow(5, 5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ring.stats().followers > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let status = client::status(&agent).await.expect("status");
    assert_eq!(status["node"], "node-1");
    assert_eq!(status["flows"]["recorded"], 5);

    // healthz on both listeners.
    let uds = tokio::net::UnixStream::connect(dir.sock())
        .await
        .expect("unix");
    assert_eq!(
        raw_get(uds, "/healthz").await,
        (StatusCode::OK, "ok".into())
    );
    let conn = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    assert_eq!(
        raw_get(conn, "/healthz").await,
        (StatusCode::OK, "ok".into())
    );
    // Plain TCP is public: metrics yes, flows and status no.
    let conn = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    let (code, body) = raw_get(conn, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("strait_build_info"), "{body}");
    for path in ["/flows", "/flows?follow=true", "/status"] {
        let conn = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
        let (code, body) = raw_get(conn, path).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}");
        assert!(!body.contains("node-1"), "{path}: {body}");
    }

    server.abort();
    let _ = server.await;
    assert!(
        !dir.sock().exists(),
        "socket file removed when serving stops"
    );
}

async fn raw_get<I>(io: I, path: &str) -> (StatusCode, String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let rsp = send.send_request(req).await.expect("response");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn client_reports_unreachable_and_refused_requests() {
    let dir = TempDir::new("client-errors");
    let err = client::status(&agent(dir.sock()))
        .await
        .expect_err("nothing listening");
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("agent c1/node-1: cannot connect to "),
        "{err}"
    );

    let ring = Arc::new(FlowRing::new(1));
    let server = Admin::bind(&dir.sock(), None)
        .expect("bind")
        .spawn(state(&ring));
    let mut q = FlowsQuery::default();
    q.filter.push(Criterion::Namespace(String::new()));
    let err = match client::flows(&agent(dir.sock()), &q).await {
        Ok(_) => panic!("empty namespace must be refused"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, ClientError::Status { status, .. } if *status == StatusCode::BAD_REQUEST),
        "{err:?}"
    );
    server.abort();
}

// === binding ===

#[test]
fn bind_replaces_a_stale_socket() {
    let dir = TempDir::new("stale");
    drop(std::os::unix::net::UnixListener::bind(dir.sock()).expect("first bind"));
    assert!(
        dir.sock().exists(),
        "a closed listener leaves its file behind"
    );
    let bound = Admin::bind(&dir.sock(), None).expect("rebind over stale socket");
    assert_eq!(bound.unix_path(), dir.sock());
    assert_eq!(bound.tcp_addr(), None);
    drop(bound);
    assert!(!dir.sock().exists());
}

#[test]
fn bind_refuses_live_sockets_and_other_files() {
    let dir = TempDir::new("refuse");
    let _live = Admin::bind(&dir.sock(), None).expect("first bind");
    let err = Admin::bind(&dir.sock(), None).expect_err("in use");
    assert!(matches!(err, AdminError::InUse { .. }), "{err:?}");

    let file = dir.0.join("plain");
    std::fs::write(&file, "x").expect("write");
    let err = Admin::bind(&file, None).expect_err("not a socket");
    assert!(matches!(err, AdminError::NotASocket { .. }), "{err:?}");
    assert!(file.exists(), "never removes what is not a socket");

    let err = Admin::bind(&dir.0.join("missing/admin.sock"), None).expect_err("no dir");
    assert!(err.to_string().contains("missing/admin.sock"), "{err}");
}

#[test]
fn tcp_bind_failure_names_the_address_and_cleans_up() {
    let dir = TempDir::new("tcp");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = Admin::bind(&dir.sock(), Some(addr)).expect_err("port taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(
        !dir.sock().exists(),
        "unix socket removed when tcp bind fails"
    );
}
