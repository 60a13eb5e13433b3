use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
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
    f.drop_reason = Some(crate::flows::DropReason::PolicyDenied);
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
    f.decided_by = Some(crate::flows::DecidedBy::Proxy);
    f.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/private".into(),
        host: None,
        status: Some(403),
        latency_us: 850,
    });
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc@c2:41234 (ID:65792) -> 8.8.8.8:53 \
         TCP egress DROPPED (POLICY_DENIED) HTTP/1.1 GET /private => 403 by proxy  0B/0B 850µs"
    );
}

#[test]
fn compact_http_without_answer_and_encrypted() {
    let mut f = sample();
    f.protocol = "HTTP/2".into();
    f.encrypted = true;
    f.verdict = Verdict::Error;
    f.error = Some("upstream reset".into());
    f.http = Some(crate::flows::HttpFlow {
        method: "POST".into(),
        path: "/api/orders".into(),
        host: Some("backend".into()),
        status: None,
        latency_us: 10,
    });
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc:41234 (ID:65792) -> \
         demo/backend-xyz:8080 (ID:65793) via backend 198.19.1.10:80 TCP egress encrypted \
         ERROR (upstream reset) HTTP/2 POST /api/orders  1.2kB/3.4kB 12ms"
    );
}

#[test]
fn verdict_colours() {
    let mut f = sample();
    for (verdict, code) in [
        (Verdict::Forwarded, "32"),
        (Verdict::Dropped, "31"),
        (Verdict::Error, "33"),
        (Verdict::Audit, "36"),
    ] {
        f.verdict = verdict;
        let name = verdict_name(verdict);
        assert!(
            compact_line(&f, true).contains(&format!(" \x1b[{code}m{name}\x1b[0m ")),
            "{}",
            compact_line(&f, true)
        );
        assert!(!compact_line(&f, false).contains('\x1b'));
        assert!(!table_row(&f).iter().any(|c| c.contains('\x1b')));
    }
}

#[test]
fn colour_only_on_terminals_without_no_color() {
    assert!(color_enabled(true, None));
    assert!(!color_enabled(false, None));
    assert!(!color_enabled(true, Some("1".into())));
    assert!(!color_enabled(false, Some("1".into())));
    // An empty NO_COLOR does not count (no-color.org).
    assert!(color_enabled(true, Some("".into())));
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
    let mut http = sample();
    http.protocol = "HTTP/1.1".into();
    http.encrypted = true;
    http.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/public".into(),
        host: None,
        status: Some(200),
        latency_us: 850,
    });
    let out = render_table(&[Arc::new(sample()), Arc::new(other), Arc::new(http)]);
    let want = "\
TIME                  NODE        SOURCE                    DESTINATION             SERVICE        PROTOCOL             VERDICT           HTTP                 BYTES         DURATION
Nov 25 06:01:02.123   c1/node-1   demo/frontend-abc:41234   demo/backend-xyz:8080   demo/backend   TCP                  FORWARDED         -                    1.2kB/3.4kB   12ms
Nov 25 06:01:02.123   c1/n2       demo/frontend-abc:41234   demo/backend-xyz:8080   -              TCP                  ERROR (refused)   -                    1.2kB/3.4kB   12ms
Nov 25 06:01:02.123   c1/node-1   demo/frontend-abc:41234   demo/backend-xyz:8080   demo/backend   HTTP/1.1 encrypted   FORWARDED         GET /public => 200   1.2kB/3.4kB   12ms
";
    assert_eq!(out, want);
    // While following, rows use fixed widths and never leave trailing blanks.
    let row = table_line(&table_row(&sample()), &FOLLOW_WIDTHS);
    assert!(
        row.starts_with("Nov 25 06:01:02.123   c1/node-1        demo/"),
        "{row}"
    );
    assert!(row.ends_with("1.2kB/3.4kB     12ms"), "{row}");
    let header = table_line(&TABLE_HEADER.map(String::from), &FOLLOW_WIDTHS);
    assert!(header.starts_with("TIME                  NODE"), "{header}");
}

#[test]
fn json_round_trips() {
    let line = json_line(&sample()).expect("json");
    assert!(line.ends_with("}\n"));
    assert_eq!(line.matches('\n').count(), 1);
    let back: FlowRecord = serde_json::from_str(&line).expect("parse");
    assert_eq!(back, sample());
}

