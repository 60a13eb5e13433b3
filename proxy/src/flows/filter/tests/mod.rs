//! Table-driven tests of which flows each filter passes; parsing and display in [`parse`].

mod parse;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::flows::test_flow as flow;
use crate::flows::{FlowPeer, HttpFlow};

/// 2024-11-25T06:00:00Z; flow N of [`flows`] is recorded N seconds later.
const T0: u64 = 1_732_514_400;

/// What `5m` and friends count back from in the table: 2024-11-25T06:00:10Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + 10)
}

fn peer(cluster: &str, ns: &str, pod: &str, port: u16, labels: &[(&str, &str)]) -> FlowPeer {
    FlowPeer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 16, 5))),
        port,
        cluster: cluster.into(),
        namespace: ns.into(),
        pod: pod.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..FlowPeer::default()
    }
}

fn http(method: &str, path: &str, status: Option<u16>) -> Option<HttpFlow> {
    Some(HttpFlow {
        method: method.into(),
        path: path.into(),
        host: None,
        status,
        latency_us: 100,
    })
}

/// Fixed flows, named so a test can list which pass; the Nth is recorded at T0 + N s.
fn flows() -> Vec<(&'static str, FlowRecord)> {
    let fe = |port| peer("c1", "demo", "frontend-abc", port, &[("app", "frontend")]);
    let be = |port| {
        peer(
            "c1",
            "demo",
            "backend-xyz",
            port,
            &[("app", "backend"), ("tier", "api")],
        )
    };
    let db = || peer("c1", "other", "db-0", 5432, &[("app", "db")]);
    let mut out = Vec::new();
    let mut mk = |name, rec_cluster: &str, src, dst, verdict, protocol: &str, h| {
        let n = u64::try_from(out.len()).expect("few flows") + 1;
        let mut f = flow(T0 + n, 1);
        f.cluster = rec_cluster.into();
        f.source = src;
        f.destination = dst;
        f.verdict = verdict;
        f.protocol = protocol.into();
        f.http = h;
        out.push((name, f));
    };
    // demo/frontend -> demo/backend in c1, an HTTP/1.1 request answered 200.
    mk(
        "fe-be",
        "c1",
        fe(41000),
        be(8080),
        Verdict::Forwarded,
        "HTTP/1.1",
        http("GET", "/api/items?id=1", Some(200)),
    );
    // demo/frontend -> other/db in c1, dropped in the kernel.
    mk(
        "fe-db",
        "c1",
        fe(41001),
        db(),
        Verdict::Dropped,
        "TCP",
        None,
    );
    // Recorded in c2: other/client -> c3's demo/backend, HTTP/2 answered 503.
    mk(
        "cl-be3",
        "c2",
        peer("c2", "other", "client-1", 42000, &[("app", "client")]),
        peer(
            "c3",
            "demo",
            "backend-remote",
            8080,
            &[("app", "backend"), ("tier", "api")],
        ),
        Verdict::Forwarded,
        "HTTP/2",
        http("POST", "/api/orders", Some(503)),
    );
    // Recorded in c2: kube-system/coredns -> outside world over UDP, error.
    mk(
        "dns-out",
        "c2",
        peer(
            "c2",
            "kube-system",
            "coredns-7d",
            53000,
            &[("k8s-app", "kube-dns")],
        ),
        FlowPeer {
            ip: Some(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))),
            port: 53,
            ..FlowPeer::default()
        },
        Verdict::Error,
        "UDP",
        None,
    );
    // demo/frontend -> demo/backend in c1, an HTTP/1.1 request denied by L7 policy.
    mk(
        "fe-admin",
        "c1",
        fe(41002),
        be(8080),
        Verdict::Dropped,
        "HTTP/1.1",
        http("DELETE", "/admin/users", Some(403)),
    );
    // demo/backend -> other/db in c1, audited, an HTTP request never answered.
    mk(
        "be-db",
        "c1",
        be(43000),
        db(),
        Verdict::Audit,
        "HTTP/1.1",
        http("get", "/healthz", None),
    );
    out
}

fn filter(pairs: &[(&str, &str)]) -> FlowFilter {
    let mut f = FlowFilter::new();
    for (k, v) in pairs {
        match Criterion::parse_at(k, v, now()) {
            Ok(c) => f.push(c),
            Err(e) => panic!("{k}={v}: {e}"),
        }
    }
    f
}

