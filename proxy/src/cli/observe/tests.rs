use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;

use super::*;
use crate::flows::{Direction, ServiceRef};

/// 2024-11-25T06:01:02.123Z
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_732_514_462_123)
}

fn pod(ns: &str, name: &str, port: u16, identity: u32) -> FlowPeer {
    FlowPeer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5))),
        port,
        cluster: "c1".into(),
        namespace: ns.into(),
        pod: name.into(),
        identity,
        ..FlowPeer::default()
    }
}

fn sample() -> FlowRecord {
    FlowRecord {
        time: t0(),
        node: "node-1".into(),
        cluster: "c1".into(),
        direction: Direction::Egress,
        protocol: "TCP".into(),
        source: pod("demo", "frontend-abc", 41234, 65792),
        destination: pod("demo", "backend-xyz", 8080, 65793),
        original_destination: "198.19.1.10:80".into(),
        service: Some(ServiceRef {
            namespace: "demo".into(),
            name: "backend".into(),
        }),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        error: None,
        tunnel_peer: None,
        bytes_sent: 1234,
        bytes_received: 3400,
        duration_us: 12_345,
        decided_by: None,
        policies: Vec::new(),
        http: None,
        encrypted: false,
    }
}

#[test]
fn compact_matches_hubble_style() {
    assert_eq!(
        compact_line(&sample(), false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc:41234 (ID:65792) -> \
         demo/backend-xyz:8080 (ID:65793) via backend 198.19.1.10:80 TCP egress FORWARDED  \
         1.2kB/3.4kB 12ms"
    );
}

#[test]
fn compact_drop_external_remote_and_colour() {
    let mut f = sample();
    f.service = None;
    f.verdict = Verdict::Dropped;
    f.drop_reason = Some("POLICY_DENIED".into());
    f.source.cluster = "c2".into();
    f.destination = FlowPeer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))),
        port: 53,
        ..FlowPeer::default()
    };
    f.bytes_sent = 0;
    f.bytes_received = 0;
    f.duration_us = 850;
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc@c2:41234 (ID:65792) -> 8.8.8.8:53 \
         TCP egress DROPPED (POLICY_DENIED)  0B/0B 850µs"
    );
    assert!(compact_line(&f, true).contains("\x1b[31mDROPPED\x1b[0m (POLICY_DENIED)"));
    f.protocol = "HTTP/1.1".into();
    f.decided_by = Some("proxy".into());
    f.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/private".into(),
        host: None,
        status: Some(403),
        latency_us: 850,
    });
    assert!(
        compact_line(&f, false)
            .contains("HTTP/1.1 egress DROPPED (POLICY_DENIED) GET /private => 403 by proxy"),
        "{}",
        compact_line(&f, false)
    );
}

#[test]
fn units() {
    let cases = [
        (0, "0B"),
        (999, "999B"),
        (1000, "1.0kB"),
        (1234, "1.2kB"),
        (999_949, "999.9kB"),
        (999_999, "1.0MB"),
        (3_400_000, "3.4MB"),
        (5_000_000_000, "5.0GB"),
    ];
    for (n, want) in cases {
        assert_eq!(format_bytes(n), want, "{n}");
    }
    let cases = [
        (0, "0µs"),
        (999, "999µs"),
        (12_345, "12ms"),
        (1_500_000, "1.5s"),
    ];
    for (us, want) in cases {
        assert_eq!(format_duration_us(us), want, "{us}");
    }
    assert_eq!(format_time(UNIX_EPOCH), "Jan 01 00:00:00.000");
}

#[test]
fn table_aligns_columns() {
    let mut other = sample();
    other.node = "n2".into();
    other.service = None;
    other.verdict = Verdict::Error;
    other.error = Some("refused".into());
    let out = render_table(&[Arc::new(sample()), Arc::new(other)]);
    let want = "\
TIME                  NODE        SOURCE                    DESTINATION             SERVICE        VERDICT           BYTES         DURATION
Nov 25 06:01:02.123   c1/node-1   demo/frontend-abc:41234   demo/backend-xyz:8080   demo/backend   FORWARDED         1.2kB/3.4kB   12ms
Nov 25 06:01:02.123   c1/n2       demo/frontend-abc:41234   demo/backend-xyz:8080   -              ERROR (refused)   1.2kB/3.4kB   12ms
";
    assert_eq!(out, want);
    // While following, rows use fixed widths and never leave trailing blanks.
    let row = table_line(&table_row(&sample()), &FOLLOW_WIDTHS);
    assert!(
        row.starts_with("Nov 25 06:01:02.123   c1/node-1        demo/"),
        "{row}"
    );
    assert!(row.ends_with("1.2kB/3.4kB     12ms"), "{row}");
}

#[test]
fn json_round_trips() {
    let line = json_line(&sample()).expect("json");
    assert!(line.ends_with("}\n"));
    let back: FlowRecord = serde_json::from_str(&line).expect("parse");
    assert_eq!(back, sample());
}

#[test]
fn select_last_merges_in_time_order_after_filtering() {
    let at = |ms: u64, ns: &str| {
        let mut f = sample();
        f.time = UNIX_EPOCH + Duration::from_millis(ms);
        f.source.namespace = ns.into();
        f.destination.namespace = ns.into();
        Arc::new(f)
    };
    // Two agents' lists, concatenated as they arrive.
    let flows = vec![
        at(1, "a"),
        at(4, "b"),
        at(6, "a"),
        at(2, "a"),
        at(5, "a"),
        at(3, "b"),
    ];
    let filter = FlowFilter::new().with(Criterion::Namespace("a".into()));
    let got: Vec<u128> = select_last(flows, &filter, 3)
        .iter()
        .map(|f| f.unix_nanos() / 1_000_000)
        .collect();
    assert_eq!(got, [2, 5, 6]);
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ObserveArgs,
}

#[test]
fn flags() {
    let cli = Cli::try_parse_from([
        "observe",
        "--cluster",
        "c1",
        "-n",
        "demo",
        "--pod",
        "demo/front",
        "--verdict",
        "dropped",
        "--verdict",
        "ERROR",
        "-f",
        "-o",
        "table",
    ])
    .expect("parses");
    let a = cli.args;
    assert!(a.follow);
    assert_eq!(a.output, Output::Table);
    assert_eq!(a.last(), 0);
    let keys: Vec<String> = a
        .filter()
        .expect("filter")
        .criteria()
        .iter()
        .map(|c| format!("{}={c}", c.key()))
        .collect();
    assert_eq!(
        keys,
        [
            "cluster=c1",
            "namespace=demo",
            "pod=demo/front",
            "verdict=DROPPED",
            "verdict=ERROR"
        ]
    );

    let a = Cli::try_parse_from(["observe"]).expect("parses").args;
    assert_eq!(
        (a.last(), a.output, a.follow),
        (DEFAULT_LAST, Output::Compact, false)
    );
    assert!(Cli::try_parse_from(["observe", "--verdict", "nope"]).is_err());
    assert!(Cli::try_parse_from(["observe", "--pod", ""]).is_err());
}

#[tokio::test]
async fn unreachable_agents_fail_the_run() {
    let agents = vec![AgentEndpoint {
        cluster: "c1".into(),
        node: "gone".into(),
        socket: "/nonexistent/strait-admin.sock".into(),
    }];
    let args = Cli::try_parse_from(["observe"]).expect("parses").args;
    let err = run(&args, agents).await.expect_err("no agent reachable");
    assert!(err.to_string().contains("none of the 1 agents"), "{err}");
}
