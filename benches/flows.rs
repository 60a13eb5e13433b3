//! What recording a flow costs the data path: `FlowRing::record` (ring push, live feed, and the
//! Prometheus metrics it derives, with the global Prometheus recorder installed) for a TCP
//! connection flow and for an HTTP request flow, against baselines measured in the same run:
//! (a) building the record alone, as the proxy builds it; (b) a loopback TCP connection (connect,
//! 64-byte echo, close), the least a proxied connection costs. Each figure is the median of
//! several runs; the last line printed is a JSON summary.
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

/// A finished connection's record, built as the outbound proxy builds it.
fn connection_flow(src: &FlowPeer, dst: &FlowPeer, port: u16) -> FlowRecord {
    let mut src = src.clone();
    src.port = port;
    let mut rec = ConnRecord::start("node-1", "c1", Direction::Egress, src);
    rec.destination("198.19.1.2:80".into(), None, dst.clone());
    rec.bytes(142, 798);
    rec.finish()
}

/// One HTTP request's record, built as the L7 proxy builds it from its connection's template.
fn http_flow(template: &FlowRecord) -> FlowRecord {
    let mut f = template.clone();
    f.time = std::time::SystemTime::now();
    f.protocol = "HTTP/1.1".into();
    f.decided_by = Some(strait::flows::DecidedBy::Proxy);
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

fn pct(part: f64, whole: Duration) -> f64 {
    100.0 * part / ns(whole)
}

fn main() {
    let started = Instant::now();
    strait::metrics::install(strait::metrics::Options::default()).unwrap();
    // Metrics subscribe to the ring as the agent wires them.
    let ring = FlowRing::new(8192).observed_by(strait::metrics::FlowMetrics);
    let src = peer("demo", "frontend-a29cd-x1", "frontend", 40312);
    let dst = peer("demo", "backend-8eeac-k2", "backend", 8080);
    let template = connection_flow(&src, &dst, 40312);
    const N: usize = 100_000;

    // Baseline (a): building the records, which the proxy does whether or not they are kept.
    let build_conn = per_op(N, |i| {
        black_box(connection_flow(&src, &dst, i as u16));
    });
    let build_http = per_op(N, |_| {
        black_box(http_flow(&template));
    });
    // Building and recording: ring push (evicting the oldest once full), feed, metrics.
    let built_recorded_conn = per_op(N, |i| ring.record(connection_flow(&src, &dst, i as u16)));
    let built_recorded_http = per_op(N, |_| ring.record(http_flow(&template)));
    // The metrics part alone.
    let (conn, http) = (template.clone(), http_flow(&template));
    let metrics_conn = per_op(N, |_| strait::metrics::record_flow(black_box(&conn)));
    let metrics_http = per_op(N, |_| strait::metrics::record_flow(black_box(&http)));
    // A follower (`strait observe --follow`) attached: the feed send happens too.
    let _follower = ring.follow(Some(0));
    let built_recorded_followed = per_op(N, |i| ring.record(connection_flow(&src, &dst, i as u16)));

    // Baseline (b): the least a proxied connection costs, a loopback TCP connection.
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

    let record_conn = ns(built_recorded_conn) - ns(build_conn);
    let record_http = ns(built_recorded_http) - ns(build_http);
    let record_followed = ns(built_recorded_followed) - ns(build_conn);
    let line = |what: &str, v: f64, extra: String| println!("  {what:<52} {v:>9.0} ns{extra}");
    println!("median of {ROUNDS} runs, per operation:");
    line(
        "building a connection flow record (baseline a)",
        ns(build_conn),
        String::new(),
    );
    line(
        "building an HTTP request flow record (baseline a)",
        ns(build_http),
        String::new(),
    );
    line(
        "FlowRing::record, connection flow",
        record_conn,
        format!("  (metrics part {:.0} ns)", ns(metrics_conn)),
    );
    line(
        "FlowRing::record, HTTP request flow",
        record_http,
        format!("  (metrics part {:.0} ns)", ns(metrics_http)),
    );
    line(
        "FlowRing::record, connection flow, live follower",
        record_followed,
        String::new(),
    );
    line(
        "loopback TCP connection, 64 B echo (baseline b)",
        ns(tcp),
        String::new(),
    );
    println!(
        "recording a connection flow costs {record_conn:.0} ns = {:.2}% of a loopback TCP connection \
         ({:.0} ns = {:.2}% with building the record)",
        pct(record_conn, tcp),
        ns(built_recorded_conn),
        pct(ns(built_recorded_conn), tcp)
    );
    println!(
        "recording an HTTP request flow costs {record_http:.0} ns = {:.2}% of a loopback TCP connection \
         ({:.0} ns = {:.2}% with building the record)",
        pct(record_http, tcp),
        ns(built_recorded_http),
        pct(ns(built_recorded_http), tcp)
    );
    println!(
        "{{\"build_conn_ns\":{:.0},\"build_http_ns\":{:.0},\"record_conn_ns\":{record_conn:.0},\
         \"record_http_ns\":{record_http:.0},\"metrics_conn_ns\":{:.0},\"metrics_http_ns\":{:.0},\
         \"record_followed_ns\":{record_followed:.0},\"loopback_tcp_ns\":{:.0},\
         \"record_conn_pct_of_tcp\":{:.3},\"record_http_pct_of_tcp\":{:.3},\
         \"build_and_record_conn_pct_of_tcp\":{:.3},\"wall_s\":{:.1}}}",
        ns(build_conn),
        ns(build_http),
        ns(metrics_conn),
        ns(metrics_http),
        ns(tcp),
        pct(record_conn, tcp),
        pct(record_http, tcp),
        pct(ns(built_recorded_conn), tcp),
        started.elapsed().as_secs_f64()
    );
}