#[test]
fn table() {
    // (criteria as key/value pairs, names of the flows that pass)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    const ALL: &[&str] = &["fe-be", "fe-db", "cl-be3", "dns-out", "fe-admin", "be-db"];
    let cases: &[Case] = &[
        (&[], ALL),
        // Cluster: recording node's or either endpoint's.
        (
            &[("cluster", "c1")],
            &["fe-be", "fe-db", "fe-admin", "be-db"],
        ),
        (&[("cluster", "c2")], &["cl-be3", "dns-out"]),
        (&[("cluster", "c3")], &["cl-be3"]),
        (&[("cluster", "c9")], &[]),
        // Namespace: either end, or one side.
        (
            &[("namespace", "demo")],
            &["fe-be", "fe-db", "cl-be3", "fe-admin", "be-db"],
        ),
        (&[("namespace", "other")], &["fe-db", "cl-be3", "be-db"]),
        (
            &[("from-namespace", "demo")],
            &["fe-be", "fe-db", "fe-admin", "be-db"],
        ),
        (&[("from-namespace", "other")], &["cl-be3"]),
        (&[("to-namespace", "other")], &["fe-db", "be-db"]),
        (&[("to-namespace", "kube-system")], &[]),
        // Pod: prefix, either end or one side, optional namespace.
        (
            &[("pod", "backend")],
            &["fe-be", "cl-be3", "fe-admin", "be-db"],
        ),
        (&[("pod", "demo/backend-r")], &["cl-be3"]),
        (&[("pod", "other/backend")], &[]),
        (&[("pod", "kube-system/")], &["dns-out"]),
        (&[("pod", "frontend-abc")], &["fe-be", "fe-db", "fe-admin"]),
        (&[("from-pod", "backend")], &["be-db"]),
        (&[("to-pod", "backend")], &["fe-be", "cl-be3", "fe-admin"]),
        (&[("to-pod", "demo/")], &["fe-be", "cl-be3", "fe-admin"]),
        (&[("from-pod", "other/client")], &["cl-be3"]),
        (&[("to-pod", "frontend")], &[]),
        // Labels: equality, inequality (absent counts), existence, sets, source prefixes.
        (&[("label", "app=db")], &["fe-db", "be-db"]),
        (
            &[("label", "k8s:app=backend")],
            &["fe-be", "cl-be3", "fe-admin", "be-db"],
        ),
        (&[("from-label", "any:app==backend")], &["be-db"]),
        (&[("to-label", "tier")], &["fe-be", "cl-be3", "fe-admin"]),
        (&[("to-label", "!tier")], &["fe-db", "dns-out", "be-db"]),
        (
            &[("from-label", "app!=frontend")],
            &["cl-be3", "dns-out", "be-db"],
        ),
        (
            &[("from-label", "app in (client, backend)")],
            &["cl-be3", "be-db"],
        ),
        (&[("to-label", "app notin (backend,db)")], &["dns-out"]),
        (&[("label", "k8s-app=kube-dns")], &["dns-out"]),
        // Comma-separated requirements AND within one flag.
        (
            &[("to-label", "app=backend,tier=api")],
            &["fe-be", "cl-be3", "fe-admin"],
        ),
        (&[("to-label", "app=backend,tier=web")], &[]),
        // Cilium's namespace and cluster labels come with every pod.
        (
            &[("from-label", "k8s:io.kubernetes.pod.namespace=other")],
            &["cl-be3"],
        ),
        (
            &[("to-label", "io.cilium.k8s.policy.cluster=c3")],
            &["cl-be3"],
        ),
        // Verdict, case-insensitive.
        (&[("verdict", "dropped")], &["fe-db", "fe-admin"]),
        (&[("verdict", "FORWARDED")], &["fe-be", "cl-be3"]),
        (&[("verdict", "audit")], &["be-db"]),
        // Protocol: HTTP runs over TCP; HTTP means either version.
        (
            &[("protocol", "tcp")],
            &["fe-be", "fe-db", "cl-be3", "fe-admin", "be-db"],
        ),
        (&[("protocol", "UDP")], &["dns-out"]),
        (
            &[("protocol", "http")],
            &["fe-be", "cl-be3", "fe-admin", "be-db"],
        ),
        (&[("protocol", "HTTP/1.1")], &["fe-be", "fe-admin", "be-db"]),
        (&[("protocol", "http/2")], &["cl-be3"]),
        // Ports: either side or one side (the backend's, after service translation).
        (&[("port", "8080")], &["fe-be", "cl-be3", "fe-admin"]),
        (&[("port", "53")], &["dns-out"]),
        (&[("from-port", "41001")], &["fe-db"]),
        (&[("to-port", "5432")], &["fe-db", "be-db"]),
        (&[("to-port", "41001")], &[]),
        // HTTP status: exact, class, class and above; flows without a status never match.
        (&[("http-status", "200")], &["fe-be"]),
        (&[("http-status", "4xx")], &["fe-admin"]),
        (&[("http-status", "5XX")], &["cl-be3"]),
        (&[("http-status", "4xx+")], &["cl-be3", "fe-admin"]),
        (&[("http-status", "2xx+")], &["fe-be", "cl-be3", "fe-admin"]),
        (&[("http-status", "404")], &[]),
        // HTTP method: case-insensitive both ways.
        (&[("http-method", "get")], &["fe-be", "be-db"]),
        (&[("http-method", "DELETE")], &["fe-admin"]),
        // HTTP path: unanchored regular expression.
        (&[("http-path", "^/api/")], &["fe-be", "cl-be3"]),
        (&[("http-path", "users")], &["fe-admin"]),
        (&[("http-path", r"id=\d+$")], &["fe-be"]),
        (&[("http-path", "^/healthz$")], &["be-db"]),
        // Time: RFC 3339 (any offset) or a duration before now (T0 + 10 s), bounds included.
        (
            &[("since", "2024-11-25T06:00:03Z")],
            &["cl-be3", "dns-out", "fe-admin", "be-db"],
        ),
        (
            &[("until", "2024-11-25T06:00:03Z")],
            &["fe-be", "fe-db", "cl-be3"],
        ),
        (
            &[("since", "2024-11-25T07:00:05+01:00")],
            &["fe-admin", "be-db"],
        ),
        (&[("until", "2024-11-25t01:00:01.5-05:00")], &["fe-be"]),
        (&[("since", "6s")], &["dns-out", "fe-admin", "be-db"]),
        (&[("since", "1h")], ALL),
        (&[("until", "1m")], &[]),
        (
            &[("since", "2024-11-25T06:00:02Z"), ("until", "8s")],
            &["fe-db"],
        ),
        // Same kind ORs.
        (
            &[("verdict", "dropped"), ("verdict", "error")],
            &["fe-db", "dns-out", "fe-admin"],
        ),
        (
            &[("namespace", "kube-system"), ("namespace", "other")],
            &["fe-db", "cl-be3", "dns-out", "be-db"],
        ),
        (
            &[("pod", "db-"), ("pod", "coredns")],
            &["fe-db", "dns-out", "be-db"],
        ),
        (
            &[("http-status", "200"), ("http-status", "403")],
            &["fe-be", "fe-admin"],
        ),
        (
            &[("from-label", "app=client"), ("from-label", "k8s-app")],
            &["cl-be3", "dns-out"],
        ),
        (
            &[("to-port", "53"), ("to-port", "5432")],
            &["fe-db", "dns-out", "be-db"],
        ),
        (
            &[("protocol", "udp"), ("protocol", "http/2")],
            &["cl-be3", "dns-out"],
        ),
        // Different kinds AND.
        (&[("cluster", "c1"), ("verdict", "forwarded")], &["fe-be"]),
        (&[("namespace", "demo"), ("cluster", "c2")], &["cl-be3"]),
        (&[("pod", "frontend"), ("namespace", "other")], &["fe-db"]),
        (
            &[("from-pod", "frontend"), ("to-pod", "backend")],
            &["fe-be", "fe-admin"],
        ),
        (
            &[("from-namespace", "demo"), ("to-namespace", "demo")],
            &["fe-be", "fe-admin"],
        ),
        (
            &[
                ("label", "app=backend"),
                ("protocol", "tcp"),
                ("http-method", "get"),
            ],
            &["fe-be", "be-db"],
        ),
        (&[("port", "8080"), ("verdict", "dropped")], &["fe-admin"]),
        (
            &[("http-path", "^/api"), ("http-status", "5xx+")],
            &["cl-be3"],
        ),
        (&[("to-label", "app=db"), ("since", "5s")], &["be-db"]),
        // `from` and `to` of one field are different kinds: they AND too.
        (&[("from-port", "41000"), ("to-port", "8080")], &["fe-be"]),
        (
            &[("from-label", "app=frontend"), ("to-label", "app=db")],
            &["fe-db"],
        ),
        // Both at once: (c1 OR c3) AND (FORWARDED) AND (demo).
        (
            &[
                ("cluster", "c1"),
                ("verdict", "forwarded"),
                ("cluster", "c3"),
                ("namespace", "demo"),
            ],
            &["fe-be", "cl-be3"],
        ),
        (
            &[("verdict", "error"), ("verdict", "dropped"), ("pod", "db")],
            &["fe-db"],
        ),
        // (GET OR POST) AND (2xx OR 5xx) AND HTTP/2.
        (
            &[
                ("http-method", "GET"),
                ("http-status", "2xx"),
                ("http-method", "post"),
                ("http-status", "5xx"),
                ("protocol", "HTTP/2"),
            ],
            &["cl-be3"],
        ),
    ];
    assert!(cases.len() >= 40, "{} rows", cases.len());
    let flows = flows();
    for (pairs, want) in cases {
        let f = filter(pairs);
        let got: Vec<&str> = flows
            .iter()
            .filter(|(_, fl)| f.matches(fl))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(got, *want, "filter {pairs:?}");
    }
}
