//! What recording a flow costs the data path: `FlowRing::record` (ring push, live feed, and the
//! Prometheus metrics it derives) for a TCP connection flow and for an HTTP request flow, against
//! baselines measured in the same run: building the record alone, and a loopback TCP connection
//! (connect, 64-byte echo, close) — the least a proxied connection costs.
//!
//! `cargo bench -p strait --bench flows`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use strait::flows::{Direction, FlowPeer, FlowRecord, FlowRing, HttpFlow};
use strait::proxy::conn::ConnRecord;

const ROUNDS: usize = 7;

/// Median over ROUNDS of the per-iteration time of `f` run `iters` times.
fn per_op(iters: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut samples: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed() / iters as u32
        })
        .collect();
    samples.sort();
    samples[ROUNDS / 2]
}

fn peer(ns: &str, pod: &str, workload: &str, port: u16) -> FlowPeer {
    FlowPeer {
        ip: Some("198.18.16.7".parse().unwrap()),
        port,
        cluster: "c1".into(),
        namespace: ns.into(),
        pod: pod.into(),
        workload: Some(workload.into()),
        node: Some("node-1".into()),
        labels: [("app".to_string(), workload.to_string())].into(),
        identity: 65792,
    }
}

fn connection_flow() -> FlowRecord {
    let mut rec = ConnRecord::start(
        "node-1",
        "c1",
        Direction::Egress,
        peer("demo", "frontend-a29cd-x1", "frontend", 40312),
    );
    rec.destination(
        "198.19.1.2:80".into(),
        None,
        peer("demo", "backend-8eeac-k2", "backend", 8080),
    );
    rec.bytes(142, 798);
    rec.finish()
}

fn http_flow() -> FlowRecord {
    let mut f = connection_flow();
    f.protocol = "HTTP/1.1".into();
    f.http = Some(HttpFlow {
        method: "GET".into(),
        path: "/public/items?page=2".into(),
        host: Some("backend".into()),
        status: Some(200),
        latency_us: 850,
    });
    f
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let started = Instant::now();
    strait::metrics::install(strait::metrics::Options::default()).unwrap();
    let ring = FlowRing::new(8192);
    let conn = connection_flow();
    let http = http_flow();

    let build = per_op(200_000, |_| {
        black_box(conn.clone());
    });
    let record_conn = per_op(200_000, |i| {
        let mut f = conn.clone();
        f.source.port = i as u16;
        ring.record(f);
    });
    let record_http = per_op(200_000, |i| {
        let mut f = http.clone();
        f.source.port = i as u16;
        ring.record(f);
    });
    // A follower (`strait observe --follow`) attached: the feed send happens too.
    let _follower = ring.follow(Some(0));
    let record_followed = per_op(200_000, |_| ring.record(conn.clone()));

    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 64];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    let tcp = per_op(2_000, |_| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&[7u8; 64]).unwrap();
        let mut buf = [0u8; 64];
        s.read_exact(&mut buf).unwrap();
    });

    let conn_cost = ns(record_conn) - ns(build);
    let http_cost = ns(record_http) - ns(build);
    println!(
        "building a flow record (baseline a):        {:>8.0} ns",
        ns(build)
    );
    println!(
        "recording a connection flow:                {:>8.0} ns ({:.0} ns over building it)",
        ns(record_conn),
        conn_cost
    );
    println!(
        "recording an HTTP request flow:             {:>8.0} ns ({:.0} ns over building it)",
        ns(record_http),
        http_cost
    );
    println!(
        "recording with a live follower:             {:>8.0} ns",
        ns(record_followed)
    );
    println!(
        "loopback TCP connection, 64 B echo (baseline b): {:>8.0} ns",
        ns(tcp)
    );
    println!(
        "recording a connection flow costs {:.0} ns = {:.2}% of a loopback TCP connection",
        ns(record_conn),
        100.0 * ns(record_conn) / ns(tcp)
    );
    println!(
        "recording an HTTP request flow costs {:.0} ns = {:.2}% of a loopback TCP connection",
        ns(record_http),
        100.0 * ns(record_http) / ns(tcp)
    );
    println!(
        "{{\"build_ns\":{:.0},\"record_conn_ns\":{:.0},\"record_http_ns\":{:.0},\"record_followed_ns\":{:.0},\"loopback_tcp_ns\":{:.0},\"conn_pct_of_tcp\":{:.3},\"http_pct_of_tcp\":{:.3},\"wall_s\":{:.1}}}",
        ns(build),
        ns(record_conn),
        ns(record_http),
        ns(record_followed),
        ns(tcp),
        100.0 * ns(record_conn) / ns(tcp),
        100.0 * ns(record_http) / ns(tcp),
        started.elapsed().as_secs_f64()
    );
}
