//! What mutual TLS costs the cross-node path. Two node proxies in this process on loopback,
//! running the real outbound listener, tunnel pool and tunnel listener: node-2's client pod
//! reaches node-1's backend pod through the mTLS tunnel, through the same tunnel in plaintext,
//! and directly (no proxy). Measured in one run, for
//! - HTTP on an L7 port (`GET /.*` rule): sequential requests on one keep-alive connection, and
//!   one request per new connection (a new tunnel stream each time, never a new handshake);
//! - a TCP stream (L4 rule): bulk throughput of one connection.
//!
//! Each figure is the median of several rounds; ratios are mTLS / plaintext and mTLS / direct.
//! The last line printed is a JSON summary.
//!
//! `cargo bench -p strait --bench tunnel`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use strait::flows::FlowRing;
use strait::model::*;
use strait::pki::ClusterCa;
use strait::proxy::tables::ProxyTables;
use strait::proxy::tls::{NodeIdentity, NodeIssuer, NodeTls, TrustedCa};
use strait::proxy::tunnel::Transport;
use strait::proxy::{OriginalDst, Proxy};

const ROUNDS: usize = 5;
const BACKEND: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const FRONTEND: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 1);
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9090;
const STREAM_BYTES: usize = 256 * 1024 * 1024;

/// Every redirected connection goes to the target the bench is measuring now.
struct Target(parking_lot::Mutex<SocketAddrV4>);

impl OriginalDst for Target {
    fn take(&self, _client: SocketAddrV4) -> Option<SocketAddrV4> {
        Some(*self.0.lock())
    }
}

fn endpoint(name: &str, node: &str, ip: Ipv4Addr, identity: u32) -> Endpoint {
    Endpoint {
        namespace: "demo".into(),
        name: name.into(),
        node: node.into(),
        ip,
        labels: [("app".to_string(), name.to_string())].into(),
        identity,
        workload: None,
        ports: vec![],
        ready: true,
        cgroup_id: None,
        host_ifname: None,
    }
}

/// `local`'s tables; node-1's tunnel listens on `node1_underlay`:15008.
fn tables(local: &str, node1_underlay: Ipv4Addr) -> ProxyTables {
    let policy = strait::policy::parse(
        serde_yaml::from_str(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules: {http: [{method: GET, path: /.*}]}
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '9090', protocol: TCP}]}]",
        )
        .unwrap(),
        "demo",
    )
    .unwrap();
    let state = ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c1".into(),
            id: 1,
        },
        nodes: vec![
            Node {
                name: "node-1".into(),
                underlay_ip: node1_underlay,
                pod_cidr: "127.1.0.0/16".parse().unwrap(),
                gateway: Ipv4Addr::new(127, 1, 0, 254),
            },
            Node {
                name: "node-2".into(),
                underlay_ip: Ipv4Addr::new(127, 2, 0, 100),
                pod_cidr: "127.2.0.0/16".parse().unwrap(),
                gateway: Ipv4Addr::new(127, 2, 0, 254),
            },
        ],
        namespaces: vec![],
        endpoints: vec![
            endpoint("backend", "node-1", BACKEND, 65792),
            endpoint("frontend", "node-2", FRONTEND, 65793),
        ],
        services: vec![],
        policies: vec![policy],
    };
    (*strait::compile::compile_state(state, local).unwrap().proxy).clone()
}

fn node_tls(node: &str) -> Transport {
    let ca = ClusterCa::load(&ca_key().with_extension("crt"), &ca_key()).unwrap();
    let trust = [TrustedCa {
        cluster: "c1".into(),
        cert_pem: ca.cert_pem.clone(),
    }];
    let issuer = NodeIssuer::new(
        NodeIdentity {
            cluster: "c1".into(),
            node: node.into(),
        },
        ca,
        strait::pki::generate_key().unwrap(),
        std::env::temp_dir().join(format!("strait-bench-{}-{node}.crt", std::process::id())),
        Duration::from_secs(3600),
    );
    let tls: Arc<NodeTls> = issuer.node_tls(&trust).unwrap();
    Transport::Mtls(tls)
}

fn ca_key() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("strait-bench-{}-ca.key", std::process::id()))
}

/// A node-1/node-2 proxy pair over `transport`; returns node-2's outbound listener address.
async fn pair(
    node1_underlay: Ipv4Addr,
    outbound_port: u16,
    t1: Transport,
    t2: Transport,
    target: Arc<Target>,
) -> SocketAddr {
    let flows = || Arc::new(FlowRing::new(1024));
    let node1 = Arc::new(
        Proxy::new(tables("node-1", node1_underlay), flows(), target.clone()).tunnel_transport(t1),
    );
    let tunnel = TcpListener::bind((node1_underlay, strait::config::TUNNEL_PORT))
        .await
        .unwrap();
    tokio::spawn(strait::proxy::tunnel::serve(tunnel, node1));
    let node2 = Arc::new(
        Proxy::new(tables("node-2", node1_underlay), flows(), target).tunnel_transport(t2),
    );
    let outbound = TcpListener::bind((Ipv4Addr::new(127, 2, 0, 254), outbound_port))
        .await
        .unwrap();
    let addr = outbound.local_addr().unwrap();
    tokio::spawn(strait::proxy::outbound::serve(outbound, node2));
    addr
}

