use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::httpd::*;
use super::sniff::*;
use super::*;

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