/// The JSON field names are an interface (scripts, the README): FlowRecord's serde names.
#[test]
fn json_field_names_are_stable() {
    let mut f = sample();
    f.source.workload = Some("frontend".into());
    f.source.node = Some("node-2".into());
    f.source.labels = [("app".to_string(), "frontend".to_string())].into();
    f.drop_reason = Some(crate::flows::DropReason::PolicyDenied);
    f.error = Some("refused".into());
    f.tunnel_peer = Some("node-2".into());
    f.decided_by = Some(crate::flows::DecidedBy::Proxy);
    f.policies = vec!["demo/p: spec.ingress[0]".into()];
    f.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/".into(),
        host: Some("backend".into()),
        status: Some(200),
        latency_us: 1,
    });
    let v: serde_json::Value = serde_json::from_str(&json_line(&f).expect("json")).expect("parse");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort_unstable();
        k
    };
    let mut want = vec![
        "time",
        "node",
        "cluster",
        "direction",
        "protocol",
        "source",
        "destination",
        "original_destination",
        "service",
        "verdict",
        "drop_reason",
        "error",
        "tunnel_peer",
        "bytes_sent",
        "bytes_received",
        "duration_us",
        "decided_by",
        "policies",
        "http",
        "encrypted",
    ];
    want.sort_unstable();
    assert_eq!(keys(&v), want);
    let mut peer = vec![
        "ip",
        "port",
        "cluster",
        "namespace",
        "pod",
        "workload",
        "node",
        "labels",
        "identity",
    ];
    peer.sort_unstable();
    assert_eq!(keys(&v["source"]), peer);
    assert_eq!(keys(&v["service"]), ["name", "namespace"]);
    assert_eq!(
        keys(&v["http"]),
        ["host", "latency_us", "method", "path", "status"]
    );
    assert_eq!(v["time"], "2024-11-25T06:01:02.123000000Z");
    assert_eq!(v["verdict"], "FORWARDED");
    assert_eq!(v["direction"], "EGRESS");
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
    let got: Vec<u128> = select_last(flows.clone(), &filter, Some(3))
        .iter()
        .map(|f| f.unix_nanos() / 1_000_000)
        .collect();
    assert_eq!(got, [2, 5, 6]);
    assert_eq!(select_last(flows, &filter, None).len(), 4);
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ObserveArgs,
}

fn parse(args: &[&str]) -> Result<ObserveArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("observe").chain(args.iter().copied())).map(|c| c.args)
}

fn keys(a: &ObserveArgs) -> Vec<String> {
    a.filter()
        .expect("filter")
        .criteria()
        .iter()
        .map(|c| format!("{}={c}", c.key()))
        .collect()
}