/// The backend pod: HTTP on 8080, a byte sink on 9090 that answers the count at EOF.
async fn backend() {
    let http = TcpListener::bind((BACKEND, HTTP_PORT)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"{\"pod\":\"backend\"}"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let sink = TcpListener::bind((BACKEND, TCP_PORT)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
}

/// A connection from the frontend pod's address to `to`.
async fn dial(to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((FRONTEND, 0))).unwrap();
    let s = sock.connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http_conn(to: SocketAddr) -> Sender {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(dial(to).await))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender) {
    let req = hyper::Request::get("/public/x")
        .header("host", "backend")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

async fn median(mut f: impl AsyncFnMut() -> Duration) -> Duration {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        v.push(f().await);
    }
    v.sort();
    v[ROUNDS / 2]
}

/// Per-request latency, sequential on one keep-alive connection.
async fn keepalive(to: SocketAddr) -> Duration {
    let mut s = http_conn(to).await;
    get(&mut s).await;
    median(async || {
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            get(&mut s).await;
        }
        t.elapsed() / n
    })
    .await
}

/// Connect + one request + close, per connection.
async fn per_connection(to: SocketAddr) -> Duration {
    median(async || {
        let n = 300;
        let t = Instant::now();
        for _ in 0..n {
            let mut s = http_conn(to).await;
            get(&mut s).await;
        }
        t.elapsed() / n
    })
    .await
}

/// Bulk throughput of one TCP connection, in MB/s.
async fn stream(to: SocketAddr) -> f64 {
    let chunk = vec![7u8; 1024 * 1024];
    let d = median(async || {
        let mut s = dial(to).await;
        let t = Instant::now();
        for _ in 0..STREAM_BYTES / chunk.len() {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        let mut n = [0u8; 8];
        s.read_exact(&mut n).await.unwrap();
        assert_eq!(u64::from_be_bytes(n), STREAM_BYTES as u64);
        t.elapsed()
    })
    .await;
    STREAM_BYTES as f64 / d.as_secs_f64() / 1e6
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = ClusterCa::create("c1").unwrap();
        let ca_cert = ca_key().with_extension("crt");
        ca.save(&ca_cert, &ca_key()).unwrap();
        backend().await;
        let http_target = SocketAddrV4::new(BACKEND, HTTP_PORT);
        let tcp_target = SocketAddrV4::new(BACKEND, TCP_PORT);
        let target = Arc::new(Target(parking_lot::Mutex::new(http_target)));
        let mtls = pair(
            Ipv4Addr::new(127, 1, 0, 100),
            0,
            node_tls("node-1"),
            node_tls("node-2"),
            target.clone(),
        )
        .await;
        let plain = pair(
            Ipv4Addr::new(127, 1, 0, 101),
            0,
            Transport::InsecurePlaintext,
            Transport::InsecurePlaintext,
            target.clone(),
        )
        .await;
        let direct_http = SocketAddr::V4(http_target);
        let direct_tcp = SocketAddr::V4(tcp_target);

        let mut ka = Vec::new();
        let mut pc = Vec::new();
        for to in [mtls, plain, direct_http] {
            ka.push(keepalive(to).await);
            pc.push(per_connection(to).await);
        }
        *target.0.lock() = tcp_target;
        let mut tp = Vec::new();
        for to in [mtls, plain, direct_tcp] {
            tp.push(stream(to).await);
        }
        let _ = std::fs::remove_file(ca_key());
        let _ = std::fs::remove_file(&ca_cert);

        println!(
            "cross-node path         mTLS tunnel  plain tunnel  direct   mTLS/plain  mTLS/direct"
        );
        println!(
            "HTTP keep-alive (us/req) {:>11.1} {:>13.1} {:>7.1} {:>11.2} {:>12.2}",
            us(ka[0]),
            us(ka[1]),
            us(ka[2]),
            us(ka[0]) / us(ka[1]),
            us(ka[0]) / us(ka[2])
        );
        println!(
            "HTTP new conn (us/req)   {:>11.1} {:>13.1} {:>7.1} {:>11.2} {:>12.2}",
            us(pc[0]),
            us(pc[1]),
            us(pc[2]),
            us(pc[0]) / us(pc[1]),
            us(pc[0]) / us(pc[2])
        );
        println!(
            "TCP stream (MB/s)        {:>11.0} {:>13.0} {:>7.0} {:>11.2} {:>12.2}",
            tp[0],
            tp[1],
            tp[2],
            tp[0] / tp[1],
            tp[0] / tp[2]
        );
        println!(
            "{}",
            serde_json::json!({
                "http_keepalive_us": {"mtls": us(ka[0]), "plain": us(ka[1]), "direct": us(ka[2])},
                "http_new_conn_us": {"mtls": us(pc[0]), "plain": us(pc[1]), "direct": us(pc[2])},
                "tcp_stream_mb_s": {"mtls": tp[0], "plain": tp[1], "direct": tp[2]},
                "ratio_mtls_over_plain": {
                    "http_keepalive": us(ka[0]) / us(ka[1]),
                    "http_new_conn": us(pc[0]) / us(pc[1]),
                    "tcp_stream_throughput": tp[0] / tp[1],
                },
            })
        );
    });
}