#[test]
fn flags() {
    let a = parse(&[
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
    assert!(a.follow);
    assert_eq!(a.output, Output::Table);
    assert_eq!(a.last(), Some(0));
    assert_eq!(
        keys(&a),
        [
            "cluster=c1",
            "namespace=demo",
            "pod=demo/front",
            "verdict=DROPPED",
            "verdict=ERROR"
        ]
    );

    let a = parse(&[]).expect("parses");
    assert_eq!(
        (a.last(), a.output, a.follow),
        (Some(DEFAULT_LAST), Output::Compact, false)
    );
    assert!(parse(&["--verdict", "nope"]).is_err());
    assert!(parse(&["--pod", ""]).is_err());
}

#[test]
fn new_filter_flags() {
    let a = parse(&[
        "--from-namespace",
        "demo",
        "--to-namespace",
        "other",
        "--from-pod",
        "demo/frontend",
        "--to-pod",
        "db-",
        "-l",
        "k8s:app=web",
        "--label",
        "tier!=db,canary",
        "--from-label",
        "app in (a,b)",
        "--to-label",
        "!app",
        "--protocol",
        "http",
        "--protocol",
        "udp",
        "--port",
        "80",
        "--from-port",
        "41000",
        "--to-port",
        "8080",
        "--http-status",
        "5XX+",
        "--http-status",
        "404",
        "--http-method",
        "get",
        "--http-path",
        "^/api/",
        "--since",
        "2024-11-25T07:00:00+01:00",
        "--until",
        "2024-11-25T06:30:00.5Z",
        "-o",
        "json",
    ])
    .expect("parses");
    assert_eq!(a.output, Output::Json);
    assert_eq!(
        keys(&a),
        [
            "from-namespace=demo",
            "to-namespace=other",
            "from-pod=demo/frontend",
            "to-pod=db-",
            "label=k8s:app=web",
            "label=tier!=db,canary",
            "from-label=app in (a,b)",
            "to-label=!app",
            "protocol=HTTP",
            "protocol=UDP",
            "port=80",
            "from-port=41000",
            "to-port=8080",
            "http-status=5xx+",
            "http-status=404",
            "http-method=GET",
            "http-path=^/api/",
            "since=2024-11-25T06:00:00Z",
            "until=2024-11-25T06:30:00.500Z",
        ]
    );
    // A time bound shows every flow in it unless --last says otherwise.
    assert_eq!(a.last(), None);
    let q = a.query().expect("query");
    assert_eq!((q.last, q.follow), (None, false));
    assert_eq!(q.filter.criteria().len(), 19);
}

#[test]
fn since_is_absolute_and_composes_with_last() {
    let before = SystemTime::now();
    let a = parse(&["--since", "1h30m", "--last", "5"]).expect("parses");
    let after = SystemTime::now();
    let hour_and_half = Duration::from_secs(90 * 60);
    match &a.filters.since {
        Some(Criterion::Since(t)) => {
            assert!(
                *t >= before - hour_and_half && *t <= after - hour_and_half,
                "{t:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let q = a.query().expect("query");
    assert_eq!(q.last, Some(5));
    // What the agents receive is an RFC 3339 time, not the duration.
    let qs = q.to_query_string();
    assert!(qs.starts_with("last=5&since=20"), "{qs}");
    assert!(qs.ends_with('Z'), "{qs}");

    // With --follow, the backlog is every flow since then.
    let a = parse(&["--since", "5m", "-f"]).expect("parses");
    assert_eq!(a.last(), None);
    let a = parse(&["--until", "5m"]).expect("parses");
    assert_eq!(a.last(), None);
    assert_eq!(
        parse(&["--last", "3", "--until", "5m"])
            .expect("parses")
            .last(),
        Some(3)
    );

    let a = parse(&["--since", "1m", "--until", "1h"]).expect("parses");
    let err = a.query().expect_err("empty window");
    assert!(err.to_string().contains("is later than --until"), "{err}");
}

#[test]
fn invalid_flags_name_the_flag() {
    let cases = [
        (
            &["--http-status", "6xx"][..],
            "--http-status 6xx: expected NNN, Nxx or Nxx+",
        ),
        (
            &["--protocol", "sctp"],
            "--protocol sctp: expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2",
        ),
        (
            &["--to-port", "99999"],
            "--to-port 99999: expected a port number (1-65535)",
        ),
        (
            &["--from-label", "a b"],
            "--from-label a b: expected KEY, !KEY, KEY=VALUE",
        ),
        (
            &["--http-path", "("],
            "--http-path (: invalid regular expression: ",
        ),
        (
            &["--since", "last week"],
            "--since last week: expected an RFC 3339 time",
        ),
        (&["--from-pod", ""], "--from-pod needs a value"),
        (
            &["--verdict", "allowed"],
            "--verdict allowed: expected FORWARDED, DROPPED",
        ),
        (&["--cluster", ""], "--cluster needs a value"),
        (&["-n", ""], "--namespace needs a value"),
    ];
    for (args, want) in cases {
        let err = parse(args).expect_err("invalid");
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{args:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("error: {want}")),
            "{args:?}: {text}"
        );
    }
    // One time bound each, and --until cannot be followed.
    assert!(parse(&["--since", "1m", "--since", "2m"]).is_err());
    let err = parse(&["--until", "1m", "-f"]).expect_err("conflict");
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[tokio::test]
async fn unreachable_agents_fail_the_run() {
    let agents = vec![AgentEndpoint {
        cluster: "c1".into(),
        node: "gone".into(),
        socket: "/nonexistent/strait-admin.sock".into(),
    }];
    let args = parse(&[]).expect("parses");
    let err = run(&args, agents.clone())
        .await
        .expect_err("no agent reachable");
    assert!(err.to_string().contains("none of the 1 agents"), "{err}");

    let (mut out, mut err_out) = (Vec::new(), Vec::new());
    let args = parse(&["-f"]).expect("parses");
    let err = observe(&args, &agents, false, &mut out, &mut err_out)
        .await
        .expect_err("no agent reachable");
    assert!(err.to_string().contains("none of the 1 agents"), "{err}");
    let stderr = String::from_utf8_lossy(&err_out);
    assert!(
        stderr.starts_with("strait observe: agent c1/gone: cannot connect to /nonexistent/"),
        "{stderr}"
    );
}

/// A socket path in a directory removed on drop.
struct TempSock(PathBuf);

impl TempSock {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("strait-obs-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn endpoint(&self, node: &str) -> AgentEndpoint {
        AgentEndpoint {
            cluster: "c1".into(),
            node: node.into(),
            socket: self.0.join("admin.sock"),
        }
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real admin server serving `ring`.
fn live_agent(dir: &TempSock, ring: &Arc<crate::flows::FlowRing>) -> AgentEndpoint {
    let state = crate::admin::AdminState {
        flows: ring.clone(),
        status: Arc::new(|| serde_json::json!({})),
        metrics: Arc::new(String::new),
    };
    let agent = dir.endpoint("node-1");
    // Serves until the test's runtime goes.
    drop(
        crate::admin::Admin::bind(&agent.socket, None)
            .expect("bind")
            .spawn(state),
    );
    agent
}

/// An agent answering one `/flows` request with the lines sent on the channel, until it is
/// dropped; the request line goes to the returned receiver.
fn scripted_agent(
    dir: &TempSock,
) -> (
    AgentEndpoint,
    tokio::sync::mpsc::UnboundedSender<String>,
    tokio::sync::oneshot::Receiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = dir.endpoint("node-1");
    let listener = tokio::net::UnixListener::bind(&agent.socket).expect("bind");
    let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (req_tx, req_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0; 1024];
            let n = io.read(&mut chunk).await.expect("read");
            assert!(n > 0, "request cut short");
            head.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let _ = req_tx.send(head.lines().next().unwrap_or_default().to_string());
        io.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write head");
        while let Some(line) = rx.recv().await {
            io.write_all(line.as_bytes()).await.expect("write line");
        }
        // Closing ends the body, as an agent that stops does.
    });
    (agent, lines, req_rx)
}

fn gone() -> AgentEndpoint {
    AgentEndpoint {
        cluster: "c2".into(),
        node: "down".into(),
        socket: "/nonexistent/strait-admin.sock".into(),
    }
}

fn numbered(port: u16, verdict: Verdict) -> FlowRecord {
    let mut f = sample();
    f.time = t0() + Duration::from_secs(port.into());
    f.source.port = port;
    f.verdict = verdict;
    f
}

#[tokio::test]
async fn one_agent_down_is_reported_and_the_rest_shown() {
    let dir = TempSock::new("oneshot");
    let ring = Arc::new(crate::flows::FlowRing::new(100));
    ring.record(numbered(1, Verdict::Forwarded));
    ring.record(numbered(2, Verdict::Dropped));
    ring.record(numbered(3, Verdict::Forwarded));
    let agents = [gone(), live_agent(&dir, &ring)];
    let args = parse(&["--verdict", "forwarded", "-o", "json"]).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    observe(&args, &agents, false, &mut out, &mut err)
        .await
        .expect("one agent answered");
    let ports: Vec<u16> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<FlowRecord>(l)
                .expect("flow")
                .source
                .port
        })
        .collect();
    assert_eq!(ports, [1, 3]);
    let stderr = String::from_utf8_lossy(&err);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("strait observe: agent c2/down: cannot connect"),
        "{stderr}"
    );

    // Table output of the same, and a filter the agent applies to the time bound.
    let args = parse(&["-o", "table", "--since", "2024-11-25T06:01:04.123Z"]).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    observe(&args, &agents[1..], false, &mut out, &mut err)
        .await
        .expect("answered");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("TIME "), "{text}");
    assert!(text.contains("DROPPED"), "{text}");
    assert!(err.is_empty());
}

/// A `Write` the test can read while `observe` holds it.
#[derive(Clone, Default)]
struct Shared(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

#[tokio::test]
async fn follow_streams_from_the_agents_that_answer() {
    let dir = TempSock::new("follow");
    let (agent, lines, request) = scripted_agent(&dir);
    let agents = [agent, gone()];
    let args = parse(&["-f", "--verdict", "dropped"]).expect("parses");
    let (out, err) = (Shared::default(), Shared::default());
    let (mut o, mut e) = (out.clone(), err.clone());
    let task = tokio::spawn(async move { observe(&args, &agents, false, &mut o, &mut e).await });

    assert_eq!(
        request.await.expect("request"),
        "GET /flows?last=0&follow=true&verdict=DROPPED HTTP/1.1"
    );
    let line = |f: FlowRecord| json_line(&f).expect("json");
    // The agent filters, but what arrives is filtered again.
    lines
        .send(line(numbered(1, Verdict::Forwarded)))
        .expect("send");
    lines
        .send(line(numbered(2, Verdict::Dropped)))
        .expect("send");
    lines.send("{\"lost\":7}\n".into()).expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !err.text().contains("7 flows lost") {
        assert!(tokio::time::Instant::now() < deadline, "{}", err.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = out.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(":2 (ID:65792)") && text.contains("DROPPED"),
        "{text}"
    );
    let stderr = err.text();
    assert!(
        stderr.starts_with("strait observe: agent c2/down: cannot connect"),
        "{stderr}"
    );
    assert!(
        stderr.contains("strait observe: agent c1/node-1: 7 flows lost"),
        "{stderr}"
    );

    // When the last agent that answered stops, observe fails.
    drop(lines);
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("observe ends")
        .expect("no panic");
    let e = res.expect_err("all streams ended");
    assert!(e.to_string().contains("all agents ended"), "{e}");
    assert!(
        err.text().contains("agent c1/node-1: flow stream ended"),
        "{}",
        err.text()
    );
}
